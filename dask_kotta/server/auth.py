"""Tokens: made here, stored as SHA-256 hashes, checked on every request.

Tokens are 32 random bytes, so a plain SHA-256 (not a slow password hash) is
enough to make a leaked database useless for logging in.
"""

from __future__ import annotations

import hashlib
import secrets

TOKEN_PREFIX = "kt_"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header, or None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
