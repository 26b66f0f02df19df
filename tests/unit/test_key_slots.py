"""Every key of a tenant hashes to the tenant's Redis Cluster slot, and every node-wide
key has a hash tag: a tenant's scripts and transactions stay in one slot, and deleting
a tenant touches one shard (gateway/security/keys.py, docs/internals.md "Keys")."""

from __future__ import annotations

import re

import pytest
from redis.crc import key_slot

from gateway.bus import keys as bus_keys
from gateway.recognition import keys as contact_keys
from gateway.runtime import shared_health, shared_location
from gateway.security import keys
from gateway.webhooks import keys as webhook_keys

TENANT = "acme"
TAG = re.compile(r"[^{]*\{[^}]+\}.*")


def slot(name: str) -> int:
    return key_slot(name.encode())


def tenant_keys(t: str) -> list[str]:
    return [
        *keys.fixed_keys(t),
        keys.key_index(t),
        keys.users(t),
        keys.user_tokens(t, "alice"),
        keys.user_tokens(t, None),
        keys.token_order(t, "alice"),
        keys.token_order(t, None),
        keys.ticket(t, "ab" * 32),
        keys.tickets_issued(t, "0123456789abcdef"),
        keys.user_settings(t),
        keys.audit(t),
        keys.user_failures(t, "alice"),
        contact_keys.contacts(t),
        contact_keys.sources(t),
        contact_keys.source(t, "crm"),
        contact_keys.generation(t, "crm", "g1"),
        contact_keys.erasing(t, "0123abcd"),
        bus_keys.events_key(t),
        bus_keys.rewrite_key(t),
        bus_keys.edit_lock_key(t),
        bus_keys.live_channel(t),
        shared_location.aor_key(t, "201"),
        webhook_keys.subscriptions(t),
        webhook_keys.state(t),
    ]


@pytest.mark.parametrize("tenant", [TENANT, "a", "x-1", "z" * 32])
def test_every_key_of_a_tenant_is_in_the_tenant_slot(tenant: str) -> None:
    home = slot(keys.tenant_tag(tenant))
    for name in tenant_keys(tenant):
        assert slot(name) == home, name
        assert keys.tenant_of_key(name) == tenant, name


def test_every_node_wide_key_has_a_tag_and_no_tenant() -> None:
    node_wide = [
        keys.TENANTS, keys.EPOCH, keys.GLOBAL_AUDIT, keys.LAYOUT, keys.LOCATION_TENANTS,
        keys.audit(None), keys.source_failures("192.0.2.1"), keys.source_failures("2001:db8::/64"),
        contact_keys.INVALIDATE_CHANNEL, shared_location.CHANNEL,
        shared_health.REPORTS, shared_health.SEEN, shared_health.CHANNEL,
        webhook_keys.WEBHOOK_TENANTS,
    ]  # fmt: skip
    for name in node_wide:
        assert TAG.fullmatch(name), name
        assert slot(name) == slot(keys.NODE_TAG), name
        assert keys.tenant_of_key(name) is None, name


def test_tokens_each_have_a_tag_of_their_own() -> None:
    a, b = keys.token("a" * 64), keys.token("b" * 64)
    assert a == "sipgw:token:{" + "a" * 64 + "}"
    assert slot(a) == slot("a" * 64) and slot(a) != slot(b)
    assert keys.tenant_of_key(a) is None
    assert keys.legacy_token_digest("sipgw:token:" + "a" * 64) == "a" * 64
    assert keys.legacy_token_digest(a) is None


def test_the_fixed_names_cover_each_package_fixed_keys() -> None:
    listed = set(keys.fixed_keys(TENANT))
    for name in (
        keys.users(TENANT), keys.audit(TENANT), keys.user_settings(TENANT),
        keys.key_index(TENANT), contact_keys.contacts(TENANT), contact_keys.sources(TENANT),
        bus_keys.events_key(TENANT), bus_keys.rewrite_key(TENANT), bus_keys.edit_lock_key(TENANT),
        webhook_keys.subscriptions(TENANT), webhook_keys.state(TENANT),
    ):  # fmt: skip
        assert name in listed, name


def test_the_node_tag_is_no_tenant_id() -> None:
    assert keys.tenant_of_key(keys.TENANTS) is None
    with pytest.raises(ValueError):
        keys.tenant_tag("acme}")


def test_the_trimmer_finds_every_stream_from_the_tenant_list() -> None:
    assert bus_keys.TENANTS == keys.TENANTS
    streams = bus_keys.tenant_streams([b"acme", "beta", b"Bad}", ""])
    assert streams == ["{acme}:events", "{beta}:events"]
