"""``oca demo``: a miniature CDN on loopback, run by the real programs.

Theory of operation
-------------------
The demo is a conductor: everything it shows runs as the programs a deployment runs,
each as a child process in its own process group with its own config file
(:mod:`oca.demo.configs`) and log file (``logs/<name>.log``):

1. The origin's tree is written (:mod:`oca.demo.content`) and loaded into the origin's
   store with ``oca store import``; ``oca catalog build`` reads the same DASH packages
   and writes the steering catalog (sizes and checksums of every object).
2. ``oca serve`` runs the origin; ``oca steering`` the steering service; then the three
   appliances start (``oca serve``) and heartbeat to it. The demo waits for each
   listener's ``/readyz`` and for the fleet to show every appliance in rotation.
3. ``oca fill --now`` runs once per appliance, concurrently: each fetches the fill
   manifest steering computed for it and fills from its site-mates before the origin.
   The demo then waits until steering has heard the new inventories.
4. The player page (:mod:`oca.demo.page`) is served from this process; it loads the
   MPD steering rewrites for the client and shows which appliance served each segment.

SIGINT or SIGTERM stops the page, then each child group with SIGTERM (appliances first,
then steering and the origin), waiting for each to exit and SIGKILLing a group that
outlives its grace; children also get SIGTERM from the kernel if the demo itself dies
(``PR_SET_PDEATHSIG``), so nothing is left running or listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from oca.demo.configs import APPLIANCES, SITES, Layout
from oca.demo.content import PATTERN_TITLE, write_origin_tree
from oca.demo.page import build_page_app, find_dashjs

START_TIMEOUT_SECONDS = 60.0
STOP_GRACE_SECONDS = 15.0
_PR_SET_PDEATHSIG = 1


class DemoError(Exception):
    """A step of the demo failed; the message says which and where its log is."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    argv: list[str]
    log: Path
    proc: asyncio.subprocess.Process | None = None

    async def start(self, env: dict[str, str]) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join("    " + line for line in text[-lines:])

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), grace)
        # whatever is left of the group (workers of a supervisor that died) goes too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


@dataclass
class Demo:
    layout: Layout
    out: Callable[[str], None] = print
    children: dict[str, Child] = field(default_factory=dict)
    session: aiohttp.ClientSession | None = None
    page_runner: web.AppRunner | None = None

    @property
    def work(self) -> Path:
        return self.layout.work

    def _oca(self, name: str, *args: str) -> Child:
        argv = [sys.executable, "-m", "oca", *args]
        return Child(name, argv, self.work / "logs" / f"{name}.log")

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    async def _run_once(self, child: Child, timeout: float) -> int:
        await child.start(self._env())
        assert child.proc is not None
        try:
            return await asyncio.wait_for(child.proc.wait(), timeout)
        except TimeoutError:
            await child.stop(1)
            raise DemoError(
                f"{child.name} did not finish in {timeout:.0f} s; see {child.log}"
            ) from None
        except asyncio.CancelledError:  # Ctrl-C during the bring-up: it stops too
            await child.stop(2)
            raise

    # ------------------------------------------------------------------ HTTP
    async def _get_json(self, url: str) -> tuple[int, Any]:
        assert self.session is not None
        async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            body = await resp.read()
            try:
                return resp.status, orjson.loads(body)
            except orjson.JSONDecodeError:
                return resp.status, None

    async def _wait(
        self, what: str, check: Callable[[], Awaitable[bool]], timeout: float,
        watch: list[Child] | None = None,
    ) -> None:  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            for child in watch or []:
                if not child.running:
                    raise DemoError(
                        f"{child.name} exited while waiting for {what}; its log "
                        f"({child.log}) ends with:\n{child.tail()}"
                    )
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                if await check():
                    return
            if time.monotonic() > deadline:
                raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}")
            await asyncio.sleep(0.2)

    async def _ready(self, child: Child, path: str) -> None:
        url = self.layout.url(child.name) + path

        async def ok() -> bool:
            assert self.session is not None
            async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                return r.status == 200

        await self._wait(f"{child.name} at {url}", ok, START_TIMEOUT_SECONDS, [child])

    async def fleet(self) -> dict[str, dict[str, Any]]:
        status, doc = await self._get_json(self.layout.url("steering") + "/v1/fleet")
        if status != 200 or not isinstance(doc, dict):
            return {}
        return {a["id"]: a for a in doc.get("appliances", [])}

    # ------------------------------------------------------------------ steps
    async def prepare(self) -> None:
        layout = self.layout
        layout.write_configs()
        src = self.work / "origin-src"
        titles, total = write_origin_tree(src)
        self.out(f"  origin tree   {len(titles)} titles, {total / 1e6:.1f} MB in {src}")
        imp = self._oca("import", "store", "import", "-c", str(layout.config_path("origin")),
                        str(src))  # fmt: skip
        if await self._run_once(imp, 300) != 0:
            raise DemoError(f"oca store import failed; see {imp.log}:\n{imp.tail()}")
        catalog = layout.dir("steering") / "catalog.json"
        catalog.parent.mkdir(parents=True, exist_ok=True)
        build = self._oca("catalog", "catalog", "build", "--out", str(catalog),
                          "--url-prefix", "/titles", "--origin", layout.url("origin"),
                          str(src / "titles"))  # fmt: skip
        if await self._run_once(build, 300) != 0:
            raise DemoError(f"oca catalog build failed; see {build.log}:\n{build.tail()}")
        self.out(f"  catalog       {catalog}")

    async def start_services(self) -> None:
        layout = self.layout
        origin = self._oca("origin", "serve", "-c", str(layout.config_path("origin")))
        steering = self._oca("steering", "steering", "-c", str(layout.config_path("steering")))
        for child in (origin, steering):
            self.children[child.name] = child
            await child.start(self._env())
        await asyncio.gather(self._ready(origin, "/readyz"), self._ready(steering, "/healthz"))
        for name in APPLIANCES:
            child = self._oca(name, "serve", "-c", str(layout.config_path(name)))
            self.children[name] = child
            await child.start(self._env())
        await asyncio.gather(*(self._ready(self.children[n], "/readyz") for n in APPLIANCES))

        async def in_rotation() -> bool:
            fleet = await self.fleet()
            return all(fleet.get(n, {}).get("status") == "in-rotation" for n in APPLIANCES)

        await self._wait("every appliance in rotation", in_rotation, START_TIMEOUT_SECONDS,
                         list(self.children.values()))  # fmt: skip
        self.out("  started       origin, steering, " + ", ".join(APPLIANCES))

    async def fill(self) -> None:
        """One fill cycle per appliance: a1 first, so that a2 finds at its site-mate
        what both are to hold, then a2 and b1 together."""
        layout = self.layout

        async def fill_one(name: str) -> None:
            f = self._oca(f"fill-{name}", "fill", "-c", str(layout.config_path(name)), "--now")
            code = await self._run_once(f, 300)
            if code not in (0, 1):  # 1: some objects failed, reported in its log
                raise DemoError(f"{f.name} exited {code}; see {f.log}:\n{f.tail()}")

        first, *rest = APPLIANCES
        await fill_one(first)
        await asyncio.gather(*(fill_one(n) for n in rest))

        async def inventories_heard() -> bool:
            fleet = await self.fleet()
            for n in APPLIANCES:
                stored = await self.stored_objects(n)
                if stored == 0 or fleet.get(n, {}).get("objects") != stored:
                    return False
            return True

        await self._wait("the filled inventories to reach steering", inventories_heard,
                         START_TIMEOUT_SECONDS, list(self.children.values()))  # fmt: skip
        fleet = await self.fleet()
        for n in APPLIANCES:
            sources = await self.fill_sources(n)
            self.out(
                f"  filled {n}     {fleet[n]['objects']} objects "
                f"({sources.get('peer', 0) / 1e6:.1f} MB from its site, "
                f"{sources.get('origin', 0) / 1e6:.1f} MB from the origin)"
            )

    async def _metrics(self, name: str) -> str:
        assert self.session is not None
        url = self.layout.url(name) + "/metrics"
        async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return await resp.text()

    async def _sum(self, name: str, sample: str, **labels: str) -> float:
        """The sum of ``sample`` over the series matching ``labels`` in ``name``'s
        metrics."""
        total = 0.0
        for family in text_string_to_metric_families(await self._metrics(name)):
            for smp in family.samples:
                if smp.name == sample and all(smp.labels.get(k) == v for k, v in labels.items()):
                    total += smp.value
        return total

    async def stored_objects(self, name: str) -> int:
        """Objects in ``name``'s store (every tier), from its own metrics."""
        return int(await self._sum(name, "oca_store_objects"))

    async def fill_sources(self, name: str) -> dict[str, float]:
        """Bytes ``name``'s fills have received from each kind of source."""
        return {
            src: await self._sum(name, "oca_fill_bytes_total", source=src)
            for src in ("peer", "origin")
        }

    async def start_page(self) -> str:
        layout = self.layout
        info = self.page_info()
        dashjs = find_dashjs()
        runner = web.AppRunner(build_page_app(info, dashjs), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", layout.ports["page"], reuse_address=True)
        await site.start()
        self.page_runner = runner
        if dashjs is None:
            self.out("  note          dash.js not found locally (make demo installs it with npm);"
                     " the page loads it from unpkg.com")  # fmt: skip
        return layout.url("page") + "/"

    def page_info(self) -> dict[str, Any]:
        layout = self.layout
        steer = layout.url("steering")
        return {
            "title": PATTERN_TITLE,
            "mpd": f"{steer}/v1/titles/{PATTERN_TITLE}/manifest.mpd",
            "explain": f"{steer}/v1/explain/{PATTERN_TITLE}",
            "fleet": f"{steer}/v1/fleet",
            "appliances": {
                n: {
                    "site": SITES[n].name,
                    "url": layout.url(n),
                    "metrics": layout.url(n) + "/metrics",
                }
                for n in APPLIANCES
            },
        }

    async def sample_segment_url(self) -> str:
        path = f"/titles/{PATTERN_TITLE}/chunk-1-00001.m4s"
        url = f"{self.layout.url('steering')}/v1/titles/{PATTERN_TITLE}/urls?path={path}"
        status, doc = await self._get_json(url)
        if status != 200 or not doc or not doc.get("urls"):
            raise DemoError(f"steering gave no URL for {path}: HTTP {status} {doc}")
        return str(doc["urls"][0]["url"])

    def banner(self, page: str, segment: str) -> str:
        info = self.page_info()
        metrics = "\n".join(
            f"  metrics {n}    {a['metrics']}   ({a['site']})"
            for n, a in info["appliances"].items()
        )
        return f"""
oca demo is running: an origin, site A (a1, a2 peering), site B (b1) and steering.

  player page   {page}
  player MPD    {info["mpd"]}
  explain       {info["explain"]}
  fleet         {info["fleet"]}
{metrics}
  a segment     curl -sS -o /dev/null -w '%{{http_code}} %{{size_download}}\\n' '{segment}'
  configs       {self.work}/*.toml   (oca demo --dir {self.work} --print-configs)
  logs          {self.work}/logs/

Ctrl-C stops everything.
"""

    async def stop(self) -> None:
        if self.page_runner is not None:
            await self.page_runner.cleanup()
            self.page_runner = None
        order = [*APPLIANCES, "steering", "origin"]
        children = [self.children[n] for n in order if n in self.children]
        await asyncio.gather(*(c.stop() for c in children[: len(APPLIANCES)]))
        await asyncio.gather(*(c.stop() for c in children[len(APPLIANCES) :]))
        self.children.clear()
        if self.session is not None:
            await self.session.close()
            self.session = None


async def _main(demo: Demo) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def bring_up() -> None:
        demo.session = aiohttp.ClientSession()
        await demo.prepare()
        await demo.start_services()
        await demo.fill()
        page = await demo.start_page()
        segment = await demo.sample_segment_url()
        demo.out(demo.banner(page, segment))

    started = time.monotonic()
    demo.out(f"oca demo: working directory {demo.work}")
    up = asyncio.create_task(bring_up())
    stopper = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait({up, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if up in done:
            up.result()  # raises DemoError
            demo.out(f"(up in {time.monotonic() - started:.1f} s)")
            await stopper
        else:
            up.cancel()
            with contextlib.suppress(asyncio.CancelledError, DemoError):
                await up
        demo.out("oca demo: stopping")
        return 0
    except DemoError as exc:
        print(f"oca demo: {exc}", file=sys.stderr)
        return 1
    finally:
        stopper.cancel()
        await demo.stop()
        demo.out("oca demo: stopped; nothing is left running")


def run_demo(directory: str, port: int, workers: int, print_configs: bool) -> int:
    if print_configs:
        work = Path(directory or "oca-demo").resolve()
        layout = Layout.make(work, port or 8080, workers, persist=False)
        for fname, text in layout.configs().items():
            sys.stdout.write(f"# ---- {work / fname} ----\n{text}\n")
        return 0
    work = Path(directory).resolve() if directory else Path(tempfile.mkdtemp(prefix="oca-demo-"))
    layout = Layout.make(work, port, workers)
    demo = Demo(layout, out=lambda s: print(s, flush=True))
    try:
        import uvloop

        return uvloop.run(_main(demo))
    finally:
        if not directory:  # a temporary directory of our own: leave nothing behind
            shutil.rmtree(work, ignore_errors=True)
