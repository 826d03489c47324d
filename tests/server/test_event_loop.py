"""The stock asyncio event loop serves exactly like uvloop (the fallback path)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.appliance import Appliance, fetch, write_tree


def test_stock_asyncio_loop_serves_ranges_and_pipelines(tmp_path: Path) -> None:
    body = os.urandom(3 * 1024 * 1024 + 17)
    app = Appliance(tmp_path / "box", workers=1, tiers=(("ssd", 1),),
                    extra='event_loop = "asyncio"')  # fmt: skip
    app.root.mkdir()
    app.import_tree(write_tree(tmp_path / "src", {"/titles/v/seg-1.m4s": body}))
    app.start()
    try:
        host, port = app.host_port
        status, headers, got = fetch(host, port, "/titles/v/seg-1.m4s")
        assert status == 200 and got == body
        status, headers, got = fetch(host, port, "/titles/v/seg-1.m4s", {"Range": "bytes=-70000"})
        assert status == 206 and got == body[-70000:]
        assert headers["content-range"] == f"bytes {len(body) - 70000}-{len(body) - 1}/{len(body)}"
    finally:
        assert app.stop() == 0
    assert "event loop: asyncio" in app.log_text()
