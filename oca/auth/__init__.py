"""Signed URLs: HMAC tokens in the URL path that grant a path prefix until an expiry.

See :mod:`oca.auth.tokens` for the wire format and the verification rules.
"""

from __future__ import annotations

from oca.auth.tokens import (
    TOKEN_PATH_MARKER,
    TokenClaims,
    TokenVerifier,
    sign_token,
    signed_path,
    split_token_path,
)

__all__ = [
    "TOKEN_PATH_MARKER",
    "TokenClaims",
    "TokenVerifier",
    "sign_token",
    "signed_path",
    "split_token_path",
]
