"""Every path that reads an object judges a read error the same way, and /metrics counts it.

Theory of operation
-------------------
A read error on one object quarantines that object and counts against its disk's error
limit; the disk fails only when its probe fails too or past the limit, and is then held
failed (:meth:`oca.storage.store.Store.note_read_error`). Three kinds of process read
objects: the server's workers (serving), ``oca store verify`` (re-hashing) and the
fill's tier mover (copying an object to another tier, :meth:`Store.move`). All three
share the disk's error log, so the limit counts what all of them met.

- **One world, four bad objects** (FUSE): an appliance with two workers on three loop
  mounted ext4 disks, ``ssd0`` under the EIO injector (``diskfault_inject.c``, told
  ``eio-read PREFIX``: reads of those files fail, everything else on the disk works),
  ``disk_error_limit`` 3. Object A fails while a worker serves it; B fails under
  ``oca store verify`` (a real CLI child process); C fails while the tier mover copies
  it to ``hdd`` (the store the fill opens, in this process). Each is quarantined (its
  file under ``.oca/quarantine/``, out of every index and every worker's table), listed
  in the disk's error log, and ``ssd0`` keeps serving: up in ``/metrics`` throughout.
  ``oca_objects_quarantined_total{tier="ssd",disk=ssd0,reason="read-error"}`` counts the
  worker's quarantine (the other processes have no /metrics). D, the fourth, fails under
  ``oca store verify`` again: past the limit, verify fails the disk with a reason naming
  the limit and holds it; both workers then fail it too, and
  ``oca_disk_failures_total{tier="ssd"}`` is 2 (each worker counts the disk it failed),
  ``oca_disk_up`` 0. The objects of the other disks are served byte-exactly throughout.
- **A disk failed by an index refresh** (plain directories): the disk check is set to
  run once an hour, so when a disk's root vanishes it is the worker's index refresh that
  fails it. ``oca_disk_failures_total`` must count it all the same.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from oca.config import load_config
from oca.errors import StorageError
from oca.storage.errorlog import load_errors
from oca.storage.inventory import DiskLayout
from oca.storage.store import Store
from tests.appliance import Appliance, fetch, remove_disk, wait_until, write_tree
from tests.reliability.diskfault_disks import build_injector, leftover_mounts
from tests.reliability.test_bad_object import break_reads, quarantined
from tests.reliability.test_disk_faults import disk_up, make_rig, placement

LIMIT = 3


@pytest.fixture(scope="module")
def injector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_injector(tmp_path_factory.mktemp("quarantine-bin"))


def metric(app: Appliance, name: str, **labels: str) -> float:
    """The value of the series of ``/metrics`` with exactly ``labels`` (0 when none)."""
    _, _, body = fetch(*app.host_port, "/metrics")
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return 0.0


def verify(app: Appliance) -> tuple[int, str]:
    out = app.oca("store", "verify", "-c", str(app.config_path), check=False)
    return out.returncode, out.stdout + out.stderr


def test_read_errors_in_verify_and_the_mover_quarantine_like_serving(
    tmp_path: Path, injector: Path
) -> None:
    rng = random.Random(3)
    files = {f"/titles/q{i // 10}/seg-{i % 10:03d}.m4s": rng.randbytes(rng.randrange(9000, 90000))
             for i in range(40)}  # fmt: skip
    rig = make_rig(tmp_path, injector, {"ssd0": (24, True), "ssd1": (24, False),
                                        "hdd0": (24, False)})  # fmt: skip
    fault = rig.faults["ssd0"]
    backing = rig.loops["ssd0"].mount
    app: Appliance | None = None
    try:
        app = Appliance(
            tmp_path, workers=2, tiers=(("ssd", 2), ("hdd", 1)),
            storage_extra=f"disk_error_limit = {LIMIT}\ndisk_error_window_seconds = 600\n"
            "disk_error_hold_seconds = 600\n",
        )  # fmt: skip
        app.import_tree(write_tree(tmp_path / "src", files), tier="ssd")
        where = placement(app)
        ssd0 = str(tmp_path / "ssd0")
        on0 = sorted(p for p, d in where.items() if d == ssd0)
        elsewhere = sorted(p for p, d in where.items() if d != ssd0)
        assert len(on0) >= 6 and elsewhere, where
        a, b, c, d = on0[:4]
        app.start()
        series = {"tier": "ssd", "disk": ssd0}
        read_errors = {**series, "reason": "read-error"}
        assert disk_up(app)[ssd0] == 1.0
        log = DiskLayout(str(backing))

        # ---- A: a worker meets it while serving
        break_reads(fault, a)
        status, _, body = fetch(*app.host_port, a)
        assert status != 200 or body != files[a]  # refused or cut, never wrong bytes
        wait_until(lambda: metric(app, "oca_objects_quarantined_total", **read_errors) == 1, 20,
                   "the worker's quarantine in /metrics")  # fmt: skip
        assert quarantined(backing) == {a}

        # ---- B: oca store verify meets it
        break_reads(fault, b)
        code, out = verify(app)
        assert code == 1, out
        assert f"BAD unreadable: {b} on {ssd0}: " in out and "(quarantined to " in out, out
        assert ", 1 quarantined, 0 orphan files, 0 failed disks" in out, out
        assert quarantined(backing) == {a, b}

        # ---- C: the tier mover meets it, copying it to hdd
        break_reads(fault, c)
        cfg = load_config(app.config_path).storage
        with Store.open(cfg) as store:
            with pytest.raises(StorageError, match="cannot read"):
                store.move(c, "hdd")
            assert store.lookup(c) is None
            assert store.counts()[1] == {("ssd", ssd0, "read-error"): 1}
            assert {s.id: s.state for s in store.disks()}[ssd0] == "ok"
        assert quarantined(backing) == {a, b, c}
        assert {e.path for e in load_errors(log).errors} == {a, b, c}
        assert load_errors(log).hold is None
        # Served on: up in every sample, in both workers, and the quarantined are gone
        # from their tables.
        ups = [disk_up(app)[ssd0] for _ in range(20)]
        assert set(ups) == {1.0}, ups
        wait_until(lambda: all(fetch(*app.host_port, p)[0] == 404 for p in (a, b, c) * 2), 10,
                   "both workers to drop the quarantined objects")  # fmt: skip
        assert set(placement(app)) == set(files) - {a, b, c}
        assert metric(app, "oca_disk_failures_total", tier="ssd") == 0
        assert "now failed" not in app.log_text()

        # ---- D: past the limit, verify fails the disk and holds it
        break_reads(fault, d)
        code, out = verify(app)
        assert code == 1, out
        assert f"more than storage.disk_error_limit = {LIMIT}" in out, out
        assert "1 failed disks" in out, out
        hold = load_errors(log).hold
        assert hold is not None and f"storage.disk_error_limit = {LIMIT}" in hold.reason
        assert quarantined(backing) == {a, b, c}  # D failed the disk instead
        fault.set("ok")  # the probe would pass now: only the hold keeps it failed
        wait_until(lambda: disk_up(app)[ssd0] == 0.0, 20, "the workers to fail the disk")
        wait_until(lambda: metric(app, "oca_disk_failures_total", tier="ssd") == 2, 20,
                   "each worker's failure of the disk in /metrics")  # fmt: skip
        time.sleep(1.5)  # two more snapshots: nothing counted twice
        assert metric(app, "oca_disk_failures_total", tier="ssd") == 2
        assert metric(app, "oca_objects_quarantined_total", **read_errors) == 1
        for p in elsewhere:
            status, _, body = fetch(*app.host_port, p)
            assert (status, body == files[p]) == (200, True), p
    finally:
        if app is not None:
            app.stop()
        rig.close()
    assert not leftover_mounts(tmp_path)


class SlowCheckAppliance(Appliance):
    """An appliance whose disks are probed once an hour: only an index refresh can find
    a disk gone."""

    def write_config(self) -> Path:
        path = super().write_config()
        text = path.read_text()
        assert "disk_check_interval_seconds = 0.2\n" in text
        path.write_text(text.replace("disk_check_interval_seconds = 0.2\n",
                                     "disk_check_interval_seconds = 3600\n"))  # fmt: skip
        return path


def test_a_disk_failed_by_an_index_refresh_is_counted(tmp_path: Path) -> None:
    files = {f"/titles/r/seg-{i:03d}.m4s": bytes([i]) * 5000 for i in range(12)}
    app = SlowCheckAppliance(tmp_path, tiers=(("ssd", 2),))
    app.import_tree(write_tree(tmp_path / "src", files))
    app.start()
    try:
        gone, kept = (str(p) for p in app.disk_paths("ssd"))
        wait_until(lambda: disk_up(app) == {gone: 1.0, kept: 1.0}, 10, "both disks up")
        remove_disk(gone)
        wait_until(lambda: disk_up(app)[gone] == 0.0, 20, "the refresh to fail the disk")
        wait_until(lambda: metric(app, "oca_disk_failures_total", tier="ssd") == 1, 10,
                   "the failure in /metrics")  # fmt: skip
        assert f"disk {gone} (tier ssd): was ok, now failed, because disk root {gone} is gone" in (
            app.log_text()
        )
        on_kept = [p for p, d in placement(app).items() if d == kept]
        assert on_kept and all(fetch(*app.host_port, p)[2] == files[p] for p in on_kept)
    finally:
        app.stop()
