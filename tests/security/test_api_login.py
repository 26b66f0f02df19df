"""A username that fails the username syntax may be a password typed in the wrong field:
it never reaches the log or the audit stream as typed (against a real Redis, and a real
gateway's log file and Redis)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.config import load_settings
from gateway.security import keys
from gateway.security.directory import Directory
from gateway.security.tokens import LoginRefused
from tests.integration.gateway import GatewayProcess

SECRET = "Secret-Pass-123!"  # fails the username syntax ("!"), fits the password rules


async def every_value(client: aioredis.Redis) -> str:
    """Every key and value of a Redis database, as one text to search. Read as bytes:
    some values are msgpack (contacts, events), whose strings are plain UTF-8 inside."""
    seen: list[bytes] = []
    async for key in client.scan_iter():
        seen.append(key)
        kind = await client.type(key)
        if kind == b"stream":
            seen += [repr(entry).encode() for entry in await client.xrange(key)]
        elif kind == b"hash":
            for field, value in (await client.hgetall(key)).items():
                seen += [field, value]
        elif kind == b"string":
            seen.append(await client.get(key) or b"")
        elif kind in (b"zset", b"set", b"list"):
            found = (
                await client.zrange(key, 0, -1) if kind == b"zset"
                else await client.smembers(key) if kind == b"set"
                else await client.lrange(key, 0, -1)
            )  # fmt: skip
            seen += list(found)
    return b"\n".join(seen).decode("utf-8", "replace")


@pytest.fixture
def url(redis_server: str) -> str:
    return redis_server.rsplit("/", 1)[0] + "/11"  # this module's database


@pytest.fixture
async def directory(tmp_path: Path, url: str) -> AsyncIterator[Directory]:
    client = aioredis.Redis.from_url(url)
    await client.flushdb()
    await client.aclose()
    config = tmp_path / "sipgw.toml"
    config.write_text(
        '[[tenants]]\nid = "red"\nname = "Red"\ndomains = ["red.example"]\n'
        '[[tenants.users]]\nusername = "alice"\nextension = "201"\n'
        'password = "Sip-pass-201!"\napi_password = "Api-pass-201!"\n'
    )
    directory = Directory(url, load_settings(config, env={"SIPGW_REDIS__URL": url}))
    await directory.start()
    yield directory
    await directory.stop()


async def test_an_invalid_username_is_redacted_in_log_and_audit(
    directory: Directory, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for tenant in ("red", None, SECRET):  # in the username field, and in the tenant field
        username = SECRET if tenant != SECRET else "alice"
        refused = await directory.login(tenant, username, "whatever-it-is", "192.0.2.7")
        assert refused == LoginRefused("invalid")

    logged = "\n".join(
        f"{r.getMessage()} {r.__dict__}" for r in caplog.records if r.name.startswith("sipgw")
    )
    assert "audit login unknown_user" in logged  # the attempts were logged...
    assert SECRET not in logged  # ...but not as typed
    entries = await directory.audit_entries("red") + await directory.audit_entries(None)
    users = {e.user for e in entries if e.event == "login"}
    assert any(u.startswith("<invalid username, 16 chars, hmac:") for u in users), users
    details = " ".join(e.detail for e in entries)
    assert "<invalid tenant, 16 chars, hmac:" in details
    # The same text gives the same reference: repeated mistakes stay recognizable.
    assert len({u for u in users if u.startswith("<invalid username")}) == 1
    client = aioredis.Redis.from_url(url)
    try:
        assert await client.exists(keys.audit("red"))
        assert SECRET not in await every_value(client)
    finally:
        await client.aclose()


async def test_a_gateway_writes_a_mistyped_secret_nowhere(gateway: GatewayProcess) -> None:
    for body in (
        {"username": SECRET, "password": "Wrong-pass-1!"},
        {"tenant": "acme", "username": SECRET, "password": "Wrong-pass-1!"},
    ):
        status, answer = await gateway.http("POST", "/v1/auth/login", body)
        assert status == 400 and SECRET.encode() not in answer
    await gateway.login("203")  # something is audited and logged, for the scan to see
    client = aioredis.Redis.from_url(gateway.redis_url)
    try:
        stored = await every_value(client)
    finally:
        await client.aclose()
    assert "login" in stored and SECRET not in stored
    assert SECRET not in gateway.log_path.read_text(errors="replace")
