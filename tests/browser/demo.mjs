// Drives the gateway's /demo page in headless Chromium, one step per line on stdin; the
// backend side (gRPC) is the Rust test tests/tests/demo_page.rs.
//
//   node tests/browser/demo.mjs http://127.0.0.1:PORT/demo?hub=HUB
//
// Prints `open` once the page says it is connected, then answers:
//
//   session [OLD]             -> `session ID`     the page is connected and shows a session ID
//                                                 (other than OLD: it reconnected)
//   session-now               -> `session TEXT`   what the page shows as its session right now
//   wait-open                 -> `open`           the page is connected (again)
//   texts-in                  -> `texts-in JSON`  every received text listed, oldest first
//   expect-text TEXT          -> `seen TEXT`      a received text message is listed
//   expect-binary N           -> `seen binary N`  a received binary message of N bytes is listed
//   type TEXT                 -> `sent TEXT`      typed into the text box and sent
//   protocol                  -> `protocol P`     the protocol the page itself came over
//                                                 (`h2`, `http/1.1`)
//   screenshot PATH           -> `shot PATH`
//   quit                      -> `bye`            and exits 0
//
// Any failure prints `error WHY` and exits 1, as does a console error or an uncaught exception
// in the page (a Content-Security-Policy violation is one). Uses Debian's chromium
// (CHROMIUM overrides /usr/bin/chromium) with a fresh profile; never downloads a browser.
// With TRUST_CERT=PEM, Chromium trusts that (test) server certificate by its public key
// (--ignore-certificate-errors-spki-list), so an https page is a secure context without errors.

import { createHash, createPublicKey } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";

import { chromium } from "playwright-core";

const url = process.argv[2];
if (!url) {
  console.error("usage: node demo.mjs URL");
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

if (process.env.TRUST_CERT) {
  const spki = createPublicKey(readFileSync(process.env.TRUST_CERT)).export({ type: "spki", format: "der" });
  ARGS.push(`--ignore-certificate-errors-spki-list=${createHash("sha256").update(spki).digest("base64")}`);
}

const say = (line) => process.stdout.write(`${line}\n`);
const problems = [];

async function until(what, check) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

async function connectedSession(page, old) {
  return until(old ? `a new session after ${old}` : "the session ID", async () => {
    const state = await page.locator("#state").getAttribute("data-state");
    const session = (await page.locator("#session").textContent()).trim();
    return state === "open" && session !== "unknown" && session !== old && session;
  });
}

// Everything in the log is one of the page's own elements: data never became markup.
async function onlyOwnElements(page) {
  const foreign = await page.locator("#log *:not(li, time, span, div, p)").count();
  if (foreign !== 0) throw new Error(`${foreign} foreign elements in the message log`);
}

async function listed(page, selector, text) {
  await until(`${JSON.stringify(text)} in ${selector}`, async () =>
    (await page.locator(selector).allTextContents()).includes(text));
  await onlyOwnElements(page);
}

const profile = mkdtempSync(join(tmpdir(), "switchboard-demo-"));
let context;
let code = 0;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ARGS,
    viewport: { width: 1000, height: 720 },
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`console error: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));

  const response = await page.goto(url);
  if (!response || response.status() !== 200) {
    throw new Error(`GET ${url} answered ${response && response.status()}`);
  }
  await until("the page to connect", async () =>
    (await page.locator("#state").getAttribute("data-state")) === "open");
  say("open");

  for await (const line of createInterface({ input: process.stdin })) {
    const space = line.indexOf(" ");
    const [cmd, arg] = space < 0 ? [line, ""] : [line.slice(0, space), line.slice(space + 1)];
    if (problems.length) throw new Error(problems.join("; "));
    if (cmd === "session") {
      say(`session ${await connectedSession(page, arg)}`);
    } else if (cmd === "wait-open") {
      await until("the page to be connected", async () =>
        (await page.locator("#state").getAttribute("data-state")) === "open");
      say("open");
    } else if (cmd === "texts-in") {
      // The log lists the newest first.
      const texts = (await page.locator("#log li.in p.body").allTextContents()).reverse();
      say(`texts-in ${JSON.stringify(texts)}`);
    } else if (cmd === "session-now") {
      say(`session ${(await page.locator("#session").textContent()).trim()}`);
    } else if (cmd === "expect-text") {
      await listed(page, "#log li.in p.body", arg);
      say(`seen ${arg}`);
    } else if (cmd === "expect-binary") {
      await listed(page, "#log li.in p.body", `binary message, ${arg} bytes`);
      say(`seen binary ${arg}`);
    } else if (cmd === "type") {
      await page.locator("#text").fill(arg);
      await page.locator("#send").click();
      await listed(page, "#log li.out p.body", arg);
      say(`sent ${arg}`);
    } else if (cmd === "protocol") {
      const p = await page.evaluate(() => performance.getEntriesByType("navigation")[0].nextHopProtocol);
      say(`protocol ${p}`);
    } else if (cmd === "screenshot") {
      await page.screenshot({ path: arg, fullPage: true });
      say(`shot ${arg}`);
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
