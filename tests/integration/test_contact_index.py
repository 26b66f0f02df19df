"""The contact index on a real redis-server: writes, reads, removal, erasure, and cache
invalidation seen by a second node."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.recognition import keys
from gateway.recognition.cache import Contact, ContactCache
from gateway.recognition.index import ContactIndex, IndexUnavailable, Upsert
from gateway.recognition.lookup import Recognizer
from gateway.stats import Counters
from tests.waiting import wait_until

_tenants = itertools.count()


@pytest.fixture
def tenant() -> str:
    return f"idx-{next(_tenants)}-{int(time.time() * 1000) % 100000}"


@pytest.fixture
async def index(redis_server: str) -> AsyncIterator[ContactIndex]:
    idx = ContactIndex(redis_server)
    yield idx
    await idx.close()


async def _tenant_keys(url: str, tenant: str) -> list[bytes]:
    client = aioredis.Redis.from_url(url)
    try:
        return sorted([k async for k in client.scan_iter(match=keys.tenant_pattern(tenant))])
    finally:
        await client.aclose()


def up(number: str, **fields: object) -> Upsert:
    return Upsert(number, fields)  # type: ignore[arg-type]


async def test_upsert_then_get_and_delete(index: ContactIndex, tenant: str) -> None:
    assert await index.apply(tenant, "crm", [up("+31612345678", name="Jan", vip=True)], []) == (
        1,
        0,
    )
    found = await index.get(tenant, "+31612345678")
    assert found == Contact("crm", {"name": "Jan", "vip": True})
    assert await index.get(tenant, "+31612345679") is None
    assert await index.apply(tenant, "crm", [], ["+31612345678", "+31600000000"]) == (0, 1)
    assert await index.get(tenant, "+31612345678") is None


async def test_number_held_by_two_sources_first_come_first_shown(
    index: ContactIndex, tenant: str, redis_server: str
) -> None:
    await index.apply(tenant, "crm", [up("+31201234567", name="From CRM")], [])
    await index.apply(tenant, "erp", [up("+31201234567", name="From ERP")], [])
    assert (await index.get(tenant, "+31201234567")) == Contact("crm", {"name": "From CRM"})
    # An update keeps the source's place.
    await index.apply(tenant, "crm", [up("+31201234567", name="CRM v2")], [])
    held = await index.held(tenant, "+31201234567")
    assert [(h.source, h.fields["name"], h.shown) for h in held] == [
        ("crm", "CRM v2", True),
        ("erp", "From ERP", False),
    ]
    # Removing the shown source lets the other one take over; removing both leaves nothing.
    assert await index.remove_source(tenant, "crm") == 1
    assert (await index.get(tenant, "+31201234567")) == Contact("erp", {"name": "From ERP"})
    assert await index.remove_source(tenant, "erp") == 1
    assert await index.remove_source(tenant, "erp") is None
    assert await _tenant_keys(redis_server, tenant) == []


async def test_source_removal_leaves_no_key_of_it(
    index: ContactIndex, tenant: str, redis_server: str
) -> None:
    numbers = [f"+316{n:08d}" for n in range(2500)]  # more than one removal chunk
    for start in range(0, len(numbers), 1000):
        chunk = numbers[start : start + 1000]
        await index.apply(tenant, "crm", [up(n, name=f"c{n}") for n in chunk], [], "gen1")
    await index.apply(tenant, "other", [up("+31201234567", name="kept")], [])
    assert await index.count(tenant) == 2501
    assert await index.remove_source(tenant, "crm") == 2500
    left = await _tenant_keys(redis_server, tenant)
    assert not any(b"crm" in k for k in left), left
    assert await index.count(tenant) == 1
    client = aioredis.Redis.from_url(redis_server)
    try:
        fields = await client.hkeys(keys.contacts(tenant))
    finally:
        await client.aclose()
    assert fields == [b"+31201234567"]


async def test_full_sync_commit_removes_what_it_did_not_send(
    index: ContactIndex, tenant: str, redis_server: str
) -> None:
    await index.apply(tenant, "crm", [up(f"+3161234567{i}", name="x") for i in range(5)], [])
    sent = [up(f"+3161234567{i}", name="y") for i in (1, 3)] + [up("+31699999999", name="new")]
    await index.apply(tenant, "crm", sent, [], "g42")
    assert await index.commit_generation(tenant, "crm", "g42") == 3
    assert sorted(
        [n for n in [f"+3161234567{i}" for i in range(5)] + ["+31699999999"]
         if await index.get(tenant, n) is not None]
    ) == ["+31612345671", "+31612345673", "+31699999999"]  # fmt: skip
    left = [k for k in await _tenant_keys(redis_server, tenant) if b":gen:" in k or b":erase:" in k]
    assert left == []


async def test_erase_one_number_from_every_source(index: ContactIndex, tenant: str) -> None:
    await index.apply(tenant, "crm", [up("+31612345678", name="a"), up("+31612345679")], [])
    await index.apply(tenant, "erp", [up("+31612345678", name="b")], [])
    assert await index.erase(tenant, "+31612345678") == 2
    assert await index.held(tenant, "+31612345678") == []
    assert await index.erase(tenant, "+31612345678") == 0
    # The sources no longer list it: removing them later counts only what they hold.
    assert await index.remove_source(tenant, "crm") == 1


async def test_drop_tenant_deletes_every_key(
    index: ContactIndex, tenant: str, redis_server: str
) -> None:
    other = tenant + "-x"
    await index.apply(tenant, "crm", [up("+31612345678", name="a")], [])
    await index.apply(other, "crm", [up("+31612345678", name="b")], [])
    assert await index.drop_tenant(tenant) >= 3
    assert await _tenant_keys(redis_server, tenant) == []
    assert (await index.get(other, "+31612345678")) == Contact("crm", {"name": "b"})


async def test_tenants_never_see_each_other(index: ContactIndex, tenant: str) -> None:
    await index.apply(tenant, "crm", [up("+31612345678", name="mine")], [])
    assert await index.get(tenant + "-b", "+31612345678") is None


async def _settled(cache: ContactCache, timeout: float = 5.0) -> None:
    # Subscribed, and emptied once.
    await wait_until(lambda: cache.enabled and cache.epoch > 0, timeout, "the subscription")


async def test_lookup_cache_hit_miss_and_negative(redis_server: str, tenant: str) -> None:
    index = ContactIndex(redis_server)
    cache = ContactCache(100, ttl=60, negative_ttl=60)
    follower = asyncio.create_task(index.follow_invalidations(cache))
    counters = Counters()
    recognizer = Recognizer(index, cache, counters)
    try:
        await _settled(cache)
        epoch = cache.epoch
        await index.apply(tenant, "crm", [up("+31612345678", name="Jan")], [])
        # The write's own invalidation comes back over pub/sub; an answer read before it
        # arrived would not be cached (it might be older than the write).
        await wait_until(lambda: cache.epoch != epoch, 5, "the write's invalidation")
        assert recognizer.cached(tenant, "+31612345678") is None
        first = await recognizer.lookup(tenant, "+31612345678")
        assert (first.status, first.cache) == ("hit", "miss")
        again = recognizer.cached(tenant, "+31612345678")
        assert again is not None and (again.status, again.cache) == ("hit", "hit")
        assert again.contact == Contact("crm", {"name": "Jan"})
        # A number not in the index: a miss, then a cached (negative) miss.
        miss = await recognizer.lookup(tenant, "+31699999999")
        assert (miss.status, miss.cache) == ("miss", "miss")
        cached_miss = recognizer.cached(tenant, "+31699999999")
        assert cached_miss is not None and (cached_miss.status, cached_miss.cache) == (
            "miss",
            "hit",
        )
        assert counters.lookups["hit", "hit"] == 1 and counters.lookups["miss", "hit"] == 1
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        await index.close()


async def test_a_sync_invalidates_a_second_node_within_100_ms(
    redis_server: str, tenant: str
) -> None:
    """Node B cached a miss and a hit; node A's sync changes both: B sees it at once."""
    node_a, node_b = ContactIndex(redis_server), ContactIndex(redis_server)
    cache_b = ContactCache(100, ttl=3600, negative_ttl=3600)
    follower = asyncio.create_task(node_b.follow_invalidations(cache_b))
    b = Recognizer(node_b, cache_b, Counters())
    try:
        await _settled(cache_b)
        epoch = cache_b.epoch
        await node_a.apply(tenant, "crm", [up("+31612345678", name="Old")], [])
        await wait_until(lambda: cache_b.epoch != epoch, 5, "that write's invalidation")
        await b.lookup(tenant, "+31612345678")
        await b.lookup(tenant, "+31687654321")  # cached as absent
        assert cache_b.get(tenant, "+31612345678")[0] and cache_b.get(tenant, "+31687654321")[0]

        started = time.perf_counter()
        await node_a.apply(
            tenant, "crm", [up("+31612345678", name="New"), up("+31687654321", name="Added")], []
        )
        await wait_until(
            lambda: (
                not (
                    cache_b.get(tenant, "+31612345678")[0] or cache_b.get(tenant, "+31687654321")[0]
                )
            ),
            0.1,
            "node B's cache entries to be invalidated",
        )
        elapsed = time.perf_counter() - started
        hit = await b.lookup(tenant, "+31612345678")
        added = await b.lookup(tenant, "+31687654321")
        assert hit.contact is not None and hit.contact.fields["name"] == "New"
        assert added.contact is not None and added.contact.fields["name"] == "Added"
        assert elapsed < 0.1
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        await node_a.close()
        await node_b.close()


async def test_cache_is_off_while_invalidations_cannot_arrive(free_tcp_port: object) -> None:
    """No subscription (Redis unreachable): nothing is served from the cache, and a look-up
    answers "error" instead of raising."""
    port = free_tcp_port()  # type: ignore[operator]
    index = ContactIndex(f"redis://127.0.0.1:{port}/0")
    cache = ContactCache(100, ttl=60, negative_ttl=60)
    cache.put("t", "+31612345678", Contact("crm", {"name": "stale"}), cache.epoch)
    follower = asyncio.create_task(index.follow_invalidations(cache))
    recognizer = Recognizer(index, cache, Counters())
    try:
        await asyncio.sleep(0)  # the follower runs up to its first connect
        assert recognizer.cached("t", "+31612345678") is None
        answer = await recognizer.lookup("t", "+31612345678")
        assert answer.status == "error"
        with pytest.raises(IndexUnavailable):
            await index.apply("t", "crm", [up("+31612345678")], [])
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        await index.close()
