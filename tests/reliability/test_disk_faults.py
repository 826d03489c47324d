"""Disk faults while serving, while filling, and what steering makes of them.

Theory of operation
-------------------
Every disk here is a real ext4 filesystem, loop-mounted at the disk root the appliance
is configured with (:mod:`tests.reliability.diskfault_disks`), and every fault is one
the kernel produces itself:

============  =================================================================  =======
fault         how                                                                verdict
============  =================================================================  =======
disappear     ``umount -l``: the filesystem leaves under the running processes   failed
read-only     ext4 meets an error and remounts itself read-only (EROFS)          failed
EIO           FUSE passthrough (``diskfault_inject.c``) answering EIO to all     failed
full          a filler file (or the fill itself) takes every free block          ok, full
============  =================================================================  =======

The kernel has no device-mapper, so EIO comes from a FUSE filesystem mounted over the
loop-mounted image, built by the test with gcc against libfuse3. A full disk is not a
failed one: it still serves everything it holds, and health says "full".

- **The store** (``test_a_disk_whose_filesystem_vanished...``, ``test_a_full_disk...``,
  ``test_an_eio_disk...``): a vanished filesystem stays failed and no new disk is made
  in the directory it leaves (nor is the old one kept alive by a temp-area lock); a
  full disk keeps its objects in the lookup table, says "full", and new objects go to
  the disk with room; an EIO disk keeps EIO as its reason when probed again or opened
  anew.

- **Serving** (:func:`serve_through_faults`): an appliance with five disks, two
  workers and heartbeats to a steering stand-in serves 50 objects to four keep-alive
  clients that check every byte (:mod:`tests.reliability.diskfault_load`). One disk
  after another breaks, one kind each, the fifth stays healthy. After each fault the
  heartbeat's health must name the disk and the cause, its inventory must drop exactly
  the failed disk's objects, every worker's ``/status`` must agree, and the clients'
  tally since the previous fault must show no wrong bytes at all, and not one refusal
  or cut on the objects of disks that did not fail. Then every fault is cleared the
  way an operator would, the disks come back and everything is served again. The
  workers are the same processes at the end, and the heartbeat counts no restart.
- **Filling** (:func:`fill_through_faults`): ``oca fill`` runs as a child process; a
  read-only, an EIO and a vanishing disk are broken while the fill is writing to each
  of them (after it committed at least one object there), and a fourth, nearly full
  disk fills up under the fill. The run must place every object on the disks that work,
  say which disks it gave up and why, list nothing partial or corrupt in any disk's
  inventory, and create nothing in the directory a vanished disk leaves behind. After
  the faults are cleared, a second run with more objects completes and ``oca store
  verify`` passes on every disk.
- **Steering** (:func:`test_steering_follows_a_failed_disk`): the real steering service
  and two appliances; title X lives on one disk of appliance a1 (and on a2), title Y
  on a1's other disk. When X's disk returns EIO, steering stops sending X's players to
  a1 within a few heartbeat intervals, still sends Y's there, and a1 still serves Y.
  When a2 also goes away nothing holds X; with ``allow_miss`` steering then ranks the
  eligible appliances, and a1 serves X by fetching it from the origin onto its
  healthy disk.

The default run breaks each kind once; ``pytest -m slow`` runs the soak variants (ten
rounds of every fault while serving, ten fills with every fault).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from oca.config import StorageConfig, load_config
from oca.health.disks import DiskWatch
from oca.health.verdict import FillHealth, WorkerHealth, evaluate
from oca.peering.known import KnownObject, save_known
from oca.storage.inventory import DiskInventory, hash_file
from oca.storage.store import Store
from tests.appliance import Appliance, fetch, wait_until, write_tree
from tests.fill.origin import Origin
from tests.fill.test_fill_live import expected, filler, write_manifest
from tests.health.steering_stub import Beat, SteeringStub
from tests.peering.origin_proc import OriginProcess
from tests.reliability.diskfault_disks import (
    DiskRig,
    build_injector,
    leftover_mounts,
    require_root_tools,
)
from tests.reliability.diskfault_load import Tally, VerifyingClients
from tests.steering.live import PATTERN, Steering, build_catalog, new_key, steering_section

KINDS = ("disappear", "read-only", "eio", "full")
# What the disk's reason in the health report must contain, per fault.
CAUSE = {
    "disappear": "no longer a mount point",
    "read-only": "EROFS",
    "eio": "EIO",
    "full": "full:",
}
# A worker may meet the fault on a read before its probe does: what it may say then.
WORKER_CAUSES = {**{k: (v,) for k, v in CAUSE.items()},
                 "disappear": (CAUSE["disappear"], "is gone or no longer an oca disk")}  # fmt: skip
HEARTBEAT_SECONDS = 0.3


@pytest.fixture(scope="module")
def injector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_injector(tmp_path_factory.mktemp("diskfault-bin"))


@dataclass
class Faults:
    """Break and mend the disks of a :class:`DiskRig` by fault kind."""

    rig: DiskRig
    injected: Counter[str] = field(default_factory=Counter)

    def inject(self, kind: str, name: str) -> None:
        if kind == "disappear":
            self.rig.loops[name].vanish()
        elif kind == "read-only":
            self.rig.loops[name].fs_error()
        elif kind == "eio":
            self.rig.faults[name].set("eio")
        else:
            self.rig.loops[name].fill_up()
        self.injected[kind] += 1

    def clear(self, kind: str, name: str) -> None:
        if kind == "disappear":
            self.rig.loops[name].reattach()
        elif kind == "read-only":
            self.rig.loops[name].repair()
        elif kind == "eio":
            self.rig.faults[name].set("ok")
        else:
            self.rig.loops[name].unfill()


def make_rig(root: Path, injector: Path, layout: dict[str, tuple[int, bool]]) -> DiskRig:
    """``layout``: disk name -> (MiB, whether the EIO injector sits on it)."""
    require_root_tools()
    rig = DiskRig(root, injector)
    try:
        for name, (mib, eio) in layout.items():
            rig.add(name, mib, eio=eio)
    except BaseException:
        rig.close()
        raise
    return rig


def placement(app: Appliance) -> dict[str, str]:
    """path -> disk root, as ``oca store ls --json`` reports it."""
    out = app.oca("store", "ls", "-c", str(app.config_path), "--json").stdout
    return {r["path"]: r["disk"] for r in orjson.loads(out)}


def disk_entry(beat: Beat, disk: str) -> dict[str, Any]:
    (entry,) = [d for d in beat.doc["health"]["disks"] if d["path"] == disk]
    return dict(entry)


def shows(beat: Beat, disk: str, kind: str) -> bool:
    """The heartbeat's health names ``disk`` with the cause of ``kind``."""
    d = disk_entry(beat, disk)
    reasons = beat.doc["health"]["reasons"]
    if kind == "full":
        return (
            d["state"] == "ok"
            and d["reason"].startswith("full:")
            and any(r.startswith(f"disk ssd:{disk} serves, but full:") for r in reasons)
        )
    return (
        d["state"] == "failed"
        and CAUSE[kind] in d["reason"]
        and any(r.startswith(f"disk ssd:{disk} failed:") and CAUSE[kind] in r for r in reasons)
    )


def worker_views(app: Appliance, workers: int) -> dict[int, dict[str, dict[str, Any]]]:
    """Each worker's ``/status`` disks (slot -> disk root -> entry); asks until every
    worker has answered (the kernel spreads connections over them)."""
    views: dict[int, dict[str, dict[str, Any]]] = {}
    for _ in range(400):
        status, _, body = fetch(*app.host_port, "/status")
        assert status == 200
        doc = orjson.loads(body)
        views[doc["worker"]] = {d["path"]: d for d in doc["disks"]}
        if len(views) == workers:
            return views
    raise AssertionError(f"only workers {sorted(views)} answered /status")


def workers_agree(app: Appliance, disk: str, kind: str) -> bool:
    """Every worker's /status shows ``disk`` in the state of ``kind``, with its cause."""
    state = "ok" if kind == "full" else "failed"
    return all(
        view[disk]["state"] == state and any(c in view[disk]["reason"] for c in WORKER_CAUSES[kind])
        for view in worker_views(app, 2).values()
    )


def disk_up(app: Appliance) -> dict[str, float]:
    status, _, body = fetch(*app.host_port, "/metrics")
    assert status == 200
    out = {}
    for line in body.decode().splitlines():
        if line.startswith("oca_disk_up{"):
            disk = line.split('disk="', 1)[1].split('"', 1)[0]
            out[disk] = float(line.rsplit(" ", 1)[1])
    return out


def index_rows(disk: Path) -> set[tuple[str, int, str, float]]:
    """A disk's inventory as (path, size, sha256, mtime): what must not change on a
    disk that did not fail (request counts do change, by design)."""
    inv = DiskInventory.load(str(disk))
    return {(r.path, r.size, r.sha256, r.mtime) for r in inv.records.values()}


def check_tally(t: Tally, where: dict[str, str], must_serve: set[str], phase: str) -> None:
    """No wrong bytes ever; the objects of the disks in ``must_serve`` only served."""
    assert not t.wrong, f"{phase}: wrong bytes: {t.wrong[:5]}"
    assert t.requests() > 0, f"{phase}: the clients made no request"
    for path in where:
        if where[path] in must_serve:
            assert t.refused[path] == t.cut[path] == 0, (
                f"{phase}: {path} on healthy disk {where[path]} was refused "
                f"{t.refused[path]}x, cut {t.cut[path]}x"
            )


# ----------------------------------------------------------------------------- store


def storage_config(root: Path, disks: list[Path]) -> StorageConfig:
    paths = ", ".join(f'"{d}"' for d in disks)
    (root / "oca.toml").write_text(
        f'[server]\nstate_dir = "{root}/state"\n'
        f'[[storage.tiers]]\nname = "ssd"\npaths = [{paths}]\n'
    )
    return load_config(root / "oca.toml").storage


def store_cfg(root: Path) -> StorageConfig:
    return load_config(root / "oca.toml").storage


def seed(store: Store, root: Path, n: int) -> dict[str, str]:
    """``n`` objects put into the store: path -> disk."""
    out = {}
    for i in range(n):
        src = root / f"src-{i}"
        src.write_bytes(os.urandom(20_000))
        out[f"/t/seg-{i}.m4s"] = store.put_file(f"/t/seg-{i}.m4s", str(src)).disk
    return out


def test_a_disk_whose_filesystem_vanished_stays_failed_and_is_not_recreated(
    tmp_path: Path,
) -> None:
    """After ``umount -l`` the directory underneath must not become a new, empty disk
    (nor keep the old filesystem alive through a temp-area lock)."""
    rig = make_rig(tmp_path, Path("unused"), {"ssd0": (16, False), "ssd1": (16, False)})
    try:
        disks = [tmp_path / "ssd0", tmp_path / "ssd1"]
        with Store.open(storage_config(tmp_path, disks)) as store:
            where = seed(store, tmp_path, 12)
            assert set(where.values()) == {str(d) for d in disks}
            watch = DiskWatch(store_cfg(tmp_path))  # the heartbeat's view, seen it mounted
            assert all(d.state == "ok" for d in watch.poll(0.5).disks)
            rig.loops["ssd0"].vanish()
            for now in (1.0, 2.0, 3.0):  # fails, and stays failed
                status = {Path(d.id).name: d for d in store.check_disks(now)}
                assert status["ssd0"].state == "failed"
                assert "no longer a mount point" in status["ssd0"].reason
                assert status["ssd1"].state == "ok"
            assert os.listdir(disks[0]) == [], "a disk was recreated where the old one was"
            assert {p for p in where if store.lookup(p)} == {
                p for p, d in where.items() if d == str(disks[1])
            }
            view = {Path(d.path).name: d for d in watch.poll(100.0).disks}
            assert (
                view["ssd0"].state == "failed" and "no longer a mount point" in view["ssd0"].reason
            )
            # The store (still open, it wrote there) does not pin the vanished filesystem.
            rig.loops["ssd0"].wait_released(10)
            rig.loops["ssd0"].attach()
            status = {Path(d.id).name: d for d in store.check_disks(5.0)}
            assert (status["ssd0"].state, status["ssd0"].reason) == ("ok", "")
            assert all(store.lookup(p) is not None for p in where)
    finally:
        rig.close()


def test_a_full_disk_serves_on_and_says_it_is_full(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, Path("unused"), {"ssd0": (16, False), "ssd1": (16, False)})
    try:
        disks = [tmp_path / "ssd0", tmp_path / "ssd1"]
        with Store.open(storage_config(tmp_path, disks)) as store:
            where = seed(store, tmp_path, 12)
            rig.loops["ssd0"].fill_up()
            status = {Path(d.id).name: d for d in store.check_disks(1.0)}
            assert status["ssd0"].state == "ok" and status["ssd0"].reason.startswith("full:")
            assert all(store.lookup(p) is not None for p in where), "a full disk still serves"
            # New objects go to the disk with room.
            src = tmp_path / "late"
            src.write_bytes(os.urandom(50_000))
            placed = {store.put_file(f"/t/late-{i}.m4s", str(src)).disk for i in range(6)}
            assert placed == {str(disks[1])}
            health = DiskWatch(store_cfg(tmp_path)).poll(2.0).disks
            view = {Path(d.path).name: d for d in health}
            assert view["ssd0"].state == "ok" and view["ssd0"].reason.startswith("full:")
            verdict = evaluate(health, WorkerHealth(1, 1), FillHealth("idle", None))
            assert verdict.state == "healthy"
            assert [r for r in verdict.reasons if "full" in r] == [
                f"disk ssd:{disks[0]} serves, but {view['ssd0'].reason}"
            ]
            rig.loops["ssd0"].unfill()
            status = {Path(d.id).name: d for d in store.check_disks(3.0)}
            assert (status["ssd0"].state, status["ssd0"].reason) == ("ok", "")
    finally:
        rig.close()


def test_an_eio_disk_is_failed_with_eio_as_the_reason(tmp_path: Path, injector: Path) -> None:
    """The reason stays the disk's own error when it is probed again or opened anew
    (not "No such file or directory" or "File exists" from the re-creation attempt)."""
    rig = make_rig(tmp_path, injector, {"ssd0": (16, True), "ssd1": (16, False)})
    try:
        disks = [tmp_path / "ssd0", tmp_path / "ssd1"]
        with Store.open(storage_config(tmp_path, disks)) as store:
            seed(store, tmp_path, 6)
            rig.faults["ssd0"].set("eio")
            for now in (1.0, 2.0):
                status = {Path(d.id).name: d for d in store.check_disks(now)}
                assert status["ssd0"].state == "failed" and "(EIO)" in status["ssd0"].reason
        with Store.open(store_cfg(tmp_path)) as store:
            status = {Path(d.id).name: d for d in store.disks()}
            assert status["ssd0"].state == "failed" and "(EIO)" in status["ssd0"].reason
            assert status["ssd1"].state == "ok"
        assert rig.faults["ssd0"].injected() > 0
    finally:
        rig.close()


# ----------------------------------------------------------------------------- serving


def serve_through_faults(root: Path, injector: Path, rounds: int) -> dict[str, Any]:
    rng = random.Random(7)
    files = {f"/titles/df/seg-{i:03d}.m4s": rng.randbytes(rng.randrange(30_000, 400_000))
             for i in range(50)}  # fmt: skip
    order = {"ssd0": "disappear", "ssd1": "read-only", "ssd2": "eio", "ssd3": "full"}
    rig = make_rig(root, injector, {f"ssd{i}": (24, i == 2) for i in range(5)})
    faults = Faults(rig)
    key = new_key()
    app: Appliance | None = None
    figures: dict[str, Any] = {"detect_seconds": {k: [] for k in KINDS}}
    try:
        with SteeringStub({"hb": bytes.fromhex(key)}) as stub:
            app = Appliance(
                root, tiers=(("ssd", 5),), workers=2,
                sections='[peering]\nappliance_id = "a1"\n'
                + steering_section([stub.url], "hb", key, interval=HEARTBEAT_SECONDS),
            )  # fmt: skip
            app.import_tree(write_tree(root / "src", files))
            where = placement(app)
            disks = {name: str(root / name) for name in [*order, "ssd4"]}
            by_disk = {d: {p for p, w in where.items() if w == d} for d in disks.values()}
            assert all(by_disk.values()), "every disk must hold objects"
            rows = {d: index_rows(Path(d)) for d in disks.values()}
            app.start()
            pids = sorted(app.worker_pids())
            assert len(pids) == 2
            stub.wait_for(lambda b: stub.inventories.get("a1", ("", 0, set()))[2] == set(files))
            with VerifyingClients(app.host_port, files, threads=4) as clients:
                clients.wait_requests(150)
                check_tally(clients.take(), where, set(disks.values()), "before any fault")
                for r in range(rounds):
                    broken: set[str] = set()
                    for name, kind in order.items():
                        disk = disks[name]
                        mark = stub.count()
                        started = time.monotonic()
                        faults.inject(kind, name)
                        beat = stub.wait_for(lambda b, d=disk, k=kind: shows(b, d, k), 20, mark)
                        figures["detect_seconds"][kind].append(beat.received_at - started)
                        if kind != "full":
                            broken.add(disk)
                        served = set(files) - {p for d in broken for p in by_disk[d]}
                        wait_until(lambda s=served: stub.inventories["a1"][2] == s, 20,
                                   f"the heartbeat inventory without {sorted(broken)}")  # fmt: skip
                        wait_until(lambda d=disk, k=kind: workers_agree(app, d, k), 20,
                                   f"both workers' /status to show {kind} on {disk}")  # fmt: skip
                        ups = disk_up(app)
                        assert {d for d, v in ups.items() if v == 0.0} == broken, ups
                        # from the fault on (its own moment included), and then after it
                        healthy = set(disks.values()) - broken
                        check_tally(clients.take(), where, healthy, f"{r}:{kind} happening")
                        clients.wait_requests(200)
                        check_tally(clients.take(), where, healthy, f"{r}:{kind} after")
                    last = stub.snapshot()[-1].doc["health"]
                    assert last["state"] == "degraded"
                    assert last["workers"] == {"configured": 2, "running": 2, "restarts": 0}
                    ok = disk_entry(stub.snapshot()[-1], disks["ssd4"])
                    assert (ok["state"], ok["reason"]) == ("ok", "")
                    assert index_rows(Path(disks["ssd4"])) == rows[disks["ssd4"]]
                    # Mend everything as an operator would; all of it comes back.
                    mark = stub.count()
                    for name, kind in order.items():
                        faults.clear(kind, name)
                    stub.wait_for(
                        lambda b: (
                            b.doc["health"]["state"] == "healthy"
                            and stub.inventories["a1"][2] == set(files)
                        ),
                        30,
                        mark,
                    )
                    for disk in disks.values():
                        assert index_rows(Path(disk)) == rows[disk], f"{disk} changed"
                    wait_until(lambda: all((d["state"], d["reason"]) == ("ok", "")
                                           for view in worker_views(app, 2).values()
                                           for d in view.values()), 20,
                               "every worker to serve every disk again")  # fmt: skip
                    assert all(v == 1.0 for v in disk_up(app).values())
                    for path, data in files.items():
                        assert fetch(*app.host_port, path)[::2] == (200, data), path
                    assert not clients.take().wrong
                    clients.wait_requests(150)
                    check_tally(clients.take(), where, set(disks.values()), f"{r}: mended")
                total = clients.stop()
            assert not total.wrong
            assert sorted(app.worker_pids()) == pids, "a worker was restarted"
            assert app.proc is not None and app.proc.poll() is None
            figures.update(
                faults=dict(faults.injected),
                eio_operations=rig.faults["ssd2"].injected(),
                requests=total.requests(),
                verified_bytes=total.verified_bytes,
                refused=sum(total.refused.values()),
                cut=sum(total.cut.values()),
            )
    finally:
        if app is not None:
            app.stop()
        rig.close()
    assert not leftover_mounts(root)
    return figures


def test_serving_through_each_disk_fault(tmp_path: Path, injector: Path) -> None:
    figures = serve_through_faults(tmp_path, injector, rounds=1)
    assert figures["faults"] == dict.fromkeys(KINDS, 1)
    assert figures["eio_operations"] > 0
    print(f"serving: {figures}")


@pytest.mark.slow
def test_serving_through_disk_faults_soak(tmp_path: Path, injector: Path) -> None:
    figures = serve_through_faults(tmp_path, injector, rounds=10)
    assert figures["faults"] == dict.fromkeys(KINDS, 10)
    print(f"serving soak: {figures}")


# ----------------------------------------------------------------------------- filling


def _objects_on(disk: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(disk / "objects"))


def _parts_on(disk: Path) -> list[str]:
    try:
        return [n for n in os.listdir(disk / ".oca" / "fill") if n.endswith(".part")]
    except OSError:
        return []


def check_disk_index(disk: Path, want: dict[str, str]) -> set[str]:
    """Every object a disk's own inventory lists is whole: recorded and actual sha256
    are the manifest's. Returns the paths it lists."""
    inv = DiskInventory.load(str(disk))
    for rec in inv.records.values():
        assert rec.sha256 == want[rec.path], f"{disk}: {rec.path} recorded with a wrong sha256"
        digest, size = hash_file(str(disk / "objects" / rec.path.lstrip("/")))
        assert (digest, size) == (rec.sha256, rec.size), f"{disk}: {rec.path} is not whole"
    return set(inv.records)


def fill_through_faults(root: Path, injector: Path, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    objects = {f"/titles/ff/seg-{i:03d}.m4s": rng.randbytes(200_000) for i in range(40)}
    more = {f"/titles/ff/late-{i:03d}.m4s": rng.randbytes(200_000) for i in range(10)}
    order = {"ssd0": "read-only", "ssd1": "eio", "ssd2": "disappear"}
    app_root = root / "a"
    rig = make_rig(app_root, injector, {"ssd0": (16, False), "ssd1": (16, True),
                   "ssd2": (16, False), "ssd3": (16, False), "ssd4": (48, False)})  # fmt: skip
    faults = Faults(rig)
    disks = {name: app_root / name for name in ("ssd0", "ssd1", "ssd2", "ssd3", "ssd4")}
    # ssd3 is nearly full before the run: the fill itself fills it up.
    rig.loops["ssd3"].fill_up()
    rig.loops["ssd3"].unfill()
    filler_bytes = rig.loops["ssd3"].free() - 700_000
    with open(disks["ssd3"] / "diskfault-filler", "wb") as f:
        f.truncate(0)
        f.write(bytes(filler_bytes))
    figures: dict[str, Any] = {}
    proc: subprocess.Popen[str] | None = None
    try:
        with Origin({**objects, **more}) as origin:
            manifest = write_manifest(root / "manifest.json", objects, [origin.url])
            app = filler(app_root, manifest, rate_bits=24_000_000, tiers=(("ssd", 5),),
                         extra="concurrency = 2\n")  # fmt: skip
            proc = subprocess.Popen(
                [sys.executable, "-m", "oca", "fill", "-c", str(app.config_path), "--now"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                start_new_session=True,
            )  # fmt: skip
            pending = dict(order)
            deadline = time.monotonic() + 60
            while pending and proc.poll() is None and time.monotonic() < deadline:
                for name, kind in list(pending.items()):
                    # for the EIO disk, look at the image under the injector
                    look = rig.loops[name].mount
                    if _objects_on(look) >= 1 and _parts_on(look):
                        faults.inject(kind, name)
                        del pending[name]
                time.sleep(0.01)
            out, err = proc.communicate(timeout=120)
            code, proc = proc.returncode, None
            assert not pending, f"the fill never wrote to {sorted(pending)} mid-run:\n{out}"
            summary = [x for x in out.splitlines() if x.startswith("oca fill:")]
            figures["first_run"] = summary
            assert "fetched 40 of 40 planned objects" in out, out + err
            assert code == 0, out + err  # every object found a place: the run did its job
            for name, kind in [*order.items(), ("ssd3", "full")]:
                (line,) = [x for x in summary if f"disk {disks[name]} " in x]
                want = "full" if kind == "full" else "failed"
                assert f" {want} during the run" in line, line
                # ext4 fails the write that meets its error with EIO, later ones EROFS
                causes = {"read-only": ("EROFS", "EIO"), "eio": ("EIO",)}.get(kind, ("",))
                assert any(c in line for c in causes), line
            assert not any("failed /titles/" in x for x in summary), summary
            # Nothing appeared in the directory the vanished disk left behind.
            assert os.listdir(disks["ssd2"]) == [], os.listdir(disks["ssd2"])
            want = expected({**objects, **more})
            # What the readable disks list is whole (the faults did not leave a partial
            # object listed), and with the faults still there, a store opened now holds
            # every object on the disks that work.
            listed = {
                name: check_disk_index(disks[name], want) for name in ("ssd0", "ssd3", "ssd4")
            }
            cfg = load_config(app.config_path)
            # create=False: a store allowed to create disks would take the directory the
            # vanished disk left for a new, empty disk (nothing tells them apart there)
            with Store.open(cfg.storage, create=False) as store:
                states = {Path(d.id).name: d.state for d in store.disks()}
                assert states == {"ssd0": "failed", "ssd1": "failed", "ssd2": "failed",
                                  "ssd3": "ok", "ssd4": "ok"}, states  # fmt: skip
                ok_disks = {str(disks["ssd3"]), str(disks["ssd4"])}
                placed = {r.path for r in store.records() if r.disk in ok_disks}
            assert placed == listed["ssd3"] | listed["ssd4"]
            # Clear every fault; the next run, with ten objects more, completes.
            for name, kind in order.items():
                faults.clear(kind, name)
            rig.loops["ssd3"].unfill()
            for name in ("ssd1", "ssd2"):
                listed[name] = check_disk_index(disks[name], want)
            # Each object is on a disk that works, or was whole on its disk before the
            # fault (committed there, then the disk failed).
            assert placed | listed["ssd0"] | listed["ssd1"] | listed["ssd2"] == set(objects)
            figures["objects"] = len(objects)
            figures["on_working_disks"] = len(placed)
            figures["whole_on_failed_disks"] = {n: len(listed[n]) for n in order}
            replaced = [x for x in summary if "placed on another disk" in x]
            figures["replaced"] = int(replaced[0].split()[2]) if replaced else 0
            write_manifest(root / "manifest.json", {**objects, **more}, [origin.url])
            again = subprocess.run(
                [sys.executable, "-m", "oca", "fill", "-c", str(app.config_path), "--now"],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert again.returncode == 0, again.stdout + again.stderr
            assert "fetched 10 of 10 planned objects" in again.stdout, again.stdout
            figures["second_run"] = [x for x in again.stdout.splitlines() if "fetched" in x]
        verify = app.oca("store", "verify", "-c", str(app.config_path), "--no-quarantine",
                         check=False)  # fmt: skip
        assert verify.returncode == 0, verify.stdout + verify.stderr
        with Store.open(load_config(app.config_path).storage) as store:
            assert {r.path: r.sha256 for r in store.records()} == want
            assert all(d.state == "ok" for d in store.disks())
        for disk in disks.values():
            assert not _parts_on(disk), f"part files left on {disk}"
        figures["faults"] = {**dict(faults.injected), "full": 1}
    finally:
        if proc is not None:
            os.killpg(proc.pid, 9)
            proc.wait()
        rig.close()
    assert not leftover_mounts(app_root)
    return figures


def test_fill_through_each_disk_fault(tmp_path: Path, injector: Path) -> None:
    figures = fill_through_faults(tmp_path, injector, seed=1)
    print(f"fill: {figures}")


@pytest.mark.slow
def test_fill_through_disk_faults_soak(tmp_path: Path, injector: Path) -> None:
    total: Counter[str] = Counter()
    for i in range(10):
        figures = fill_through_faults(tmp_path / f"run{i}", injector, seed=100 + i)
        total.update(figures["faults"])
        total.update(objects=figures["objects"], replaced=figures["replaced"],
                     on_failed_disks=sum(figures["whole_on_failed_disks"].values()))  # fmt: skip
    assert {k: total[k] for k in KINDS} == dict.fromkeys(KINDS, 10)
    print(f"fill soak: {dict(total)}")


# ----------------------------------------------------------------------------- steering


def _ranked(steering: Steering, title: str, path: str) -> tuple[list[str], dict[str, Any]]:
    status, doc = steering.json(f"/v1/titles/{title}/urls?path={path}&explain=1")
    assert status in (200, 503), doc
    return [u["appliance"] for u in doc["urls"]], doc


def steer_through_fault(tmp_path: Path, injector: Path, kind: str) -> float:
    """Returns the seconds from the fault to steering no longer sending X to a1."""
    tree = tmp_path / "origin"
    for title in ("xt", "yt"):
        shutil.copytree(PATTERN / "pattern", tree / "titles" / title)
    x_path, y_path = "/titles/xt/chunk-1-00003.m4s", "/titles/yt/chunk-1-00003.m4s"
    x_files = {f"/titles/xt/{p.name}": p.read_bytes() for p in (tree / "titles/xt").iterdir()}
    origin = OriginProcess(tree)
    hb_key = new_key()
    steering = Steering(
        tmp_path / "steering",
        heartbeat_keys={"hb": hb_key},
        extra="[ranking]\noverload_threshold = 50.0\nallow_miss = true\n",
    )
    rig = make_rig(tmp_path / "a1", injector, {"ssd0": (16, kind == "eio"), "hdd0": (16, False)})
    apps: dict[str, Appliance] = {}
    try:
        origin.start()
        steering.root.mkdir(parents=True)
        build_catalog(steering.catalog_path, tree / "titles", origin.url)
        steering.start()

        def appliance(name: str, site: str, tiers: tuple[tuple[str, int], ...]) -> Appliance:
            app = Appliance(
                tmp_path / name, tiers=tiers, workers=1,
                sections=f'[peering]\nappliance_id = "{name}"\nsite = "{site}"\n'
                + steering_section([steering.url], "hb", hb_key, interval=HEARTBEAT_SECONDS)
                + f'[miss]\norigins = ["{origin.url}"]\n',
            )  # fmt: skip
            app.root.mkdir(parents=True, exist_ok=True)
            apps[name] = app
            return app

        a1 = appliance("a1", "s1", (("ssd", 1), ("hdd", 1)))
        for title, tier in (("xt", "ssd"), ("yt", "hdd")):  # X only on ssd0, Y on hdd0
            seed = tmp_path / f"seed-{title}"
            shutil.copytree(tree / "titles" / title, seed / "titles" / title)
            a1.import_tree(seed, tier=tier)
        assert placement(a1)[x_path] == str(a1.root / "ssd0")
        assert placement(a1)[y_path] == str(a1.root / "hdd0")
        a2 = appliance("a2", "s2", (("ssd", 1),))
        a2.import_tree(write_tree(tmp_path / "a2-src", x_files))
        known = [KnownObject(p, len(d), hashlib.sha256(d).hexdigest(), ())
                 for p, d in x_files.items()]  # fmt: skip
        save_known(str(a1.root / "state"), known)
        a1.start()
        a2.start()

        def settled() -> bool:
            fleet = steering.fleet()
            return {"a1", "a2"} <= set(fleet) and all(
                fleet[a]["status"] == "in-rotation" for a in ("a1", "a2")
            )

        wait_until(settled, 20, "both appliances in rotation")
        wait_until(lambda: set(_ranked(steering, "xt", x_path)[0]) == {"a1", "a2"}, 20,
                   "X ranked on both holders")  # fmt: skip
        assert _ranked(steering, "yt", y_path)[0] == ["a1"]

        started = time.monotonic()
        Faults(rig).inject(kind, "ssd0")
        wait_until(lambda: _ranked(steering, "xt", x_path)[0] == ["a2"], 20,
                   "steering to stop sending X to a1")  # fmt: skip
        took = time.monotonic() - started
        _, doc = _ranked(steering, "xt", x_path)
        (why,) = [e["reason"] for e in doc["excluded"] if e["appliance"] == "a1"]
        assert "hold" in why, doc
        fleet = steering.fleet()
        assert any(CAUSE[kind] in r and "ssd0" in r for r in fleet["a1"]["reasons"]), fleet["a1"]
        # Other content still goes to a1, and a1 still serves it.
        assert _ranked(steering, "yt", y_path)[0] == ["a1"]
        y_bytes = (tree / y_path.lstrip("/")).read_bytes()
        assert fetch(*a1.host_port, y_path)[::2] == (200, y_bytes)
        x_bytes = x_files[x_path]
        assert fetch(*a2.host_port, x_path)[::2] == (200, x_bytes)

        # Nothing else holds X once a2 stops: allow_miss ranks the eligible appliances,
        # and a1 fetches X from the origin onto its healthy disk.
        a2.stop()
        wait_until(lambda: _ranked(steering, "xt", x_path)[0] == ["a1"], 20,
                   "steering to send X to a1 to fetch it")  # fmt: skip
        _, doc = _ranked(steering, "xt", x_path)
        assert any("fetches it on a miss" in r for r in doc["urls"][0]["reasons"]), doc
        status, doc = steering.json(f"/v1/titles/xt/urls?path={x_path}")
        assert status == 200
        url = doc["urls"][0]["url"]
        assert url.startswith(a1.url)
        assert fetch(*a1.host_port, url[len(a1.url) :])[::2] == (200, x_bytes)
        wait_until(lambda: str(a1.root / "hdd0") == placement(a1).get(x_path), 10,
                   "a1 to keep the fetched copy on its healthy disk")  # fmt: skip
    finally:
        for app in apps.values():
            app.stop()
        steering.stop()
        origin.stop()
        rig.close()
    assert not leftover_mounts(tmp_path)
    return took


def test_steering_follows_a_failed_disk(tmp_path: Path, injector: Path) -> None:
    took = steer_through_fault(tmp_path, injector, "eio")
    print(f"steering: X left a1's ranking {took:.2f}s after the EIO fault "
          f"(heartbeat every {HEARTBEAT_SECONDS}s, disk check every 0.2s)")  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["disappear", "read-only"])
def test_steering_follows_a_failed_disk_other_faults(
    tmp_path: Path, injector: Path, kind: str
) -> None:
    took = steer_through_fault(tmp_path, injector, kind)
    print(f"steering: X left a1's ranking {took:.2f}s after the {kind} fault")
