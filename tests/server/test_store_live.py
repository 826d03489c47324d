"""The store changes under a running appliance: new and replaced objects are served
without a restart (workers re-read the disks' indexes), never a mix of old and new."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.appliance import Appliance, fetch, wait_until, write_tree


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Appliance]:
    a = Appliance(tmp_path / "box", workers=2, tiers=(("ssd", 2),))
    a.root.mkdir()
    a.import_tree(write_tree(tmp_path / "v1", {"/titles/a/seg-1.m4s": os.urandom(300_000)}))
    a.start()
    yield a
    assert a.stop() == 0


def test_imported_object_is_served_without_restart(app: Appliance, tmp_path: Path) -> None:
    host, port = app.host_port
    assert fetch(host, port, "/titles/b/seg-1.m4s")[0] == 404
    body = os.urandom(200_000)
    app.import_tree(write_tree(tmp_path / "v2", {"/titles/b/seg-1.m4s": body}))
    # Both workers must pick it up: ask on fresh connections until several agree.
    wait_until(
        lambda: all(fetch(host, port, "/titles/b/seg-1.m4s")[0] == 200 for _ in range(6)),
        timeout=10,
        what="both workers to serve the newly imported object",
    )
    status, headers, got = fetch(host, port, "/titles/b/seg-1.m4s", {"Range": "bytes=1000-1999"})
    assert status == 206 and got == body[1000:2000]
    assert headers["content-range"] == f"bytes 1000-1999/{len(body)}"


def test_replaced_object_changes_etag_and_bytes_together(app: Appliance, tmp_path: Path) -> None:
    host, port = app.host_port
    _, old_headers, old = fetch(host, port, "/titles/a/seg-1.m4s")
    new = os.urandom(123_456)
    app.import_tree(write_tree(tmp_path / "v3", {"/titles/a/seg-1.m4s": new}))
    new_etag = f'"{hashlib.sha256(new).hexdigest()[:32]}"'

    def switched() -> bool:
        status, headers, body = fetch(host, port, "/titles/a/seg-1.m4s")
        # Whatever a worker answers, its ETag and bytes belong to the same version.
        if status == 200 and headers["etag"] == old_headers["etag"]:
            assert body == old
            return False
        return status == 200 and headers["etag"] == new_etag and body == new

    wait_until(lambda: all(switched() for _ in range(6)), 10, "every worker on the new version")
    # A conditional range against the old version's ETag now gets the whole new object.
    status, _, body = fetch(
        host, port, "/titles/a/seg-1.m4s", {"Range": "bytes=0-9", "If-Range": old_headers["etag"]}
    )
    assert status == 200 and body == new
