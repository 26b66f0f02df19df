"""API passwords: the policy, Argon2id hashing and verification off the event loop.

The policy and the hasher's parameters are defined in ``gateway.config.passwords``
(the loader hashes ``api_password`` at load, and the configuration sits below this
layer); they are re-exported here. Verification costs ~25 ms of CPU and 19 MiB of
memory, so ``PasswordVerifier`` runs it in a worker thread (argon2-cffi releases the
GIL) with a bounded number at once: a burst of logins neither stalls the SIP path on
the event loop nor exhausts memory.
"""

from __future__ import annotations

import asyncio
import secrets

from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from gateway.config.passwords import (
    ARGON2_PARAMETERS,
    HASHER,
    MAX_LENGTH,
    MIN_LENGTH,
    POLICY_TEXT,
    SPECIALS,
    hash_password,
    hash_problem,
    is_password_hash,
    password_problem,
)

__all__ = [
    "ARGON2_PARAMETERS",
    "MAX_LENGTH",
    "MIN_LENGTH",
    "POLICY_TEXT",
    "SPECIALS",
    "PasswordVerifier",
    "dummy_hash",
    "hash_password",
    "hash_problem",
    "is_password_hash",
    "needs_rehash",
    "password_problem",
    "verify_password",
]


def verify_password(password_hash: str, password: str) -> bool:
    """True when ``password`` matches ``password_hash``; False for a mismatch or a
    malformed hash (never raises for bad input)."""
    try:
        return HASHER.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """True when the hash was made with other parameters than the current ones."""
    try:
        return HASHER.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


_dummy: str | None = None


def dummy_hash() -> str:
    """A hash of a random password with the current parameters, verified instead of a
    real one for unknown users so that they take as long as a wrong password."""
    global _dummy
    if _dummy is None:
        _dummy = hash_password(secrets.token_urlsafe(16))
    return _dummy


class PasswordVerifier:
    """Verify passwords in worker threads, at most ``concurrency`` at a time."""

    def __init__(self, concurrency: int = 2) -> None:
        self._slots = asyncio.Semaphore(concurrency)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Check ``password``; with no hash (unknown user, no API password) a dummy hash
        is checked instead, so the answer takes as long and is False."""
        async with self._slots:
            if password_hash is None:
                await asyncio.to_thread(verify_password, dummy_hash(), password)
                return False
            return await asyncio.to_thread(verify_password, password_hash, password)

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(hash_password, password)

    async def warm_up(self) -> None:
        """Compute the dummy hash now, so the first unknown-user login is not slower."""
        await asyncio.to_thread(dummy_hash)
