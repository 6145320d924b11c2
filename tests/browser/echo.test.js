// The echo console (/echo of `ferrows serve`) in headless Chromium.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { launchBrowser, openPage, screenshot, startServer, waitForState } from "./harness.js";

let server;
let browser;

before(async () => {
  server = await startServer(["serve", "--port", "0", "--tick", "0", "--max-message-size", "4096"]);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  const exit = await server?.stop();
  assert.equal(exit?.code, 0, `the server exits 0 on SIGTERM:\n${server?.log()}`);
});

/** The log entries as { kind, dir, badge, body, meta }. */
async function entries(page) {
  return page.$$eval("#log .entry", (nodes) =>
    nodes.map((n) => {
      const body = n.querySelector(".body");
      const badge = body.querySelector(".badge");
      return {
        kind: n.className.replace("entry", "").trim(),
        time: n.querySelector(".time").textContent,
        dir: n.querySelector(".dir").textContent,
        badge: badge ? badge.textContent : null,
        body: badge ? body.textContent.slice(badge.textContent.length) : body.textContent,
        meta: n.querySelector(".meta")?.textContent ?? "",
      };
    }),
  );
}

/** Waits until the log has an entry of `kind` whose body is `body`. */
async function waitForEntry(page, kind, body, timeout = 10_000) {
  await page.waitForFunction(
    ([k, b]) =>
      [...document.querySelectorAll("#log .entry." + k + " .body")].some((n) => {
        const badge = n.querySelector(".badge");
        const text = badge ? n.textContent.slice(badge.textContent.length) : n.textContent;
        return text === b;
      }),
    [kind, body],
    { timeout },
  );
}

async function sendAs(page, mode, payload) {
  // As a person would: the label is the visible control.
  await page.click(`label:has(#mode-${mode})`);
  assert.equal(await page.isChecked(`#mode-${mode}`), true);
  await page.fill("#payload", payload);
  await page.click("#send");
}

test("the echo console sends text, JSON and binary, shows echoes with RTT, and closes with a code and reason", async () => {
  const { page, problems } = await openPage(browser, server.origin);
  await page.goto(`${server.origin}/echo`);
  assert.equal(await page.title(), "Echo console · ferrows");
  assert.equal(await page.inputValue("#url"), `ws://127.0.0.1:${server.port}/echo`);
  await waitForState(page, "open");

  await sendAs(page, "text", "hello from Chromium ✓");
  await waitForEntry(page, "received", "hello from Chromium ✓");
  assert.match(await page.textContent("#rtt"), /^\d+(\.\d+)? ms$/);

  await sendAs(page, "json", '{"type":"pad","seq":1,"axes":[0.12,-0.5],"buttons":[1]}');
  await waitForEntry(page, "received", '{"type":"pad","seq":1,"axes":[0.12,-0.5],"buttons":[1]}');

  await sendAs(page, "binary", "48 65 6c 6c 6f 00 ff");
  await waitForEntry(page, "received", "48 65 6c 6c 6f 00 ff");

  // Invalid input is refused before anything is sent.
  const before = (await entries(page)).length;
  await sendAs(page, "json", "{not json");
  assert.match(await page.textContent("#send-error"), /^Invalid JSON: /);
  await sendAs(page, "binary", "4g");
  assert.match(await page.textContent("#send-error"), /^Invalid hex: /);
  assert.equal((await entries(page)).length, before);

  const log = await entries(page);
  const sent = log.filter((e) => e.kind === "sent");
  const received = log.filter((e) => e.kind === "received");
  assert.deepEqual(
    sent.map((e) => [e.dir, e.badge]),
    [["→", "text"], ["→", "json"], ["→", "binary"]],
  );
  assert.deepEqual(
    received.map((e) => [e.dir, e.badge, e.body]),
    [
      ["←", "text", "hello from Chromium ✓"],
      ["←", "json", '{"type":"pad","seq":1,"axes":[0.12,-0.5],"buttons":[1]}'],
      ["←", "binary", "48 65 6c 6c 6f 00 ff"],
    ],
  );
  for (const e of received) assert.match(e.meta, /^\d+ bytes · rtt \d+(\.\d+)? ms$/);
  assert.equal(received[2].meta.split(" ")[0], "7");
  for (const e of log) assert.match(e.time, /^\d\d:\d\d:\d\d\.\d\d\d$/, e.body);
  assert.equal(await page.textContent("#count-sent"), "3");
  assert.equal(await page.textContent("#count-recv"), "3");
  await screenshot(page, "echo");

  await page.fill("#close-code", "4000");
  await page.fill("#close-reason", "bye from the test");
  await page.click("#disconnect");
  await waitForState(page, "closed");
  assert.equal(await page.textContent("#status"), "closed 4000");
  const [closing, closed] = (await entries(page)).slice(-2);
  assert.equal(closing.body, "closing with 4000");
  assert.equal(closing.meta, 'reason "bye from the test"');
  // The server answers with the same code (RFC 6455 §5.5.1).
  assert.equal(closed.body, "closed: code 4000");
  assert.match(closed.meta, / · clean$/);
  assert.equal(await page.isDisabled("#send"), true);
  assert.deepEqual(problems, []);
  await screenshot(page, "echo-closed");
  await page.close();
});

test("a close by the server shows its code and reason", async () => {
  const { page, problems } = await openPage(browser, server.origin);
  await page.goto(`${server.origin}/echo`);
  await waitForState(page, "open");
  await sendAs(page, "text", "x".repeat(5000));
  await waitForState(page, "closed");
  assert.equal(await page.textContent("#status"), "closed 1009");
  const log = await entries(page);
  // The log shows the start of a long message, and says how much is left out.
  const sent = log.find((e) => e.kind === "sent");
  assert.equal(sent.body, "x".repeat(2000) + " … 3000 more characters not shown");
  assert.equal(sent.meta, "5000 bytes");
  const closed = log.at(-1);
  assert.equal(closed.body, "closed: code 1009 (Message Too Big)");
  assert.match(closed.meta, /^reason ".+" · clean$/);
  assert.equal(await page.isDisabled("#connect"), false);
  assert.deepEqual(problems, []);
  await screenshot(page, "echo-server-close");
  await page.close();
});

test("peer text is shown as text: markup in a message creates no element", async () => {
  const { page, problems } = await openPage(browser, server.origin);
  await page.goto(`${server.origin}/echo`);
  await waitForState(page, "open");
  const evil = '<img src=x onerror="window.__xss=1"><b>bold</b>';
  await sendAs(page, "text", evil);
  await waitForEntry(page, "received", evil);
  assert.equal(await page.locator("#log img").count(), 0);
  assert.equal(await page.locator("#log b").count(), 0);
  assert.equal(await page.evaluate(() => document.images.length), 0);
  assert.equal(await page.evaluate(() => window.__xss), undefined);
  assert.deepEqual(problems, []);
  await page.close();
});

test("the echo console fits a phone screen", async () => {
  const { page, problems } = await openPage(browser, server.origin);
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(`${server.origin}/echo`);
  await waitForState(page, "open");
  await sendAs(page, "text", "on a phone");
  await waitForEntry(page, "received", "on a phone");
  // Nothing wider than the screen: no sideways scrolling.
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page is ${overflow}px wider than the screen`);
  assert.deepEqual(problems, []);
  await screenshot(page, "echo-phone");
  await page.close();
});
