// The gamepad page of `ferrows serve gamepad --output jsonl:FILE` in headless
// Chromium: a stubbed navigator.getGamepads moves the stick and presses a
// button, the jsonl lines follow; a second page is a viewer that cannot
// drive; closing the driving page stops the robot within 500 ms; the
// keyboard and the touch joystick drive without a gamepad.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { launchBrowser, openPage, screenshot, startServer, waitForState } from "./harness.js";

let server;
let browser;
let dir;
let jsonl;

before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "ferrows-gamepad-"));
  jsonl = path.join(dir, "out.jsonl");
  server = await startServer([
    "serve", "gamepad", "--bind", "127.0.0.1", "--port", "0",
    "--output", `jsonl:${jsonl}`, "--buttons", "4",
  ]);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  const exit = await server?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
  assert.equal(exit?.code, 0, `the server exits 0 on SIGTERM:\n${server?.log()}`);
});

/** The jsonl lines written so far. */
async function lines() {
  let text = "";
  try { text = await readFile(jsonl, "utf8"); } catch { return []; }
  return text.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l));
}

/** Waits (bounded, polling every 5 ms) for a line at index >= from matching pred. */
async function waitForLine(from, pred, timeout = 10_000) {
  const start = Date.now();
  for (;;) {
    const all = await lines();
    const i = all.findIndex((l, n) => n >= from && pred(l));
    if (i >= 0) return { line: all[i], index: i, at: Date.now() };
    if (Date.now() - start > timeout) {
      throw new Error(`no matching jsonl line within ${timeout} ms; lines:\n${all.map((l) => JSON.stringify(l)).join("\n")}\nlog:\n${server.log()}`);
    }
    await new Promise((r) => setTimeout(r, 5));
  }
}

const near = (a, b) => Math.abs(a - b) < 1e-9;

/** A navigator.getGamepads stub driven by window.__pad (set before any page script runs). */
function stubGamepad() {
  window.__pad = { axes: [0, 0, 0, 0], buttons: [0, 0, 0, 0] };
  const pad = () => ({
    id: "ferrows test pad (STANDARD GAMEPAD)",
    index: 0,
    connected: true,
    mapping: "standard",
    timestamp: performance.now(),
    axes: window.__pad.axes.slice(),
    buttons: window.__pad.buttons.map((v) => ({ pressed: v >= 0.5, touched: v > 0, value: v })),
  });
  Object.defineProperty(navigator, "getGamepads", {
    configurable: true,
    value: () => [pad(), null, null, null],
  });
}

async function setPad(page, axes, buttons) {
  await page.evaluate(([a, b]) => { window.__pad = { axes: a, buttons: b }; }, [axes, buttons]);
}

async function text(page, id) {
  return page.$eval(`#${id}`, (n) => n.textContent);
}

test("a stubbed gamepad drives; a second page is a viewer; closing the driver stops within 500 ms", async () => {
  const driver = await openPage(browser, server.origin);
  await driver.page.addInitScript(stubGamepad);
  await driver.page.goto(`${server.origin}/`);
  await waitForState(driver.page, "open");
  assert.deepEqual(await lines(), [], "nothing moves before the stick does");

  // Stick half right and fully up, button 1 pressed.
  await setPad(driver.page, [0.5, -1, 0, 0], [0, 1, 0, 0]);
  const { line: first, index } = await waitForLine(0, (l) => l.reason === "command");
  // Dead zone 0.1: turn 0.444…, throttle 1; scaled so the faster wheel is 1.
  assert.ok(near(first.left, 1) && near(first.right, 0.385), JSON.stringify(first));
  assert.deepEqual(first.buttons, [false, true, false, false]);
  await driver.page.waitForFunction(() => document.getElementById("role").textContent === "driver");
  assert.match(await text(driver.page, "banner"), /You are driving/);
  // The page shows what it reads and what the robot does.
  await driver.page.waitForFunction(() => document.getElementById("left").textContent === "1.000");
  assert.equal(await text(driver.page, "source"), "gamepad");
  await driver.page.waitForFunction(() => /ms$/.test(document.getElementById("rtt").textContent), null, { timeout: 5_000 });

  // Held still for a second: the page's keep-alives hold off the dead-man.
  const held = (await lines()).length;
  await new Promise((r) => setTimeout(r, 1200));
  const during = (await lines()).slice(held);
  assert.deepEqual(during, [], "the dead-man fired while the page was open and driving");

  // A second page is a viewer: its stick moves nothing, and it says why.
  const viewer = await openPage(browser, server.origin);
  await viewer.page.addInitScript(stubGamepad);
  await viewer.page.goto(`${server.origin}/`);
  await waitForState(viewer.page, "open");
  await setPad(viewer.page, [-1, 0, 0, 0], [1, 0, 0, 0]);
  await viewer.page.waitForFunction(
    () => /another driver has control/.test(document.getElementById("error").textContent),
    null,
    { timeout: 5_000 },
  );
  assert.match(await text(viewer.page, "banner"), /another driver has control/);
  assert.equal(await text(viewer.page, "role"), "viewer");
  await new Promise((r) => setTimeout(r, 300));
  assert.equal((await lines()).length, held, "the viewer moved the robot");
  await screenshot(driver.page, "gamepad-driver");
  await screenshot(viewer.page, "gamepad-viewer");

  // The driver's page goes away: a stop line within 500 ms.
  const before = (await lines()).length;
  const closedAt = Date.now();
  await driver.page.close();
  const { line: stop, at } = await waitForLine(before, (l) => l.reason === "deadman" || l.reason === "disconnect", 2_000);
  assert.ok(at - closedAt <= 500, `stop line ${at - closedAt} ms after the page closed`);
  assert.ok(near(stop.left, 0) && near(stop.right, 0), JSON.stringify(stop));
  assert.deepEqual(stop.buttons, [false, false, false, false]);
  // The viewer is told why.
  await viewer.page.waitForFunction(() => /^STOPPED: /.test(document.getElementById("banner").textContent));
  assert.match(await text(viewer.page, "banner"), /STOPPED: the driver disconnected|STOPPED: link lost/);
  await screenshot(viewer.page, "gamepad-stopped");
  assert.ok(index >= 0);
  assert.deepEqual(driver.problems, []);
  assert.deepEqual(viewer.problems, []);
  await viewer.page.close();
});

test("without a gamepad: the keyboard and the touch joystick drive", async () => {
  const { page, problems } = await openPage(browser, server.origin);
  await page.goto(`${server.origin}/`);
  await waitForState(page, "open");
  // Wait out any stop from the previous test's driver.
  await page.waitForFunction(() => document.getElementById("driver").textContent === "none", null, { timeout: 10_000 });
  const start = (await lines()).length;

  await page.keyboard.down("ArrowUp");
  const { line: up } = await waitForLine(start, (l) => l.reason === "command" && near(l.left, 1) && near(l.right, 1));
  assert.deepEqual(up.buttons, [false, false, false, false]);
  assert.equal(await text(page, "source"), "keyboard");
  await page.keyboard.down("Space");
  await waitForLine(start, (l) => l.reason === "command" && l.buttons[0] === true && near(l.left, 1));
  await page.keyboard.up("Space");
  await page.keyboard.up("ArrowUp");
  await waitForLine(start, (l) => l.reason === "command" && near(l.left, 0) && near(l.right, 0) && !l.buttons[0]);
  // WASD: D turns right on the spot.
  await page.keyboard.down("KeyD");
  await waitForLine(start, (l) => l.reason === "command" && near(l.left, 1) && near(l.right, -1));
  await page.keyboard.up("KeyD");

  // The touch joystick: drag the knob to the far left.
  const box = await page.locator("#stick").boundingBox();
  const cx = box.x + box.width / 2;
  const cy = box.y + box.height / 2;
  const mark = (await lines()).length;
  await page.mouse.move(cx, cy);
  await page.mouse.down();
  await page.mouse.move(cx - box.width / 2, cy, { steps: 4 });
  await waitForLine(mark, (l) => l.reason === "command" && near(l.left, -1) && near(l.right, 1));
  assert.equal(await text(page, "source"), "touch");
  await page.mouse.up();
  // Released: back to the centre, stopped.
  await waitForLine(mark, (l) => l.reason === "command" && near(l.left, 0) && near(l.right, 0));

  // Release control from the page while driving: stopped, and letting
  // go of the key afterwards does not take control back.
  await page.keyboard.down("ArrowDown");
  const back = await waitForLine(start, (l) => l.reason === "command" && near(l.left, -1) && near(l.right, -1));
  await page.click("#release");
  await waitForLine(back.index + 1, (l) => l.reason === "release");
  await page.waitForFunction(() => document.getElementById("role").textContent === "viewer");
  await page.keyboard.up("ArrowDown");
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(await text(page, "role"), "viewer");
  assert.match(await text(page, "banner"), /STOPPED: the driver released control/);
  await screenshot(page, "gamepad-keyboard");
  assert.deepEqual(problems, []);
  await page.close();
});
