"""API password policy and Argon2id hashing (gateway.security.passwords)."""

from __future__ import annotations

import argon2
import pytest

from gateway.security.passwords import (
    ARGON2_PARAMETERS,
    SPECIALS,
    PasswordVerifier,
    dummy_hash,
    hash_password,
    hash_problem,
    is_password_hash,
    needs_rehash,
    password_problem,
    verify_password,
)

WEAK = (
    "too weak: use at least 8 characters with upper case, lower case, digit and one of "
    "#?!@$%^&*-~"
)


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("Abcdef1!", None),  # exactly 8, every class
        ("Correct-Horse-9", None),
        ("ÄÖÜäöü1~", None),  # Unicode letters count as upper/lower case
        *((f"Abcdefg1{c}", None) for c in SPECIALS),  # each special character
        ("Abcde1!", WEAK),  # 7 characters
        ("abcdefg1!", WEAK),  # no upper case
        ("ABCDEFG1!", WEAK),  # no lower case
        ("Abcdefgh!", WEAK),  # no digit
        ("Abcdefgh1", WEAK),  # no special
        ("Abcdefg1_", WEAK),  # "_" is not one of the specials
        ("Abcdefg1 ", WEAK),  # nor is a space
        ("", WEAK),
        ("A1!a" + "x" * 1021, "too long: at most 1024 characters"),
    ],
)
def test_policy(password: str, problem: str | None) -> None:
    assert password_problem(password) == problem


def test_policy_message_never_quotes_the_password() -> None:
    problem = password_problem("secretpw")
    assert problem is not None and "secretpw" not in problem


def test_argon2_round_trip() -> None:
    hashed = hash_password("Abcdef1!")
    assert hashed.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert verify_password(hashed, "Abcdef1!")
    assert not verify_password(hashed, "Abcdef1?")
    assert not verify_password(hashed, "")
    assert hash_password("Abcdef1!") != hashed  # salted
    assert not needs_rehash(hashed)


def test_parameters_are_sane() -> None:
    # OWASP's Argon2id recommendation: 19 MiB, 2 passes, 1 lane.
    assert ARGON2_PARAMETERS.type is argon2.Type.ID
    assert ARGON2_PARAMETERS.memory_cost >= 19 * 1024
    assert ARGON2_PARAMETERS.time_cost >= 2
    assert ARGON2_PARAMETERS.salt_len >= 16 and ARGON2_PARAMETERS.hash_len >= 32


def test_other_parameters_verify_and_ask_for_a_rehash() -> None:
    old = argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash("Abcdef1!")
    assert is_password_hash(old)
    assert verify_password(old, "Abcdef1!")
    assert needs_rehash(old)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Abcdef1!",
        "$argon2i$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNo",
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ",
        "$2b$12$abcdefghijklmnopqrstuuFQ6mYv4yBH1wYqJH7cJQ6l9b1JrYz7e",  # bcrypt
    ],
)
def test_not_a_hash(text: str) -> None:
    assert not is_password_hash(text)
    assert hash_problem(text) == (
        'must be an Argon2id hash ("$argon2id$v=19$m=…,t=…,p=…$salt$hash")'
    )
    assert not verify_password(text, "Abcdef1!")  # never raises


def test_costly_hash_is_refused() -> None:
    costly = hash_password("Abcdef1!").replace("m=19456", "m=4194304")
    assert hash_problem(costly) == (
        "Argon2 parameters too costly (at most m=262144, t=16, p=16): each login would "
        "cost that much"
    )


async def test_verifier_runs_off_the_loop_and_handles_missing_hashes() -> None:
    verifier = PasswordVerifier(concurrency=1)
    await verifier.warm_up()
    hashed = await verifier.hash("Abcdef1!")
    assert await verifier.verify(hashed, "Abcdef1!")
    assert not await verifier.verify(hashed, "nope")
    assert not await verifier.verify(None, "Abcdef1!")  # unknown user: dummy work, False
    assert verify_password(dummy_hash(), "Abcdef1!") is False
    assert dummy_hash() == dummy_hash()  # computed once
