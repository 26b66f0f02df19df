"""Upgrading a data set written before hash tags (docs/upgrading.md): the node-wide
keys and every token are renamed at start, the tenants' keys entered in their index,
so tenants, users and tokens survive and a tenant delete afterwards finds every key."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.config import Settings, load_settings
from gateway.security import keys
from gateway.security.directory import Directory
from gateway.security.key_migration import migrate_keys
from gateway.security.tokens import new_token, token_hash

DB = 11  # this module's database on the session's redis-server (flushed per test)


@pytest.fixture
async def raw(redis_server: str) -> AsyncIterator[tuple[str, aioredis.Redis]]:
    url = redis_server.rsplit("/", 1)[0] + f"/{DB}"
    client = aioredis.Redis.from_url(url, decode_responses=True)
    await client.flushdb()
    yield url, client
    await client.aclose()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    file = tmp_path / "sipgw.toml"
    file.write_text('[node]\nname = "migration-test"\n')
    return load_settings(file, env={})


async def write_layout_1(client: aioredis.Redis, bearer: str) -> str:
    """What sipgw wrote before hash tags: one tenant with a user, a token and its index,
    a registration; the node-wide keys without a tag."""
    created = {"name": "Legacy", "source": "cli", "created_at": time.time()}
    await client.hset("sipgw:tenants", "legacy", json.dumps(created))
    await client.set("sipgw:epoch", "0123456789abcdef")
    await client.xadd("sipgw:audit", {"event": "login"})
    user = {"username": "alice", "role": "user", "source": "cli", "extensions": []}
    await client.hset("{legacy}:users", "alice", json.dumps(user))
    digest = token_hash(bearer)
    expires = time.time() + 3600
    await client.hset(
        f"sipgw:token:{digest}",
        mapping={"tenant": "legacy", "user": "alice", "role": "user", "extensions": "[]",
                 "issued_at": repr(time.time()), "expires_at": repr(expires)},
    )  # fmt: skip
    await client.expire(f"sipgw:token:{digest}", 3600)
    await client.zadd("{legacy}:tokens:alice", {digest: expires * 1000})
    await client.hset("{legacy}:loc:201", "sip:201@192.0.2.1", "x")
    return digest


async def test_an_old_data_set_keeps_tenants_users_and_tokens(
    raw: tuple[str, aioredis.Redis], settings: Settings
) -> None:
    url, client = raw
    bearer = new_token()
    digest = await write_layout_1(client, bearer)
    directory = Directory(url, settings)
    try:
        await directory.start()
        assert set(await directory.tenants()) == {"legacy"}
        assert await directory.user("legacy", "alice") is not None
        principal = await directory.token(bearer)
        assert principal is not None and principal.user == "alice"
        assert await directory.epoch() == "0123456789abcdef"
        assert await client.xlen(keys.GLOBAL_AUDIT) == 1
        assert not await client.exists("sipgw:tenants", "sipgw:epoch", "sipgw:audit")
        assert not await client.exists(f"sipgw:token:{digest}")
        assert 0 < await client.ttl(keys.token(digest)) <= 3600
        indexed = set(await client.zrange(keys.key_index("legacy"), 0, -1))
        assert indexed == {"{legacy}:tokens:alice", "{legacy}:loc:201"}
        assert await client.smembers(keys.LOCATION_TENANTS) == {"legacy"}
        assert await client.get(keys.LAYOUT) == str(keys.LAYOUT_VERSION)
        # Once only, and idempotent: a second start changes nothing.
        assert await migrate_keys(client) is False
        await client.delete(keys.LAYOUT)
        assert await migrate_keys(client) is True
        assert await directory.token(bearer) is not None

        await directory.delete_tenant("legacy")
        assert [k async for k in client.scan_iter(match=keys.tenant_pattern("legacy"))] == []
        assert not await client.exists(keys.token(digest))
    finally:
        await directory.stop()


async def test_the_node_tag_is_refused_as_a_tenant_id(
    raw: tuple[str, aioredis.Redis], settings: Settings, tmp_path: Path
) -> None:
    url, _ = raw
    directory = Directory(url, settings)
    try:
        await directory.start()
        with pytest.raises(ValueError, match="reserved"):
            await directory.create_tenant("sipgw", "Clash")
    finally:
        await directory.stop()
    file = tmp_path / "clash.toml"
    file.write_text('[[tenants]]\nid = "sipgw"\nname = "Clash"\ndomains = ["x.example"]\n')
    with pytest.raises(ValueError, match="reserved"):
        load_settings(file, env={})
