"""Media types by extension."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oca.http.mime import DEFAULT_CONTENT_TYPE, content_type_for, is_manifest

EXPECTED = {
    "mpd": "application/dash+xml",
    "m4s": "video/iso.segment",
    "mp4": "video/mp4",
    "m4v": "video/mp4",
    "init": "video/mp4",
    "m4a": "audio/mp4",
    "webm": "video/webm",
    "weba": "audio/webm",
    "m3u8": "application/vnd.apple.mpegurl",
    "ts": "video/mp2t",
    "aac": "audio/aac",
    "vtt": "text/vtt; charset=utf-8",
    "ttml": "application/ttml+xml",
    "srt": "application/x-subrip",
    "json": "application/json",
    "xml": "application/xml",
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "cmfv": "video/mp4",
    "cmfa": "audio/mp4",
    "cmft": "application/mp4",
}


@pytest.mark.parametrize(("extension", "content_type"), sorted(EXPECTED.items()))
def test_known_extensions(extension: str, content_type: str) -> None:
    assert content_type_for(f"/titles/tos/v720/seg-00042.{extension}") == content_type


@pytest.mark.parametrize(("extension", "content_type"), sorted(EXPECTED.items()))
def test_extension_is_case_insensitive(extension: str, content_type: str) -> None:
    assert content_type_for(f"/a/B.{extension.upper()}") == content_type
    assert content_type_for(f"/a/b.{extension.capitalize()}") == content_type


def test_only_text_types_carry_a_charset() -> None:
    for content_type in EXPECTED.values():
        assert ("charset=utf-8" in content_type) == content_type.startswith("text/")
    assert content_type_for("/live/master.m3u8") == "application/vnd.apple.mpegurl"


@pytest.mark.parametrize(
    "path",
    [
        "/titles/tos/v720/segment",
        "/titles/tos.mpd/segment",  # a dot in a directory is not an extension
        "/titles/tos/v720/seg.bin",
        "/titles/tos/v720/seg.",
        "/titles/tos/v720/seg.m4s.part",
        "",
        "/",
    ],
)
def test_unknown_is_octet_stream(path: str) -> None:
    assert content_type_for(path) == DEFAULT_CONTENT_TYPE == "application/octet-stream"


def test_last_extension_wins() -> None:
    assert content_type_for("/t/seg.part.m4s") == "video/iso.segment"
    assert content_type_for("relative/manifest.mpd") == "application/dash+xml"


@pytest.mark.parametrize(
    ("path", "manifest"),
    [
        ("/t/manifest.mpd", True),
        ("/t/MANIFEST.MPD", True),
        ("/t/master.m3u8", True),
        ("/t/v720/seg-1.m4s", False),
        ("/t/v720/init.mp4", False),
        ("/t/subs.vtt", False),
        ("/t.mpd/seg", False),
        ("/t/mpd", False),
    ],
)
def test_is_manifest(path: str, manifest: bool) -> None:
    assert is_manifest(path) is manifest


@given(st.text())
def test_never_raises(path: str) -> None:
    assert content_type_for(path)
    assert isinstance(is_manifest(path), bool)
