"""``oca bench cache-policy``: an end-to-end run on tiny traces (real libcachesim), the
trace generators' determinism, the replay's counting and the verdict logic."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from bench import cache_policy
from bench.cache_policy import Job, main, run_jobs
from bench.policy_replay import (
    OFFLINE_REFERENCES,
    ONLINE_REFERENCES,
    OURS,
    OURS_PULL_ONLY,
    POLICIES,
    forecast_of,
    push_fill,
    size_unit,
)
from bench.policy_report import verdicts
from bench.traces import (
    DAY_SECONDS,
    NO_NEXT_ACCESS,
    VIDEO_TINY,
    ZIPF_TINY,
    Trace,
    video_trace,
    zipf_churn_trace,
)
from fill.policy import PolicyParams, PopularityLRU
from oca.cli import main as oca_main

pytest.importorskip("libcachesim")


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    path = tmp_path_factory.mktemp("cache-policy") / "report.json"
    code = main(["--tiny", "--quiet", "--seed", "3", "--json", str(path)])
    assert code == 0
    report: dict[str, object] = orjson.loads(path.read_bytes())
    return report


@pytest.mark.timeout(60)
def test_report_structure_and_sane_numbers(tiny_report: dict[str, object]) -> None:
    r = tiny_report
    assert r["benchmark"] == "cache-policy" and r["scale"] == "tiny" and r["seed"] == 3
    assert r["libcachesim"]
    traces = r["traces"]
    assert isinstance(traces, list)
    assert [t["name"] for t in traces] == ["video", "zipf"]
    for trace in traces:
        assert trace["footprint_bytes"] > 0 and 0 < trace["day2_requests"] < trace["requests"]
        assert [s["percent"] for s in trace["sizes"]] == [1.0, 5.0, 10.0]
        for size in trace["sizes"]:
            assert size["cache_bytes"] == int(trace["footprint_bytes"] * size["percent"] / 100)
            rows = {row["policy"]: row for row in size["policies"]}
            assert list(rows) == list(POLICIES)
            for row in rows.values():
                if row["status"] != "ok":
                    assert row["reason"], row  # never a silent failure
                    continue
                assert row["requests"] == trace["day2_requests"]
                assert 0 <= row["hits"] <= row["requests"]
                assert 0 <= row["hit_bytes"] <= row["request_bytes"]
                assert 0.0 <= row["object_hit_ratio"] <= 1.0
                assert 0.0 <= row["byte_hit_ratio"] <= 1.0
            assert rows[OURS]["status"] == "ok" and rows[OURS_PULL_ONLY]["status"] == "ok"
            assert rows[OURS]["fill_bytes"] <= size["cache_bytes"]
            bound = max(rows[b]["byte_hit_ratio"] for b in OFFLINE_REFERENCES
                        if rows[b]["status"] == "ok")  # fmt: skip
            for name in ONLINE_REFERENCES:
                if rows[name]["status"] == "ok":
                    assert rows[name]["byte_hit_ratio"] <= bound + 1e-12, (trace["name"], name)
            assert 1 <= size["our_rank_bhr"] <= size["ranked"]
    assert len(r["verdicts"]) == 2
    assert all(v["met"] in (True, False) and v["detail"] for v in r["verdicts"])


def _recount(trace: Trace, capacity: int, params: PolicyParams, fill: bool) -> tuple[int, int]:
    """Day-two hits of our policy, counted the plain way."""
    policy = PopularityLRU(capacity, params)
    hits = hit_bytes = 0
    for i, (t, o) in enumerate(zip(trace.times, trace.objects, strict=True)):
        if i == trace.day2_start:
            forecast, size_of = forecast_of(trace, capacity)
            policy.set_forecast(forecast)
            policy.reprioritise(DAY_SECONDS)
            if fill:
                push_fill(policy, forecast, size_of, DAY_SECONDS)
        key, size = trace.paths[o], trace.sizes[o]
        if key in policy:
            policy.touch(key, t)
            if i >= trace.day2_start:
                hits += 1
                hit_bytes += size
        else:
            policy.make_room(key, size, t)
    return hits, hit_bytes


@pytest.mark.timeout(60)
def test_our_hit_counts_equal_a_plain_recount(tiny_report: dict[str, object]) -> None:
    params = PolicyParams(
        tiny_report["half_life_seconds"],  # type: ignore[arg-type]
        tiny_report["forecast_weight"],  # type: ignore[arg-type]
        tiny_report["probation_fraction"],  # type: ignore[arg-type]
    )
    traces = {"video": video_trace(VIDEO_TINY, 3), "zipf": zipf_churn_trace(ZIPF_TINY, 3)}
    for trace_report in tiny_report["traces"]:  # type: ignore[attr-defined]
        trace = traces[trace_report["name"]]
        for size in trace_report["sizes"]:
            rows = {row["policy"]: row for row in size["policies"]}
            for name, fill in ((OURS, True), (OURS_PULL_ONLY, False)):
                hits, hit_bytes = _recount(trace, size["cache_bytes"], params, fill)
                assert (rows[name]["hits"], rows[name]["hit_bytes"]) == (hits, hit_bytes)


def test_trace_generators_are_deterministic() -> None:
    for make, params in ((video_trace, VIDEO_TINY), (zipf_churn_trace, ZIPF_TINY)):
        a, b, c = make(params, 7), make(params, 7), make(params, 8)  # type: ignore[operator]
        assert (a.times, a.objects, a.paths, a.sizes, a.day2_start) == (
            b.times, b.objects, b.paths, b.sizes, b.day2_start
        )  # fmt: skip
        assert (a.times, a.objects) != (c.times, c.objects)


def test_trace_shape() -> None:
    trace = video_trace(VIDEO_TINY, 5)
    assert list(trace.times) == sorted(trace.times)
    assert trace.times[-1] < 2 * DAY_SECONDS
    assert all(t < DAY_SECONDS for t in trace.times[: trace.day2_start])
    assert all(t >= DAY_SECONDS for t in trace.times[trace.day2_start :])
    assert len(trace.paths) == len(set(trace.paths)) == len(trace.sizes)
    assert set(trace.objects) == set(range(len(trace.paths)))  # only requested objects
    # sessions start at segment 0: the first request of each rendition directory is seg 0
    first: dict[str, str] = {}
    for o in trace.objects:
        directory, name = trace.paths[o].rsplit("/", 1)
        first.setdefault(directory, name)
    assert set(first.values()) == {"seg-00000.m4s"}
    # new releases appear on day two only
    day1_titles = {trace.paths[o].split("/")[2] for o in trace.objects[: trace.day2_start]}
    new = {f"t{t:05d}" for t in range(VIDEO_TINY.titles, VIDEO_TINY.titles + VIDEO_TINY.new_titles)}
    assert not day1_titles & new
    nxt = trace.next_access()
    for i, o in enumerate(trace.objects):
        j = nxt[i]
        assert j == NO_NEXT_ACCESS or (j > i and trace.objects[j] == o)


def test_fill_stays_within_the_headroom_and_only_pushes_forecast_objects() -> None:
    trace = video_trace(VIDEO_TINY, 2)
    capacity = trace.footprint_bytes // 10
    policy = PopularityLRU(capacity)
    for i in range(trace.day2_start):
        o = trace.objects[i]
        if trace.paths[o] in policy:
            policy.touch(trace.paths[o], trace.times[i])
        else:
            policy.make_room(trace.paths[o], trace.sizes[o], trace.times[i])
    forecast, size_of = forecast_of(trace, capacity)
    assert set(forecast) == set(size_of)
    assert sum(size_of.values()) >= capacity  # the manifest lists past what fits
    policy.set_forecast(forecast)
    policy.reprioritise(DAY_SECONDS)
    before = set(policy.keys())
    objects, nbytes = push_fill(policy, forecast, size_of, DAY_SECONDS)
    added = set(policy.keys()) - before
    assert objects > 0 and len(added) == objects and added <= set(forecast)
    assert all(policy.size_of(k) == size_of[k] for k in added)
    assert sum(policy.size_of(k) for k in added) == nbytes
    assert policy.used_bytes <= capacity * 0.95
    # the catalogue names segments nobody requested, with the sizes the trace would use
    requested = set(trace.paths)
    assert any(k not in requested for k in forecast)
    assert all(trace.sizes[o] == size_of[p] for o, p in enumerate(trace.paths) if p in size_of)


def test_catalog_knows_every_requested_segment() -> None:
    trace = video_trace(VIDEO_TINY, 4)
    catalog = trace.catalog
    assert catalog is not None and len(trace.segments) == len(trace.paths)
    for o, (title, rendition, index) in enumerate(trace.segments):
        assert index < catalog.lengths[title]
        assert catalog.path(title, rendition, index) == trace.paths[o]
        assert catalog.size(title, rendition, index) == trace.sizes[o]
    assert zipf_churn_trace(ZIPF_TINY, 4).catalog is None


def test_a_crashing_policy_is_reported_with_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*args: object, **kwargs: object) -> None:
        os.write(2, b"about to fail\n")  # as the C library reports it
        os.abort()

    monkeypatch.setattr(cache_policy, "replay_reference", crash)
    trace = zipf_churn_trace(ZIPF_TINY, 1)
    job = Job("zipf", 5.0, trace.footprint_bytes // 20, "LRU")
    rows = run_jobs([job], {"zipf": trace}, PolicyParams(), 1, lambda _msg: None)
    row = rows[job]
    assert row["status"] == "crashed"
    assert "SIGABRT" in row["reason"] and "about to fail" in row["reason"]
    assert row["byte_hit_ratio"] is None


def _size(pct: float, ours: float, best: tuple[str, float], belady: float) -> dict[str, object]:
    def row(policy: str, kind: str, bhr: float) -> dict[str, object]:
        return {"policy": policy, "kind": kind, "status": "ok", "byte_hit_ratio": bhr}

    return {
        "percent": pct,
        "policies": [
            row(OURS, "ours", ours),
            row(best[0], "online", best[1]),
            row("LRU", "online", 0.01),
            row("Belady", "offline", belady),
            {"policy": "LRB", "kind": "online", "status": "crashed", "byte_hit_ratio": None},
        ],
    }


def test_verdicts() -> None:
    video = {"name": "video", "sizes": [_size(1, 0.30, ("ARC", 0.25), 0.40),
                                        _size(10, 0.50, ("S3-FIFO", 0.50), 0.55)]}  # fmt: skip
    v1, v2 = verdicts([video])  # type: ignore[list-item]
    assert v1["met"] is True and "LRB not compared" in v1["detail"]
    assert v2["met"] is True and "0.500 vs Belady 0.550" in v2["detail"]
    video["sizes"] = [_size(1, 0.20, ("ARC", 0.25), 0.40), _size(10, 0.40, ("ARC", 0.41), 0.5)]
    v1, v2 = verdicts([video])  # type: ignore[list-item]
    assert v1["met"] is False and "ours 0.200 < ARC 0.250" in v1["detail"]
    assert v2["met"] is False
    v1, v2 = verdicts([])
    assert v1["met"] is None and v2["met"] is None


def test_w_tinylfu_size_unit() -> None:
    gib = 1 << 30
    assert size_unit("LRU", 100 * gib, [3, 5]) == 1
    assert size_unit("W-TinyLFU", 100 * gib, [1 << 20] * 3) == 1 << 20  # objects, exact
    unit = size_unit("W-TinyLFU", 100 * gib, [1000, 3000])
    assert unit & (unit - 1) == 0 and (100 * gib) // unit <= 1 << 22 < (100 * gib) // (unit // 2)
    assert size_unit("W-TinyLFU", 1 << 20, [1000, 3000]) == 1


def test_oca_cli_dispatches_to_the_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    assert oca_main(["bench", "cache-policy", "--sizes", "0"]) == 2
    assert "--sizes" in capsys.readouterr().err


def test_unknown_policy_is_a_usage_error(tmp_path: Path) -> None:
    assert main(["--tiny", "--policies", "LRU,nope"]) == 2
