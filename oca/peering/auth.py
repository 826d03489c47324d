"""Authentication of appliance-to-appliance requests: an HMAC-SHA256 header.

Theory of operation
-------------------
When an appliance misses an object that a peer at the same site advertises, it asks
that peer with an ordinary GET carrying one extra header::

    X-Oca-Peer: id=<appliance>,exp=<expires>,sig=<hex HMAC-SHA256>

The peers of a site share one or more secrets. The signature covers, as UTF-8::

    "oca-peer-v1\\n" + appliance + "\\n" + method + "\\n" + path + "\\n" + str(expires)

- The signature binds the method and the path, so a captured header cannot be
  replayed to fetch another object, nor with another method.
- ``expires`` is unix seconds; the header is valid while ``now <= expires`` and a
  verifier refuses expiries more than ``max_ttl_seconds`` ahead of its clock. A signer
  uses a short lifetime, which bounds how long the same request can be replayed.
- Verification tries every key the verifier holds (:func:`hmac.compare_digest`
  against each, without stopping at the first match), so keys rotate without
  downtime: add the new key everywhere, start signing with it, drop the old one once
  the headers signed with it have expired.
- The hop limit is enforced by the server, not here: a request carrying this header
  is served from local storage only and never triggers a further peer fetch or an
  origin fill, so two appliances that both believe the other holds an object cannot
  bounce a request between them.

Checks run in a fixed order and each failure names its reason
(:class:`PeerAuthError`): ``no-key`` → ``malformed`` → ``expired`` →
``too-far-in-future`` → ``bad-signature``. The header is parsed strictly: exactly
the three fields in that order, an appliance id of 1-64 characters of
``[A-Za-z0-9._-]``, a canonical decimal expiry and 64 lowercase hex digits.

This module is pure: no I/O, and the clock is an argument.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from typing import Final, Literal, get_args

from oca.errors import OcaError

__all__ = [
    "PEER_HEADER",
    "PEER_HEADER_LOWER",
    "PeerAuthError",
    "PeerAuthReason",
    "is_appliance_id",
    "sign_peer",
    "verify_peer",
]

PEER_HEADER: Final = "X-Oca-Peer"
PEER_HEADER_LOWER: Final = b"x-oca-peer"

PeerAuthReason = Literal["malformed", "expired", "too-far-in-future", "bad-signature", "no-key"]
_REASONS: Final = frozenset(get_args(PeerAuthReason))

_MESSAGE_TAG: Final = b"oca-peer-v1"
_APPLIANCE_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HEADER_RE: Final = re.compile(
    r"id=(?P<id>[A-Za-z0-9._-]{1,64}),exp=(?P<exp>0|[1-9][0-9]{0,18}),sig=(?P<sig>[0-9a-f]{64})"
)


class PeerAuthError(OcaError):
    """A peer header cannot be checked (no key) or is malformed, stale or forged."""

    def __init__(self, reason: PeerAuthReason) -> None:
        if reason not in _REASONS:
            raise ValueError(f"unknown peer auth failure reason {reason!r}")
        self.reason: PeerAuthReason = reason
        super().__init__(reason)


def is_appliance_id(text: object) -> bool:
    """Whether ``text`` is a valid appliance id: 1-64 characters of ``[A-Za-z0-9._-]``."""
    return isinstance(text, str) and _APPLIANCE_RE.fullmatch(text) is not None


def _message(appliance: str, method: str, path: str, expires: str) -> bytes:
    return b"\n".join(
        (
            _MESSAGE_TAG,
            appliance.encode("utf-8"),
            method.encode("utf-8"),
            path.encode("utf-8"),
            expires.encode("ascii"),
        )
    )


def _signature(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def sign_peer(key: bytes, appliance: str, method: str, path: str, expires: int) -> str:
    """The ``X-Oca-Peer`` header value for one request; raises ValueError on bad input."""
    if not is_appliance_id(appliance):
        raise ValueError(f"appliance id {appliance!r} is not 1-64 characters of [A-Za-z0-9._-]")
    if isinstance(expires, bool) or not isinstance(expires, int) or not 0 <= expires < 10**19:
        raise ValueError(f"expires must be unix seconds in 0..10**19-1, got {expires!r}")
    if "\n" in method or "\n" in path:
        raise ValueError("method and path must not contain a newline")
    if not key:
        raise ValueError("the key must not be empty")
    sig = _signature(key, _message(appliance, method, path, str(expires)))
    return f"id={appliance},exp={expires},sig={sig}"


def verify_peer(
    value: str,
    method: str,
    path: str,
    now: float,
    keys: Sequence[bytes],
    *,
    max_ttl_seconds: float = 300.0,
) -> str:
    """The appliance id a valid ``X-Oca-Peer`` value names; raises :class:`PeerAuthError`.

    ``method`` and ``path`` are those of the request being served (the path as it
    appears in the request target); ``now`` is unix seconds.
    """
    if not keys:
        raise PeerAuthError("no-key")
    match = _HEADER_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None or "\n" in method or "\n" in path:
        raise PeerAuthError("malformed")
    appliance, exp_text, sig = match.group("id", "exp", "sig")
    expires = int(exp_text)
    if expires < now:
        raise PeerAuthError("expired")
    if expires > now + max_ttl_seconds:
        raise PeerAuthError("too-far-in-future")
    message = _message(appliance, method, path, exp_text)
    matched = False
    for key in keys:
        # No early exit: the time taken does not reveal which key matched.
        matched |= hmac.compare_digest(_signature(key, message), sig)
    if not matched:
        raise PeerAuthError("bad-signature")
    return appliance
