"""``oca bench miss``: a smoke run with tiny settings (three appliances, real processes).

It checks that the benchmark runs end to end and reports what it measured (every body
complete, one upstream request for the popular object, nothing left running); it
asserts no timings.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import psutil

from oca.cli import main as oca_main


def _oca_serves() -> set[int]:
    out = set()
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if "serve" in cmd and any(c.endswith("bench-miss/edge/oca.toml") for c in cmd):
            out.add(p.info["pid"])
    return out


def test_bench_miss_smoke(tmp_path: Path, capsys: object) -> None:
    report = tmp_path / "miss.json"
    work = tmp_path / "bench-miss"
    code = oca_main(
        ["bench", "miss", "--objects", "4", "--size-mib", "0.25", "--big-mib", "2",
         "--clients", "20", "--work-dir", str(work), "--json", str(report)]
    )  # fmt: skip
    assert code == 0
    r = orjson.loads(report.read_bytes())
    assert r["popular"]["all_bytes_correct"] is True
    assert r["popular"]["upstream_requests"] == 1
    for name in ("local_hit", "peer_miss", "origin_miss"):
        assert r[name]["ttfb"]["p50_ms"] > 0
    assert _oca_serves() == set()
