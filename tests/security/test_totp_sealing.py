"""TOTP secrets sealed at rest (security/totp_sealing.py), against a real Redis: no
form of a secret in any stored byte; a sealed secret moved to another user, altered,
or read with another key fails the login closed (logged without the secret, audited),
never a crash; a secret stored in clear before sealing existed still works and is
sealed, at its next use and at a node's start; a rotation to a new key; the fallback
to [sip] auth_secret; no key at all refuses enrolment."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.config import ConfigError, load_settings
from gateway.security import keys, totp
from gateway.security.directory import Directory, DirectoryError
from gateway.security.second_factor import Challenge
from gateway.security.tokens import LoginRefused, Token
from gateway.security.totp_sealing import KeyRing, SealError
from tests.security.test_second_factor import (
    PASSWORD,
    SOURCE,
    T0,
    TOTP_KEY,
    Clock,
    enrolled,
    tenant_block,
)

OTHER_KEY = "another-totp-key-for-the-same-data-set-9876"
AUTH_SECRET = "sip-auth-secret-0123456789"
DirectoryFactory = Callable[..., Awaitable[Directory]]


@pytest.fixture
def url(redis_server: str) -> str:
    return redis_server.rsplit("/", 1)[0] + "/13"  # this module's database


@pytest.fixture
async def redis(url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
async def directories(
    tmp_path: Path, url: str, redis: aioredis.Redis
) -> AsyncIterator[DirectoryFactory]:
    """Directories (nodes) on the same Redis, each with its own keys; all share a clock."""
    started: list[Directory] = []
    clock = Clock()

    async def start(
        totp_key: str | None = TOTP_KEY, previous: str | None = None, auth_secret: str | None = None
    ) -> Directory:
        lines = ["login_max_failures = 20"]  # the tests below fail on purpose, often
        lines += [f'totp_key = "{totp_key}"'] if totp_key else []
        lines += [f'totp_previous_key = "{previous}"'] if previous else []
        sip = f'[sip]\nauth_secret = "{auth_secret}"\n' if auth_secret else ""
        config = tmp_path / f"node{len(started)}.toml"
        config.write_text(
            sip + "[security]\n" + "\n".join(lines) + "\n" + tenant_block("red", None)
        )
        directory = Directory(
            url, load_settings(config, env={"SIPGW_REDIS__URL": url}), clock=clock
        )
        started.append(directory)
        await directory.start()
        return directory

    yield start
    for directory in started:
        await directory.stop()


async def login(directory: Directory, code: str, user: str = "alice") -> Token | LoginRefused:
    challenge = await directory.login("red", user, PASSWORD, SOURCE)
    assert isinstance(challenge, Challenge), challenge
    return await directory.complete_login(
        challenge.bearer, code=code, recovery_code=None, source=SOURCE
    )


def now_code(directory: Directory, key: bytes, steps: int = 0) -> str:
    return totp.totp(key, directory.second_factors._clock() + steps * totp.PERIOD)


async def record(redis: aioredis.Redis, user: str = "alice") -> dict[str, object]:
    raw = await redis.hget(keys.totp("red"), user)
    assert raw is not None
    data: dict[str, object] = json.loads(raw)
    return data


def forms(key: bytes) -> list[bytes]:
    """Every spelling of a secret worth searching a dump for."""
    b32 = totp.to_base32(key).encode()
    return [b32, b32.lower(), key, key.hex().encode(), base64.b64encode(key).rstrip(b"=")]


async def every_byte(redis: aioredis.Redis) -> bytes:
    """Every key, field and value of the database as the bytes Redis holds."""
    seen: list[bytes] = []
    async for key in redis.scan_iter():
        seen.append(key)
        kind = await redis.type(key)
        if kind == b"hash":
            for field, value in (await redis.hgetall(key)).items():
                seen += [field, value]
        elif kind == b"string":
            seen.append(await redis.get(key) or b"")
        elif kind == b"stream":
            for _, entry in await redis.xrange(key):
                seen += [b for pair in entry.items() for b in pair]
        elif kind == b"zset":
            seen += await redis.zrange(key, 0, -1)
        else:
            assert kind in (b"set", b"list"), kind
            seen += await (redis.smembers(key) if kind == b"set" else redis.lrange(key, 0, -1))
    return b"\n".join(seen)


async def test_no_stored_byte_holds_the_secret(
    directories: DirectoryFactory, redis: aioredis.Redis
) -> None:
    directory = await directories()
    pending = await directory.enrol_second_factor("red", "alice", source="test")
    key = totp.from_base32(pending.secret)
    stored = await every_byte(redis)
    assert [f for f in forms(key) if f in stored] == []  # pending: sealed already
    codes = await directory.confirm_second_factor(
        "red", "alice", now_code(directory, key, -1), source="test"
    )
    assert isinstance(codes, tuple)
    assert isinstance(await login(directory, now_code(directory, key)), Token)
    stored = await every_byte(redis)
    assert [f for f in forms(key) if f in stored] == []
    assert [c for c in codes if c.encode() in stored] == []  # recovery codes: hashes only
    sealed = await record(redis)
    assert "secret" not in sealed and str(sealed["sealed"]).startswith("v1.")


async def test_a_sealed_secret_moved_to_another_user_does_not_open(
    directories: DirectoryFactory, redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    directory = await directories()
    await directory.add_user("red", "mallory", PASSWORD, source="test")
    alice = await enrolled(directory)
    await enrolled(directory, user="mallory")
    # Mallory, who can write to Redis, puts Alice's record in place of her own...
    await redis.hset(keys.totp("red"), "mallory", await redis.hget(keys.totp("red"), "alice"))
    caplog.set_level(logging.DEBUG)
    # ...and Alice's phone does not log Mallory in.
    refused = await login(directory, now_code(directory, alice), user="mallory")
    assert refused == LoginRefused("invalid")
    assert ("login.totp", "unreadable_secret") in await results(directory)
    assert_warned_without_secret(caplog, alice, "mallory")
    # Alice's own login is untouched.
    assert isinstance(await login(directory, now_code(directory, alice)), Token)


async def test_an_altered_sealed_secret_fails_closed(
    directories: DirectoryFactory, redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    directory = await directories()
    key = await enrolled(directory)
    data = await record(redis)
    version, key_id, box = str(data["sealed"]).split(".")
    flipped = box[:20] + ("A" if box[20] != "A" else "B") + box[21:]
    caplog.set_level(logging.DEBUG)
    for sealed in (
        f"{version}.{key_id}.{flipped}",  # one byte of the ciphertext
        f"{version}.{key_id}.{box[:-4]}",  # the tag cut short
        f"{version}.00000000.{box}",  # a key id nobody has
        f"v2.{key_id}.{box}",  # a format this node does not know
        "not sealed at all",
    ):
        await redis.hset(keys.totp("red"), "alice", json.dumps({**data, "sealed": sealed}))
        refused = await login(directory, now_code(directory, key))
        assert refused == LoginRefused("invalid"), sealed
    assert (await results(directory)).count(("login.totp", "unreadable_secret")) == 5
    assert_warned_without_secret(caplog, key, "alice")


async def test_another_key_does_not_open_it_and_the_login_fails_closed(
    directories: DirectoryFactory, caplog: pytest.LogCaptureFixture
) -> None:
    first = await directories()
    key = await enrolled(first)
    misconfigured = await directories(totp_key=OTHER_KEY)
    caplog.set_level(logging.DEBUG)
    assert await login(misconfigured, now_code(first, key)) == LoginRefused("invalid")
    assert ("login.totp", "unreadable_secret") in await results(misconfigured)
    assert_warned_without_secret(caplog, key, "alice")
    # The node with the right key still logs Alice in (the record was left as it was).
    assert isinstance(await login(first, now_code(first, key, 1)), Token)


async def test_a_secret_stored_in_clear_still_works_and_is_sealed_at_its_use(
    directories: DirectoryFactory, redis: aioredis.Redis
) -> None:
    directory = await directories()
    key = await write_clear_record(redis)
    assert isinstance(await login(directory, now_code(directory, key)), Token)
    sealed = await record(redis)
    assert "secret" not in sealed and str(sealed["sealed"]).startswith("v1.")
    assert sealed["confirmed"] is True and sealed["created_at"] == T0 - 3600
    assert [f for f in forms(key) if f in await every_byte(redis)] == []
    assert isinstance(await login(directory, now_code(directory, key, 1)), Token)


async def test_secrets_stored_in_clear_are_sealed_when_a_node_starts(
    directories: DirectoryFactory, redis: aioredis.Redis
) -> None:
    keyless = await directories(totp_key=None)  # an old node: nothing to seal with
    key = await write_clear_record(redis)
    assert isinstance(await login(keyless, now_code(keyless, key)), Token)
    assert (await record(redis))["secret"] == totp.to_base32(key)  # left in clear

    node = await directories()  # its start seals it, before anybody logs in
    assert "secret" not in await record(redis)
    assert [f for f in forms(key) if f in await every_byte(redis)] == []
    assert await node.seal_second_factors() == 0  # nothing left to do
    assert isinstance(await login(node, now_code(node, key, 1)), Token)


async def test_a_rotation_to_a_new_key(
    directories: DirectoryFactory, redis: aioredis.Redis
) -> None:
    old = await directories()
    key = await enrolled(old)
    old_id = str((await record(redis))["sealed"]).split(".")[1]
    # The new key, the old one kept to open: the start seals again with the new one.
    rotated = await directories(totp_key=OTHER_KEY, previous=TOTP_KEY)
    new_id = str((await record(redis))["sealed"]).split(".")[1]
    assert new_id != old_id and new_id == KeyRing(OTHER_KEY).current_id
    assert isinstance(await login(rotated, now_code(rotated, key)), Token)
    # Then the old key can go; a node still on it alone no longer opens the secret.
    new_only = await directories(totp_key=OTHER_KEY)
    assert isinstance(await login(new_only, now_code(old, key, 1)), Token)
    assert await login(old, now_code(old, key, -1)) == LoginRefused("invalid")
    assert ("login.totp", "unreadable_secret") in await results(old)


async def test_auth_secret_serves_without_totp_key_and_hands_over_to_it(
    directories: DirectoryFactory, redis: aioredis.Redis
) -> None:
    sip_only = await directories(totp_key=None, auth_secret=AUTH_SECRET)
    key = await enrolled(sip_only)
    assert str((await record(redis))["sealed"]).split(".")[1] == KeyRing(AUTH_SECRET).current_id
    # A dedicated key set later: auth_secret still opens, and the start seals with it.
    dedicated = await directories(auth_secret=AUTH_SECRET)
    assert str((await record(redis))["sealed"]).split(".")[1] == KeyRing(TOTP_KEY).current_id
    assert isinstance(await login(dedicated, now_code(dedicated, key)), Token)


async def test_with_no_key_at_all_enrolment_is_refused(
    directories: DirectoryFactory, tmp_path: Path, redis: aioredis.Redis
) -> None:
    keyless = await directories(totp_key=None)
    with pytest.raises(DirectoryError, match=r"\[security\] totp_key"):
        await keyless.enrol_second_factor("red", "alice", source="test")
    assert await redis.hget(keys.totp("red"), "alice") is None
    # A tenant whose users must enrol cannot be configured without a key.
    config = tmp_path / "compulsory.toml"
    config.write_text(tenant_block("all", "everyone"))
    with pytest.raises(ConfigError, match=r"security\.totp_key: required"):
        load_settings(config, env={})
    config.write_text(f'[security]\ntotp_key = "{TOTP_KEY[:31]}"\n')
    with pytest.raises(ConfigError, match="at least 32 characters") as err:
        load_settings(config, env={})
    assert TOTP_KEY[:31] not in str(err.value)


def test_the_key_ring_binds_each_secret_to_its_user_and_tenant() -> None:
    ring = KeyRing(TOTP_KEY)
    secret = totp.to_base32(totp.new_secret())
    sealed = ring.seal(secret, tenant="red", user="alice")
    assert ring.seal(secret, tenant="red", user="alice") != sealed  # a fresh nonce each
    assert ring.unseal(sealed, tenant="red", user="alice") == (secret, True)
    for tenant, user in (("red", "bob"), ("blue", "alice"), ("re", "dalice")):
        with pytest.raises(SealError):
            ring.unseal(sealed, tenant=tenant, user=user)
    assert KeyRing(OTHER_KEY, TOTP_KEY).unseal(sealed, tenant="red", user="alice") == (
        secret,
        False,
    )
    assert TOTP_KEY not in repr(ring) and not KeyRing(None, None).can_seal


# --- helpers --------------------------------------------------------------------------------


async def write_clear_record(redis: aioredis.Redis) -> bytes:
    """Alice's confirmed enrolment exactly as the code before sealing wrote it."""
    key = totp.new_secret()
    old = {"confirmed": True, "created_at": T0 - 3600, "reset": False,
           "secret": totp.to_base32(key)}  # fmt: skip
    text = json.dumps(old, separators=(",", ":"), sort_keys=True)
    await redis.hset(keys.totp("red"), "alice", text)
    return key


async def results(directory: Directory) -> list[tuple[str, str]]:
    return [(e.event, e.result) for e in await directory.audit_entries("red")]


def assert_warned_without_secret(caplog: pytest.LogCaptureFixture, key: bytes, user: str) -> None:
    warnings = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and "TOTP secret" in r.getMessage()
    ]
    assert warnings and all(user in r.getMessage() for r in warnings)
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert totp.to_base32(key) not in logged and TOTP_KEY not in logged
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
