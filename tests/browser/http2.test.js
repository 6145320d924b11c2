// WebSocket over HTTP/2 (RFC 8441) from headless Chromium: `ferrows serve
// echo --tls-cert` offers ALPN h2; a page loaded from it over HTTP/2 opens
// a wss:// WebSocket, which Chromium sends as an Extended CONNECT on the
// same HTTP/2 connection (the server advertises
// SETTINGS_ENABLE_CONNECT_PROTOCOL). The server's --trace tags HTTP/2
// streams "h2]", so the log shows which way the WebSocket came.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";
import { startServer } from "./harness.js";

let dir;
let server;
let context;

before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "ferrows-h2-"));
  const cnf = path.join(dir, "openssl.cnf");
  await writeFile(
    cnf,
    "[req]\ndistinguished_name = dn\nx509_extensions = ext\nprompt = no\n" +
      "[dn]\nCN = localhost\n[ext]\nbasicConstraints = critical, CA:FALSE\n" +
      "subjectAltName = DNS:localhost, IP:127.0.0.1\nkeyUsage = critical, digitalSignature\n" +
      "extendedKeyUsage = serverAuth\n",
  );
  const cert = path.join(dir, "cert.pem");
  const key = path.join(dir, "key.pem");
  execFileSync("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
    "-days", "2", "-config", cnf, "-keyout", key, "-out", cert,
  ]);
  server = await startServer([
    "serve", "echo", "--bind", "127.0.0.1", "--port", "0", "--trace",
    "--tls-cert", cert, "--tls-key", key,
  ]);
  context = await chromium.launchPersistentContext(path.join(dir, "profile"), {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    // The certificate is self-signed: trusted by flag (for the page and
    // for the WebSocket alike).
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic",
      "--ignore-certificate-errors"],
  });
});

after(async () => {
  await context?.close();
  await server?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

test("Chromium opens wss:// as an RFC 8441 stream on the page's HTTP/2 connection", async () => {
  const origin = `https://localhost:${server.port}`;
  const page = await context.newPage();
  const response = await page.goto(`${origin}/`);
  assert.equal(response.status(), 200);
  const protocol = await page.evaluate(() => performance.getEntriesByType("navigation")[0].nextHopProtocol);
  assert.equal(protocol, "h2", "the page came over HTTP/2");
  const echo = await page.evaluate(
    (url) =>
      new Promise((resolve, reject) => {
        const ws = new WebSocket(url);
        ws.onopen = () => ws.send("over h2 from chromium");
        ws.onmessage = (e) => {
          ws.close(1000, "done");
          resolve({ data: e.data, extensions: ws.extensions });
        };
        ws.onerror = () => reject(new Error("WebSocket error"));
        setTimeout(() => reject(new Error("no echo within 10 s")), 10_000);
      }),
    `wss://localhost:${server.port}/`,
  );
  assert.equal(echo.data, "over h2 from chromium");
  assert.match(echo.extensions, /permessage-deflate/);
  // The server traced the WebSocket's frames on an HTTP/2 stream.
  const deadline = Date.now() + 10_000;
  while (!/ h2\].*over h2 from chromium/.test(server.log()) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.match(server.log(), / h2\].*over h2 from chromium/, server.log());
});
