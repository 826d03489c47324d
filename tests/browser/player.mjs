// Play one DASH MPD with dash.js in headless Chromium and report what happens.
//
//   node tests/browser/player.mjs --mpd URL [--seconds 60] [--settings JSON]
//   node tests/browser/player.mjs --page URL [--seconds 60]
//
// With --page, opens that page instead of player.html: a page with its own dash.js
// player (such as the one `oca demo` serves) that reports through window.ocaReport.
//
// Serves player.html and dash.js (from node_modules) on 127.0.0.1 on a free port, opens
// the page in /usr/bin/chromium (playwright-core, fresh profile, no network services of
// its own) and writes one JSON object per line on stdout, each with "t" (wall clock,
// seconds) and "kind":
//   page             the page loaded: dash.js version, MPD URL
//   playback         every 250 ms: currentTime, buffer (seconds ahead), paused, ended
//   fragment         dash.js finished loading a segment: url, host, mediaType, ok, error
//   request          the browser finished a request: url, host, status (network view)
//   request_failed   the browser gave up on a request: url, host, error
//   error            a dash.js ERROR event, a media error, a page error or a console error
//   steering         a Content Steering response: url, pathwayPriority, ttl
//   blacklist        dash.js blacklisted a serviceLocation
//   base_urls        the BaseURLs dash.js found in the MPD
//   exit             the run is over (after --seconds or SIGTERM)
// Exit status: 0 after a full run, 2 on bad arguments, 3 if the browser could not start.

import { createServer } from "node:http";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { chromium } from "playwright-core";

const HERE = dirname(fileURLToPath(import.meta.url));
const CHROMIUM = process.env.OCA_CHROMIUM || "/usr/bin/chromium";
const CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--autoplay-policy=no-user-gesture-required",
];

function emit(record) {
  process.stdout.write(JSON.stringify({ t: Date.now() / 1000, ...record }) + "\n");
}

function hostOf(url) {
  try {
    return new URL(url).host;
  } catch {
    return null;
  }
}

function serveStatic() {
  const files = {
    "/player.html": [join(HERE, "player.html"), "text/html; charset=utf-8"],
    "/dash.all.min.js": [
      join(HERE, "node_modules/dashjs/dist/modern/umd/dash.all.min.js"),
      "text/javascript",
    ],
  };
  const server = createServer((req, res) => {
    const path = new URL(req.url, "http://x").pathname;
    const entry = files[path];
    if (path === "/favicon.ico") {
      res.writeHead(204).end();
      return;
    }
    if (!entry) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "Content-Type": entry[1], "Cache-Control": "no-store" });
    res.end(readFileSync(entry[0]));
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => resolve(server));
  });
}

async function main() {
  let args;
  try {
    args = parseArgs({
      options: {
        mpd: { type: "string" },
        page: { type: "string" },
        seconds: { type: "string", default: "60" },
        settings: { type: "string", default: "{}" },
      },
    }).values;
    JSON.parse(args.settings);
  } catch (e) {
    process.stderr.write(`player.mjs: ${e.message}\n`);
    return 2;
  }
  const seconds = Number(args.seconds);
  if (!(args.mpd || args.page) || !(seconds > 0)) {
    process.stderr.write(
      "usage: player.mjs (--mpd URL | --page URL) [--seconds N] [--settings JSON]\n",
    );
    return 2;
  }

  const server = await serveStatic();
  const pageOrigin = `http://127.0.0.1:${server.address().port}`;
  const profile = mkdtempSync(join(tmpdir(), "oca-player-"));
  let context = null;
  let finished = false;
  const cleanup = async () => {
    if (finished) return;
    finished = true;
    try {
      if (context) await context.close();
    } catch {
      // the browser is already gone
    }
    server.close();
    rmSync(profile, { recursive: true, force: true });
    emit({ kind: "exit" });
  };
  for (const sig of ["SIGTERM", "SIGINT"]) {
    process.on(sig, () => cleanup().then(() => process.exit(0)));
  }

  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_FLAGS,
      handleSIGTERM: false,
      handleSIGINT: false,
    });
  } catch (e) {
    process.stderr.write(`player.mjs: cannot start ${CHROMIUM}: ${e.message}\n`);
    server.close();
    rmSync(profile, { recursive: true, force: true });
    return 3;
  }
  const page = context.pages()[0] || (await context.newPage());
  await page.exposeBinding("ocaReport", (_source, record) => emit(record));
  page.on("pageerror", (err) => emit({ kind: "error", source: "page", message: String(err) }));
  page.on("console", (msg) => {
    if (msg.type() === "error") {
      const url = msg.location().url || null;
      emit({ kind: "error", source: "console", message: msg.text(), url, host: hostOf(url) });
    }
  });
  const ours = (url) => url.startsWith(pageOrigin);
  page.on("requestfinished", async (req) => {
    if (ours(req.url())) return;
    const resp = await req.response().catch(() => null);
    emit({
      kind: "request",
      url: req.url(),
      host: hostOf(req.url()),
      method: req.method(),
      status: resp ? resp.status() : null,
    });
  });
  page.on("requestfailed", (req) => {
    if (ours(req.url())) return;
    const failure = req.failure();
    emit({
      kind: "request_failed",
      url: req.url(),
      host: hostOf(req.url()),
      method: req.method(),
      error: failure ? failure.errorText : "unknown",
    });
  });

  if (args.page) {
    await page.goto(args.page);
  } else {
    const query = new URLSearchParams({ mpd: args.mpd, settings: args.settings });
    await page.goto(`${pageOrigin}/player.html?${query}`);
  }
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  await cleanup();
  return 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`player.mjs: ${err && err.stack ? err.stack : err}\n`);
    process.exitCode = 1;
  },
);
