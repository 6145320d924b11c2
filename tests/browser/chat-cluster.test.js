// One chat room on two `ferrows serve chat --redis` servers: a real
// redis-server (started here, on a free loopback port of 18000-18999), a
// Chromium page on each server; a line typed on A appears on B and back,
// joins name the server, and both pages show the same tick numbers.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { launchBrowser, openPage, screenshot, startServer, waitForState } from "./harness.js";

const REDIS_READY_MS = 15_000;

let redis;
let nodeA;
let nodeB;
let browser;

/** Whether something listens on 127.0.0.1:port. */
function listening(port) {
  return new Promise((resolve) => {
    const socket = net.connect({ host: "127.0.0.1", port });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

/** Whether Redis on `port` answers PING with +PONG. */
function pong(port) {
  return new Promise((resolve) => {
    const socket = net.connect({ host: "127.0.0.1", port });
    let got = "";
    const done = (ok) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(2000, () => done(false));
    socket.once("error", () => done(false));
    socket.once("connect", () => socket.write("PING\r\n"));
    socket.on("data", (d) => {
      got += d.toString("latin1");
      if (got.includes("+PONG")) done(true);
    });
  });
}

/** A redis-server on a free port of 18000-18999; stop() kills it. */
async function startRedis() {
  const dir = await mkdtemp(path.join(tmpdir(), "ferrows-redis-"));
  for (let attempt = 0; attempt < 20; attempt++) {
    const port = 18000 + Math.floor(Math.random() * 1000);
    if (await listening(port)) continue;
    const child = spawn(
      "redis-server",
      ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--daemonize", "no", "--dir", dir, "--logfile", path.join(dir, "redis.log")],
      { stdio: "ignore" },
    );
    const spawned = await new Promise((resolve, reject) => {
      child.once("spawn", () => resolve(true));
      child.once("error", (e) =>
        reject(new Error(`cannot run redis-server: ${e.message} (apt-get install redis-server)`)));
    });
    assert.ok(spawned);
    const exited = new Promise((resolve) => child.once("exit", () => resolve(true)));
    const deadline = Date.now() + REDIS_READY_MS;
    let ready = false;
    while (!ready && Date.now() < deadline && child.exitCode === null) {
      ready = await pong(port);
      if (!ready) await new Promise((r) => setTimeout(r, 50));
    }
    if (!ready) {
      child.kill("SIGKILL");
      await exited;
      continue;
    }
    return {
      url: `redis://127.0.0.1:${port}/`,
      async stop() {
        if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
        await exited;
        await rm(dir, { recursive: true, force: true });
      },
    };
  }
  await rm(dir, { recursive: true, force: true });
  throw new Error("redis-server did not start on a free port of 18000-18999");
}

before(async () => {
  redis = await startRedis();
  const node = (name) =>
    startServer(["serve", "chat", "--port", "0", "--tick", "250ms", "--redis", redis.url,
      "--node-name", name]);
  nodeA = await node("A");
  nodeB = await node("B");
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  const exitA = await nodeA?.stop();
  const exitB = await nodeB?.stop();
  await redis?.stop();
  assert.equal(exitA?.code, 0, `node A exits 0 on SIGTERM:\n${nodeA?.log()}`);
  assert.equal(exitB?.code, 0, `node B exits 0 on SIGTERM:\n${nodeB?.log()}`);
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

test("a line typed on server A appears on server B and back; both show the same ticks", async () => {
  const a = await openPage(browser, nodeA.origin);
  const b = await openPage(browser, nodeB.origin);
  await a.page.goto(`${nodeA.origin}/`);
  await waitForState(a.page, "open");
  await b.page.goto(`${nodeB.origin}/`);
  await waitForState(b.page, "open");
  await recordTicks(a.page);
  await recordTicks(b.page);

  // A hears of B's join, named with B's server, shown as a notice.
  const bJoin = (await lines(b.page)).find((l) => /^\* client \d+@B joined$/.test(l));
  assert.ok(bJoin, `${await lines(b.page)}`);
  await waitForLine(a.page, bJoin);
  const noticeClass = await a.page.$$eval("#chat-log .entry", (entries, t) =>
    entries.find((e) => e.querySelector(".body")?.textContent === t)?.className, bJoin);
  assert.match(noticeClass, /\bnotice\b/);

  await say(a.page, "hello from server A");
  await waitForLine(b.page, "hello from server A");
  await waitForLine(a.page, "hello from server A");
  await say(b.page, "and back from server B");
  await waitForLine(a.page, "and back from server B");
  await waitForLine(b.page, "and back from server B");

  // The same tick numbers on both servers' pages, consecutive on each.
  await a.page.waitForFunction(() => window.__ticks.length >= 6, null, { timeout: 10_000 });
  await b.page.waitForFunction(() => window.__ticks.length >= 6, null, { timeout: 10_000 });
  const ta = await a.page.evaluate(() => window.__ticks.map(Number));
  const tb = await b.page.evaluate(() => window.__ticks.map(Number));
  const common = ta.filter((n) => tb.includes(n));
  assert.ok(common.length >= 4, `no common ticks: ${ta} / ${tb}`);
  for (const ticks of [ta, tb]) {
    for (let i = 1; i < ticks.length; i++) assert.equal(ticks[i], ticks[i - 1] + 1, `${ticks}`);
  }
  assert.equal(await a.page.textContent("#tick"), String(ta.at(-1)));

  await screenshot(a.page, "chat-cluster-A");
  await screenshot(b.page, "chat-cluster-B");

  // B leaves: A is told, with B's server.
  const bId = /client (\S+) joined/.exec(bJoin)[1];
  await b.page.close();
  await waitForLine(a.page, `* client ${bId} left`);
  assert.deepEqual(a.problems, []);
  assert.deepEqual(b.problems, []);
  await a.page.close();
});
