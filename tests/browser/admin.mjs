// Drives the gateway's /admin page in headless Chromium, one step per line on stdin; the
// cluster, its clients and the checks on their side are the Rust test tests/tests/admin.rs.
//
//   node tests/browser/admin.mjs http://127.0.0.1:PORT/admin
//
// Prints `open` once the page has polled the API once, then answers:
//
//   error-shown TEXT          -> `error-shown TEXT`  the page shows an error containing TEXT
//   token TOKEN               -> `token-ok`          typed into the token field; the next poll works
//   node ID STATE SESSIONS    -> the same line       the nodes table shows that row
//   hub HUB SESSIONS          -> the same line       the hubs table shows that count
//   rates                     -> `rates ok`          the per-second rates show numbers
//   find-id ID                -> `found ID NODE`     a search by ID lists the session on NODE
//   find-hub HUB N            -> `found-hub N`       a search by hub lists N sessions
//   close ID                  -> `closed ID`         its Close button closed it
//   drain                     -> `drained`           the drain button (two clicks) was accepted
//   screenshot PATH           -> `shot PATH`
//   quit                      -> `bye`               and exits 0
//
// Any failure prints `error WHY` and exits 1, as does a console error, an uncaught exception or
// a Content-Security-Policy violation in the page. The only console errors allowed are the
// browser's own "Failed to load resource ... 401" lines before the token is typed (the page
// starts without one, and says so on the page). Uses Debian's chromium (CHROMIUM overrides
// /usr/bin/chromium) with a fresh profile; never downloads a browser.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";

import { chromium } from "playwright-core";

const url = process.argv[2];
if (!url) {
  console.error("usage: node admin.mjs URL");
  process.exit(2);
}
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
// Below the Rust side's patience (20 s), so a failure here is reported from here.
const WAIT_MS = 15000;
const ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

const say = (line) => process.stdout.write(`${line}\n`);
const problems = [];
let tokenTyped = false;

async function until(what, check) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

const text = async (locator) => ((await locator.textContent()) ?? "").trim();

async function polls(page) {
  return Number((await page.locator("body").getAttribute("data-polls")) || 0);
}

// Everything in the tables is the page's own markup: data never became elements.
async function onlyOwnElements(page) {
  const foreign = await page
    .locator("tbody *:not(tr, td, button), #error *, #message *")
    .count();
  if (foreign !== 0) throw new Error(`${foreign} foreign elements in the page`);
}

async function search(page, kind, value) {
  await page.locator("#search-kind").selectOption(kind);
  await page.locator("#search-value").fill(value);
  await page.locator("#search-go").click();
}

const profile = mkdtempSync(join(tmpdir(), "switchboard-admin-"));
let context;
let code = 0;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ARGS,
    viewport: { width: 1200, height: 1000 },
  });
  // CSP violations reported by the page itself (init scripts run outside its policy).
  await context.exposeBinding("__cspViolation", (_source, what) =>
    problems.push(`CSP violation: ${what}`));
  await context.addInitScript(() => {
    document.addEventListener("securitypolicyviolation", (e) =>
      window.__cspViolation(`${e.violatedDirective} blocked ${e.blockedURI || "inline"}`));
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (m) => {
    if (m.type() !== "error") return;
    if (!tokenTyped && /status of 401/.test(m.text())) return;
    problems.push(`console error: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));

  const response = await page.goto(url);
  if (!response || response.status() !== 200) {
    throw new Error(`GET ${url} answered ${response && response.status()}`);
  }
  const csp = response.headers()["content-security-policy"] || "";
  if (!/script-src 'nonce-[^']+'/.test(csp) || /unsafe/.test(csp)) {
    throw new Error(`unexpected policy ${JSON.stringify(csp)}`);
  }
  await until("the first poll", async () => (await polls(page)) >= 1);
  say("open");

  for await (const line of createInterface({ input: process.stdin })) {
    const words = line.split(" ");
    const [cmd, ...args] = words;
    if (problems.length) throw new Error(problems.join("; "));
    if (cmd === "error-shown") {
      const want = args.join(" ");
      await until(`an error with ${want}`, async () => {
        const el = page.locator("#error");
        return !(await el.isHidden()) && (await text(el)).includes(want);
      });
      say(`error-shown ${want}`);
    } else if (cmd === "token") {
      await page.locator("#token").fill(args[0]);
      await page.locator("#token-save").click();
      tokenTyped = true;
      const after = await polls(page);
      // A poll that started after the token was set, and the error gone with it.
      await until("a poll with the token", async () =>
        (await polls(page)) >= after + 2 && (await page.locator("#error").isHidden()));
      say("token-ok");
    } else if (cmd === "node") {
      const [id, state, sessions] = args;
      const row = page.locator(`#nodes tr[data-node="${id}"]`);
      await until(`node ${id} ${state} with ${sessions} sessions`, async () =>
        (await row.count()) === 1
        && (await row.getAttribute("data-state")) === state
        && (await text(row.locator("td.sessions"))) === sessions);
      await onlyOwnElements(page);
      say(line);
    } else if (cmd === "hub") {
      const [hub, sessions] = args;
      const row = page.locator(`#hubs tr[data-hub="${hub}"]`);
      await until(`hub ${hub} with ${sessions} sessions`, async () =>
        (await row.count()) === 1 && (await text(row.locator("td.sessions"))) === sessions);
      say(line);
    } else if (cmd === "rates") {
      // Two polls give a rate; every rate is a number.
      await until("rates", async () => {
        const values = await Promise.all(
          ["#rate-connects", "#rate-disconnects", "#rate-in", "#rate-out", "#slow-closes"]
            .map((s) => text(page.locator(s))));
        return values.every((v) => /^\d+(\.\d)?$/.test(v));
      });
      say("rates ok");
    } else if (cmd === "find-id") {
      const [id] = args;
      await search(page, "id", id);
      const row = page.locator(`#results tr[data-session="${id}"]`);
      await until(`session ${id} in the results`, async () => (await row.count()) === 1);
      await onlyOwnElements(page);
      say(`found ${id} ${await text(row.locator("td.node"))}`);
    } else if (cmd === "find-hub") {
      const [hub, n] = args;
      await search(page, "hub", hub);
      await until(`${n} sessions of ${hub}`, async () =>
        (await page.locator("#results tr").count()) === Number(n)
        && (await page.locator("#results tr td.hub").allTextContents()).every((h) => h === hub));
      say(`found-hub ${n}`);
    } else if (cmd === "close") {
      const [id] = args;
      const row = page.locator(`#results tr[data-session="${id}"]`);
      await row.locator("button.close").click();
      await until(`session ${id} closed`, async () =>
        (await row.getAttribute("data-closed")) === "true"
        && (await text(page.locator("#message"))).includes(`Closed ${id}`));
      say(`closed ${id}`);
    } else if (cmd === "drain") {
      const button = page.locator("#drain");
      await button.click();
      await until("the drain button to ask again", async () =>
        (await button.getAttribute("data-armed")) === "true");
      await button.click();
      await until("the drain to be accepted", async () =>
        (await text(page.locator("#message"))).startsWith("Draining"));
      say("drained");
    } else if (cmd === "screenshot") {
      await page.screenshot({ path: args.join(" "), fullPage: true });
      say(`shot ${args.join(" ")}`);
    } else if (cmd === "quit") {
      if (problems.length) throw new Error(problems.join("; "));
      say("bye");
      break;
    } else {
      throw new Error(`unknown command ${JSON.stringify(line)}`);
    }
  }
} catch (e) {
  const seen = problems.length ? ` (the page: ${problems.join("; ")})` : "";
  say(`error ${String(e.message).split("\n")[0]}${seen}`.replace(/\s*\n\s*/g, " "));
  console.error(e);
  code = 1;
} finally {
  await context?.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
process.exit(code);
