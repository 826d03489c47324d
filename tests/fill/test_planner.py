"""Fill planning properties (pure: no I/O, no clock)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from fill.manifest import Manifest, ManifestObject
from fill.planner import DiskSpace, HeldObject, plan_fill

SHA_A = "a" * 64
SHA_B = "b" * 64
NOW = 1_800_000_000.0


def obj(path: str, size: int, pop: float, tier: str | None = None, sha: str = SHA_A,
        title: str | None = None) -> ManifestObject:  # fmt: skip
    return ManifestObject(path, size, sha, pop, tier, ("http://origin.test" + path,), title)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Manifest, dict[str, HeldObject], list[DiskSpace],
                                         frozenset[str], float]:  # fmt: skip
    tiers = ["ssd", "hdd"][: draw(st.integers(1, 2))]
    disks = []
    for t in tiers:
        for i in range(draw(st.integers(1, 3))):
            disks.append(DiskSpace(f"/{t}{i}", t, draw(st.integers(0, 5000)),
                                   draw(st.booleans()) or i == 0))  # fmt: skip
    paths = [
        f"/titles/t{draw(st.integers(0, 3))}/s{i}.m4s" for i in range(draw(st.integers(0, 25)))
    ]
    paths = sorted(set(paths))
    listed = draw(st.lists(st.sampled_from(paths), unique=True)) if paths else []
    held_paths = draw(st.lists(st.sampled_from(paths), unique=True)) if paths else []
    manifest = Manifest(NOW, None, tuple(
        obj(p, draw(st.integers(0, 2500)), draw(st.floats(0, 1e6)),
            draw(st.sampled_from([None, "ssd", "hdd", "nvme"])),
            draw(st.sampled_from([SHA_A, SHA_B])))
        for p in listed))  # fmt: skip
    held = {}
    for p in held_paths:
        d = draw(st.sampled_from(disks))
        held[p] = HeldObject(p, draw(st.integers(0, 2500)), SHA_A, d.tier, d.id,
                             draw(st.integers(0, 1000)), NOW - draw(st.floats(0, 1e6)))  # fmt: skip
    pinned = (
        frozenset(draw(st.lists(st.sampled_from(held_paths), unique=True)))
        if held_paths
        else frozenset()
    )
    headroom = draw(st.sampled_from([0.0, 0.05, 0.5]))
    return manifest, held, disks, pinned, headroom


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_plan_properties(s: tuple[Manifest, dict[str, HeldObject], list[DiskSpace],
                                  frozenset[str], float]) -> None:  # fmt: skip
    manifest, held, disks, pinned, headroom = s
    plan = plan_fill(manifest, held, disks, ["ssd", "hdd"], NOW, headroom_fraction=headroom,
                     pinned=pinned)  # fmt: skip
    fetched = [f.path for f in plan.fetches]
    unfit = [n.path for n in plan.not_fitting]
    # Every listed object is planned, already held, or reported as not fitting: once.
    everything = fetched + list(plan.held) + unfit
    assert sorted(everything) == sorted(o.path for o in manifest.objects)
    # Pinned objects are never evicted; evictions are held objects on healthy disks.
    healthy = {d.id: d for d in disks if d.healthy}
    for e in plan.evictions:
        assert e.path in held and e.path not in pinned and e.disk in healthy
    # Capacity: on each disk, what stays plus what arrives fits the budget, pinned aside.
    evicted = {e.path for e in plan.evictions}
    for d in healthy.values():
        budget = int(d.capacity_bytes * (1 - headroom))
        stays = sum(h.size for p, h in held.items()
                    if h.disk == d.id and p not in evicted and p not in pinned
                    and not any(f.path == p for f in plan.fetches))  # fmt: skip
        arrives = sum(f.size for f in plan.fetches if f.disk == d.id)
        pinned_here = sum(held[p].size for p in pinned if held[p].disk == d.id)
        assert stays + arrives <= max(budget - pinned_here, 0) or (stays + arrives == 0)
    # Fetches go hottest first and only to healthy disks of a configured tier.
    prios = [f.priority for f in plan.fetches]
    assert prios == sorted(prios, reverse=True)
    assert all(f.disk in healthy and healthy[f.disk].tier == f.tier for f in plan.fetches)


@settings(max_examples=100, deadline=None)
@given(scenarios(), st.randoms(use_true_random=False))
def test_plan_is_deterministic_whatever_the_input_order(
    s: tuple[Manifest, dict[str, HeldObject], list[DiskSpace], frozenset[str], float],
    rnd: random.Random,
) -> None:
    manifest, held, disks, pinned, headroom = s
    a = plan_fill(manifest, held, disks, ["ssd", "hdd"], NOW, headroom_fraction=headroom,
                  pinned=pinned)  # fmt: skip
    objs = list(manifest.objects)
    rnd.shuffle(objs)
    items = list(held.items())
    rnd.shuffle(items)
    b = plan_fill(Manifest(NOW, None, tuple(objs)), dict(items), list(reversed(disks)),
                  ["ssd", "hdd"], NOW, headroom_fraction=headroom, pinned=pinned)  # fmt: skip
    assert a.fetches == b.fetches and a.evictions == b.evictions
    assert a.held == b.held and sorted(a.not_fitting, key=lambda n: n.path) == sorted(
        b.not_fitting, key=lambda n: n.path
    )


def test_hot_goes_to_ssd_and_cold_held_object_is_evicted_for_it() -> None:
    disks = [DiskSpace("/ssd0", "ssd", 1000), DiskSpace("/hdd0", "hdd", 1000)]
    held = {"/old/x.m4s": HeldObject("/old/x.m4s", 900, SHA_A, "ssd", "/ssd0", 1, NOW - 30 * 86400)}
    manifest = Manifest(NOW, None, (
        obj("/new/hot.m4s", 800, 5000.0),
        obj("/new/warm.m4s", 800, 50.0),
        obj("/new/huge.m4s", 5000, 1e9),
    ))  # fmt: skip
    plan = plan_fill(manifest, held, disks, ["ssd", "hdd"], NOW, headroom_fraction=0.0)
    assert [(f.path, f.tier) for f in plan.fetches] == [
        ("/new/hot.m4s", "ssd"),
        ("/new/warm.m4s", "hdd"),
    ]
    assert [e.path for e in plan.evictions] == ["/old/x.m4s"]
    assert [n.path for n in plan.not_fitting] == ["/new/huge.m4s"]
    assert "more than any disk" in plan.not_fitting[0].reason


def test_recently_watched_object_outranks_a_lukewarm_forecast() -> None:
    disks = [DiskSpace("/ssd0", "ssd", 1000)]
    held = {"/a/busy.m4s": HeldObject("/a/busy.m4s", 600, SHA_A, "ssd", "/ssd0", 500, NOW - 60)}
    manifest = Manifest(NOW, None, (obj("/b/new.m4s", 600, 10.0),))
    plan = plan_fill(manifest, held, disks, ["ssd"], NOW, headroom_fraction=0.0)
    assert plan.evictions == ()
    assert [n.path for n in plan.not_fitting] == ["/b/new.m4s"]


def test_held_with_other_bytes_is_refetched_in_place() -> None:
    disks = [DiskSpace("/ssd0", "ssd", 1000)]
    held = {"/a/s.m4s": HeldObject("/a/s.m4s", 100, SHA_B, "ssd", "/ssd0")}
    manifest = Manifest(NOW, None, (obj("/a/s.m4s", 100, 1.0),))
    plan = plan_fill(manifest, held, disks, ["ssd"], NOW, headroom_fraction=0.0)
    (f,) = plan.fetches
    assert f.replaces and f.sha256 == SHA_A and plan.held == ()
