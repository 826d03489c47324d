"""``bench.steering``: a smoke run with a tiny fleet, and the synthetic workload.

It checks that the benchmark runs end to end and that the figures it prints are
present and sane; it asserts no speed.
"""

from __future__ import annotations

import random
import re
from itertools import islice
from pathlib import Path

import orjson
import pytest

from bench.steering import build, main
from steering.heartbeat import parse_heartbeat
from steering.ranking import RankPolicy, rank


def test_smoke_run_prints_sane_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "steering.json"
    code = main(
        ["--appliances", "20", "--sites", "4", "--regions", "2", "--titles", "200",
         "--head", "20", "--decisions", "2000", "--repeats", "2", "--heartbeat-seconds", "0.3",
         "--no-pin", "--quiet", "--json", str(report)]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "20 appliances in 4 sites" in out
    for label in ("decisions/s ", "decisions/s with heartbeats", "heartbeat (decode + apply)"):
        line = next(x for x in out.splitlines() if x.strip().startswith(label.strip()))
        numbers = [float(n.replace(",", "")) for n in re.findall(r"[\d,]+\.?\d*", line)]
        assert numbers and all(n > 0 for n in numbers), line
    r = orjson.loads(report.read_bytes())
    for spread in (r["decisions_per_second"], r["with_heartbeats"]["decisions_per_second"]):
        assert 0 < spread["min"] <= spread["median"] <= spread["max"]
    assert r["with_heartbeats"]["heartbeats_per_second"]["median"] > 0
    lat = r["latency"]
    assert 0 < lat["p50_us"] <= lat["p99_us"] <= lat["p999_us"] <= lat["max_us"]
    assert r["explain_decisions_per_second"] > 0
    assert r["title_copies"] >= 200 and r["objects_held"] == 4 * r["title_copies"]


def test_bad_sizes_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--appliances", "2", "--sites", "3", "--quiet", "--no-pin"]) == 2
    assert "sites" in capsys.readouterr().err


def test_the_synthetic_fleet() -> None:
    s = build(appliances=12, sites=3, titles=60, head=6, regions=2, objects_per_title=3)
    snap = s.fleet.snapshot(0.5, s.catalog)
    assert len(snap.appliances) == 12 and all(v.fresh for v in snap.appliances.values())
    # the head is at every site, the others at fewer sites the less popular they are
    for r, tid in enumerate(s.title_ids):
        holders = snap.title_holders(tid)
        assert holders == {a.id for a in s.appliances if r in a.titles}
        sites = {snap.appliances[h].site for h in holders}
        assert len(sites) == (3 if r < 6 else min(3, max(2, round(3 * 6 / (r + 1)))))
    # heartbeats are valid documents at the fleet's rate, and apply
    rng = random.Random(3)
    beats = list(islice(s.heartbeats(1.0, rng, delta_fraction=0.5), 24))
    assert [t for t, _ in beats][:3] == [1.0, 1.0 + 2.0 / 12, 1.0 + 4.0 / 12]
    for t, doc in beats:
        parse_heartbeat(doc)
        assert s.fleet.apply(doc, t).inventory == "ok"
    snap = s.fleet.snapshot(5.0, s.catalog)
    for r, tid in enumerate(s.title_ids):
        assert snap.title_holders(tid) == {a.id for a in s.appliances if r in a.titles}
    requests = s.requests(100, rng)
    assert all(tid in s.catalog.titles for _, tid in requests)
    assert sum(snap.longest_match(c) is None for c, _ in requests) < 30


def test_fast_rankings_equal_the_reference_on_the_synthetic_fleet() -> None:
    """Many sites, locations and prefixes, heartbeats with deltas and overloads: the
    fast path gives what the explained reference gives."""
    s = build(appliances=60, sites=12, titles=300, head=20, regions=3)
    rng = random.Random(7)
    policies = [RankPolicy(), RankPolicy(n=3), RankPolicy(n=25, site_peering=False),
                RankPolicy(n=4, allow_miss=True, overload_threshold=0.5)]  # fmt: skip
    beats = s.heartbeats(1.0, rng, delta_fraction=0.3)
    for round_ in range(3):
        for _ in range(40):
            t, doc = next(beats)
            s.fleet.apply(doc, t)
        snap = s.fleet.snapshot(t, s.catalog)
        for client, title in s.requests(150, rng):
            policy = policies[rng.randrange(len(policies))]
            fast = rank(snap, client, title=title, policy=policy)
            slow = rank(snap, client, title=title, policy=policy, explain=True)
            got = [(c.appliance.id, c.holder, c.prefix, c.overloaded) for c in fast.chosen]
            want = [(c.appliance.id, c.holder, c.prefix, c.overloaded) for c in slow.chosen]
            assert got == want, (round_, str(client), title, policy)


def test_http_smoke_run_against_a_real_service(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The HTTP half: a real ``oca steering`` process, heartbeats over HTTP, wrk."""
    report = tmp_path / "http.json"
    code = main(
        ["--appliances", "20", "--sites", "4", "--regions", "2", "--titles", "200",
         "--head", "20", "--http-only", "--http-seconds", "1", "--http-connections", "2",
         "--quiet", "--json", str(report)]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "over HTTP" in out and "latency p99" in out
    (run,) = orjson.loads(report.read_bytes())["http"]
    assert run["decisions"] > 0 and run["errors"] == 0
    assert run["full_inventories_refused"] == 0 and run["heartbeats_refused"] == 0
    assert 0 < run["p50_ms"] <= run["p99_ms"] <= run["max_ms"]
