"""Crash consistency: SIGKILL appliances, workers, fill agents and steering under load.

Theory of operation
-------------------
The system of :mod:`tests.reliability.crash_world` runs with verifying clients
(:mod:`tests.reliability.crash_load`) asking both appliances for whole objects, single
ranges and multi-range sets, a steady share of them objects the appliance does not hold
yet (pulled from the peer or the origin and stored while clients wait). A seeded RNG
(the seed is printed; ``OCA_CRASH_SEED`` replays one) shuffles the kills and picks the
instants between them. Each kill is a SIGKILL of one of:

- a whole appliance (its process group: supervisor and workers), restarted on its port;
- one worker, which the supervisor replaces;
- the running ``oca fill`` agent, restarted on the same manifest;
- the steering service, restarted on its port and state directory.

After each restart: the killed appliance's disks (or ``a``'s, for a fill) pass every
check of :mod:`tests.reliability.crash_checks` (the inventory lists exactly the complete
object files, each hashing to its recorded and its source sha256; nothing a dead process
left in the temp areas; fill part files are resumable prefixes); after a steering or
appliance restart, steering takes new heartbeats and ranks both appliances again, and a
restarted steering still knows the fleet from its saved state, which loads. Throughout,
no client may get a wrong byte; a response cut by a kill must look cut (fewer bytes than
Content-Length). After the last kill the fill, no longer killed, must finish and the
store hold its whole manifest; ``oca store verify`` then finds nothing bad and no orphan.

The default run does 15 kills; the soak variant
(``pytest -m slow tests/reliability/test_crash_consistency.py``) does 120.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oca.config import load_config
from oca.storage.store import Store
from tests.appliance import Appliance, fetch, write_tree
from tests.reliability.crash_checks import check_disk
from tests.reliability.crash_world import REPO_ROOT, CrashWorld
from tests.steering.live import Steering, new_key

DEFAULT_SEED = 20261207


def campaign(tmp_path: Path, kills: dict[str, int], *, pull_pool: int, client_threads: int,
             pause: tuple[float, float], verify_every: int = 0) -> None:  # fmt: skip
    """Run the kills of ``kills`` in a shuffled order; ``verify_every`` N kills, also run
    ``oca store verify`` on both appliances (always at the end)."""
    seed = int(os.environ.get("OCA_CRASH_SEED") or DEFAULT_SEED)
    print(f"\ncrash consistency: seed {seed} (OCA_CRASH_SEED={seed} replays the choices)")
    rng = random.Random(seed)
    plan = [kind for kind, n in kills.items() for _ in range(n)]
    rng.shuffle(plan)
    world = CrashWorld(tmp_path, seed, pull_pool=pull_pool)
    started = time.monotonic()
    try:
        world.start(client_threads)
        phases = {"bring-up": time.monotonic() - started}
        verifications = []
        for i, kind in enumerate(plan, 1):
            world.pause(rng.uniform(*pause))
            world.kill(kind)
            if verify_every and i % verify_every == 0:
                verifications.append(world.verify_stores())
        phases["kills"] = time.monotonic() - started - phases["bring-up"]
        # No more kills: the fill running now must finish and store its whole manifest.
        assert world.fill_proc is not None
        world.fill_proc.wait(300)
        code = world.service_fill(advance=False)
        assert code == 0, world.fill_log(world.fill_runs).read_text()[-3000:]
        assert world.round_complete(), "the last fill exited 0 without its whole manifest"
        assert world.clients is not None
        tally = world.clients.stop()
        world.clients = None
        for name in world.apps:
            world.check_appliance(name)
        verified = world.verify_stores()
        verifications.append(verified)
        parts = list((world.root / "a").glob("*/.oca/fill/*.part"))
        held = world.held_by_a()
        resumed, pulled_meanwhile, not_resumed = world.resumed()
    finally:
        world.close()
    took = time.monotonic() - started
    f = world.figures
    pulled = sum(1 for p in held if p.startswith("/titles/pull/"))
    print(
        f"kills survived: {sum(f.kills.values())} ({dict(sorted(f.kills.items()))}); "
        f"restarts: {sum(f.restarts.values())} ({dict(sorted(f.restarts.items()))})\n"
        f"clients: {tally.requests} requests ({dict(tally.kinds)}): {tally.complete} complete "
        f"and verified, {tally.cut} cut short (visibly), {tally.refused} refused (5xx), "
        f"{tally.unreachable} unreachable, {tally.timeouts} timed out; "
        f"statuses {dict(sorted(tally.statuses.items()))}\n"
        f"bytes verified: {tally.bytes_verified} ({tally.bytes_verified / 2**20:.1f} MiB); "
        f"disk checks: {f.disk_checks}, objects checked: {f.objects_checked} "
        f"({f.bytes_checked / 2**20:.1f} MiB hashed); fill part files seen {f.fill_parts_seen}, "
        f"miss part files seen {f.miss_parts_seen}\n"
        f"fill: {f.fill_rounds + 1} manifests stored, runs {dict(f.fill_exits)}; "
        f"appliance a pulled {pulled} objects through the miss path; "
        f"steering temp files found after its kills: {f.steering_temp_files}\n"
        f"fill downloads cut short by a kill: {len(world.interrupted)}; continued by a later "
        f"run from where they stopped: {resumed}; stored by the miss path meanwhile: "
        f"{pulled_meanwhile}\n"
        f"oca store verify ran {len(verifications)} times per appliance; the last: {verified}\n"
        f"took {took:.1f}s (bring-up {phases['bring-up']:.1f}s, kills {phases['kills']:.1f}s, "
        f"final fill and checks {took - sum(phases.values()):.1f}s); per kill, restart and checks: "
        + ", ".join(f"{k} {f.seconds[k] / n:.2f}s" for k, n in sorted(f.kills.items()))
    )
    for line in tally.failures[:30] + f.problems[:30]:
        print("FAILED:", line)
    assert not tally.failures, tally.failures[:20]
    assert not f.problems, f.problems[:20]
    assert not parts, f"fill part files left after the fill finished: {parts}"
    assert not not_resumed, f"fill downloads that were not resumed: {not_resumed}"
    assert tally.timeouts == 0, "responses that neither completed nor closed in 20 s"
    assert tally.complete > 0 and tally.bytes_verified > 0
    assert pulled > 0, "no object went through the miss path"
    assert sum(f.kills.values()) == len(plan)


def test_sigkill_under_load_leaves_consistent_stores_and_no_wrong_bytes(tmp_path: Path) -> None:
    campaign(
        tmp_path,
        {"appliance": 3, "worker": 5, "fill": 5, "steering": 2},
        pull_pool=240,
        client_threads=3,
        pause=(0.15, 0.6),
    )


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_soak_120_sigkills(tmp_path: Path) -> None:
    campaign(
        tmp_path,
        {"appliance": 30, "worker": 30, "fill": 30, "steering": 30},
        pull_pool=2500,
        client_threads=3,
        pause=(0.2, 1.5),
        verify_every=10,
    )


# ---------------------------------------------------------------- regressions it found


class _NoRefresh(Appliance):
    """An appliance whose workers do not re-read the indexes by themselves (for an hour)."""

    def write_config(self) -> Path:
        path = super().write_config()
        text = path.read_text().replace(
            "inventory_poll_seconds = 0.2", "inventory_poll_seconds = 3600"
        )
        path.write_text(text)
        return path


def test_object_moved_by_another_process_is_served_from_its_new_disk(tmp_path: Path) -> None:
    """The fill's tier mover (another process) moves an object the worker has not seen
    move yet: the worker's table still names the old disk, whose file is gone. The
    client must get the object from its new disk, not a 404."""
    data = {"/titles/m/seg-1.m4s": random.Random(1).randbytes(100_000)}
    app = _NoRefresh(tmp_path / "app", tiers=(("ssd", 1), ("hdd", 1)))
    app.root.mkdir()
    app.import_tree(write_tree(tmp_path / "src", data), tier="hdd")
    app.start()
    try:
        with Store.open(load_config(app.config_path).storage) as store:
            moved = store.move("/titles/m/seg-1.m4s", "ssd")
        assert moved.tier == "ssd"
        assert not (app.disk_paths("hdd")[0] / "objects/titles/m/seg-1.m4s").exists()
        status, _, body = fetch(*app.host_port, "/titles/m/seg-1.m4s")
        assert (status, body) == (200, data["/titles/m/seg-1.m4s"])
        status, _, body = fetch(*app.host_port, "/titles/m/seg-1.m4s", {"Range": "bytes=5-9"})
        assert (status, body) == (206, data["/titles/m/seg-1.m4s"][5:10])
    finally:
        app.stop()


def test_restarted_steering_removes_state_temp_files_a_killed_one_left(tmp_path: Path) -> None:
    """A SIGKILL while steering saves its fleet or popularity leaves the temporary file
    of that save (``write_atomic``: temp file, fsync, rename). The next start removes
    such files (they can be as large as the fleet's state); a catalog being written
    next to them by ``oca catalog build`` is not the service's to remove."""
    steering = Steering(tmp_path / "steering", heartbeat_keys={"hb": new_key()},
                        service_extra="snapshot_interval_seconds = 30")  # fmt: skip
    state = steering.root / "state"
    state.mkdir(parents=True)
    left = [state / ".fleet-k1ll3d01.tmp", state / ".popularity-k1ll3d02.tmp"]
    for p in left:
        p.write_bytes(b'{"schema": "oca.fleet-st')  # cut off mid-write
    other = state / ".catalog-0th3r001.tmp"
    other.write_bytes(b"{")
    steering.start()
    try:
        status, fleet = steering.json("/v1/fleet")
        assert status == 200 and fleet["appliances"] == []
        assert [p for p in left if p.exists()] == []
        assert other.exists()
    finally:
        steering.stop()
    assert "removed 2 temporary state files" in steering.log_text()


@pytest.mark.parametrize("op", ["remove", "move"])
def test_sigkill_between_index_save_and_unlink_leaves_no_unlisted_object(
    tmp_path: Path, op: str
) -> None:
    """Removing an object (an eviction, ``oca store rm``, or the old copy after a tier
    move) saves the disk's index without it, then unlinks its file. A process killed
    between the two must not leave a file under objects/ that no index lists (space
    nobody accounts for or frees): the next process to open the store finishes the
    removal. The kill is made to land exactly there by :mod:`tests.reliability.crash_inject`."""
    path = "/titles/r/seg-1.m4s"
    data = {path: random.Random(2).randbytes(70_000), "/titles/r/seg-2.m4s": b"kept" * 999}
    app = Appliance(tmp_path / "app", tiers=(("ssd", 1), ("hdd", 1)))
    app.root.mkdir()
    app.import_tree(write_tree(tmp_path / "src", data), tier="hdd")
    cmd = [sys.executable, "-m", "tests.reliability.crash_inject", "-c", str(app.config_path),
           op, path] + (["ssd"] if op == "move" else [])  # fmt: skip
    killed = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    cfg = load_config(app.config_path)
    with Store.open(cfg.storage) as store:  # the next process: it finishes what was cut
        held = {r.path: r for r in store.records()}
    problems = [
        p
        for tier in ("ssd", "hdd")
        for disk in app.disk_paths(tier)
        for p in check_disk(disk, data, live_workers=()).problems
    ]
    assert problems == []
    assert not (app.disk_paths("hdd")[0] / "objects" / path.lstrip("/")).exists()
    if op == "move":
        assert held[path].tier == "ssd"
    else:
        assert path not in held
    assert held["/titles/r/seg-2.m4s"].tier == "hdd"


def test_store_verify_judges_by_the_disk_as_it_is_when_another_process_changes_it(
    tmp_path: Path,
) -> None:
    """``oca store verify`` runs beside a live appliance and fill, which keep storing and
    removing objects. Changes made after verify read the index are not problems: an
    object removed meanwhile is not "missing", one stored meanwhile is not an orphan.
    Real problems still are: bytes changed behind the store's back, a stray file."""
    data = {f"/titles/v/seg-{i}.m4s": random.Random(i).randbytes(20_000 + i) for i in range(4)}
    app = Appliance(tmp_path / "app", tiers=(("ssd", 1),))
    app.root.mkdir()
    app.import_tree(write_tree(tmp_path / "src", data))
    cfg = load_config(app.config_path)
    disk = app.disk_paths("ssd")[0]
    with Store.open(cfg.storage) as verifier:  # reads the index now
        # Another process stores one object and removes another.
        app.import_tree(write_tree(tmp_path / "more", {"/titles/v/new.m4s": b"n" * 5000}))
        app.oca("store", "rm", "-c", str(app.config_path), "/titles/v/seg-0.m4s")
        # Real damage: flipped bytes (same size) and a file nobody stored.
        victim = disk / "objects/titles/v/seg-1.m4s"
        victim.write_bytes(bytes(b ^ 0xFF for b in victim.read_bytes()))
        (disk / "objects/titles/v/stray.m4s").write_bytes(b"stray")
        report = verifier.verify(quarantine=True)
    found = sorted((p.kind, p.path) for p in report.problems)
    assert found == [("orphan", "/titles/v/stray.m4s"), ("sha256", "/titles/v/seg-1.m4s")]
    assert report.quarantined == 1
    with Store.open(cfg.storage) as store:
        assert sorted(store.paths()) == ["/titles/v/new.m4s", "/titles/v/seg-2.m4s",
                                         "/titles/v/seg-3.m4s"]  # fmt: skip
