// A token-protected `ferrows serve --token T` in headless Chromium: the
// pages are public and pass the ?token= of their own URL on to their
// WebSockets; without it the page loads but its WebSocket gets 401.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { launchBrowser, openPage, screenshot, startServer, waitForState } from "./harness.js";

const TOKEN = "br0wser-s3cret ü";
const IN_URL = encodeURIComponent(TOKEN);

let server;
let browser;

before(async () => {
  server = await startServer(["serve", "--port", "0", "--tick", "0", "--token", TOKEN]);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  const exit = await server?.stop();
  assert.equal(exit?.code, 0, `the server exits 0 on SIGTERM:\n${server?.log()}`);
  assert.ok(!server.log().includes("br0wser"), `the token is never logged:\n${server.log()}`);
});

test("the echo console opened with ?token= connects and echoes", async () => {
  const { page, problems } = await openPage(browser, server.origin);
  await page.goto(`${server.origin}/echo?token=${IN_URL}`);
  await waitForState(page, "open");
  // URLSearchParams writes a space as "+", which the server decodes too.
  const url = new URL(await page.inputValue("#url"));
  assert.equal(url.origin + url.pathname, `ws://127.0.0.1:${server.port}/echo`);
  assert.equal(url.searchParams.get("token"), TOKEN);
  await page.fill("#payload", "with a token");
  await page.click("#send");
  await page.waitForFunction(
    () => [...document.querySelectorAll("#log .entry.received .body")].some((n) => n.textContent.endsWith("with a token")),
    null,
    { timeout: 10_000 },
  );
  await screenshot(page, "access-echo-with-token");
  assert.deepEqual(problems, []);
  await page.close();
});

test("the landing page's links keep the token: chat and gamepad connect", async () => {
  const { page, problems } = await openPage(browser, server.origin);
  await page.goto(`${server.origin}/?token=${IN_URL}`);
  await page.click("#demo-chat");
  await page.waitForURL((u) => u.pathname === "/chat" && u.searchParams.get("token") === TOKEN);
  await waitForState(page, "open");
  await page.goto(`${server.origin}/?token=${IN_URL}`);
  await page.click("#demo-gamepad");
  await page.waitForURL((u) => u.pathname === "/gamepad" && u.searchParams.get("token") === TOKEN);
  await waitForState(page, "open");
  await screenshot(page, "access-gamepad-with-token");
  assert.deepEqual(problems, []);
  await page.close();
});

test("without the token the page loads but its WebSocket is refused with 401", async () => {
  const { page, problems } = await openPage(browser, server.origin);
  const response = await page.goto(`${server.origin}/chat`);
  assert.equal(response.status(), 200, "the page itself is public");
  await waitForState(page, "closed");
  assert.match(await page.textContent("#status"), /1006/);
  await screenshot(page, "access-chat-without-token");
  // Chromium reports the refused handshake: a 401 with
  // WWW-Authenticate is "HTTP Authentication failed".
  assert.ok(
    problems.length === 1 && /HTTP Authentication failed/.test(problems[0]),
    `one console error for the 401: ${JSON.stringify(problems)}`,
  );
  // A wrong token is refused the same way.
  const code = await page.evaluate(
    (url) =>
      new Promise((resolve) => {
        const ws = new WebSocket(url);
        ws.onopen = () => resolve("open");
        ws.onclose = (ev) => resolve(ev.code);
      }),
    `ws://127.0.0.1:${server.port}/echo?token=wrong`,
  );
  assert.equal(code, 1006);
  assert.match(server.log(), /missing or wrong token: 401/);
  await page.close();
});
