"""API password policy and Argon2id hashing, defined once.

They live in the configuration layer because the loader hashes ``api_password`` while it
reads the file (``Settings`` keeps the password only, unshown, for the directory's seed
to recognise it in the stored hash), and the configuration sits below
``gateway.security`` in the layer order. ``gateway.security.passwords``
re-exports them and adds verification.

Parameters: Argon2id, 19 MiB of memory, 2 passes, 1 lane, 16-byte salt, 32-byte tag:
the OWASP Password Storage Cheat Sheet's recommended Argon2id configuration (about
25 ms per hash on a 2020s server core). The parameters are stored in every hash, so
changing them later keeps old hashes verifiable (and ``needs_rehash`` says which to
upgrade).
"""

from __future__ import annotations

import re

import argon2
from argon2.exceptions import InvalidHashError

# The special characters of the policy (DESIGN.md, "Security").
SPECIALS = "#?!@$%^&*-~"
MIN_LENGTH = 8
MAX_LENGTH = 1024  # bounds the work per login; nobody types more

ARGON2_PARAMETERS = argon2.Parameters(
    type=argon2.Type.ID,
    version=argon2.low_level.ARGON2_VERSION,
    salt_len=16,
    hash_len=32,
    time_cost=2,
    memory_cost=19 * 1024,  # KiB
    parallelism=1,
)

HASHER = argon2.PasswordHasher.from_parameters(ARGON2_PARAMETERS)

# Hashes given in the configuration may use other parameters, within reason: a hash
# demanding gigabytes or minutes per login would turn every login into a denial of service.
MAX_MEMORY_COST = 256 * 1024  # KiB
MAX_TIME_COST = 16
MAX_PARALLELISM = 16

_PHC = re.compile(
    r"\$argon2id\$v=19\$m=[0-9]{1,10},t=[0-9]{1,4},p=[0-9]{1,3}"
    r"\$[A-Za-z0-9+/]{11,88}\$[A-Za-z0-9+/]{22,88}"
)

POLICY_TEXT = (
    f"use at least {MIN_LENGTH} characters with upper case, lower case, digit and one of {SPECIALS}"
)


def password_problem(password: str) -> str | None:
    """Why ``password`` fails the API password policy, or None when it passes.

    The policy: at least 8 characters, with an upper-case letter, a lower-case letter, a
    digit and one of ``#?!@$%^&*-~``. The message never quotes the password.
    """
    if len(password) > MAX_LENGTH:
        return f"too long: at most {MAX_LENGTH} characters"
    strong = (
        len(password) >= MIN_LENGTH
        and any(c.isupper() for c in password)
        and any(c.islower() for c in password)
        and any(c.isdigit() for c in password)
        and any(c in SPECIALS for c in password)
    )
    return None if strong else f"too weak: {POLICY_TEXT}"


def hash_password(password: str) -> str:
    """The Argon2id hash of ``password`` (PHC string ``$argon2id$v=19$m=…``), salted."""
    return HASHER.hash(password)


def hash_problem(text: str) -> str | None:
    """Why ``text`` is not an Argon2id hash this gateway accepts, or None when it is."""
    if not _PHC.fullmatch(text):
        return 'must be an Argon2id hash ("$argon2id$v=19$m=…,t=…,p=…$salt$hash")'
    try:
        params = argon2.extract_parameters(text)
    except InvalidHashError:
        return 'must be an Argon2id hash ("$argon2id$v=19$m=…,t=…,p=…$salt$hash")'
    if (
        params.memory_cost > MAX_MEMORY_COST
        or params.time_cost > MAX_TIME_COST
        or params.parallelism > MAX_PARALLELISM
    ):
        return (
            f"Argon2 parameters too costly (at most m={MAX_MEMORY_COST}, t={MAX_TIME_COST}, "
            f"p={MAX_PARALLELISM}): each login would cost that much"
        )
    return None


def is_password_hash(text: str) -> bool:
    """True for an Argon2id PHC string this gateway accepts and can verify."""
    return hash_problem(text) is None
