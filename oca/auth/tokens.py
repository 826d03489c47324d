"""Signed URL tokens: HMAC-SHA256 capabilities carried in the URL path.

Theory of operation
-------------------
A token is a capability: whoever holds it may GET any object whose path lies under
one path *prefix* (normally one title, ``/titles/tos/``) until an *expiry*, optionally
only from one client address or address block. The appliance holds a set of shared
secrets named by *key id*; the control plane signs with one of them and the appliance
accepts any key it currently holds, so keys rotate without downtime: add the new key
everywhere, start signing with it, remove the old one once its tokens have expired.

Tokens travel in the URL **path**, not the query string. A DASH player resolves the
MPD's relative segment URLs against a BaseURL, and RFC 3986 §5.2 reference resolution
drops the base's query, so a ``?token=`` would vanish after the first request. A path
segment survives resolution, so one signed BaseURL covers every segment of a title::

    /t/<token>/titles/tos/v720/seg-00042.m4s
     ^ TOKEN_PATH_MARKER   ^ object path, covered when it lies under the token's prefix

Wire format (version 1)
-----------------------
Six fields joined by ``.``::

    v1.<key_id>.<expires>.<prefix_b64>.<client_b64 | ~>.<signature_b64>

- ``v1``: the version tag.
- ``key_id``: 1-64 characters of ``[A-Za-z0-9_-]``.
- ``expires``: unix seconds, decimal, no sign and no leading zeros (``0`` is ``0``).
  The token is valid while ``now <= expires``.
- ``prefix_b64``: the UTF-8 prefix, base64url without padding. The prefix starts with
  ``/``. A prefix ending in ``/`` covers every path that starts with it; otherwise it
  covers itself and the paths under it *on a segment boundary*: ``/titles/tos`` covers
  ``/titles/tos`` and ``/titles/tos/x`` but not ``/titles/tos2/x``.
- ``client_b64``: the client restriction as ASCII text, base64url without padding,
  either one address (``203.0.113.7``, ``2001:db8::1``) or a CIDR block
  (``203.0.113.0/24``, ``2001:db8::/48``); ``~`` means any client. IPv4-mapped IPv6
  (``::ffff:203.0.113.7``) on either side compares as the IPv4 address.
- ``signature_b64``: ``HMAC-SHA256(secret, message)``, all 32 bytes, base64url without
  padding (43 characters), where ``message`` is the ASCII text of the first five
  fields exactly as they appear in the token, dots included
  (``v1.<key_id>.<expires>.<prefix_b64>.<client_b64 | ~>``). The version tag and
  every field are therefore signed, and since no field can contain ``.`` the message
  is unambiguous.

Every character is in ``[A-Za-z0-9._~-]`` (RFC 3986 unreserved), so a token is one
path segment that no client, proxy or player re-encodes. Decoding is strict: base64
must be canonical (what the encoder would have produced), and numbers canonical, so
each set of claims has exactly one spelling.

Verification order is fixed, and each failure names its reason
(:class:`oca.errors.TokenError`): ``malformed`` → ``unknown-key`` → ``bad-signature``
→ ``expired`` → ``path-not-covered`` → ``client-mismatch``. Signatures are compared
with :func:`hmac.compare_digest`.

Cost on the hot path
--------------------
Verification runs once per request, and a player fetches hundreds of segments with
one token. :class:`TokenVerifier` keys an HMAC object per secret once and ``copy()``s
it per verification, and keeps a bounded LRU from token text to parsed,
signature-checked claims, so the HMAC runs once per token rather than once per
request. Expiry, prefix and client are time- and request-dependent and are checked on
every call; parsed peer addresses are memoised too (a keep-alive connection presents
the same peer on every request). Measured here: about 0.3 µs per cached verification
without a client restriction, 0.6 µs with one, 15 µs uncached.

A verifier is immutable in its keys: on reload (SIGHUP) build a new
:class:`TokenVerifier` from the new key set and swap the reference in one assignment;
requests in flight finish against the old one, and the new one starts with an empty
cache, so a removed key stops verifying at once.

This module is pure: no I/O, and the clock is an argument.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from oca.errors import TokenError

__all__ = [
    "TOKEN_PATH_MARKER",
    "TOKEN_VERSION",
    "TokenClaims",
    "TokenVerifier",
    "sign_token",
    "signed_path",
    "split_token_path",
]

TOKEN_PATH_MARKER = "t"  # URLs are /t/<token>/<object path>
TOKEN_VERSION = "v1"

_MARKER_PREFIX = f"/{TOKEN_PATH_MARKER}/"
_ANY_CLIENT = "~"
_MAX_TOKEN_CHARS = 4096
_DEFAULT_CACHE_SIZE = 4096

_KEY_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_EXPIRES_RE = re.compile(r"0|[1-9][0-9]{0,18}")
_B64_RE = re.compile(r"[A-Za-z0-9_-]+")
_SIGNATURE_CHARS = 43  # 32 bytes of base64url without padding

_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_MAPPED_V4 = ipaddress.IPv6Network("::ffff:0:0/96")


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a token grants, as signed."""

    key_id: str
    expires: int
    prefix: str
    client: str | None  # "203.0.113.7" or "203.0.113.0/24" or IPv6 forms; None = any client


@dataclass(frozen=True, slots=True)
class _Verified:
    """Claims whose signature has been checked, with the client block pre-parsed."""

    claims: TokenClaims
    network: _IPNetwork | None


# --------------------------------------------------------------------------- encoding


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes | None:
    """Strict base64url without padding; None unless ``text`` is the canonical spelling."""
    if not _B64_RE.fullmatch(text) or len(text) % 4 == 1:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    # Reject non-zero padding bits: each byte string has exactly one valid spelling.
    return raw if _b64encode(raw) == text else None


def _unmap(address: _IPAddress) -> _IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _parse_network(text: str) -> _IPNetwork:
    """An address or CIDR block; IPv4-mapped IPv6 blocks become IPv4. Raises ValueError."""
    network = ipaddress.ip_network(text, strict=False)
    if (
        isinstance(network, ipaddress.IPv6Network)
        and network.prefixlen >= 96
        and network.subnet_of(_MAPPED_V4)
    ):
        v4 = _unmap(network.network_address)
        return ipaddress.ip_network(f"{v4}/{network.prefixlen - 96}")
    return network


def _canonical_client(client: str) -> str:
    """The one spelling of a client restriction: an address alone, or a masked block."""
    if "%" in client:
        raise ValueError(f"client {client!r}: IPv6 scope ids mean nothing off this host")
    network = _parse_network(client)
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network)


def _covers(prefix: str, path: str) -> bool:
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path == prefix or path.startswith(prefix + "/")


# --------------------------------------------------------------------------- signing


def _body(key_id: str, expires: int, prefix: str, client: str | None) -> str:
    client_field = _ANY_CLIENT if client is None else _b64encode(client.encode("ascii"))
    prefix_field = _b64encode(prefix.encode("utf-8"))
    return f"{TOKEN_VERSION}.{key_id}.{expires}.{prefix_field}.{client_field}"


def sign_token(
    key_id: str, secret: bytes, prefix: str, expires: int, client: str | None = None
) -> str:
    """A token granting ``prefix`` until ``expires`` (unix seconds), to ``client`` if given.

    ``client`` is an address or CIDR block; it is stored in canonical form (host bits
    of a block masked, IPv4-mapped IPv6 as IPv4). Raises ValueError for a key id,
    prefix, expiry or client that cannot be encoded.
    """
    if not _KEY_ID_RE.fullmatch(key_id):
        raise ValueError(f"key id {key_id!r} must be 1-64 characters of [A-Za-z0-9_-]")
    if not prefix.startswith("/"):
        raise ValueError(f"prefix {prefix!r} must start with '/'")
    if isinstance(expires, bool) or not isinstance(expires, int):
        raise ValueError(f"expires must be an int, got {expires!r}")
    if not _EXPIRES_RE.fullmatch(str(expires)):
        raise ValueError(f"expires {expires} must be a non-negative unix time below 10**19")
    if not secret:
        raise ValueError("secret must not be empty")
    canonical = None if client is None else _canonical_client(client)
    body = _body(key_id, expires, prefix, canonical)
    signature = hmac.new(secret, body.encode("ascii"), hashlib.sha256).digest()
    return f"{body}.{_b64encode(signature)}"


def signed_path(
    key_id: str,
    secret: bytes,
    path: str,
    expires: int,
    prefix: str | None = None,
    client: str | None = None,
) -> str:
    """``/t/<token>`` + ``path``, the token covering ``prefix`` (default: path's directory).

    ``path`` is the decoded object path (``/titles/tos/v720/seg-00042.m4s``); with no
    prefix the token covers its directory (``/titles/tos/v720/``). The result is a
    decoded path too: the token needs no escaping, so ``urllib.parse.quote(result)``
    gives the wire form when the object path has characters that need it.
    """
    if not path.startswith("/"):
        raise ValueError(f"path {path!r} must start with '/'")
    if prefix is None:
        prefix = path[: path.rfind("/") + 1]
    token = sign_token(key_id, secret, prefix, expires, client)
    return f"{_MARKER_PREFIX}{token}{path}"


def split_token_path(path: str) -> tuple[str | None, str]:
    """``/t/TOKEN/a/b`` -> ``("TOKEN", "/a/b")``; any other path -> ``(None, path)``.

    A path counts as signed only with a non-empty token segment followed by an object
    path (``/t/TOKEN`` alone is not signed).
    """
    if not path.startswith(_MARKER_PREFIX):
        return None, path
    end = path.find("/", len(_MARKER_PREFIX))
    if end <= len(_MARKER_PREFIX):  # no object path (-1) or an empty token segment
        return None, path
    return path[len(_MARKER_PREFIX) : end], path[end:]


# --------------------------------------------------------------------------- verifying


def _parse(token: str) -> tuple[TokenClaims, _IPNetwork | None, str, bytes]:
    """Claims, client block, signed message text and signature; TokenError("malformed")."""
    malformed = TokenError("malformed")
    if len(token) > _MAX_TOKEN_CHARS:
        raise malformed
    fields = token.split(".")
    if len(fields) != 6:
        raise malformed
    version, key_id, expires_text, prefix_field, client_field, signature_field = fields
    if version != TOKEN_VERSION or not _KEY_ID_RE.fullmatch(key_id):
        raise malformed
    if not _EXPIRES_RE.fullmatch(expires_text):
        raise malformed
    prefix_raw = _b64decode(prefix_field)
    if prefix_raw is None:
        raise malformed
    try:
        prefix = prefix_raw.decode("utf-8")
    except UnicodeDecodeError:
        raise malformed from None
    if not prefix.startswith("/"):
        raise malformed
    client: str | None = None
    network: _IPNetwork | None = None
    if client_field != _ANY_CLIENT:
        client_raw = _b64decode(client_field)
        if client_raw is None or not client_raw.isascii():
            raise malformed
        client = client_raw.decode("ascii")
        try:
            network = _parse_network(client)
        except ValueError:
            raise malformed from None
    if len(signature_field) != _SIGNATURE_CHARS:
        raise malformed
    signature = _b64decode(signature_field)
    if signature is None:
        raise malformed
    claims = TokenClaims(key_id=key_id, expires=int(expires_text), prefix=prefix, client=client)
    message = token[: len(token) - len(signature_field) - 1]
    return claims, network, message, signature


class TokenVerifier:
    """Checks tokens against a fixed set of keys; cheap to call once per request.

    The key set never changes after construction. To reload keys, build a new
    verifier and replace the reference to the old one in a single assignment.
    The cache is not locked: use one verifier per event loop thread.
    """

    __slots__ = ("_cache", "_cache_size", "_keys", "_peers")

    def __init__(self, keys: Mapping[str, bytes], cache_size: int = _DEFAULT_CACHE_SIZE) -> None:
        # hmac objects keyed once; verify() copies one instead of re-deriving the pads.
        self._keys: dict[str, hmac.HMAC] = {
            key_id: hmac.new(secret, digestmod=hashlib.sha256) for key_id, secret in keys.items()
        }
        self._cache: OrderedDict[str, _Verified] = OrderedDict()
        self._cache_size = max(0, cache_size)
        # Peer text -> parsed address (None if not an address): a keep-alive connection
        # presents the same peer on every request, and parsing costs more than the rest.
        self._peers: dict[str, _IPAddress | None] = {}

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def verify(self, token: str, path: str, now: float, client_ip: str) -> TokenClaims:
        """The token's claims if it grants ``path`` to ``client_ip`` at ``now``.

        ``path`` is the decoded object path (after :func:`split_token_path`);
        ``client_ip`` is the peer's address as text. Raises TokenError whose reason is
        one of ``malformed``, ``unknown-key``, ``bad-signature``, ``expired``,
        ``path-not-covered``, ``client-mismatch``, checked in that order.
        """
        verified = self._cache.get(token)
        if verified is None:
            verified = self._check_signature(token)
        else:
            self._cache.move_to_end(token)
        claims = verified.claims
        if now > claims.expires:
            raise TokenError("expired")
        if not _covers(claims.prefix, path):
            raise TokenError("path-not-covered")
        network = verified.network
        if network is not None:
            address = self._client_address(client_ip)
            if address is None or address not in network:
                raise TokenError("client-mismatch")
        return claims

    def _client_address(self, client_ip: str) -> _IPAddress | None:
        try:
            return self._peers[client_ip]
        except KeyError:
            pass
        address: _IPAddress | None
        try:
            address = _unmap(ipaddress.ip_address(client_ip))
        except ValueError:
            address = None
        if self._cache_size:
            if len(self._peers) >= self._cache_size:
                del self._peers[next(iter(self._peers))]  # oldest first: FIFO is enough here
            self._peers[client_ip] = address
        return address

    def _check_signature(self, token: str) -> _Verified:
        claims, network, message, signature = _parse(token)
        keyed = self._keys.get(claims.key_id)
        if keyed is None:
            raise TokenError("unknown-key")
        mac = keyed.copy()
        mac.update(message.encode("ascii"))
        if not hmac.compare_digest(mac.digest(), signature):
            raise TokenError("bad-signature")
        verified = _Verified(claims=claims, network=network)
        if self._cache_size:
            self._cache[token] = verified
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return verified
