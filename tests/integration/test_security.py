"""The security layer against a real redis-server: logins, audit, throttling, tokens,
tenant isolation, seeding, the CLI, and the HTTP routes (httpx + ASGITransport)."""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import secrets
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import argon2
import httpx
import pytest
import redis
import redis.asyncio as aioredis
from fastapi import Depends, FastAPI

from gateway.api.auth import auth_router, ensure_extension, ensure_tenant, require_principal
from gateway.cli import admin as cli_admin
from gateway.config import Settings, load_settings
from gateway.security import keys
from gateway.security.directory import Directory, DirectoryError, DirectoryUnavailable
from gateway.security.passwords import hash_password, needs_rehash
from gateway.security.principal import Principal
from gateway.security.tokens import LoginRefused, Token, token_hash
from tests.peers import ports

DB = 9  # this module's database index on the session's redis-server (flushed per test)

ALICE_PW = "Api-pass-201!"
BOSS_PW = "Boss-pass-209!"
OTHER_ALICE_PW = "Other-alice-1!"


class Clock:
    """Real time plus a hand-moved offset (token expiry is checked against it)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def config_text(a: str, b: str, *, lockout: float = 60.0, extra_a_users: str = "") -> str:
    return f"""
default_tenant = "{a}"
[node]
name = "sec-test"
[security]
token_ttl = 3600
login_max_failures = 3
login_max_failures_per_source = 8
login_lockout = {lockout}
audit_maxlen = 1000
trusted_proxies = ["10.9.0.0/16"]

[[tenants]]
id = "{a}"
name = "Tenant A"
domains = ["{a}.example"]
[[tenants.users]]
username = "alice"
extension = "201"
password = "Sip-pass-201"
api_password = "{ALICE_PW}"
extensions = ["202"]
[[tenants.users]]
username = "bob"
extension = "202"
password = "Sip-pass-202"
[[tenants.users]]
username = "boss"
extension = "209"
password = "Sip-pass-209"
api_password = "{BOSS_PW}"
role = "admin"
{extra_a_users}
[[tenants]]
id = "{b}"
name = "Tenant B"
domains = ["{b}.example"]
[[tenants.users]]
username = "alice"
extension = "201"
password = "Sip-pass-B201"
api_password = "{OTHER_ALICE_PW}"
"""


def settings_for(tmp_path: Path, text: str, url: str) -> Settings:
    file = tmp_path / f"sipgw-{secrets.token_hex(4)}.toml"
    file.write_text(text)
    return load_settings(file, env={"SIPGW_REDIS__URL": url})


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    url = redis_server.rsplit("/", 1)[0] + f"/{DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    yield url


@pytest.fixture
def ids() -> tuple[str, str]:
    suffix = secrets.token_hex(3)
    return f"a-{suffix}", f"b-{suffix}"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, ids: tuple[str, str]) -> Settings:
    return settings_for(tmp_path, config_text(*ids), redis_url)


@pytest.fixture
async def directory(settings: Settings, redis_url: str, clock: Clock) -> AsyncIterator[Directory]:
    d = Directory(redis_url, settings, clock=clock)
    await d.start()
    yield d
    await d.stop()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def login_ok(d: Directory, tenant: str | None, user: str, pw: str, src: str) -> Token:
    result = await d.login(tenant, user, pw, src)
    assert isinstance(result, Token), result
    return result


# --- logins and audit -------------------------------------------------------------------


async def test_login_ok_gives_a_token_and_is_audited(
    directory: Directory, ids: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    a, _ = ids
    caplog.set_level(logging.INFO, logger="sipgw.audit")
    before = time.time()
    token = await login_ok(directory, a, "alice", ALICE_PW, "192.0.2.10")

    assert (token.tenant, token.user, token.role) == (a, "alice", "user")
    assert token.extensions == frozenset({"201", "202"})
    assert token.expires_at == pytest.approx(time.time() + 3600, abs=5)
    principal = await directory.token(token.bearer)
    assert principal == token.principal

    [entry] = await directory.audit_entries(a)
    assert (entry.event, entry.result, entry.user, entry.source) == (
        "login", "ok", "alice", "192.0.2.10",
    )  # fmt: skip
    assert entry.tenant == a and entry.node == "sec-test" and entry.ref == principal.token_id
    assert entry.at.endswith("Z") and entry.at >= time.strftime(
        "%Y-%m-%dT%H:%M:%S", time.gmtime(before - 1)
    )
    [record] = [r for r in caplog.records if r.name == "sipgw.audit"]
    assert (record.event, record.result, record.user, record.source, record.tenant) == (  # type: ignore[attr-defined]
        "login", "ok", "alice", "192.0.2.10", a,
    )  # fmt: skip
    assert ALICE_PW not in caplog.text and token.bearer not in caplog.text


async def test_default_tenant_when_none_is_named(
    directory: Directory, ids: tuple[str, str]
) -> None:
    token = await login_ok(directory, None, "alice", ALICE_PW, "192.0.2.11")
    assert token.tenant == ids[0]


async def test_refusals_look_alike_but_are_audited_apart(
    directory: Directory, ids: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    a, _ = ids
    caplog.set_level(logging.INFO, logger="sipgw.audit")
    cases = [
        (a, "alice", "Wrong-pass-1!", "bad_password"),
        (a, "mallory", ALICE_PW, "unknown_user"),
        (a, "bob", "Sip-pass-202", "no_api_password"),  # a SIP-only user
        ("no-such-tenant", "alice", ALICE_PW, "unknown_tenant"),
    ]
    for i, (tenant, user, pw, _) in enumerate(cases):
        assert await directory.login(tenant, user, pw, f"192.0.2.{20 + i}") == LoginRefused(
            "invalid"
        )
    entries = await directory.audit_entries(a)
    assert [(e.user, e.result) for e in reversed(entries)] == [
        (user, result) for tenant, user, _, result in cases if tenant == a
    ]
    [stray] = await directory.audit_entries(None)  # the global stream
    assert (stray.result, stray.detail, stray.user) == (
        "unknown_tenant", 'tenant "no-such-tenant"', "alice",
    )  # fmt: skip
    for _, _, pw, _ in cases:
        assert pw not in caplog.text
    failures = [r for r in caplog.records if r.name == "sipgw.audit"]
    assert all(r.levelno == logging.WARNING for r in failures) and len(failures) == 4


async def test_unknown_user_takes_as_long_as_a_wrong_password(
    directory: Directory, ids: tuple[str, str]
) -> None:
    a, _ = ids

    async def timed(user: str, source: str) -> float:
        start = time.perf_counter()
        assert isinstance(await directory.login(a, user, "Wrong-pass-1!", source), LoginRefused)
        return time.perf_counter() - start

    wrong = [await timed("alice", f"198.51.100.{i}") for i in range(1, 3)]
    unknown = [await timed(f"ghost{i}", f"198.51.100.{10 + i}") for i in range(1, 3)]
    # Both do one Argon2 verification (~25 ms): an unknown user is not answered early.
    assert min(unknown) > 0.005 and min(wrong) > 0.005
    assert statistics.median(unknown) > 0.5 * statistics.median(wrong)
    assert statistics.median(unknown) < 2.0 * statistics.median(wrong) + 0.02


async def test_audit_stream_is_capped(tmp_path: Path, redis_url: str, ids: tuple[str, str]) -> None:
    text = config_text(*ids).replace("audit_maxlen = 1000", "audit_maxlen = 5")
    d = Directory(redis_url, settings_for(tmp_path, text, redis_url))
    await d.start()
    try:
        for i in range(400):
            await d.audit.record(ids[0], "login", "bad_password", user="x", source=str(i))
        entries = await d.audit_entries(ids[0], count=1000)
        # Approximate trimming (MAXLEN ~) keeps whole blocks: bounded, never far beyond.
        assert 5 <= len(entries) < 200
        assert entries[0].source == "399"  # newest first
    finally:
        await d.stop()


# --- throttling -------------------------------------------------------------------------


async def test_user_locked_after_n_failures_and_success_resets(
    directory: Directory, ids: tuple[str, str]
) -> None:
    a, _ = ids
    # Two failures, then a success: the count starts again.
    for i in range(2):
        assert await directory.login(a, "alice", "Wrong-1!x", f"203.0.113.{i}") == LoginRefused(
            "invalid"
        )
    await login_ok(directory, a, "alice", ALICE_PW, "203.0.113.9")
    for i in range(2):
        await directory.login(a, "alice", "Wrong-1!x", f"203.0.113.{i}")
    await login_ok(directory, a, "alice", ALICE_PW, "203.0.113.9")

    # Three failures in a row (from three addresses) lock alice, even with her password.
    for i in range(3):
        assert await directory.login(a, "alice", "Wrong-1!x", f"203.0.113.{i}") == LoginRefused(
            "invalid"
        )
    locked = await directory.login(a, "alice", ALICE_PW, "203.0.113.50")
    assert isinstance(locked, LoginRefused) and locked.reason == "throttled"
    assert 55 < locked.retry_after <= 60
    # Another user of the tenant and the same name in another tenant are not affected.
    await login_ok(directory, a, "boss", BOSS_PW, "203.0.113.50")
    await login_ok(directory, ids[1], "alice", OTHER_ALICE_PW, "203.0.113.50")
    entries = await directory.audit_entries(a, count=3)
    assert (entries[1].result, entries[1].user) == ("throttled", "alice")
    assert entries[1].detail.startswith("user locked for ")


async def test_source_locked_after_n_failures_across_usernames(
    directory: Directory, ids: tuple[str, str]
) -> None:
    a, _ = ids
    for i in range(8):  # login_max_failures_per_source
        await directory.login(a, f"user{i}", "Wrong-1!x", "2001:db8:7:7::1")
    # The whole /64 is locked, for any username, even a right password.
    refused = await directory.login(a, "alice", ALICE_PW, "2001:db8:7:7::abcd")
    assert isinstance(refused, LoginRefused) and refused.reason == "throttled"
    await login_ok(directory, a, "alice", ALICE_PW, "2001:db8:7:8::1")


async def test_lockout_expires(tmp_path: Path, redis_url: str, ids: tuple[str, str]) -> None:
    d = Directory(redis_url, settings_for(tmp_path, config_text(*ids, lockout=0.5), redis_url))
    await d.start()
    try:
        for _ in range(3):
            await d.login(ids[0], "alice", "Wrong-1!x", "192.0.2.99")
        assert (await d.login(ids[0], "alice", ALICE_PW, "192.0.2.99")) == LoginRefused(
            "throttled", pytest.approx(0.5, abs=0.5)  # type: ignore[arg-type]
        )
        await asyncio.sleep(0.6)  # Redis expires the counter: real time, no polling
        await login_ok(d, ids[0], "alice", ALICE_PW, "192.0.2.99")
    finally:
        await d.stop()


async def test_concurrent_guesses_cannot_pass_the_limit(
    directory: Directory, ids: tuple[str, str]
) -> None:
    a, _ = ids
    results = await asyncio.gather(
        *(directory.login(a, "alice", f"Wrong-{i}!x", f"192.0.2.{100 + i}") for i in range(10))
    )
    invalid = [r for r in results if r == LoginRefused("invalid")]
    assert len(invalid) == 3  # only login_max_failures passwords were checked
    assert all(isinstance(r, LoginRefused) for r in results)


# --- tokens -----------------------------------------------------------------------------


async def test_tokens_are_stored_hashed_with_expiry(
    directory: Directory, ids: tuple[str, str], raw: aioredis.Redis
) -> None:
    token = await login_ok(directory, ids[0], "alice", ALICE_PW, "192.0.2.30")
    digest = token_hash(token.bearer)
    assert await raw.exists(keys.token(digest))
    ttl = await raw.ttl(keys.token(digest))
    assert 3590 <= ttl <= 3600
    # The bearer text is nowhere in Redis: not in a key, not in a value.
    async for key in raw.scan_iter():
        assert token.bearer not in key
        kind = await raw.type(key)
        if kind == "hash":
            values = await raw.hgetall(key)
            assert token.bearer not in repr(values)
        elif kind == "string":
            assert token.bearer not in (await raw.get(key) or "")
        elif kind == "zset":
            assert token.bearer not in repr(await raw.zrange(key, 0, -1))
        elif kind == "stream":
            assert token.bearer not in repr(await raw.xrange(key))


async def test_expired_and_revoked_and_malformed_tokens(
    directory: Directory, ids: tuple[str, str], clock: Clock
) -> None:
    first = await login_ok(directory, ids[0], "alice", ALICE_PW, "192.0.2.31")
    second = await login_ok(directory, ids[0], "alice", ALICE_PW, "192.0.2.31")
    assert await directory.token(first.bearer) is not None
    await directory.revoke(first.bearer, source="192.0.2.31", event="logout")
    assert await directory.token(first.bearer) is None
    assert await directory.token(second.bearer) is not None  # the other session stays
    clock.offset = 3601
    assert await directory.token(second.bearer) is None  # expired
    for bad in ("", "x" * 43, "not a token", second.bearer + "x", second.bearer[:-1] + "!"):
        assert await directory.token(bad) is None
    entries = await directory.audit_entries(ids[0], count=1)
    assert (entries[0].event, entries[0].ref) == ("logout", first.principal.token_id)


async def test_tokens_per_user_are_capped(
    directory: Directory, ids: tuple[str, str], raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.security import directory as directory_module

    monkeypatch.setattr(directory_module, "MAX_TOKENS_PER_USER", 3)
    tokens = [await directory.create_token(ids[0], user="alice") for _ in range(5)]
    alive = [await directory.token(t.bearer) is not None for t in tokens]
    assert alive == [False, False, True, True, True]  # the oldest were revoked
    assert await raw.zcard(keys.user_tokens(ids[0], "alice")) == 3


async def test_tokens_issued_in_the_same_millisecond_are_evicted_oldest_first(
    settings: Settings, redis_url: str, ids: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stopped clock: every token has the same issue time and expiry, the case that
    once broke the eviction order (it followed the tokens' random hashes). Twelve tokens
    under a cap of 3 would keep the right three by chance once in 220 runs."""
    from gateway.security import directory as directory_module

    monkeypatch.setattr(directory_module, "MAX_TOKENS_PER_USER", 3)
    frozen = time.time()
    directory = Directory(redis_url, settings, clock=lambda: frozen)
    await directory.start()
    try:
        for _ in range(3):  # three rounds, so a lucky ordering cannot pass
            tokens = [await directory.create_token(ids[0], user="alice") for _ in range(12)]
            alive = [await directory.token(t.bearer) is not None for t in tokens]
            assert alive == [False] * 9 + [True] * 3
    finally:
        await directory.stop()


async def test_a_token_of_tenant_a_never_reaches_tenant_b(
    directory: Directory, ids: tuple[str, str]
) -> None:
    a, b = ids
    token_a = await login_ok(directory, a, "alice", ALICE_PW, "192.0.2.40")
    token_b = await login_ok(directory, b, "alice", OTHER_ALICE_PW, "192.0.2.40")
    pa, pb = await directory.token(token_a.bearer), await directory.token(token_b.bearer)
    assert pa is not None and pb is not None
    assert (pa.tenant, pb.tenant) == (a, b)
    assert not pa.may_see_tenant(b) and not pb.may_see_tenant(a)
    # The same username and password of one tenant opens nothing in the other.
    assert await directory.login(b, "alice", ALICE_PW, "192.0.2.41") == LoginRefused("invalid")
    assert await directory.login(a, "alice", OTHER_ALICE_PW, "192.0.2.41") == LoginRefused(
        "invalid"
    )
    # Revoking everything of B's alice leaves A's alice alone.
    assert await directory.revoke_user(b, "alice") == 1
    assert await directory.token(token_b.bearer) is None
    assert await directory.token(token_a.bearer) is not None


# --- seeding, CLI-made records ------------------------------------------------------------


async def test_seed_follows_the_configuration(
    tmp_path: Path, redis_url: str, ids: tuple[str, str], clock: Clock
) -> None:
    a, b = ids
    first = Directory(redis_url, settings_for(tmp_path, config_text(a, b), redis_url), clock=clock)
    await first.start()
    alice = await login_ok(first, a, "alice", ALICE_PW, "192.0.2.50")
    boss = await login_ok(first, a, "boss", BOSS_PW, "192.0.2.50")
    other = await login_ok(first, b, "alice", OTHER_ALICE_PW, "192.0.2.50")
    await first.add_user(a, "crm", "Crm-pass-77!", role="admin")
    await first.stop()

    # Restart with boss removed, alice's watched extensions changed and tenant B gone.
    text = config_text(a, b).replace('extensions = ["202"]', "extensions = []")
    text = text.replace(
        f'username = "boss"\nextension = "209"\npassword = "Sip-pass-209"\n'
        f'api_password = "{BOSS_PW}"\nrole = "admin"\n',
        'username = "boss2"\nextension = "209"\npassword = "Sip-pass-209"\n',
    )
    text = text[: text.index(f'[[tenants]]\nid = "{b}"')]
    second = Directory(redis_url, settings_for(tmp_path, text, redis_url), clock=clock)
    await second.start()
    try:
        assert await second.token(alice.bearer) is None  # changed: its tokens revoked
        assert await second.token(boss.bearer) is None  # removed
        assert await second.token(other.bearer) is None  # tenant gone
        assert await second.user(a, "boss") is None
        assert not await second.tenant_exists(b)
        crm = await second.user(a, "crm")  # made with the CLI: kept
        assert crm is not None and crm.source == "cli" and crm.role == "admin"
        fresh = await login_ok(second, a, "alice", ALICE_PW, "192.0.2.50")
        assert fresh.extensions == frozenset({"201"})
        events = {(e.event, e.user) for e in await second.audit_entries(a)}
        assert {("user.update", "alice"), ("user.remove", "boss")} <= events
        # A restart with the same configuration changes nothing.
        await second.seed()
        assert await second.token(fresh.bearer) is not None
    finally:
        await second.stop()


# A seed must leave alone what the configuration did not change: every start of every
# node seeds the same Redis, and each load salts a plain api_password's hash afresh.

CAROL_PW = "Carol-api-203!"
NEW_PW = "Newer-pass-77!"


def carol(password: str) -> str:
    """Tenant A's user "carol", whose API password the file gives as a hash."""
    return (
        '[[tenants.users]]\nusername = "carol"\nextension = "203"\npassword = "Sip-pass-203"\n'
        f'api_password_hash = "{hash_password(password)}"\n'
    )


async def started(tmp_path: Path, text: str, redis_url: str, clock: Clock) -> Directory:
    """A node's directory, seeded from its own load of ``text`` (its own salts)."""
    d = Directory(redis_url, settings_for(tmp_path, text, redis_url), clock=clock)
    await d.start()
    return d


async def test_another_nodes_start_with_the_same_configuration_keeps_every_token(
    tmp_path: Path, redis_url: str, ids: tuple[str, str], clock: Clock
) -> None:
    a, b = ids
    text = config_text(a, b, extra_a_users=carol(CAROL_PW))
    node_a = await started(tmp_path, text, redis_url, clock)
    node_b: Directory | None = None
    try:
        tokens = [
            await login_ok(node_a, a, "alice", ALICE_PW, "192.0.2.50"),
            await login_ok(node_a, a, "boss", BOSS_PW, "192.0.2.50"),
            await login_ok(node_a, a, "carol", CAROL_PW, "192.0.2.50"),
            await login_ok(node_a, b, "alice", OTHER_ALICE_PW, "192.0.2.50"),
        ]
        stored = await node_a.users(a)
        node_b = await started(tmp_path, text, redis_url, clock)
        alice_a, alice_b = (n.settings.tenants[0].users[0] for n in (node_a, node_b))
        assert alice_a.api_password_hash != alice_b.api_password_hash  # salted afresh
        await node_a.seed()  # and node A's own restart
        for token in tokens:
            assert await node_a.token(token.bearer) is not None
            assert await node_b.token(token.bearer) is not None
        assert await node_b.users(a) == stored  # nothing rewritten
        assert "user.update" not in {e.event for e in await node_b.audit_entries(a)}
        await login_ok(node_b, a, "alice", ALICE_PW, "192.0.2.51")
    finally:
        await node_a.stop()
        if node_b is not None:
            await node_b.stop()


async def test_a_changed_api_password_revokes_and_only_the_new_one_logs_in(
    tmp_path: Path, redis_url: str, ids: tuple[str, str], clock: Clock
) -> None:
    a, b = ids
    first = await started(
        tmp_path, config_text(a, b, extra_a_users=carol(CAROL_PW)), redis_url, clock
    )
    alice = await login_ok(first, a, "alice", ALICE_PW, "192.0.2.50")
    carol_token = await login_ok(first, a, "carol", CAROL_PW, "192.0.2.50")
    boss = await login_ok(first, a, "boss", BOSS_PW, "192.0.2.50")
    await first.stop()

    text = config_text(a, b, extra_a_users=carol(NEW_PW)).replace(ALICE_PW, NEW_PW)
    second = await started(tmp_path, text, redis_url, clock)
    try:
        assert await second.token(alice.bearer) is None
        assert await second.token(carol_token.bearer) is None  # a new hash in the file
        assert await second.token(boss.bearer) is not None  # unchanged: kept
        for user, old in (("alice", ALICE_PW), ("carol", CAROL_PW)):
            assert await second.login(a, user, old, "192.0.2.50") == LoginRefused("invalid")
            await login_ok(second, a, user, NEW_PW, "192.0.2.50")
        updates = [e for e in await second.audit_entries(a) if e.event == "user.update"]
        assert sorted(e.user for e in updates) == ["alice", "carol"]
        assert all("1 tokens revoked" in e.detail for e in updates)
    finally:
        await second.stop()


@pytest.mark.parametrize(
    ("user", "password", "before", "after", "sees"),
    [
        ("alice", ALICE_PW, 'extensions = ["202"]', 'extensions = ["202", "209"]',
         {"201", "202", "209"}),
        ("alice", ALICE_PW, 'extension = "201"\npassword = "Sip-pass-201"',
         'extension = "205"\npassword = "Sip-pass-201"', {"205", "202"}),
        ("boss", BOSS_PW, 'role = "admin"', 'role = "user"', {"209"}),
    ],
    ids=["watched extensions", "own extension", "role"],
)  # fmt: skip
async def test_a_changed_role_or_extension_revokes(
    tmp_path: Path, redis_url: str, ids: tuple[str, str], clock: Clock,
    user: str, password: str, before: str, after: str, sees: set[str],
) -> None:  # fmt: skip
    a, b = ids
    text = config_text(a, b)
    first = await started(tmp_path, text, redis_url, clock)
    changed = await login_ok(first, a, user, password, "192.0.2.50")
    other_user, other_password = ("boss", BOSS_PW) if user == "alice" else ("alice", ALICE_PW)
    other = await login_ok(first, a, other_user, other_password, "192.0.2.50")
    await first.stop()

    assert text.count(before) == 1
    second = await started(tmp_path, text.replace(before, after), redis_url, clock)
    try:
        assert await second.token(changed.bearer) is None
        assert await second.token(other.bearer) is not None
        fresh = await login_ok(second, a, user, password, "192.0.2.50")
        assert (fresh.role, fresh.extensions) == ("user", frozenset(sees))
    finally:
        await second.stop()


async def test_an_outdated_hash_of_the_same_password_is_renewed_and_tokens_stand(
    tmp_path: Path, redis_url: str, ids: tuple[str, str], clock: Clock, raw: aioredis.Redis
) -> None:
    a, b = ids
    first = await started(tmp_path, config_text(a, b), redis_url, clock)
    alice = await login_ok(first, a, "alice", ALICE_PW, "192.0.2.50")
    stored = await first.user(a, "alice")
    await first.stop()
    assert stored is not None
    outdated = argon2.PasswordHasher(time_cost=1, memory_cost=8192).hash(ALICE_PW)
    assert needs_rehash(outdated)
    record = replace(stored, password_hash=outdated)
    await raw.hset(keys.users(a), "alice", record.to_json())

    second = await started(tmp_path, config_text(a, b), redis_url, clock)
    try:
        renewed = await second.user(a, "alice")
        assert renewed is not None and renewed.password_hash is not None
        assert renewed.password_hash != outdated and not needs_rehash(renewed.password_hash)
        assert await second.token(alice.bearer) is not None
        assert "user.update" not in {e.event for e in await second.audit_entries(a)}
    finally:
        await second.stop()


async def test_cli_tenant_user_and_tokens(directory: Directory, ids: tuple[str, str]) -> None:
    a, _ = ids
    tenant = f"c-{secrets.token_hex(3)}"
    await directory.create_tenant(tenant, "CLI Corp", source="cli:test@host")
    with pytest.raises(DirectoryError, match="exists already"):
        await directory.create_tenant(tenant, "again")
    with pytest.raises(DirectoryError, match="must be 1-32"):
        await directory.create_tenant("Bad Id", "x")

    await directory.add_user(tenant, "ops", "Ops-pass-1!", role="user", extension="301",
                             extensions=["302", "303"])  # fmt: skip
    token = await login_ok(directory, tenant, "ops", "Ops-pass-1!", "192.0.2.60")
    assert token.extensions == frozenset({"301", "302", "303"})
    with pytest.raises(DirectoryError, match="exists already"):
        await directory.add_user(tenant, "ops", "Ops-pass-2!")
    await directory.add_user(tenant, "ops", "Ops-pass-2!", replace=True)
    assert await directory.token(token.bearer) is None  # replaced: tokens revoked
    with pytest.raises(DirectoryError, match="too weak"):
        await directory.add_user(tenant, "weak", "password")
    with pytest.raises(DirectoryError, match="configuration file"):
        await directory.add_user(a, "alice", "Alice-new-1!", replace=True)
    with pytest.raises(DirectoryError, match="unknown tenant"):
        await directory.add_user("nope", "x", "Abcdef1!")

    sync = await directory.create_token(tenant, role="sync", ttl=60)
    principal = await directory.token(sync.bearer)
    assert principal is not None and (principal.role, principal.user) == ("sync", None)
    assert principal.extensions == frozenset()
    with pytest.raises(DirectoryError, match='must have role "sync"'):
        await directory.create_token(tenant)
    with pytest.raises(DirectoryError, match="cannot have another"):
        await directory.create_token(a, user="alice", role="admin")
    boss = await directory.create_token(a, user="boss")
    assert boss.role == "admin"
    events = [(e.event, e.user) for e in reversed(await directory.audit_entries(tenant))]
    assert events[:2] == [("tenant.create", ""), ("user.add", "ops")]
    assert ("token.create", "") in events


def run_cli(argv: list[str], stdin: str = "") -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="sipgw")
    cli_admin.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.stdin", io.StringIO(stdin))
        mp.setattr("sys.stdout", out)
        mp.setattr("sys.stderr", err)
        code = args.func(args)
    return code, out.getvalue(), err.getvalue()


def test_cli_commands(tmp_path: Path, redis_url: str) -> None:
    suffix = secrets.token_hex(3)
    config = tmp_path / "sipgw.toml"
    config.write_text(f'[redis]\nurl = "{redis_url}"\n')
    tenant = f"cli-{suffix}"

    code, out, _ = run_cli(["tenant", "create", tenant, "--name", "CLI", "--config", str(config)])
    assert code == 0 and f"tenant {tenant} created" in out
    code, _, err = run_cli(["tenant", "create", tenant, "--name", "X", "--config", str(config)])
    assert code == 1 and "exists already" in err

    code, out, _ = run_cli(
        ["user", "add", "--tenant", tenant, "agent", "--extension", "401", "--watch", "402",
         "--config", str(config)],
        stdin="Agent-pass-1!\n",
    )  # fmt: skip
    assert code == 0 and "sees 401, 402; may log in" in out
    code, _, err = run_cli(
        ["user", "add", "--tenant", tenant, "weak", "--config", str(config)], stdin="weak\n"
    )
    assert code == 1 and "too weak" in err and "weak\n" not in err

    code, out, err = run_cli(
        ["token", "create", "--tenant", tenant, "--user", "agent", "--ttl", "600",
         "--config", str(config)]
    )  # fmt: skip
    assert code == 0 and len(out.strip()) == 43 and "role user, user agent" in err
    code, out, err = run_cli(
        ["token", "create", "--tenant", tenant, "--sync", "--config", str(config)]
    )
    assert code == 0 and "role sync" in err
    code, _, err = run_cli(["token", "create", "--tenant", tenant, "--config", str(config)])
    assert code == 2 and "either --user" in err

    code, out, _ = run_cli(["password-hash"], stdin="Hash-me-123!\n")
    assert code == 0 and out.startswith("$argon2id$")
    code, _, err = run_cli(["password-hash"], stdin="short\n")
    assert code == 1 and "too weak" in err

    dead = tmp_path / "dead.toml"
    dead.write_text(f'[redis]\nurl = "redis://:pw-secret@127.0.0.1:{ports.free_tcp_port()}/0"\n')
    code, _, err = run_cli(["tenant", "create", "x", "--name", "X", "--config", str(dead)])
    assert code == 1 and "cannot reach Redis" in err and "pw-secret" not in err


async def test_redis_down_is_unavailable_not_unauthorized(settings: Settings) -> None:
    d = Directory(f"redis://127.0.0.1:{ports.free_tcp_port()}/0", settings)
    with pytest.raises(DirectoryUnavailable):
        await d.start()
    with pytest.raises(DirectoryUnavailable):
        await d.login(None, "alice", ALICE_PW, "192.0.2.1")
    with pytest.raises(DirectoryUnavailable):
        await d.token("A" * 43)
    await d.stop()


# --- HTTP -------------------------------------------------------------------------------


def build_app(directory: Directory) -> FastAPI:
    app = FastAPI()
    app.state.directory = directory
    app.include_router(auth_router(directory))

    @app.get("/v1/tenants/{tenant}/extensions/{extension}")
    async def extension_info(
        tenant: str, extension: str, principal: Principal = Depends(require_principal())  # noqa: B008
    ) -> dict[str, Any]:
        ensure_tenant(principal, tenant)  # before any lookup
        ensure_extension(principal, extension)
        return {"tenant": tenant, "extension": extension}

    @app.get("/sync-only")
    async def sync_only(
        principal: Principal = Depends(require_principal(roles=("sync",))),  # noqa: B008
    ) -> dict[str, str]:
        return {"tenant": principal.tenant}

    return app


@pytest.fixture
async def http(directory: Directory) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_app(directory), client=("192.0.2.200", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        yield client


async def http_login(http: httpx.AsyncClient, body: dict[str, Any], **kw: Any) -> httpx.Response:
    return await http.post("/v1/auth/login", json=body, **kw)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_http_login_ok(http: httpx.AsyncClient, ids: tuple[str, str]) -> None:
    r = await http_login(http, {"tenant": ids[0], "username": "alice", "password": ALICE_PW})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"token", "expires_at", "tenant", "role", "extensions"}
    assert (body["tenant"], body["role"], body["extensions"], body["user"]) == (
        ids[0], "user", ["201", "202"], "alice",
    )  # fmt: skip
    assert body["token_type"] == "Bearer" and len(body["token"]) == 43
    assert body["expires_at"].endswith("Z")
    assert r.headers["cache-control"] == "no-store"
    me = await http.get("/v1/auth/me", headers=bearer(body["token"]))
    assert me.status_code == 200 and me.json()["user"] == "alice"
    # No tenant: the default tenant.
    r = await http_login(http, {"username": "alice", "password": ALICE_PW})
    assert r.status_code == 200 and r.json()["tenant"] == ids[0]


@pytest.mark.parametrize(
    ("content", "headers", "status", "detail"),
    [
        (b"{not json", {}, 400, "request body is not valid JSON"),
        (b"[1, 2]", {}, 400, "request body must be a JSON object"),
        (b'{"password": "x"}', {}, 400, "username: required"),
        (b'{"username": "alice"}', {}, 400, "password: required"),
        (b'{"username": 5, "password": "x"}', {}, 400,
         "username: must be a string of 1-64 letters, digits, '.', '_', '-'"),
        (b'{"username": "alice", "password": ""}', {}, 400,
         "password: must be a string of 1-1024 characters"),
        (b'{"username": "alice", "password": "x", "tenant": "A B"}', {}, 400,
         "tenant: must be a string of 1-32 of a-z, 0-9 and '-'"),
        (b'{"username": "alice", "password": "x", "otp": "1"}', {}, 400,
         'unknown field "otp" (known: tenant, username, password)'),
        (b'{"username": "alice", "password": "x"}', {"content-type": "text/plain"}, 415,
         "Content-Type must be application/json"),
        (b'{"username": "' + b"a" * 9000 + b'"}', {}, 413, "request body larger than 8192 bytes"),
    ],
)  # fmt: skip
async def test_http_login_bad_requests(
    http: httpx.AsyncClient, content: bytes, headers: dict[str, str], status: int, detail: str
) -> None:
    r = await http.post(
        "/v1/auth/login", content=content, headers={"content-type": "application/json", **headers}
    )
    assert (r.status_code, r.json()) == (status, {"detail": detail})


async def test_http_401_is_the_same_for_every_cause(
    http: httpx.AsyncClient, ids: tuple[str, str]
) -> None:
    bodies = [
        {"tenant": ids[0], "username": "alice", "password": "Wrong-pass-1!"},
        {"tenant": ids[0], "username": "nobody", "password": ALICE_PW},
        {"tenant": "unknown-tenant", "username": "alice", "password": ALICE_PW},
        {"tenant": ids[0], "username": "bob", "password": "Sip-pass-202"},
    ]
    answers = set()
    for body in bodies:
        r = await http_login(http, body)
        assert r.status_code == 401
        answers.add((r.text, r.headers.get("www-authenticate")))
    assert answers == {('{"detail":"invalid credentials"}', 'Bearer realm="sipgw"')}


async def test_http_429_with_retry_after(http: httpx.AsyncClient, ids: tuple[str, str]) -> None:
    body = {"tenant": ids[0], "username": "alice", "password": "Wrong-pass-1!"}
    for _ in range(3):
        assert (await http_login(http, body)).status_code == 401
    r = await http_login(http, {**body, "password": ALICE_PW})
    assert r.status_code == 429
    assert r.json() == {"detail": "too many failed logins, retry later"}
    assert 55 <= int(r.headers["retry-after"]) <= 60


async def test_http_forwarded_for_only_from_trusted_proxies(
    directory: Directory, ids: tuple[str, str]
) -> None:
    body = {"tenant": ids[0], "username": "boss", "password": BOSS_PW}
    forwarded = {"X-Forwarded-For": "198.51.100.77, 10.9.0.2"}
    for client, expected in ((("10.9.0.1", 1), "198.51.100.77"), (("192.0.2.9", 1), "192.0.2.9")):
        transport = httpx.ASGITransport(app=build_app(directory), client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            assert (await http_login(c, body, headers=forwarded)).status_code == 200
        [entry] = await directory.audit_entries(ids[0], count=1)
        assert entry.source == expected


async def test_http_bearer_required(http: httpx.AsyncClient, ids: tuple[str, str]) -> None:
    url = f"/v1/tenants/{ids[0]}/extensions/201"
    r = await http.get(url)
    assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="sipgw"'
    assert r.json() == {"detail": "missing bearer token"}
    r = await http.get(url, headers=bearer("A" * 43))
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="sipgw", error="invalid_token"'
    r = await http.get(url, headers={"Authorization": "Basic YTpi"})
    assert r.status_code == 401


async def test_http_logout_revokes_and_expired_is_401(
    http: httpx.AsyncClient, ids: tuple[str, str], clock: Clock
) -> None:
    body = {"tenant": ids[0], "username": "alice", "password": ALICE_PW}
    one = (await http_login(http, body)).json()["token"]
    two = (await http_login(http, body)).json()["token"]
    assert (await http.post("/v1/auth/logout", headers=bearer(one))).status_code == 204
    assert (await http.get("/v1/auth/me", headers=bearer(one))).status_code == 401
    assert (await http.post("/v1/auth/logout", headers=bearer(one))).status_code == 401
    assert (await http.get("/v1/auth/me", headers=bearer(two))).status_code == 200
    clock.offset = 3601
    r = await http.get("/v1/auth/me", headers=bearer(two))
    assert r.status_code == 401 and r.json() == {"detail": "invalid or expired token"}


async def test_http_roles_and_tenant_isolation(
    http: httpx.AsyncClient, directory: Directory, ids: tuple[str, str]
) -> None:
    a, b = ids
    alice = (await http_login(http, {"tenant": a, "username": "alice", "password": ALICE_PW}))
    boss = (await http_login(http, {"tenant": a, "username": "boss", "password": BOSS_PW}))
    other = await http_login(http, {"tenant": b, "username": "alice", "password": OTHER_ALICE_PW})
    alice_h, boss_h, other_h = (bearer(r.json()["token"]) for r in (alice, boss, other))

    # Extensions: alice sees 201 and 202 (watched), not 209; the admin sees all.
    assert (await http.get(f"/v1/tenants/{a}/extensions/201", headers=alice_h)).status_code == 200
    assert (await http.get(f"/v1/tenants/{a}/extensions/202", headers=alice_h)).status_code == 200
    r = await http.get(f"/v1/tenants/{a}/extensions/209", headers=alice_h)
    assert (r.status_code, r.json()) == (403, {"detail": "forbidden"})
    assert (await http.get(f"/v1/tenants/{a}/extensions/209", headers=boss_h)).status_code == 200

    # Another tenant: 403, the same whether the tenant or extension exists or not.
    answers = {
        (r.status_code, r.text)
        for path in (f"/v1/tenants/{b}/extensions/201", "/v1/tenants/nope/extensions/201",
                     f"/v1/tenants/{b}/extensions/999")
        for r in [await http.get(path, headers=boss_h)]
    }  # fmt: skip
    assert answers == {(403, '{"detail":"forbidden"}')}
    r = await http.get(f"/v1/tenants/{a}/extensions/201", headers=other_h)
    assert r.status_code == 403

    # Roles: the audit log is for admins, of their own tenant only.
    r = await http.get("/v1/auth/audit", headers=alice_h)
    assert (r.status_code, r.json()) == (403, {"detail": "forbidden: insufficient role"})
    r = await http.get("/v1/auth/audit", headers=boss_h, params={"limit": 50})
    assert r.status_code == 200
    entries = r.json()["entries"]
    assert entries and {e["tenant"] for e in entries} == {a}
    assert {"at", "event", "result", "user", "source"} <= set(entries[0])
    r = await http.get("/v1/auth/audit", headers=boss_h, params={"before": entries[0]["id"]})
    assert [e["id"] for e in r.json()["entries"]] == [e["id"] for e in entries[1:]]
    r = await http.get("/v1/auth/audit", headers=boss_h, params={"before": "x"})
    assert r.status_code == 422
    assert (await http.get("/sync-only", headers=boss_h)).status_code == 403
    sync = await directory.create_token(b, role="sync")
    r = await http.get("/sync-only", headers=bearer(sync.bearer))
    assert (r.status_code, r.json()) == (200, {"tenant": b})
    assert (await http.get("/v1/auth/me", headers=bearer(sync.bearer))).json()["user"] is None


async def test_http_503_when_redis_is_down(settings: Settings) -> None:
    d = Directory(f"redis://127.0.0.1:{ports.free_tcp_port()}/0", settings)
    transport = httpx.ASGITransport(app=build_app(d))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
        r = await http_login(c, {"username": "alice", "password": ALICE_PW})
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        r = await c.get("/v1/auth/me", headers=bearer("A" * 43))
        assert r.status_code == 503
    await d.stop()


async def test_openapi_documents_login_and_bearer(directory: Directory) -> None:
    schema = build_app(directory).openapi()
    login = schema["paths"]["/v1/auth/login"]["post"]
    assert login["requestBody"]["content"]["application/json"]["schema"]["required"] == [
        "username", "password",
    ]  # fmt: skip
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert {"bearer": []} in schema["paths"]["/v1/auth/me"]["get"]["security"]


async def test_seeding_waits_for_redis_in_the_background(
    settings: Settings, redis_url: str, ids: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    down = Directory(f"redis://127.0.0.1:{ports.free_tcp_port()}/0", settings)
    task = asyncio.create_task(down.seed_when_available(retry=0.01))
    await asyncio.sleep(0.1)  # several retries
    assert not task.done() and not down.seeded
    assert [r.message for r in caplog.records if r.name == "sipgw.security"] == [
        "cannot seed the API directory yet, retrying"
    ]  # said once, not per retry
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await down.stop()

    up = Directory(redis_url, settings)
    await asyncio.wait_for(up.seed_when_available(), 10)
    assert up.seeded and await up.tenant_exists(ids[0])
    await login_ok(up, ids[0], "alice", ALICE_PW, "192.0.2.70")
    await up.stop()


async def test_http_login_while_the_directory_is_seeding_is_503_not_401(
    http: httpx.AsyncClient, directory: Directory, ids: tuple[str, str]
) -> None:
    directory.seed_pending = True
    r = await http_login(http, {"tenant": ids[0], "username": "alice", "password": ALICE_PW})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert "loading" in r.json()["detail"]
    directory.seed_pending = False
    r = await http_login(http, {"tenant": ids[0], "username": "alice", "password": ALICE_PW})
    assert r.status_code == 200
