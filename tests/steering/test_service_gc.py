"""The service's collector policy: young collections automatic, full ones on a timer.

``oca bench steering --http-only`` measured why (docs/benchmarks.md#steering-decisions):
automatic full collections of the fleet's heap stalled answers for 70-110 ms every few
seconds. Full collections must still happen, or cycles that reach the old generation
would never be reclaimed.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

import steering.service as service
from steering.config import load_steering_config


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.set_threshold(*thresholds)
    gc.unfreeze()


def test_full_collections_run_on_the_timer_not_on_allocation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_gc: None
) -> None:
    conf = tmp_path / "steering.toml"
    conf.write_text(
        f'[service]\nlisten = ["127.0.0.1:0"]\nstate_dir = "{tmp_path}/state"\n'
        "snapshot_interval_seconds = 0\n"
    )
    cfg = load_steering_config(str(conf))
    monkeypatch.setattr(service, "FULL_COLLECTION_SECONDS", 0.05)
    seen: dict[str, object] = {}

    async def main() -> int:
        loop = asyncio.get_running_loop()

        def ready(urls: list[str]) -> None:
            seen["thresholds"] = gc.get_threshold()
            seen["full_before"] = gc.get_stats()[2]["collections"]

            def later() -> None:
                seen["full_after"] = gc.get_stats()[2]["collections"]
                os.kill(os.getpid(), signal.SIGINT)

            loop.call_later(0.5, later)

        return await service.serve(cfg, ready=ready)

    assert asyncio.run(main()) == 0
    young, middle, old = seen["thresholds"]  # type: ignore[misc]
    assert (young, middle) == (700, 10)
    assert old >= 10**8, "automatic full collections must be off"
    # 0.5 s at one full collection every 0.05 s: several, counted by the interpreter
    assert seen["full_after"] - seen["full_before"] >= 3  # type: ignore[operator]
