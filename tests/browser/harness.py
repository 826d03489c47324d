"""A real DASH player for functional tests: dash.js in headless Chromium, driven from
Python.

:class:`PlayerRun` starts ``node player.mjs`` (see that file for the JSON lines it
writes) as a child process in its own process group, reads its reports on a thread
and answers questions about them: how far playback got, which hosts served segments
and when, what went wrong. :class:`DocumentServer` serves the documents a test makes
up (an MPD with the appliances' BaseURLs, a Content Steering response) on 127.0.0.1
with CORS, as a steering service would; :func:`with_base_urls` writes such an MPD.

Chromium (Debian package ``chromium``) and ``tests/browser/node_modules``
(``npm ci``) are installed by ``make test``; without them the test fails and says
what is missing rather than skipping, so a CI run can never pass without a player.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import orjson
import pytest

HERE = Path(__file__).resolve().parent
PLAYER = HERE / "player.mjs"
DASHJS = HERE / "node_modules" / "dashjs" / "dist" / "modern" / "umd" / "dash.all.min.js"
PLAYWRIGHT = HERE / "node_modules" / "playwright-core" / "package.json"
CHROMIUM = os.environ.get("OCA_CHROMIUM", "/usr/bin/chromium")
NODE = shutil.which("node") or "/usr/bin/node"

Record = dict[str, Any]


def require_player() -> None:
    """Fail (never skip) the calling test when the player cannot run here."""
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"{CHROMIUM} (Debian package chromium)")
    if not os.access(NODE, os.X_OK):
        missing.append("node (Debian package nodejs)")
    for path in (DASHJS, PLAYWRIGHT):
        if not path.exists():
            missing.append(f"{path.relative_to(HERE.parent.parent)} (npm ci in tests/browser)")
    if missing:
        pytest.fail(
            "the browser player cannot run, missing: "
            + "; ".join(missing)
            + ". `make test` installs all of it (targets system-deps and browser-deps).",
            pytrace=False,
        )


def host_of(url: str) -> str:
    """``host:port`` of an absolute http(s) URL."""
    return url.split("://", 1)[1].split("/", 1)[0]


def with_base_urls(
    mpd: str,
    base_urls: Sequence[tuple[str, str]],
    *,
    steering_url: str | None = None,
    query_before_start: bool = True,
) -> str:
    """``mpd`` with MPD-level ``<BaseURL serviceLocation=...>`` elements, one per
    ``(service_location, url)`` in order of preference, and with ``steering_url`` a
    ``<ContentSteering>`` element whose default is the first of them."""
    lines = [
        f"\t<BaseURL serviceLocation={quoteattr(loc)}>{escape(url)}</BaseURL>\n"
        for loc, url in base_urls
    ]
    if steering_url is not None:
        lines.append(
            f"\t<ContentSteering defaultServiceLocation={quoteattr(base_urls[0][0])}"
            f' queryBeforeStart="{str(query_before_start).lower()}">'
            f"{escape(steering_url)}</ContentSteering>\n"
        )
    match = re.search(r"<MPD\b[^>]*>\s*", mpd)
    if match is None:
        raise ValueError("no <MPD> element")
    return mpd[: match.end()] + "".join(lines) + "\t" + mpd[match.end() :].lstrip()


@dataclass
class Document:
    content_type: str
    body: bytes


class DocumentServer:
    """Serves ``documents`` (path -> :class:`Document`, replaceable at any time) on
    127.0.0.1 with ``Access-Control-Allow-Origin: *``; remembers every request path
    with its query string."""

    def __init__(self) -> None:
        self.documents: dict[str, Document] = {}
        self.requests: list[tuple[float, str]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests.append((time.time(), self.path))
                doc = owner.documents.get(self.path.split("?", 1)[0])
                if doc is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.send_header("Access-Control-Allow-Origin", "*")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", doc.content_type)
                self.send_header("Content-Length", str(len(doc.body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("Access-Control-Allow-Origin", "*")
                self.end_headers()
                self.wfile.write(doc.body)

            def log_message(self, format: str, *args: Any) -> None:
                """Requests are kept in ``requests``; nothing goes to stderr."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> DocumentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def url(self, path: str) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def put(self, path: str, body: str | bytes, content_type: str) -> str:
        data = body.encode() if isinstance(body, str) else body
        self.documents[path] = Document(content_type, data)
        return self.url(path)


@dataclass
class PlayerRun:
    """One run of ``player.mjs`` against ``mpd_url`` for at most ``seconds``; with
    ``page_url``, the player is that page's own (see ``--page`` in player.mjs)."""

    mpd_url: str
    seconds: float = 60.0
    page_url: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self._changed = threading.Condition()
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> PlayerRun:
        require_player()
        self.proc = subprocess.Popen(
            [
                NODE,
                str(PLAYER),
                *(["--page", self.page_url] if self.page_url else ["--mpd", self.mpd_url]),
                "--seconds",
                str(self.seconds),
                "--settings",
                orjson.dumps(self.settings).decode(),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=HERE,
            env={**os.environ, "OCA_CHROMIUM": CHROMIUM},
            start_new_session=True,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        readers = ((self._read_records, self.proc.stdout), (self._read_stderr, self.proc.stderr))
        for target, stream in readers:
            t = threading.Thread(target=target, args=(stream,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _read_records(self, stream: Any) -> None:
        for line in stream:
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                text = line.decode(errors="replace")
                record = {"t": time.time(), "kind": "unparsed", "line": text}
            with self._changed:
                self.records.append(record)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _read_stderr(self, stream: Any) -> None:
        for line in stream:
            self.stderr.append(line.decode(errors="replace").rstrip())

    def stop(self) -> None:
        """End the run (SIGTERM lets player.mjs close Chromium), then reap everything."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
        # Chromium and its child processes share the group; nothing may outlive the test.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for t in self._threads:
            t.join(5)

    def __enter__(self) -> PlayerRun:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ waiting
    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """Block until ``predicate()`` is truthy (re-checked on every new record) and
        return its value; fail naming ``what`` with the run's recent history."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                result = predicate()
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc is not None and self.proc.poll() is not None):
                    break
                self._changed.wait(min(left, 0.5))
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{self.summary()}")

    def wait_for_time(self, seconds: float, timeout: float) -> Record:
        """Wait until the media element's currentTime is at least ``seconds``; return
        that playback record."""

        def reached() -> Record | None:
            last = self.last_playback()
            return last if last is not None and last["currentTime"] >= seconds else None

        result: Record = self.wait_for(reached, timeout, f"playback to reach {seconds:.1f} s")
        return result

    # ------------------------------------------------------------------ queries
    def of_kind(self, kind: str, since: float = 0.0) -> list[Record]:
        with self._changed:
            return [r for r in self.records if r["kind"] == kind and r["t"] >= since]

    def last_playback(self) -> Record | None:
        with self._changed:
            for r in reversed(self.records):
                if r["kind"] == "playback":
                    return r
        return None

    @property
    def current_time(self) -> float:
        last = self.last_playback()
        return float(last["currentTime"]) if last is not None else 0.0

    def segments(self, since: float = 0.0, *, ok: bool = True) -> list[Record]:
        """Media segments dash.js finished loading (``ok``) or gave up on, in order."""
        return [
            r
            for r in self.of_kind("fragment", since)
            if r["type"] == "MediaSegment" and r["ok"] is ok
        ]

    def segment_hosts(self, since: float = 0.0) -> dict[str, int]:
        """host:port -> number of media segments it served since ``since``."""
        counts: dict[str, int] = {}
        for r in self.segments(since):
            counts[r["host"]] = counts.get(r["host"], 0) + 1
        return counts

    def errors(self, since: float = 0.0) -> list[Record]:
        return self.of_kind("error", since)

    def summary(self, last: int = 25) -> str:
        """The tail of the run, for failure messages."""
        with self._changed:
            interesting = [r for r in self.records if r["kind"] != "playback"][-last:]
            playback = self.last_playback()
        lines = [orjson.dumps(r).decode() for r in interesting]
        if playback is not None:
            lines.append("last playback: " + orjson.dumps(playback).decode())
        if self.stderr:
            lines.append("player stderr: " + " | ".join(self.stderr[-10:]))
        return "\n".join(lines)
