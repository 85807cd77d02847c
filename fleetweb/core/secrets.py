"""Secrets shown once and stored hashed: API keys, enrollment tokens, host credentials.

A secret reads ``<kind>_<lookup>_<random>``: ``lookup`` is stored in clear and indexed so a
request costs one indexed query; the whole secret is stored as a SHA-256 digest (the random
part has 192 bits, so a slow password hash would add nothing but latency).
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass


@dataclass(frozen=True)
class NewSecret:
    lookup: str
    secret: str
    digest: str


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret(kind: str) -> NewSecret:
    lookup = secrets.token_hex(6)
    secret = f"{kind}_{lookup}_{secrets.token_urlsafe(24)}"
    return NewSecret(lookup=lookup, secret=secret, digest=digest(secret))


def split(secret: str, kind: str) -> str | None:
    """Return the lookup part of a well-formed secret of ``kind``, else None."""
    if not isinstance(secret, str) or len(secret) > 200:
        return None
    parts = secret.split("_", 2)
    if len(parts) != 3 or parts[0] != kind or len(parts[1]) != 12:
        return None
    return parts[1]


def matches(secret: str, stored_digest: str) -> bool:
    return hmac.compare_digest(digest(secret), stored_digest)
