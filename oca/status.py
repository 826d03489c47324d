"""``oca status``: an operator's live view of one running appliance.

Theory of operation
-------------------
Poll -> evaluate -> render. The appliance is read the way monitoring reads it; its
store is never opened:

- *where*: ``<state_dir>/run/listeners.json``, written by the supervisor at start, names
  the bound listeners and the supervisor's pid (whose start time gives the uptime). The
  internal listener is used when there is one, since ``/metrics`` and ``/status`` are
  answered only there then; else a content listener. Without the file, the configured
  addresses.
- ``/metrics`` (Prometheus text, every worker summed): requests, body bytes by tier,
  the miss path's counters, open connections, live workers, and the fill's counters
  (its textfile).
- ``/status`` (JSON, the answering worker's view): disks with their state and reason,
  peers with their state and summary age, readiness, whether content is refused.
- files in ``state_dir``: the drain flag and the steering status the heartbeat
  reporter writes each cycle (:mod:`oca.health.flags`), and the fill's lock and files
  (:func:`oca.health.sources.fill_health`).

One sample is all of that; :mod:`oca.status_report` turns two samples taken
``--interval`` seconds apart into the document (rates are counter differences) and this
module renders it. The terminal view is drawn from that document alone, so ``--json``
holds every field the view shows. On a terminal the view is redrawn in place every
interval (cursor home, each line cleared to its end, the rest of the screen cleared)
until Ctrl-C; otherwise it is printed once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Mapping
from typing import Any, TextIO
from urllib.parse import urlsplit

import aiohttp
import orjson
import psutil

from oca.config import Config, parse_listen
from oca.errors import ConfigError, OcaError
from oca.health.flags import read_drain, read_steering_status
from oca.health.sources import fill_health
from oca.status_report import (
    Endpoint,
    Sample,
    StatusJSON,
    SteeringJSON,
    build_document,
    parse_metrics,
)

__all__ = ["StatusError", "locate", "render_text", "run_status", "take_sample"]

SAMPLE_REQUESTS = 2  # /metrics and /status: what one sample adds to the request counters
REQUEST_TIMEOUT_SECONDS = 5.0
HOME, CLEAR_LINE, CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"
HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"


class StatusError(OcaError):
    """The appliance cannot be read (not running, unreachable, answering nonsense)."""


# --------------------------------------------------------------------------- reading


def _loopback(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host in ("0.0.0.0", ""):
        return parts._replace(netloc=f"127.0.0.1:{parts.port}").geturl()
    if host == "::":
        return parts._replace(netloc=f"[::1]:{parts.port}").geturl()
    return url


def _supervisor(pid: int, written_at: float) -> tuple[bool, float | None]:
    """Whether ``pid`` still runs as the process that wrote listeners.json, and its
    start time."""
    try:
        started = psutil.Process(pid).create_time()
    except psutil.Error:
        return False, None
    if started > written_at + 1.0:  # the pid was reused after the appliance stopped
        return False, None
    return True, started


def locate(cfg: Config) -> Endpoint:
    """Where the running appliance answers its internal endpoints (see the module doc)."""
    path = os.path.join(cfg.server.state_dir, "run", "listeners.json")
    try:
        with open(path, "rb") as fh:
            written_at = os.fstat(fh.fileno()).st_mtime
            doc = orjson.loads(fh.read())
        listeners = {str(i["kind"]): str(i["url"]) for i in reversed(doc["listeners"])}
        pid = int(doc["pid"])
    except FileNotFoundError:
        return _configured(cfg, path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StatusError(f"cannot read {path}: {exc}") from None
    for kind in ("internal", "http", "https"):
        if kind in listeners:
            alive, started = _supervisor(pid, written_at)
            return Endpoint(_loopback(listeners[kind]), pid, started, path, alive)
    raise StatusError(f"{path} names no listener")


def _configured(cfg: Config, listeners_path: str) -> Endpoint:
    s = cfg.server
    for key, addrs, scheme in (
        ("server.internal_listen", s.internal_listen, "http"),
        ("server.listen", s.listen, "http"),
        ("tls.listen", cfg.tls.listen, "https"),
    ):
        if addrs:
            host, port = parse_listen(addrs[0], key)
            if port == 0:
                raise StatusError(
                    f"the appliance is not running: {listeners_path} does not exist (`oca "
                    f"serve` writes it at start) and {key} has port 0"
                )
            shown = f"[{host}]" if ":" in host else host
            return Endpoint(_loopback(f"{scheme}://{shown}:{port}"), None, None, key)
    raise StatusError("no listener is configured")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        err = exc.os_error
        return (os.strerror(err.errno) if err.errno else "") or str(err) or "cannot connect"
    if isinstance(exc, TimeoutError):
        return f"no answer within {REQUEST_TIMEOUT_SECONDS:g} s"
    return str(exc) or type(exc).__name__


async def _get(session: aiohttp.ClientSession, where: Endpoint, path: str) -> bytes:
    url = where.url + path
    try:
        async with session.get(url, ssl=not url.startswith("https:")) as r:
            body = await r.read()
            status = r.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        hint = (
            f"; its supervisor (pid {where.pid}) is not running"
            if where.pid is not None and not where.pid_alive
            else "; is `oca serve` running with this configuration?"
        )
        raise StatusError(
            f"cannot reach the appliance at {where.url} (from {where.source}): "
            f"{_describe(exc)}{hint}"
        ) from None
    if status != 200:
        raise StatusError(f"{url} answered HTTP {status}")
    return body


def _worker_doc(body: bytes, url: str) -> dict[str, Any]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise StatusError(f"{url}/status is not JSON: {exc}") from None
    if not (
        isinstance(doc, dict)
        and isinstance(doc.get("disks"), list)
        and isinstance(doc.get("peers"), list)
        and isinstance(doc.get("workers"), int)
        and isinstance(doc.get("ready"), bool)
    ):
        raise StatusError(f"{url}/status is not a worker status document")
    return doc


async def take_sample(session: aiohttp.ClientSession, cfg: Config, where: Endpoint) -> Sample:
    """One sample: the two endpoints, then the files (blocking reads of small files)."""
    text = await _get(session, where, "/metrics")
    at, wall = time.monotonic(), time.time()
    try:
        metrics = parse_metrics(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise StatusError(f"{where.url}/metrics is not Prometheus text: {exc}") from None
    worker = _worker_doc(await _get(session, where, "/status"), where.url)
    state_dir = cfg.server.state_dir
    try:
        drain = read_drain(state_dir)
    except OSError as exc:
        raise StatusError(f"cannot read the drain flag in {state_dir}: {exc}") from None
    return Sample(
        at, wall, metrics, worker, drain, fill_health(state_dir), read_steering_status(state_dir)
    )


# --------------------------------------------------------------------------- rendering


def _bits(v: float | None) -> str:
    if v is None:
        return "-"
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if v >= scale:
            return f"{v / scale:.1f} {unit}"
    return f"{v:.0f} bit/s"


def _bytes(v: float) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if v >= scale:
            return f"{v / scale:.1f} {unit}"
    return f"{v:.0f} B"


def _duration(s: float) -> str:
    s = max(s, 0.0)
    if s < 10:
        return f"{s:.1f}s"
    n = int(s)
    for unit, size, sub, subsize in (("d", 86400, "h", 3600), ("h", 3600, "m", 60),
                                     ("m", 60, "s", 1)):  # fmt: skip
        if n >= size:
            return f"{n // size}{unit}{(n % size) // subsize:02d}{sub}"
    return f"{n}s"


def _ago(t: float | None, now: float) -> str:
    return "never" if t is None else f"{_duration(now - t)} ago"


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def _counts(d: Mapping[str, int]) -> str:
    return ", ".join(f"{v} {k}" for k, v in d.items()) or "none"


def render_text(doc: StatusJSON) -> list[str]:
    """The terminal view: a header line, then one block per topic."""
    now = doc["sampled_at"]
    a, t, h = doc["appliance"], doc["traffic"], doc["hits"]
    flags = [a["state"].upper(), "serving" if a["serving"] else "NOT SERVING"]
    if a["draining"]:
        flags.append(f"DRAINING (since {_when(a['draining_since'] or now)})")
    up = _duration(a["uptime_seconds"]) if a["uptime_seconds"] is not None else "?"
    lines = [
        f"{a['id']}  site {a['site']}  region {a['region']}  up {up}  {'  '.join(flags)}",
        f"  {a['url']}  workers {a['workers_running']}/{a['workers_configured']}  "
        f"ready: {a['ready_reason']}  (worker {a['worker']}'s view, {_when(now)})",
    ]
    lines += [f"  ! {r}" for r in a["reasons"]]
    by_class = "  ".join(f"{k} {v:,.1f}" for k, v in t["requests_per_second_by_class"].items())
    rps = "-" if t["requests_per_second"] is None else f"{t['requests_per_second']:,.1f}"
    lines += [
        "",
        f"traffic   {_bits(t['bits_per_second'])} out   {rps} req/s"
        + (f" ({by_class})" if by_class else "")
        + f"   {t['open_connections']} connections",
        f"          since start: {t['requests_total']:,} requests, "
        f"{_bytes(t['sent_bytes_total'])} of content",
        "",
        f"hits      byte hit ratio {_pct(h['ratio'])} now, {_pct(h['ratio_total'])} since start",
        f"  {'tier':<10}{'':6}{'now':>14}{'share':>9}{'since start':>14}{'share':>9}",
    ]
    for tier in h["tiers"]:
        lines.append(
            f"  {tier['tier']:<10}{tier['kind']:<6}{_bits(tier['bits_per_second']):>14}"
            f"{_pct(tier['share']):>9}{_bytes(tier['sent_bytes_total']):>14}"
            f"{_pct(tier['share_total']):>9}"
        )
    up_bytes = ", ".join(f"{k} {_bytes(v)}" for k, v in h["upstream_bytes_total"].items())
    lines += [
        f"  misses: {_counts(h['miss_requests_total'])}; fetched {up_bytes or 'nothing'}",
        f"  peer requests: {_counts(h['peer_requests_total'])}; "
        f"origin requests: {_counts(h['origin_requests_total'])}",
        "",
    ]
    disks = doc["disks"]
    failed = sum(1 for d in disks if d["state"] != "ok")
    lines.append(f"disks     {len(disks) - failed} ok, {failed} failed")
    width = max((len(d["path"]) for d in disks), default=0)
    for d in disks:
        use = (
            f"{d['objects']:,} objects, {_bytes(d['used_bytes'])} of {_bytes(d['capacity_bytes'])}"
        )
        if d["state"] == "ok":
            note = f"; {d['reason']}" if d["reason"] else ""  # e.g. "full: ..."
            lines.append(f"  {d['tier']:<6}{d['path']:<{width}}  ok      {use}{note}")
        else:
            since = f" since {_when(d['since'])}" if d["since"] else ""
            lines.append(f"  {d['tier']:<6}{d['path']:<{width}}  FAILED{since}: {d['reason']}")
    f = doc["fill"]
    fill_rate = f" at {_bits(f['bits_per_second'])}" if f["state"] == "running" else ""
    lines += [
        "",
        f"fill      {f['state']}{fill_rate}; window {f['window']}; last run "
        f"{_ago(f['last_run_at'], now)}; last object stored {_ago(f['last_success_at'], now)}",
        f"          objects {_counts(f['objects_total'])}; fetched "
        + (", ".join(f"{k} {_bytes(v)}" for k, v in f["bytes_total"].items()) or "nothing")
        + f"; {_bytes(f['remaining_bytes'])} left; {_bytes(f['evicted_bytes_total'])} evicted",
    ]
    if f["reason"]:
        lines.append(f"  ! {f['reason']}")
    peers = doc["peers"]
    up_peers = sum(1 for p in peers if p["state"] == "up")
    lines += [
        "",
        f"peers     {up_peers} up, {len(peers) - up_peers} not" if peers else "peers     none",
    ]
    for p in peers:
        if p["state"] == "up":
            age = p["summary_age_seconds"]
            detail = f"{p['objects'] or 0:,} objects, summary {_duration(age or 0)} old"
        else:
            detail = f"{p['failures']} failures: {p['reason']}"
        lines.append(f"  {p['url']:<28}{p['appliance'] or '?':<14}{p['state']:<9}"
                     f"{p['hits']} hits, {p['misses']} misses; {detail}")  # fmt: skip
    lines += ["", *_render_steering(doc["steering"], now)]
    return lines


def _render_steering(s: SteeringJSON, now: float) -> list[str]:
    if not s["configured"]:
        return ["steering  not configured (no [steering] urls)"]
    contact = s["contact"]
    policy = f"grace {s['grace_seconds']:g} s, policy {s['policy']}"
    if contact == "unknown":
        head = "no report from the heartbeat reporter yet"
    elif contact == "up" and not s["contacted"]:
        head = "no heartbeat answered yet"
    elif contact == "up":
        head = f"contact up, last heartbeat ok {_ago(s['last_ok_at'], now)}"
    else:
        since = _ago(s["last_ok_at"], now) if s["contacted"] else "the start"
        over = "grace over" if contact == "over" else "within the grace"
        head = f"UNREACHABLE (no URL answered; last ok {since}; {over})"
    lines = [f"steering  {head}; {policy}"]
    if s["refusing"]:
        lines.append(f"  ! {s['refusing']}")
    for u in s["urls"]:
        why = f"; {u['reason']}" if u["reason"] else ""
        lines.append(f"  {u['url']:<32}{u['state']:<9}last ok {_ago(u['last_ok_at'], now)}{why}")
    return lines


# --------------------------------------------------------------------------- the command


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS))


async def _once(cfg: Config, interval: float) -> StatusJSON:
    where = locate(cfg)
    async with _session() as session:
        first = await take_sample(session, cfg, where)
        await asyncio.sleep(interval)
        last = await take_sample(session, cfg, where)
    return build_document(cfg, where, first, last, own_requests=SAMPLE_REQUESTS, own_connections=1)


def _frame(out: TextIO, lines: list[str]) -> None:
    """Redraw in place: cursor home, each line cleared to its end, the rest cleared."""
    out.write(HOME + "".join(f"{line}{CLEAR_LINE}\n" for line in lines) + CLEAR_BELOW)
    out.flush()


async def _live(cfg: Config, interval: float, out: TextIO) -> None:
    where = locate(cfg)
    async with _session() as session:
        prev = await take_sample(session, cfg, where)
        out.write(HIDE_CURSOR)
        _frame(out, render_text(build_document(cfg, where, None, prev, own_connections=1)))
        while True:
            await asyncio.sleep(interval)
            try:
                cur = await take_sample(session, cfg, where)
            except StatusError as exc:
                _frame(out, [f"oca status: {exc}", f"retrying every {interval:g} s (Ctrl-C ends)"])
                with contextlib.suppress(StatusError):
                    where = locate(cfg)  # a restart may have bound new ports
                continue
            _frame(
                out,
                render_text(
                    build_document(
                        cfg, where, prev, cur, own_requests=SAMPLE_REQUESTS, own_connections=1
                    )
                ),
            )
            prev = cur


def run_status(cfg: Config, *, as_json: bool, interval: float, out: TextIO) -> int:
    """``oca status``: one JSON document, one printed view, or (on a terminal) a view
    redrawn every ``interval`` seconds until Ctrl-C."""
    if not 0.1 <= interval <= 3600:
        raise ConfigError("--interval", f"must be 0.1-3600 seconds, got {interval:g}")
    if as_json or not out.isatty():
        doc = asyncio.run(_once(cfg, interval))
        if as_json:
            out.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
            out.write("\n")
        else:
            out.write("\n".join(render_text(doc)) + "\n")
        return 0
    try:
        asyncio.run(_live(cfg, interval, out))
    except KeyboardInterrupt:
        return 0
    finally:
        out.write(SHOW_CURSOR)
        out.flush()
    return 0  # pragma: no cover (the live view ends only by Ctrl-C or an error)
