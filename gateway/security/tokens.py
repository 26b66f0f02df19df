"""Bearer tokens: opaque random strings, known to Redis only by their SHA-256.

A token is ``secrets.token_urlsafe(32)``: 256 random bits as 43 URL-safe characters.
It carries no data; the gateway keeps ``sha256(token)`` with the token's tenant, user,
role, extensions and expiry, so a leaked Redis dump yields no usable token. Hashing
with a plain SHA-256 is enough here (unlike passwords): the input has 256 bits of
entropy, so there is nothing to guess.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field
from typing import Literal

from gateway.security.principal import Principal, Role

TOKEN_BYTES = 32
TOKEN_LENGTH = 43  # base64url of 32 bytes, no padding
_FORMAT = re.compile(r"[A-Za-z0-9_-]{43}")


def new_token() -> str:
    """A fresh bearer token (43 URL-safe characters, 256 random bits)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def looks_like_token(text: str) -> bool:
    """True when ``text`` has the shape of a token; anything else is refused unhashed."""
    return _FORMAT.fullmatch(text) is not None


def token_hash(bearer: str) -> str:
    """How a token is stored and looked up: the hex SHA-256 of its text."""
    return hashlib.sha256(bearer.encode("ascii", "replace")).hexdigest()


def token_id(digest: str) -> str:
    """A short, non-secret name for a token (logs, audit): 16 hex digits of its hash."""
    return digest[:16]


@dataclass(frozen=True)
class Token:
    """A token just issued: the bearer text (shown once, never stored) and what it grants."""

    bearer: str = field(repr=False)
    principal: Principal

    @property
    def tenant(self) -> str:
        return self.principal.tenant

    @property
    def user(self) -> str | None:
        return self.principal.user

    @property
    def role(self) -> Role:
        return self.principal.role

    @property
    def extensions(self) -> frozenset[str]:
        return self.principal.extensions

    @property
    def expires_at(self) -> float:
        assert self.principal.expires_at is not None
        return self.principal.expires_at


@dataclass(frozen=True)
class LoginRefused:
    """A login that gave no token. ``reason`` "invalid" is the same for an unknown user,
    a wrong password and an unknown tenant (nothing leaks about which); "throttled" comes
    with the seconds to wait."""

    reason: Literal["invalid", "throttled"]
    retry_after: float = 0.0
