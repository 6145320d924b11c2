// The chat page (/chat of `ferrows serve`) in two headless Chromium pages at once.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { launchBrowser, openPage, screenshot, startServer, waitForState } from "./harness.js";

let server;
let browser;

before(async () => {
  server = await startServer(["serve", "--port", "0", "--tick", "250ms"]);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  const exit = await server?.stop();
  assert.equal(exit?.code, 0, `the server exits 0 on SIGTERM:\n${server?.log()}`);
});

/** Records every value the page's tick display shows, in window.__ticks. */
async function recordTicks(page) {
  await page.evaluate(() => {
    window.__ticks = [];
    const tick = document.getElementById("tick");
    new MutationObserver(() => window.__ticks.push(tick.textContent)).observe(tick, {
      childList: true,
      characterData: true,
      subtree: true,
    });
  });
}

/** The chat log's lines. */
async function lines(page) {
  return page.$$eval("#chat-log .entry .body", (nodes) => nodes.map((n) => n.textContent));
}

async function waitForLine(page, text, timeout = 10_000) {
  await page.waitForFunction(
    (t) => [...document.querySelectorAll("#chat-log .entry .body")].some((n) => n.textContent === t),
    text,
    { timeout },
  );
}

async function say(page, text) {
  await page.fill("#chat-input", text);
  await page.press("#chat-input", "Enter");
}

test("two chat pages see the same tick and each other's messages, as text", async () => {
  const one = await openPage(browser, server.origin);
  const two = await openPage(browser, server.origin);
  await one.page.goto(`${server.origin}/chat`);
  await waitForState(one.page, "open");
  await two.page.goto(`${server.origin}/chat`);
  await waitForState(two.page, "open");
  await recordTicks(one.page);
  await recordTicks(two.page);

  // The same tick n shows in both pages.
  await one.page.waitForFunction(() => window.__ticks.length >= 4, null, { timeout: 10_000 });
  await two.page.waitForFunction(() => window.__ticks.length >= 4, null, { timeout: 10_000 });
  const t1 = await one.page.evaluate(() => window.__ticks.map(Number));
  const t2 = await two.page.evaluate(() => window.__ticks.map(Number));
  const common = t1.filter((n) => t2.includes(n));
  assert.ok(common.length >= 2, `no common ticks: ${t1} / ${t2}`);
  for (const ticks of [t1, t2]) {
    for (let i = 1; i < ticks.length; i++) assert.equal(ticks[i], ticks[i - 1] + 1, `${ticks}`);
  }

  // Page one saw page two join.
  const joins = (await lines(one.page)).filter((l) => /^\* client \d+ joined$/.test(l));
  assert.equal(joins.length, 2, `${await lines(one.page)}`);

  // A line typed in one appears in both.
  await say(one.page, "hello from page one");
  await waitForLine(one.page, "hello from page one");
  await waitForLine(two.page, "hello from page one");
  assert.equal(await one.page.inputValue("#chat-input"), "");

  // Markup from a peer stays text.
  const evil = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>';
  await say(two.page, evil);
  await waitForLine(one.page, evil);
  await waitForLine(two.page, evil);
  for (const { page } of [one, two]) {
    assert.equal(await page.locator("#chat-log img, #chat-log script").count(), 0);
    assert.equal(await page.evaluate(() => document.images.length), 0);
    assert.equal(await page.evaluate(() => window.__xss), undefined);
  }

  await screenshot(one.page, "chat-page-one");
  await screenshot(two.page, "chat-page-two");

  // Page two leaves: page one is told.
  const twoJoined = (await lines(two.page)).find((l) => /^\* client \d+ joined$/.test(l));
  const twoId = /\d+/.exec(twoJoined)[0];
  await two.page.close();
  await waitForLine(one.page, `* client ${twoId} left`);
  assert.deepEqual(one.problems, []);
  assert.deepEqual(two.problems, []);
  await one.page.close();
});
