"""URL tokens for appliances: the control plane's half of the v1 token format (pure).

Theory of operation
-------------------
Appliances accept a content request only with a token in its path
(``/t/<token>/titles/tos/v720/seg-00042.m4s``) that an HMAC-SHA256 key they hold has
signed; steering hands those URLs to players. Tokens travel in the path because a DASH
player resolves relative segment URLs against a BaseURL and RFC 3986 §5.2 drops the
base's query, while a path segment survives; so one token per title *prefix* signs a
whole MPD: the BaseURL ``http://10.1.0.1:8080/t/<token>/titles/tos/`` covers every
segment below it.

The wire format (version 1, shared with the appliance's verifier) is six fields joined
by ``.``::

    v1.<key_id>.<expires>.<prefix_b64>.<client_b64 | ~>.<signature_b64>

``expires`` is decimal unix seconds without leading zeros, ``prefix_b64`` the UTF-8
prefix and ``client_b64`` the ASCII client restriction (one address or a CIDR block in
canonical form: host bits masked, IPv4-mapped IPv6 written as IPv4), both base64url
without padding, ``~`` for any client; the signature is HMAC-SHA256 over the first
five fields as written, dots included, base64url without padding. Every character is
RFC 3986 unreserved, so the token is one path segment nobody re-encodes.

Rotation: a :class:`Signer` holds several keys and signs with one of them. Roll a key
by adding it to every appliance, then making it the signing key here, then removing
the old one from the appliances once the tokens it signed have expired.

The clock is an argument (``expires``), so this module does no I/O and reads no time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Mapping
from urllib.parse import quote, urlsplit

__all__ = [
    "MIN_SECRET_BYTES",
    "TOKEN_PATH_MARKER",
    "Signer",
    "SigningError",
    "canonical_client",
    "split_signed_path",
]

TOKEN_PATH_MARKER = "t"  # URLs are /t/<token>/<object path>
TOKEN_VERSION = "v1"
MIN_SECRET_BYTES = 32

_MARKER_PREFIX = f"/{TOKEN_PATH_MARKER}/"
_ANY_CLIENT = "~"
_KEY_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MAX_EXPIRES = 10**19 - 1
_MAPPED_V4 = ipaddress.IPv6Network("::ffff:0:0/96")


class SigningError(ValueError):
    """A key, prefix, expiry, client or base URL that cannot be signed; names the field."""

    def __init__(self, field: str, detail: str) -> None:
        self.field = field
        self.detail = detail
        super().__init__(f"{field}: {detail}")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def canonical_client(client: str) -> str:
    """The one spelling of a client restriction: an address alone or a masked block."""
    if "%" in client:
        raise SigningError("client", f"{client!r}: IPv6 scope ids mean nothing off this host")
    try:
        network: ipaddress.IPv4Network | ipaddress.IPv6Network = ipaddress.ip_network(
            client, strict=False
        )
    except ValueError:
        raise SigningError("client", f"{client!r} is not an IP address or CIDR block") from None
    if (
        isinstance(network, ipaddress.IPv6Network)
        and network.prefixlen >= 96
        and network.subnet_of(_MAPPED_V4)
    ):
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None
        network = ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - 96}")
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network)


def _secret(key_id: str, secret: bytes | str) -> bytes:
    if isinstance(secret, str):
        try:
            raw = bytes.fromhex(secret)
        except ValueError:
            raise SigningError(f"keys[{key_id}]", "must be hex") from None
    else:
        raw = bytes(secret)
    if len(raw) < MIN_SECRET_BYTES:
        raise SigningError(
            f"keys[{key_id}]", f"must be at least {MIN_SECRET_BYTES} bytes, got {len(raw)}"
        )
    return raw


def _origin(base_url: str) -> str:
    """``scheme://host[:port]`` of an appliance base URL, without a trailing slash."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SigningError("base_url", f"{base_url!r} is not an http(s) URL")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise SigningError(
            "base_url", f"{base_url!r} must be scheme://host[:port] (appliances serve from /)"
        )
    return f"{parts.scheme}://{parts.netloc}"


def split_signed_path(path: str) -> tuple[str | None, str]:
    """``/t/TOKEN/a/b`` -> ``("TOKEN", "/a/b")``; any other path -> ``(None, path)``."""
    if not path.startswith(_MARKER_PREFIX):
        return None, path
    end = path.find("/", len(_MARKER_PREFIX))
    if end <= len(_MARKER_PREFIX):
        return None, path
    return path[len(_MARKER_PREFIX) : end], path[end:]


class Signer:
    """Signs tokens with one of the keys it holds.

    ``keys`` maps key id to secret, either bytes or a hex string (as in the appliance
    configuration), at least 32 bytes each; ``signing_key_id`` names the one that signs.
    """

    __slots__ = ("_keys", "_signing_key_id")

    def __init__(self, keys: Mapping[str, bytes | str], signing_key_id: str) -> None:
        if not keys:
            raise SigningError("keys", "at least one key is needed")
        parsed: dict[str, bytes] = {}
        for key_id, secret in keys.items():
            if not _KEY_ID_RE.fullmatch(key_id):
                raise SigningError("keys", f"key id {key_id!r} must be 1-64 of [A-Za-z0-9_-]")
            parsed[key_id] = _secret(key_id, secret)
        if signing_key_id not in parsed:
            raise SigningError("signing_key_id", f"{signing_key_id!r} is not among the keys")
        self._keys = parsed
        self._signing_key_id = signing_key_id

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    @property
    def signing_key_id(self) -> str:
        return self._signing_key_id

    def with_signing_key(self, signing_key_id: str) -> Signer:
        """The same keys, signing with another one (rotation step two)."""
        return Signer(self._keys, signing_key_id)

    def token(self, prefix: str, expires: int, client: str | None = None) -> str:
        """A token granting every path under ``prefix`` until ``expires`` (unix seconds),
        to ``client`` (an address or CIDR block) when given."""
        if not prefix.startswith("/"):
            raise SigningError("prefix", f"{prefix!r} must start with '/'")
        if isinstance(expires, bool) or not isinstance(expires, int):
            raise SigningError("expires", f"must be an int, got {expires!r}")
        if not 0 <= expires <= _MAX_EXPIRES:
            raise SigningError("expires", f"{expires} must be a unix time in 0..{_MAX_EXPIRES}")
        client_field = _ANY_CLIENT
        if client is not None:
            client_field = _b64(canonical_client(client).encode("ascii"))
        prefix_field = _b64(prefix.encode("utf-8"))
        body = f"{TOKEN_VERSION}.{self._signing_key_id}.{expires}.{prefix_field}.{client_field}"
        mac = hmac.new(self._keys[self._signing_key_id], body.encode("ascii"), hashlib.sha256)
        return f"{body}.{_b64(mac.digest())}"

    def signed_path(
        self, path: str, expires: int, prefix: str | None = None, client: str | None = None
    ) -> str:
        """``/t/<token>`` + ``path`` (decoded), the token covering ``prefix`` (default:
        the path's directory)."""
        if not path.startswith("/"):
            raise SigningError("path", f"{path!r} must start with '/'")
        if prefix is None:
            prefix = path[: path.rfind("/") + 1]
        return f"{_MARKER_PREFIX}{self.token(prefix, expires, client)}{path}"

    def signed_base(
        self, base_url: str, prefix: str, expires: int, client: str | None = None
    ) -> str:
        """``base_url`` + ``/t/<token>`` + ``prefix``, percent-encoded: the BaseURL under
        which every object of the title (prefix) resolves with the token.

        ``Signer(...).signed_base("http://10.1.0.1:8080", "/titles/tos/", exp)`` ->
        ``http://10.1.0.1:8080/t/v1.k1.<exp>.L3RpdGxlcy90b3Mv.~.<sig>/titles/tos/``.
        """
        return _origin(base_url) + self.signed_prefix(prefix, expires, client)

    def signed_prefix(self, prefix: str, expires: int, client: str | None = None) -> str:
        """``/t/<token>`` + ``prefix``, percent-encoded: what :meth:`signed_base` puts
        after any appliance's origin (one token serves every appliance)."""
        return f"{_MARKER_PREFIX}{self.token(prefix, expires, client)}{quote(prefix)}"

    def signed_url(
        self,
        base_url: str,
        path: str,
        expires: int,
        prefix: str | None = None,
        client: str | None = None,
    ) -> str:
        """The URL of one object on an appliance, percent-encoded."""
        origin = _origin(base_url)
        signed = self.signed_path(path, expires, prefix, client)
        token, object_path = split_signed_path(signed)
        return f"{origin}{_MARKER_PREFIX}{token}{quote(object_path)}"
