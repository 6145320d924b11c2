// Runs `ferrows serve --port 0` and a headless Chromium for the browser tests.
//
// FERROWS_BIN: the ferrows binary (default: target/debug/ferrows at the
// repository root). CHROMIUM: the browser (default /usr/bin/chromium).
// Screenshots go to test-artifacts/browser/ at the repository root.

import { spawn } from "node:child_process";
import { mkdtemp, mkdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, "..", "..");
export const artifacts = path.join(repoRoot, "test-artifacts", "browser");

const START_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 10_000;

/** A running ferrows server: its port, its log, and stop(). */
export async function startServer(args) {
  const bin = process.env.FERROWS_BIN || path.join(repoRoot, "target", "debug", "ferrows");
  const child = spawn(bin, args, {
    env: { ...process.env, NO_COLOR: "1", RUST_LOG: "info" },
    stdio: ["ignore", "ignore", "pipe"],
  });
  const lines = [];
  let pending = "";
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`ferrows ${args.join(" ")} did not start within ${START_TIMEOUT_MS} ms:\n${lines.join("\n")}`));
    }, START_TIMEOUT_MS);
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ${bin}: ${e.message} (build it with cargo build, or set FERROWS_BIN)`));
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`ferrows exited with ${code} before listening:\n${lines.join("\n")}`));
    });
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk) => {
      pending += chunk;
      let nl;
      while ((nl = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        lines.push(line);
        const m = /listening on (\S+):(\d+)\s*$/.exec(line);
        if (m) {
          clearTimeout(timer);
          resolve(Number(m[2]));
        }
      }
    });
  });
  const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  return {
    port,
    origin: `http://127.0.0.1:${port}`,
    log: () => lines.join("\n"),
    /** SIGTERM, then waits (bounded) for the exit; returns { code, signal }. */
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return exited;
      child.kill("SIGTERM");
      const timeout = new Promise((resolve) => setTimeout(() => resolve(null), STOP_TIMEOUT_MS));
      const result = await Promise.race([exited, timeout]);
      if (result === null) {
        child.kill("SIGKILL");
        return exited;
      }
      return result;
    },
  };
}

/** Chromium with a fresh profile; close() also removes the profile. */
export async function launchBrowser() {
  const profile = await mkdtemp(path.join(tmpdir(), "ferrows-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-quic",
    ],
    viewport: { width: 1100, height: 900 },
  });
  return {
    context,
    async close() {
      await context.close();
      await rm(profile, { recursive: true, force: true });
    },
  };
}

/**
 * A new page that may only reach `origin`: any other request is aborted
 * and recorded (the pages must work offline), as are page errors and
 * console errors.
 */
export async function openPage(browser, origin) {
  const page = await browser.context.newPage();
  const problems = [];
  await page.route("**/*", (route) => {
    const url = route.request().url();
    if (url.startsWith(origin + "/")) return route.continue();
    problems.push(`request outside the server: ${url}`);
    return route.abort();
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (msg) => {
    if (msg.type() === "error") problems.push(`console error: ${msg.text()}`);
  });
  return { page, problems };
}

/** Saves a full-page screenshot as test-artifacts/browser/NAME.png. */
export async function screenshot(page, name) {
  await mkdir(artifacts, { recursive: true });
  const file = path.join(artifacts, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

/** Waits for the page's status badge to be in `state`. */
export async function waitForState(page, state, timeout = 10_000) {
  await page.waitForFunction(
    (s) => document.getElementById("status")?.dataset.state === s,
    state,
    { timeout },
  );
}
