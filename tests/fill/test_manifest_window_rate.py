"""Manifest validation, the fill window and the rate limiter (pure or fake-clocked)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fill.manifest import (
    Manifest,
    ManifestError,
    ManifestObject,
    manifest_to_json,
    parse_manifest,
)
from fill.policy import PolicyParams
from fill.run import policy_params
from fill.window import jitter_offset, window_state
from oca.config import load_config, parse_window
from oca.errors import ConfigError
from oca.rate import RateLimiter

SHA = "0" * 64


def good() -> dict[str, Any]:
    return {
        "schema": "oca.fill-manifest",
        "version": 1,
        "generated_at": 1_800_000_000,
        "objects": [
            {"path": "/t1/a.m4s", "size": 10, "sha256": SHA, "popularity": 3,
             "sources": ["http://origin.test/t1/a.m4s"], "tier": "ssd", "title": "/t1"},
        ],
    }  # fmt: skip


def test_round_trip() -> None:
    m = parse_manifest(orjson.dumps(good()))
    assert m.objects == (
        ManifestObject("/t1/a.m4s", 10, SHA, 3.0, "ssd", ("http://origin.test/t1/a.m4s",), "/t1"),
    )
    assert parse_manifest(orjson.dumps(manifest_to_json(m))) == m


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.update(schema="other"), "schema"),
        (lambda d: d.update(version=2), "version"),
        (lambda d: d.pop("generated_at"), "generated_at"),
        (lambda d: d.update(extra=1), "extra"),
        (lambda d: d.update(objects={}), "objects"),
        (lambda d: d["objects"][0].update(path="relative.m4s"), "objects[0].path"),
        (lambda d: d["objects"][0].update(path="/a/../b"), "objects[0].path"),
        (lambda d: d["objects"][0].update(path="/t/tok/a"), "objects[0].path"),
        (lambda d: d["objects"][0].update(size=-1), "objects[0].size"),
        (lambda d: d["objects"][0].update(size=True), "objects[0].size"),
        (lambda d: d["objects"][0].update(sha256="A" * 64), "objects[0].sha256"),
        (lambda d: d["objects"][0].update(popularity=float("nan")), "objects[0].popularity"),
        (lambda d: d["objects"][0].update(popularity=-1), "objects[0].popularity"),
        (lambda d: d["objects"][0].update(tier="no spaces"), "objects[0].tier"),
        (lambda d: d["objects"][0].update(sources=["ftp://x/y"]), "objects[0].sources[0]"),
        (lambda d: d["objects"][0].pop("sources"), "objects[0].sources"),
        (lambda d: d["objects"][0].update(colour="red"), "objects[0].colour"),
        (lambda d: d["objects"].append(dict(d["objects"][0])), "objects[1].path"),
    ],
)
def test_malformed_manifest_names_the_field(mutate: Any, field: str) -> None:
    doc = good()
    mutate(doc)
    with pytest.raises(ManifestError) as info:
        parse_manifest(orjson.dumps(doc))  # NaN is written as null: a wrong type
    assert info.value.field == field, str(info.value)


def test_not_json() -> None:
    with pytest.raises(ManifestError, match="not valid JSON"):
        parse_manifest(b"{nope")


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_parser(data: bytes) -> None:
    try:
        m = parse_manifest(data)
    except ManifestError:
        return
    assert isinstance(m, Manifest)


# ------------------------------------------------------------------ window
def test_window_inside_outside_and_wrapping() -> None:
    s = window_state(datetime(2026, 11, 21, 1, 0), 120, 840, 0)
    assert not s.inside and s.next_start == datetime(2026, 11, 21, 2, 0)
    s = window_state(datetime(2026, 11, 21, 13, 59), 120, 840, 0)
    assert s.inside and s.end == datetime(2026, 11, 21, 14, 0)
    s = window_state(datetime(2026, 11, 21, 3, 0), 22 * 60, 6 * 60, 0)  # wraps midnight
    assert s.inside and s.end == datetime(2026, 11, 21, 6, 0)
    s = window_state(datetime(2026, 11, 21, 22, 5), 22 * 60, 6 * 60, 600)  # jittered start
    assert not s.inside and s.next_start == datetime(2026, 11, 21, 22, 10)


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
       st.integers(0, 1439), st.integers(0, 1439), st.floats(0, 7200))  # fmt: skip
def test_window_state_is_consistent(now: datetime, a: int, b: int, jitter: float) -> None:
    if a == b:
        return
    s = window_state(now, a, b, jitter)
    assert s.next_start > now
    if s.inside:
        assert s.end is not None and now < s.end < s.next_start


def test_jitter_is_stable_and_bounded() -> None:
    assert jitter_offset("oca-lon-01", 1800) == jitter_offset("oca-lon-01", 1800)
    assert 0 <= jitter_offset("oca-lon-02", 1800) <= 1800
    assert jitter_offset("oca-lon-01", 1800) != jitter_offset("oca-lon-02", 1800)
    assert jitter_offset("x", 0) == 0


@pytest.mark.parametrize("text", ["", "2-3", "25:00-01:00", "02:00-02:00", "02:00"])
def test_bad_window_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match=r"fill\.window"):
        parse_window(text)


# ------------------------------------------------------------------ rate
def test_rate_limiter_paces_to_the_cap_with_a_fake_clock() -> None:
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    async def main() -> None:
        lim = RateLimiter(8_000_000, clock=lambda: now[0], sleep=sleep)  # 1 MB/s
        for _ in range(100):
            await lim.take(100_000)  # 10 MB in total

    asyncio.run(main())
    # 10 MB at 1 MB/s, less the initial burst allowance of 0.25 s.
    assert 9.7 <= now[0] <= 10.0


# ------------------------------------------------------------------ policy settings
def test_fill_config_sets_the_policy(tmp_path: Path) -> None:
    conf = tmp_path / "oca.toml"
    storage = f'[[storage.tiers]]\nname = "ssd"\npaths = ["{tmp_path}"]\n'
    conf.write_text(
        storage
        + "[fill]\nhalf_life_seconds = 7200\nforecast_weight = 2.5\nprobation_fraction = 0.2\n"
    )
    assert policy_params(load_config(conf)) == PolicyParams(7200.0, 2.5, 0.2)
    conf.write_text(storage)
    assert policy_params(load_config(conf)) == PolicyParams()  # same defaults both places
    conf.write_text(storage + "[fill]\nprobation_fraction = 0.95\n")
    with pytest.raises(ConfigError, match=r"fill\.probation_fraction"):
        load_config(conf)
