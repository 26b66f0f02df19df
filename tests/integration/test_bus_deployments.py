"""The event bus on a real Redis Cluster and on Sentinel (issue #14): appends go to the
master of each tenant's slot over the lean connections (gateway/redis_routes.py), live
events reach a subscriber, and a failover is followed.

Every event is checked where it landed: in the stream of its tenant on the process that
serves the tenant's slot, not only through the bus under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis
import redis.cluster

from gateway.bus import BusUnavailable, EventBus, events_since, keys
from gateway.config.model import RedisSettings
from gateway.stats import Counters
from tests.integration.test_bus import Ev, numbers, ready, take
from tests.integration.test_redis_cluster_link import cluster_settings, sentinel_settings
from tests.redis_servers import LocalCluster, LocalSentinel, RedisServer
from tests.waiting import wait_until, wait_until_true

BusMaker = Callable[[RedisSettings], Awaitable[EventBus]]


@pytest.fixture
async def make_bus() -> AsyncIterator[BusMaker]:
    made: list[EventBus] = []

    async def make(settings: RedisSettings) -> EventBus:
        bus = EventBus(settings, counters=Counters(), backoff_initial=0.05, backoff_max=0.5)
        await bus.start()
        made.append(bus)
        return bus

    yield make
    for bus in made:
        await bus.stop()


def tenants_on_every_master(cluster: LocalCluster) -> dict[str, RedisServer]:
    """One tenant whose slot each master serves: tenant -> that master."""
    found: dict[str, RedisServer] = {}
    for _ in range(1000):
        tenant = "t-" + uuid.uuid4().hex[:10]
        node = cluster.node_for_key(keys.events_key(tenant))
        if node not in found.values():
            found[tenant] = node
        if len(found) == len(cluster.masters()):
            return found
    raise AssertionError("1000 tenants did not cover every master")


def stream_on(server: RedisServer, tenant: str) -> list[int]:
    """The event numbers of `tenant`'s stream, read on `server` itself."""
    # Payloads are bytes; READONLY: a cluster replica answers reads of its master's slots.
    with redis.Redis(
        "127.0.0.1", server.port, socket_timeout=1, single_connection_client=True
    ) as raw:
        if "cluster" in server.name:
            raw.execute_command("READONLY")
        entries = raw.xrange(keys.events_key(tenant), "-", "+")
    return [keys.decode_payload("0-0", fields[b"e"])["n"] for _, fields in entries]


def holds(server: RedisServer, tenant: str, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(stream_on(server, tenant)) == count

    return check


async def test_each_tenants_events_land_on_its_slots_master_and_go_live(
    redis_cluster: LocalCluster, make_bus: BusMaker
) -> None:
    bus = await make_bus(cluster_settings(redis_cluster))
    tenants = tenants_on_every_master(redis_cluster)
    subs = {tenant: bus.subscribe(tenant) for tenant in tenants}
    await ready(*subs.values())
    for n in range(300):
        for tenant in tenants:
            assert bus.publish(Ev(tenant, n))
    for tenant, master in tenants.items():
        assert numbers(await take(subs[tenant], 300)) == list(range(300))
        assert stream_on(master, tenant) == list(range(300))
    # A subscriber may see an event before the writer has read Redis' answer to it.
    await wait_until(lambda: bus.published == 300 * len(tenants))
    assert not bus.dropped
    # One lean connection per master, named as the writer; the hub subscribed to each
    # tenant's channel on its master (sharded pub/sub).
    for master in redis_cluster.masters():
        names = str(master.command("CLIENT", "LIST"))
        assert "name=sipgw-bus" in names and "name=sipgw-live" in names
    for tenant, master in tenants.items():
        channel = keys.live_channel(tenant)
        assert master.command("PUBSUB", "SHARDNUMSUB", channel) == [channel, 1]
        assert master.command("PUBSUB", "NUMSUB", channel) == [channel, 0]
    # /metrics' figures per shard: every master, up, its round trips counted.
    masters = {f"127.0.0.1:{m.port}" for m in redis_cluster.masters()}
    assert set(bus.servers) == masters == set(bus.hub.servers())
    assert all(s.up and s.round_trip.count > 0 and not s.errors for s in bus.servers.values())
    assert all(bus.hub.servers().values())


async def test_a_subscriber_gets_every_event_once_in_order_across_a_failover(
    redis_cluster: LocalCluster, make_bus: BusMaker
) -> None:
    bus = await make_bus(cluster_settings(redis_cluster))
    tenant, master = next(iter(tenants_on_every_master(redis_cluster).items()))
    got: list[tuple[str, dict[str, object]]] = []

    async def consume() -> None:
        # The failover ends the live subscription (its master is gone): the iterator
        # subscribes again on the promoted replica and replays the gap from the stream;
        # while the slot has no master it says the bus is unavailable, and the consumer
        # resumes from its last event, as a WebSocket client does (docs/events.md).
        while True:
            since = got[-1][0] if got else "0-0"
            try:
                async for item in events_since(bus, tenant, since, ready_timeout=30):
                    assert item is not None
                    got.append(item)
            except BusUnavailable:
                await asyncio.sleep(0.1)  # a client's pause before it reconnects

    consumer = asyncio.create_task(consume())
    try:
        for n in range(100):
            bus.publish(Ev(tenant, n))
        await wait_until(lambda: len(got) == 100, timeout=10)
        await wait_until_true(holds(redis_cluster.replica_of(master), tenant, 100))
        await redis_cluster.kill_master_and_wait_for_promotion(master)
        for n in range(100, 200):
            bus.publish(Ev(tenant, n))
        await wait_until(lambda: len(got) == 200, timeout=30)
    finally:
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
    assert [event["n"] for _, event in got] == list(range(200))
    seqs = [keys.parse_seq(seq) for seq, _ in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == 200
    assert bus.hub.resyncs >= 1


async def test_a_cluster_failover_is_followed_and_every_acknowledged_event_is_held(
    redis_cluster: LocalCluster, make_bus: BusMaker
) -> None:
    bus = await make_bus(cluster_settings(redis_cluster))
    tenant, master = next(iter(tenants_on_every_master(redis_cluster).items()))
    for n in range(100):
        bus.publish(Ev(tenant, n))
    await wait_until(lambda: bus.published == 100)
    # Replication is asynchronous: wait until the replica holds what was acknowledged,
    # so that what this test measures is the bus following the failover.
    replica = redis_cluster.replica_of(master)
    await wait_until_true(holds(replica, tenant, 100))
    promoted = await redis_cluster.kill_master_and_wait_for_promotion(master)
    for n in range(100, 200):
        bus.publish(Ev(tenant, n))  # buffered while the slot has no master
    await wait_until(lambda: bus.published == 200, timeout=20)
    assert stream_on(promoted, tenant) == list(range(200))
    assert bus.redis_errors >= 1 and not bus.dropped


async def test_a_sentinel_failover_is_followed(
    redis_sentinel: LocalSentinel, make_bus: BusMaker
) -> None:
    bus = await make_bus(sentinel_settings(redis_sentinel))
    tenant = "t-" + uuid.uuid4().hex[:10]
    sub = bus.subscribe(tenant)
    await ready(sub)
    for n in range(50):
        bus.publish(Ev(tenant, n))
    assert numbers(await take(sub, 50)) == list(range(50))
    old = redis_sentinel.master()
    replica = next(s for s in redis_sentinel.servers if s is not old)
    await wait_until_true(holds(replica, tenant, 50))
    new = await redis_sentinel.kill_master_and_wait_for_failover()
    assert new is not old
    for n in range(50, 100):
        bus.publish(Ev(tenant, n))
    await wait_until(lambda: bus.published == 100, timeout=20)
    assert stream_on(new, tenant) == list(range(100))


async def test_retention_trims_every_tenants_stream_on_every_master(
    redis_cluster: LocalCluster, make_bus: BusMaker
) -> None:
    # The trimmer finds the streams through the tenants' list, not a SCAN, which on a
    # cluster would see one master.
    settings = cluster_settings(redis_cluster)
    offset = [0.0]
    bus = EventBus(settings, counters=Counters(), stream_max_age=60.0,
                   clock=lambda: time.time() + offset[0])  # fmt: skip
    await bus.start()
    try:
        tenants = tenants_on_every_master(redis_cluster)
        for tenant in tenants:
            for n in range(20):
                bus.publish(Ev(tenant, n))
        await wait_until(lambda: bus.published == 20 * len(tenants))
        with redis.RedisCluster(startup_nodes=[
            redis.cluster.ClusterNode("127.0.0.1", port) for _, port in settings.cluster_nodes
        ]) as admin:  # fmt: skip
            admin.hset(keys.TENANTS, mapping={tenant: "{}" for tenant in tenants})
        assert await bus.trim_by_age() == 0  # nothing older than a minute yet
        offset[0] = 61.0
        assert await bus.trim_by_age() == 20 * len(tenants)
        for tenant, master in tenants.items():
            assert stream_on(master, tenant) == []
    finally:
        await bus.stop()


async def test_events_a_failover_loses_are_counted_and_reported(
    redis_cluster: LocalCluster, make_bus: BusMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    # Replication is asynchronous: a master acknowledges appends before its replica has
    # them. The replica is stopped (SIGSTOP) and its replication link cut, 30 events are
    # appended, the master dies, the replica resumes and is promoted without them: the
    # writer must notice at its next append and count them, never lose them silently.
    bus = await make_bus(cluster_settings(redis_cluster))
    tenant, master = next(iter(tenants_on_every_master(redis_cluster).items()))
    replica = redis_cluster.replica_of(master)
    for n in range(20):
        bus.publish(Ev(tenant, n))
    await wait_until(lambda: bus.published == 20)
    await wait_until_true(holds(replica, tenant, 20))
    replica.signal(signal.SIGSTOP)
    try:
        assert master.command("CLIENT", "KILL", "TYPE", "replica") >= 1
        for n in range(20, 50):
            bus.publish(Ev(tenant, n))
        await wait_until(lambda: bus.published == 50)  # acknowledged by the master alone
        master.kill()
    finally:
        replica.signal(signal.SIGCONT)
    promoted = await redis_cluster.kill_master_and_wait_for_promotion(master)
    assert promoted is replica
    for n in range(50, 60):
        bus.publish(Ev(tenant, n))
    await wait_until(lambda: bus.published == 60, timeout=20)
    held = stream_on(promoted, tenant)
    with capsys.disabled():
        print(f"\nfailover: {bus.lost} acknowledged events lost; the stream holds {held}")
    assert held == [*range(20), *range(50, 60)]
    assert bus.lost == 30
