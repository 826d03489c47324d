"""Media types for served objects, chosen by file extension (RFC 9110 §8.3).

Theory of operation
-------------------
The appliance serves what the origin published under the same path, so the
``Content-Type`` (RFC 9110 §8.3) is decided from the path's extension alone, from a
fixed table built once at import: no content sniffing, no ``mimetypes`` module (whose
answers depend on files in ``/etc`` of the host and so differ between boxes).

The table covers what DASH, CMAF and HLS packages contain:

- MPEG-DASH manifests ``.mpd`` are ``application/dash+xml`` (ISO/IEC 23009-1 Annex C);
  media segments ``.m4s`` are ``video/iso.segment`` (IANA registration); init segments
  (``.init``, ``.mp4``) and whole renditions are ``video/mp4`` (RFC 4337);
- CMAF tracks (ISO/IEC 23000-19): ``.cmfv`` video/mp4, ``.cmfa`` audio/mp4,
  ``.cmft`` application/mp4;
- HLS playlists ``.m3u8`` are ``application/vnd.apple.mpegurl`` (RFC 8216 §4) and
  segments ``.ts`` are ``video/mp2t``;
- subtitles: WebVTT, TTML, SubRip; plus the few web types a player page needs.

Textual ``text/*`` types carry ``; charset=utf-8`` (RFC 9110 §8.3.2) so a browser does
not guess the encoding; the ``application/*`` text formats (XML, JSON, playlists) are
left bare, since their encoding is defined by the format itself.

The extension is the text after the last ``.`` of the last path segment, compared
case-insensitively; a path without one is ``application/octet-stream``.

:func:`is_manifest` tells manifests (``.mpd``, ``.m3u8``) apart from segments: a live
manifest changes every few seconds while a segment never changes once published, so
the two get different ``Cache-Control`` lifetimes.
"""

from __future__ import annotations

__all__ = ["DEFAULT_CONTENT_TYPE", "content_type_for", "is_manifest"]

DEFAULT_CONTENT_TYPE = "application/octet-stream"

_UTF8 = "; charset=utf-8"

_CONTENT_TYPES: dict[str, str] = {
    # MPEG-DASH and ISO BMFF
    "mpd": "application/dash+xml",
    "m4s": "video/iso.segment",
    "mp4": "video/mp4",
    "m4v": "video/mp4",
    "init": "video/mp4",
    "m4a": "audio/mp4",
    # CMAF
    "cmfv": "video/mp4",
    "cmfa": "audio/mp4",
    "cmft": "application/mp4",
    # WebM
    "webm": "video/webm",
    "weba": "audio/webm",
    # HLS and MPEG-TS
    "m3u8": "application/vnd.apple.mpegurl",
    "ts": "video/mp2t",
    "aac": "audio/aac",
    # subtitles
    "vtt": "text/vtt" + _UTF8,
    "ttml": "application/ttml+xml",
    "srt": "application/x-subrip",
    # web
    "json": "application/json",
    "xml": "application/xml",
    "html": "text/html" + _UTF8,
    "js": "text/javascript" + _UTF8,
    "css": "text/css" + _UTF8,
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
}

_MANIFEST_EXTENSIONS = frozenset({"mpd", "m3u8"})


def _extension(path: str) -> str:
    name = path.rpartition("/")[2]
    _, dot, extension = name.rpartition(".")
    if not dot:
        return ""
    return extension.lower()


def content_type_for(path: str) -> str:
    """The ``Content-Type`` field value for the object at ``path``."""
    return _CONTENT_TYPES.get(_extension(path), DEFAULT_CONTENT_TYPE)


def is_manifest(path: str) -> bool:
    """Whether ``path`` names a manifest (``.mpd`` or ``.m3u8``) rather than a segment."""
    return _extension(path) in _MANIFEST_EXTENSIONS
