// The landing page of `ferrows serve` and its links, in headless Chromium.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { launchBrowser, openPage, screenshot, startServer, waitForState } from "./harness.js";

let server;
let browser;

before(async () => {
  server = await startServer(["serve", "--port", "0"]);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  const exit = await server?.stop();
  assert.equal(exit?.code, 0, `the server exits 0 on SIGTERM:\n${server?.log()}`);
});

test("the landing page links every demo and shows its WebSocket URL", async () => {
  const { page, problems } = await openPage(browser, server.origin);
  await page.goto(`${server.origin}/`);
  assert.equal(await page.title(), "ferrows");
  const urls = await page.$$eval("[data-ws-path]", (nodes) => nodes.map((n) => n.textContent));
  assert.deepEqual(
    urls,
    ["/echo", "/chat", "/gamepad"].map((p) => `ws://127.0.0.1:${server.port}${p}`),
  );
  await screenshot(page, "landing");

  await page.click("#demo-echo");
  await page.waitForURL(`${server.origin}/echo`);
  await waitForState(page, "open");
  await page.click("a.brand");
  await page.waitForURL(`${server.origin}/`);
  await page.click("#demo-chat");
  await page.waitForURL(`${server.origin}/chat`);
  await waitForState(page, "open");
  await page.click("a.brand");
  await page.waitForURL(`${server.origin}/`);
  await page.click("#demo-gamepad");
  await page.waitForURL(`${server.origin}/gamepad`);
  assert.equal(await page.title(), "Gamepad · ferrows");
  await waitForState(page, "open");
  // The gamepad's WebSocket answered: the server's hello names this client.
  await page.waitForFunction(() => /^client \d+$/.test(document.getElementById("you")?.textContent ?? ""));
  assert.deepEqual(problems, []);

  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(`${server.origin}/`);
  await screenshot(page, "landing-phone");
  await page.close();
});

test("unknown paths are plain 404s", async () => {
  const { page } = await openPage(browser, server.origin);
  for (const path of ["/no-such-page", "/gamepad/", "/echo/x"]) {
    const response = await page.goto(`${server.origin}${path}`);
    assert.equal(response.status(), 404, path);
    assert.equal(response.headers()["content-type"], "text/plain; charset=utf-8");
  }
  await page.close();
});
