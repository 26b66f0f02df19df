"""A tenant's keys on a real Redis Cluster (3 masters, 3 replicas): tenant delete, GDPR
erase and source removal through the real Directory and ContactIndex, on a cluster
client, then every master scanned with a plain client of its own: the tenant's keys are
gone (or exactly the erased ones), the other tenant's are untouched. No SCAN in the code
under test: a tenant's keys are the fixed names plus its index ``{t}:keys``."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster

from gateway.bus.keys import encode_payload, events_key
from gateway.config import Settings, load_settings
from gateway.config.model import RedisSettings
from gateway.recognition import keys as contact_keys
from gateway.recognition.index import ContactIndex, Upsert
from gateway.security import keys
from gateway.security.directory import Directory
from gateway.security.tokens import Token, token_hash
from tests.redis_servers import LocalCluster

ALICE_PW = "Api-pass-201!"
BOB_PW = "Api-pass-202!"


def cluster_settings(cluster: LocalCluster) -> RedisSettings:
    return RedisSettings(cluster_nodes=tuple(("127.0.0.1", n.port) for n in cluster.nodes[:2]))


def two_tenants_on_two_masters(cluster: LocalCluster) -> tuple[str, str]:
    suffix = secrets.token_hex(3)
    first = f"a-{suffix}"
    home = cluster.node_for_key(keys.key_index(first))
    for n in range(200):
        other = f"b{n}-{suffix}"
        if cluster.node_for_key(keys.key_index(other)) is not home:
            return first, other
    raise AssertionError("200 tenant ids on one master")


def every_key(cluster: LocalCluster) -> set[str]:
    """Every key on every master, each asked with a plain client of its own."""
    found: set[str] = set()
    for master in cluster.masters():
        found |= set(master.command("KEYS", "*"))
    return found


def of_tenant(names: set[str], tenant: str) -> set[str]:
    return {k for k in names if k.startswith("{" + tenant + "}:")}


@dataclass
class Made:
    tokens: list[Token]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    file = tmp_path / "sipgw.toml"
    file.write_text('[node]\nname = "keys-test"\n[security]\ntoken_ttl = 3600\n')
    return load_settings(file, env={})


@pytest.fixture
async def directory(redis_cluster: LocalCluster, settings: Settings) -> AsyncIterator[Directory]:
    d = Directory(cluster_settings(redis_cluster), settings)
    await d.start()
    yield d
    await d.stop()


@pytest.fixture
async def index(redis_cluster: LocalCluster) -> AsyncIterator[ContactIndex]:
    idx = ContactIndex(cluster_settings(redis_cluster))
    assert isinstance(idx.redis, RedisCluster)
    yield idx
    await idx.close()


async def populate(directory: Directory, index: ContactIndex, tenant: str) -> Made:
    """Users, tokens (a login, a sync token, a ticket), a failed login, user settings,
    contacts from two sources (one a full sync in progress) and events."""
    await directory.create_tenant(tenant, f"Tenant {tenant}")
    await directory.add_user(tenant, "alice", ALICE_PW, extension="201")
    await directory.add_user(tenant, "bob", BOB_PW, extension="202")
    alice = await directory.login(tenant, "alice", ALICE_PW, "127.0.0.1")
    bob_refused = await directory.login(tenant, "bob", "Wrong-pass-1!", "127.0.0.1")
    assert isinstance(alice, Token) and not isinstance(bob_refused, Token)
    sync = await directory.create_token(tenant, role="sync")
    assert await directory.issue_ticket(alice.bearer, alice.principal) is not None
    settings = await directory.user_settings(tenant, "alice")
    await directory.save_user_settings(tenant, "alice", settings)
    shared = Upsert("+33123456789", {"name": "Shared"})
    await index.apply(tenant, "crm", [shared, Upsert("+33100000001", {"name": "Crm"})], [])
    await index.apply(
        tenant, "erp", [shared, Upsert("+33100000002", {"name": "Erp"})], [], generation="g1"
    )
    redis = index.redis
    for n in range(3):
        await redis.xadd(events_key(tenant), {"e": encode_payload({"n": n})})
    return Made([alice, sync])


async def test_tenant_delete_leaves_no_key_of_the_tenant_on_any_master(
    redis_cluster: LocalCluster, directory: Directory, index: ContactIndex
) -> None:
    gone, kept = two_tenants_on_two_masters(redis_cluster)
    made = await populate(directory, index, gone)
    await populate(directory, index, kept)
    before = every_key(redis_cluster)
    doomed = of_tenant(before, gone)
    # Each kind of key was made, and every one in the tenant's slot, on one master.
    kinds = (
        ":users", ":tokens:alice", ":tokens:@sync", ":token-order:alice", ":ticket:",
        ":tickets:", ":login:fail:bob", ":user-settings", ":audit", ":contacts", ":sources",
        ":source:crm", ":source:erp", ":gen:erp:g1", ":events", ":keys",
    )  # fmt: skip
    for part in kinds:
        assert any(part in k for k in doomed), part
    home = redis_cluster.node_for_key(keys.key_index(gone))
    assert doomed <= set(home.command("KEYS", "*"))
    token_keys = {keys.token(token_hash(t.bearer)) for t in made.tokens}
    assert token_keys <= before

    assert await directory.delete_tenant(gone) > 0

    after = every_key(redis_cluster)
    assert of_tenant(after, gone) == set()
    assert not token_keys & after
    assert of_tenant(after, kept) == of_tenant(before, kept)
    assert gone not in await directory.tenants()
    assert await directory.token(made.tokens[0].bearer) is None


async def test_gdpr_erase_removes_the_number_from_every_source_and_nothing_else(
    redis_cluster: LocalCluster, directory: Directory, index: ContactIndex
) -> None:
    tenant, other = two_tenants_on_two_masters(redis_cluster)
    await populate(directory, index, tenant)
    await populate(directory, index, other)
    before = every_key(redis_cluster)
    home = redis_cluster.node_for_key(contact_keys.contacts(tenant))

    assert await index.erase(tenant, "+33123456789") == 2

    assert home.command("HEXISTS", contact_keys.contacts(tenant), "+33123456789") == 0
    for source in ("crm", "erp"):
        members = set(home.command("SMEMBERS", contact_keys.source(tenant, source)))
        assert "+33123456789" not in members and members  # the source's other number stays
    assert every_key(redis_cluster) == before  # no key made or lost, on any master
    assert [h.source for h in await index.held(other, "+33123456789")] == ["crm", "erp"]


async def test_source_unlink_removes_its_keys_and_its_full_syncs_only(
    redis_cluster: LocalCluster, directory: Directory, index: ContactIndex
) -> None:
    tenant, other = two_tenants_on_two_masters(redis_cluster)
    await populate(directory, index, tenant)
    await populate(directory, index, other)
    before = every_key(redis_cluster)

    assert await index.remove_source(tenant, "erp") == 2

    after = every_key(redis_cluster)
    removed = before - after
    assert removed == {
        contact_keys.source(tenant, "erp"),
        contact_keys.generation(tenant, "erp", "g1"),
    }
    assert after <= before
    home = redis_cluster.node_for_key(contact_keys.contacts(tenant))
    assert home.command("HEXISTS", contact_keys.contacts(tenant), "+33100000002") == 0
    assert [h.source for h in await index.held(tenant, "+33123456789")] == ["crm"]
    indexed = set(home.command("ZRANGE", keys.key_index(tenant), 0, -1))
    assert not any(":erp" in k for k in indexed)
    assert await index.sources(other) != {}
    assert set((await index.sources(other)).keys()) == {"crm", "erp"}
