"""The system the crash-consistency test kills pieces of: every piece a real process.

Theory of operation
-------------------
- An origin (:class:`tests.peering.origin_proc.OriginProcess`) holds every object and
  sends at most ``ORIGIN_RATE`` bytes/s per response, so pulls and fills take long
  enough for kills to land in the middle of them.
- Two appliances at one site, ``a`` (two workers) and ``b`` (one), peering with each
  other, each on a fixed loopback port so a restart comes back at the same address.
  Both hold the DASH test title; ``b`` also holds every other object of the pull pool,
  so ``a`` pulls those from its peer and the rest from the origin.
- The steering service on a fixed port, saving its fleet and popularity state every
  0.1 s, with a catalog of the test title; both appliances heartbeat every 0.3 s.
- A fill agent (``oca fill --now``) keeps running against ``a``: whenever a run ends by
  itself having stored its whole manifest, the next manifest (a new title of fresh
  objects, written to the origin then) is put in place and the next run starts; a run
  that was killed is restarted with the same manifest and must resume.
- :class:`tests.reliability.crash_load.VerifyingClients` load both appliances all along.

Each ``kill_*`` method SIGKILLs one thing at a random instant (the caller chooses when),
restarts it, waits until the restarted process has opened the store (the point after
which it must have cleaned up), and runs the checks of
:mod:`tests.reliability.crash_checks` and, for steering and whole appliances, the
steering checks: the fleet right after a steering restart still holds both appliances
(warm start), no state temp file is left, the state files load, and heartbeats sent
after the restart are accepted and both appliances are ranked again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from steering.fleet import Fleet
from steering.popularity import Popularity
from tests.appliance import Appliance, free_port, new_key, wait_until, write_tree
from tests.fill.test_fill_live import write_manifest
from tests.peering.origin_proc import OriginProcess
from tests.reliability.crash_checks import check_disk
from tests.reliability.crash_load import ContentSet, VerifyingClients
from tests.steering.live import PATTERN, Steering, build_catalog, steering_section

REPO_ROOT = Path(__file__).resolve().parents[2]
ORIGIN_RATE = 300_000  # bytes/s per origin response
FILL_RATE_BITS = 1_500_000
FILL_OBJECTS = 8
KiB = 1024


@dataclass
class Figures:
    kills: Counter[str] = field(default_factory=Counter)
    restarts: Counter[str] = field(default_factory=Counter)
    seconds: Counter[str] = field(default_factory=Counter)  # kill, restart and checks
    disk_checks: int = 0
    objects_checked: int = 0
    bytes_checked: int = 0
    fill_parts_seen: int = 0
    miss_parts_seen: int = 0
    fill_rounds: int = 0
    fill_exits: Counter[str] = field(default_factory=Counter)
    steering_temp_files: int = 0
    problems: list[str] = field(default_factory=list)


class CrashWorld:
    def __init__(self, root: Path, seed: int, *, pull_pool: int) -> None:
        self.root = root
        self.seed = seed
        self.rng = random.Random(seed)
        self.content = ContentSet()
        self.figures = Figures()
        self.tree = root / "origin"
        self.origin = OriginProcess(self.tree)
        self.site_key, self.hb_key, self.url_key = new_key(), new_key(), new_key()
        self.ports = {"a": free_port(), "b": free_port(), "steering": free_port()}
        self.steering = Steering(
            root / "steering",
            heartbeat_keys={"hb": self.hb_key},
            url_keys={"u1": self.url_key},
            listen=f"127.0.0.1:{self.ports['steering']}",
            service_extra="snapshot_interval_seconds = 0.1",
            extra="[ranking]\noverload_threshold = 50.0\n",
        )
        self.apps: dict[str, Appliance] = {}
        self.clients: VerifyingClients | None = None
        self.fill_proc: subprocess.Popen[bytes] | None = None
        self.fill_runs = 0
        self.round = 0
        self.manifest_path = root / "manifest.json"
        self.fill_objects: dict[str, str] = {}  # sha256 -> path, of the current manifest
        self.interrupted: list[tuple[str, int]] = []  # fill part files a kill cut short
        self.unasked: dict[str, bytes] = {}  # the current round's objects clients skip
        self._make_content(pull_pool)

    # ------------------------------------------------------------------ content
    def _make_content(self, pull_pool: int) -> None:
        rng = random.Random(self.seed ^ 0x5EED)
        pattern = {
            f"/titles/pattern/{f.name}": f.read_bytes() for f in sorted(PATTERN.glob("pattern/*"))
        }
        pull = {
            f"/titles/pull/seg-{i:04d}.m4s": rng.randbytes(rng.randint(8 * KiB, 96 * KiB))
            for i in range(pull_pool)
        }
        write_tree(self.tree, {**pattern, **pull})
        self.content.publish(pattern)
        self.content.publish(pull, fresh=True)
        self.pattern, self.pull = pattern, pull

    def _next_round(self) -> None:
        """Write the next fill title to the origin and the manifest naming it."""
        self.round += 1
        rng = random.Random(self.seed * 7919 + self.round)
        files = {
            f"/titles/fill{self.round:03d}/seg-{j:02d}.m4s": rng.randbytes(
                rng.randint(32 * KiB, 160 * KiB)
            )
            for j in range(FILL_OBJECTS)
        }
        write_tree(self.tree, files)
        # Clients ask for half of the round while it is filled (the miss path races the
        # fill for those); the other half is the fill's alone until the round is stored.
        items = list(files.items())
        if self.unasked:
            self.content.publish(self.unasked)
        self.content.register(files)
        self.content.publish(dict(items[: len(items) // 2]), current=True)
        self.unasked = dict(items[len(items) // 2 :])
        tmp = self.manifest_path.with_suffix(".tmp")
        write_manifest(tmp, files, [self.origin.url])
        os.replace(tmp, self.manifest_path)
        self.fill_objects = {hashlib.sha256(d).hexdigest(): p for p, d in files.items()}

    # ------------------------------------------------------------------ bring-up
    def start(self, client_threads: int) -> None:
        self.origin.start()
        self.origin.behave("*", rate_bytes_per_second=ORIGIN_RATE)
        catalog_src = self.root / "catalog-src"
        shutil.copytree(PATTERN / "pattern", catalog_src / "pattern")
        self.steering.root.mkdir(parents=True)
        build_catalog(self.steering.catalog_path, catalog_src, self.origin.url)
        self.steering.start()
        self._next_round()
        b_holds = {**self.pattern, **dict(list(self.pull.items())[::2])}
        self.apps["a"] = self._appliance("a", 2, (("ssd", 2), ("hdd", 1)), self.pattern, fill=True)
        self.apps["b"] = self._appliance("b", 1, (("ssd", 1), ("hdd", 1)), b_holds, fill=False)
        for app in self.apps.values():
            app.start(timeout=60)
        wait_until(lambda: self._steering_ranks(dict.fromkeys(self.apps, 0.0)), 60,
                   "steering to rank both appliances")  # fmt: skip
        self._start_fill()
        self.clients = VerifyingClients(
            self.content,
            lambda: [("127.0.0.1", self.ports["a"]), ("127.0.0.1", self.ports["b"])],
            threads=client_threads,
            seed=self.seed,
        )
        self.clients.start()

    def _appliance(self, name: str, workers: int, tiers: tuple[tuple[str, int], ...],
                   holds: dict[str, bytes], *, fill: bool) -> Appliance:  # fmt: skip
        other = "b" if name == "a" else "a"
        sections = (
            f'[peering]\nappliance_id = "{name}"\nsite = "s1"\n'
            f'peers = ["http://127.0.0.1:{self.ports[other]}"]\nkeys = ["{self.site_key}"]\n'
            "summary_refresh_seconds = 0.3\nrequest_timeout_seconds = 2\n"
            "backoff_max_seconds = 1\n"
            f'[miss]\norigins = ["{self.origin.url}"]\nconnect_timeout_seconds = 1\n'
            "read_timeout_seconds = 5\nnegative_ttl_seconds = 1\n"
        )
        if fill:
            sections += (
                f'[fill]\nmanifest = "{self.manifest_path}"\n'
                f"max_fill_rate_bits = {FILL_RATE_BITS}\nretry_backoff_seconds = 0.05\n"
                "connect_timeout_seconds = 1\nread_timeout_seconds = 5\n"
                "progress_interval_seconds = 0.2\nwindow_jitter_seconds = 0\n"
            )
        sections += steering_section(
            [f"http://127.0.0.1:{self.ports['steering']}"], "hb", self.hb_key,
            region="r1", prefixes=["10.1.0.0/16"],
        )  # fmt: skip
        app = Appliance(
            self.root / name,
            workers=workers,
            tiers=tiers,
            listen=f"127.0.0.1:{self.ports[name]}",
            sections=sections,
            storage_extra="access_stats_flush_seconds = 0.5",
        )
        app.root.mkdir(parents=True)
        app.import_tree(write_tree(self.root / f"{name}-seed", holds))
        return app

    def close(self) -> None:
        """Stop everything (also after a failure); every process group is killed."""
        if self.clients is not None:
            self.clients.stop()
        if self.fill_proc is not None and self.fill_proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.fill_proc.pid, signal.SIGKILL)
            self.fill_proc.wait(30)
        for app in self.apps.values():
            app.stop(signal.SIGKILL)
        self.steering.stop(signal.SIGKILL)
        self.origin.stop()

    # ------------------------------------------------------------------ the fill
    def fill_log(self, n: int) -> Path:
        return self.root / "fill-logs" / f"fill-{n:04d}.log"

    def _start_fill(self) -> None:
        self.fill_runs += 1
        log = self.fill_log(self.fill_runs)
        log.parent.mkdir(exist_ok=True)
        with open(log, "wb") as out:
            self.fill_proc = subprocess.Popen(
                [sys.executable, "-m", "oca", "fill", "-c", str(self.apps["a"].config_path),
                 "--now"],
                stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True,
            )  # fmt: skip

    def _fill_opened_store(self) -> bool:
        """The running fill has opened the store and planned (its cleanup is done)."""
        assert self.fill_proc is not None
        text = self.fill_log(self.fill_runs).read_text(errors="replace")
        return "fill plan:" in text or self.fill_proc.poll() is not None

    def held_by_a(self) -> dict[str, str]:
        held: dict[str, str] = {}
        for tier, n in self.apps["a"].tiers:
            for i in range(n):
                inv = self.root / "a" / f"{tier}{i}" / ".oca" / "inventory.json"
                with contextlib.suppress(FileNotFoundError):
                    doc = orjson.loads(inv.read_bytes())
                    held.update({row[0]: row[2] for row in doc["objects"]})
        return held

    def round_complete(self) -> bool:
        held = self.held_by_a()
        return all(held.get(path) == sha for sha, path in self.fill_objects.items())

    def service_fill(self, *, advance: bool = True) -> int | None:
        """Handle a fill run that ended by itself; its exit code, or None if running."""
        proc = self.fill_proc
        if proc is None or proc.poll() is None:
            return None
        code = proc.returncode
        self.figures.fill_exits[str(code)] += 1
        if code == 0 and not self.round_complete():
            self.figures.problems.append(
                f"fill run {self.fill_runs} exited 0 but round {self.round} is not all stored"
            )
        if code == 0 and advance:
            self.figures.fill_rounds += 1
            self._next_round()
        if advance:
            self._start_fill()
        return code

    def pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.service_fill()
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    # ------------------------------------------------------------------ kills
    def kill(self, kind: str) -> None:
        """SIGKILL one ``kind`` of process, restart it and check (see the module docstring)."""
        t0 = time.monotonic()
        getattr(self, f"kill_{kind}")()
        self.figures.kills[kind] += 1
        self.figures.seconds[kind] += time.monotonic() - t0

    def kill_appliance(self) -> None:
        name = self.rng.choice(sorted(self.apps))
        app = self.apps[name]
        assert app.proc is not None
        group = app.proc.pid
        os.killpg(group, signal.SIGKILL)
        app.stop()
        # As systemd does before a restart (KillMode=mixed): wait until every process of
        # the old appliance is gone, workers included, not only the supervisor.
        wait_until(lambda: not _group_alive(group), 60, f"appliance {name}'s processes to go")
        since = time.time()
        app.start(timeout=60)
        self.figures.restarts[f"appliance {name}"] += 1
        self.check_appliance(name)
        self.check_steering({name: since})

    def kill_worker(self) -> None:
        name = self.rng.choice(sorted(self.apps))
        app = self.apps[name]
        victim = self.rng.choice(app.worker_pids())
        os.kill(victim, signal.SIGKILL)
        metrics = app.root / "state" / "run" / "metrics"

        def replaced() -> bool:
            pids = app.worker_pids()
            return (
                len(pids) == app.workers
                and victim not in pids
                and all(any(metrics.glob(f"worker-*-{p}.json")) for p in pids)
            )

        wait_until(replaced, 60, f"a ready replacement for worker {victim} of {name}")
        self.figures.restarts[f"worker {name}"] += 1
        self.check_appliance(name)

    def kill_fill(self) -> None:
        self.service_fill()
        proc = self.fill_proc
        assert proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait(30)
        self.figures.fill_exits["killed" if code == -signal.SIGKILL else str(code)] += 1
        for part in (self.root / "a").glob("*/.oca/fill/*.part"):
            path = self.fill_objects.get(part.name.removesuffix(".part"))
            size = part.stat().st_size
            if path is not None and 0 < size < len(self.content.files[path]):
                self.interrupted.append((path, size))
        self._start_fill()
        self.figures.restarts["fill"] += 1
        wait_until(self._fill_opened_store, 60, "the restarted fill to open the store")
        self.check_appliance("a")

    def kill_steering(self) -> None:
        self.steering.stop(signal.SIGKILL)
        state = self.steering.root / "state"
        left = [p.name for p in state.glob(".*.tmp")]
        self.figures.steering_temp_files += len(left)
        since = time.time()
        self.steering.start()
        self.figures.restarts["steering"] += 1
        # The warm start: the fleet it knew before the kill, before any new heartbeat.
        try:
            known = set(self.steering.fleet())
        except (OSError, urllib.error.URLError) as exc:
            known = {f"fleet unreadable: {exc}"}
        if known != set(self.apps):
            self.figures.problems.append(f"steering restarted knowing {sorted(known)}")
        for p in state.glob(".*.tmp"):
            self.figures.problems.append(f"steering left {p.name} in its state dir ({left})")
        for name, load in (("fleet.json", _load_fleet), ("popularity.json", _load_popularity)):
            try:
                load(state / name)
            except (OSError, ValueError) as exc:
                self.figures.problems.append(f"steering state {name} does not load: {exc}")
        self.check_steering(dict.fromkeys(self.apps, since))

    # ------------------------------------------------------------------ checks
    def check_appliance(self, name: str) -> None:
        app = self.apps[name]
        live = app.worker_pids()
        sources = self.content.files
        for tier, n in app.tiers:
            for i in range(n):
                got = check_disk(
                    app.root / f"{tier}{i}",
                    sources,
                    live_workers=live,
                    fill_objects=self.fill_objects if name == "a" else None,
                )
                f = self.figures
                f.disk_checks += 1
                f.objects_checked += got.objects
                f.bytes_checked += got.bytes
                f.fill_parts_seen += got.fill_parts
                f.miss_parts_seen += got.miss_parts
                f.problems.extend(got.problems)

    def _steering_ranks(self, since: dict[str, float]) -> bool:
        try:
            fleet = self.steering.fleet()
            status, doc = self.steering.json("/v1/titles/pattern/urls")
        except (OSError, urllib.error.URLError, ValueError):
            return False
        for name, t in since.items():
            a = fleet.get(name)
            if a is None or a["status"] != "in-rotation":
                return False
            last_seen = a["last_seen_seconds_ago"]
            if time.time() - last_seen < t:  # no heartbeat received since the restart
                return False
        ranked = {u["appliance"] for u in doc.get("urls", [])} if status == 200 else set()
        return set(self.apps) <= ranked

    def check_steering(self, since: dict[str, float]) -> None:
        try:
            what = f"steering to take heartbeats from {sorted(since)} and rank both"
            wait_until(lambda: self._steering_ranks(since), 60, what)
        except AssertionError as exc:
            self.figures.problems.append(str(exc))

    def resumed(self) -> tuple[int, int, list[tuple[str, int]]]:
        """Of the fill downloads a kill cut short: how many a later run continued from
        exactly where the part file stopped (``Range: bytes=<its size>-``, to the origin
        or as a peer request to ``b``), how many ``a``'s miss path had stored meanwhile
        (so the fill had nothing left to fetch), and the others."""
        asked = {(r["path"], r["range"]) for r in self.origin.requests()}
        with contextlib.suppress(FileNotFoundError):
            for line in (self.root / "b" / "access.log").read_bytes().splitlines():
                rec = orjson.loads(line)
                if rec.get("peer") and rec.get("range"):
                    asked.add((rec["path"], rec["range"]))
        log = self.apps["a"].log_text()
        done = [(p, n) for p, n in self.interrupted if (p, f"bytes={n}-") in asked]
        pulled = [x for x in self.interrupted if x not in done and f"installed {x[0]} (" in log]
        return len(done), len(pulled), [x for x in self.interrupted if x not in done + pulled]

    def verify_stores(self) -> dict[str, str]:
        """``oca store verify --no-quarantine`` on each appliance: its summary line."""
        out = {}
        for name, app in self.apps.items():
            res = app.oca("store", "verify", "-c", str(app.config_path), "--no-quarantine",
                          check=False)  # fmt: skip
            text = res.stdout + res.stderr
            if res.returncode != 0 or "0 bad" not in text or " 0 orphan files" not in text:
                self.figures.problems.append(f"oca store verify on {name}: {text[-2000:]}")
            out[name] = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
        return out


def _group_alive(pgid: int) -> bool:
    out = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True)
    return bool(out.stdout.split())


def _load_fleet(path: Path) -> None:
    Fleet().load(str(path), time.time())


def _load_popularity(path: Path) -> None:
    Popularity.load(str(path))
