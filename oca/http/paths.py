"""Request-target normalisation: one decoded object path, or a precise rejection.

Theory of operation
-------------------
The request-target (RFC 9112 §3.2) names an object by a URL path that the storage
layer maps to files. Every classic path-traversal bug lives in the gap between what a
filter checked and what the filesystem finally sees: ``..`` hidden behind percent
escapes (``%2e%2e``, ``.%2e``), decoded twice (``%252e%252e``), a slash or backslash
smuggled in encoded (``%2f``, ``%5c``), a NUL that truncates a C string, or two
layers disagreeing about ``//``. So instead of *normalising* such paths (RFC 3986
§5.2.4 ``remove_dot_segments``), this module *refuses* them: a well-behaved client
never sends them, because DASH players resolve relative references before they
request, and a refusal cannot be misread by a later layer.

:func:`normalize_target` takes the raw request-target bytes, before any other code
has seen them, and either returns the object path decoded exactly once, or raises
:class:`PathRejected` with an HTTP status and a reason. The returned path:

- starts with ``/`` and is valid UTF-8 (returned as ``str``);
- has no ``.`` or ``..`` segment and no empty segment (``//``), except that it may end
  in ``/``;
- contains no ``\\``, no NUL and no other control character (U+0000-U+001F, U+007F);
- contains no ``%`` followed by two hex digits, so decoding it again is a no-op and a
  second decoder anywhere downstream sees the same path;
- has exactly the segments the raw target had, because ``%2f`` is refused, so a
  segment check on the decoded path is a check on the raw one.

The query and fragment are dropped (objects are named by path only; signed URLs carry
their token in the path, see :mod:`oca.auth.tokens`). The asterisk-form ``*`` (for
``OPTIONS *``) is returned as is. Absolute-form (``http://host/x``) and authority-form
(``host:443``) targets are refused: the appliance is an origin server, not a proxy.

Checks run in a fixed order, so a target with several defects always gets the same
reason: length (414 ``too-long``) → ``empty`` / form → raw characters
(``control-char``, ``invalid-char``, ``backslash``) → escapes (``bad-escape``, then
``encoded-slash``, ``backslash``, ``control-char`` for what they decode to) →
``double-encoded`` → ``bad-utf8`` → ``empty-segment`` → ``dot-segment``. Every
rejection other than the length is status 400.

This module is pure: bytes in, a string or an exception out.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from oca.errors import OcaError

__all__ = ["MAX_TARGET_BYTES", "PathRejected", "normalize_target"]

MAX_TARGET_BYTES = 4096

_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
# Escapes whose decoded byte is refused: "/", "\", C0 controls and DEL.
_FORBIDDEN_ESCAPE = re.compile(rb"%(2[fF]|5[cC]|[01][0-9A-Fa-f]|7[fF])")
_ESCAPE = re.compile(rb"%[0-9A-Fa-f]{2}")
_ABSOLUTE_FORM = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*:")
_AUTHORITY_FORM = re.compile(rb"(?:\[[0-9A-Fa-f:.]*\]|[A-Za-z0-9._~%!$&'()*+,;=-]*):[0-9]*")


class PathRejected(OcaError):
    """The request-target is refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"{status} {reason}")


def _reject(reason: str) -> PathRejected:
    return PathRejected(400, reason)


def _check_form(target: bytes) -> None:
    """Refuse a target that is not origin-form (it does not start with "/")."""
    if _AUTHORITY_FORM.fullmatch(target) and b"@" not in target:
        raise _reject("authority-form")
    if _ABSOLUTE_FORM.match(target):
        raise _reject("absolute-form")
    raise _reject("not-origin-form")


def _check_escapes(raw_path: bytes) -> bytes:
    """The path decoded once, refusing malformed escapes and dangerous decoded bytes."""
    if _BAD_ESCAPE.search(raw_path):
        raise _reject("bad-escape")
    forbidden = _FORBIDDEN_ESCAPE.search(raw_path)
    if forbidden is not None:
        byte = int(forbidden.group(1), 16)
        if byte == 0x2F:
            raise _reject("encoded-slash")
        if byte == 0x5C:
            raise _reject("backslash")
        raise _reject("control-char")
    decoded = unquote_to_bytes(raw_path)
    if _ESCAPE.search(decoded):
        raise _reject("double-encoded")
    return decoded


def normalize_target(target: bytes) -> str:
    """The decoded object path of a raw request-target, or PathRejected.

    ``target`` is the request-target exactly as it appeared in the request line,
    e.g. ``b"/titles/a%20b/seg-1.m4s?x=1"`` -> ``"/titles/a b/seg-1.m4s"``.
    """
    if len(target) > MAX_TARGET_BYTES:
        raise PathRejected(414, "too-long")
    if target == b"*":
        return "*"
    if not target:
        raise _reject("empty")
    if target[0] != 0x2F:  # "/"
        _check_form(target)
    # Raw control characters are refused anywhere, query included: CR, LF and NUL in a
    # request-target point at request smuggling, not at an object name.
    if _CONTROL.search(target):
        raise _reject("control-char")
    end = len(target)
    for delimiter in (b"?", b"#"):
        at = target.find(delimiter, 0, end)
        if at >= 0:
            end = at
    raw_path = target[:end]
    if b" " in raw_path:
        raise _reject("invalid-char")
    if b"\\" in raw_path:
        raise _reject("backslash")
    decoded = _check_escapes(raw_path) if b"%" in raw_path else raw_path
    try:
        path = decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise _reject("bad-utf8") from None
    if "//" in path:
        raise _reject("empty-segment")
    if "/." in path:
        segments = path.split("/")
        if "." in segments or ".." in segments:
            raise _reject("dot-segment")
    return path
