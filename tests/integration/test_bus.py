"""The event bus against a real redis-server: streams, live fan-out across nodes, the
replay seam under concurrent publishing, overflow, trimming, and Redis going away.

Every test uses its own tenant ids, so the session's shared redis-server is enough;
the tests that kill and restart Redis start their own redis-server (and stop it).
"""

from __future__ import annotations

import asyncio
import logging
import random
import shutil
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from gateway.bus import (
    EventBus,
    EventsLost,
    LiveSubscription,
    SubscriberOverflow,
    SubscriberResync,
    events_since,
    keys,
)
from gateway.stats import Counters
from tests.peers.ports import free_tcp_port
from tests.peers.process import PeerProcess, require_binary
from tests.waiting import wait_until

Event = tuple[str, dict[str, Any]]


@dataclass
class Ev:
    """Stand-in for gateway.calls.CallEvent: a tenant, to_dict() and a settable seq."""

    tenant: str
    n: int
    seq: str | None = None
    extension: str = "201"

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": 1,
            "type": "call.offered",
            "tenant": self.tenant,
            "n": self.n,
            "extension": self.extension,
            "seq": self.seq,
        }


def new_tenant() -> str:
    return "t-" + uuid.uuid4().hex[:12]


def numbers(events: list[Event]) -> list[int]:
    return [event["n"] for _seq, event in events]


async def take(it: AsyncIterator[Event], count: int, timeout: float = 10.0) -> list[Event]:
    out: list[Event] = []
    async with asyncio.timeout(timeout):
        while len(out) < count:
            out.append(await anext(it))
    return out


async def ready(*subs: LiveSubscription) -> None:
    async with asyncio.timeout(5):
        for sub in subs:
            await sub.wait_ready()


BusFactory = Callable[..., Awaitable[EventBus]]


@pytest.fixture
async def make_bus(redis_server: str) -> AsyncIterator[BusFactory]:
    """Start EventBus "nodes" (on the session's Redis unless a url is given); all are
    stopped at the end."""
    buses: list[EventBus] = []

    async def make(url: str = redis_server, **options: Any) -> EventBus:
        bus = EventBus(url, counters=Counters(), **options)
        buses.append(bus)
        await bus.start()
        return bus

    yield make
    for bus in buses:
        await bus.stop()


@pytest.fixture
async def redis(redis_server: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server, protocol=2)
    yield client
    await client.aclose()


class OwnRedis:
    """A redis-server of one test, on a fixed port so it can be killed and restarted
    "in place" (no persistence: a restart comes back empty, like a lost cache node)."""

    def __init__(self, workdir: Path) -> None:
        self.binary = require_binary("redis-server")
        self.port = free_tcp_port()
        self.workdir = workdir
        self.proc: PeerProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.proc = await PeerProcess.start(
            "redis-server",
            [
                self.binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--loglevel",
                "warning",
            ],
            stdin=False,
        )
        deadline = time.monotonic() + 10
        while not await self._pong():
            assert self.proc.running, f"redis-server exited:\n{self.proc.describe()}"
            assert time.monotonic() < deadline, "redis-server did not answer PING"
            await asyncio.sleep(0.02)  # a foreign process: bounded polling

    async def kill(self) -> None:
        if self.proc is not None:
            await self.proc.stop(sig=signal.SIGKILL)
            self.proc = None

    async def _pong(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        try:
            writer.write(b"PING\r\n")
            return (await asyncio.wait_for(reader.readline(), 1)).startswith(b"+PONG")
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = OwnRedis(tmp_path)
    try:
        yield server
    finally:
        await server.kill()


async def stream(redis: Redis, tenant: str) -> list[Event]:
    entries = await redis.xrange(keys.events_key(tenant))
    return [(i.decode(), keys.decode_payload(i.decode(), f[b"e"])) for i, f in entries]


# -- stream and live ------------------------------------------------------------------


async def test_published_events_are_in_the_stream_and_live_for_their_tenant_only(
    make_bus: BusFactory, redis: Redis
) -> None:
    bus = await make_bus()
    acme, other = new_tenant(), new_tenant()
    sub_acme, sub_other = bus.subscribe(acme), bus.subscribe(other)
    await ready(sub_acme, sub_other)
    events = [Ev(acme, n) for n in range(50)]
    assert all(bus.publish(e) for e in events)
    live = await take(sub_acme, 50)

    assert numbers(live) == list(range(50))
    seqs = [seq for seq, _ in live]
    assert [keys.parse_seq(s) for s in seqs] == sorted({keys.parse_seq(s) for s in seqs})
    # The stream id becomes the event's seq when the writer reads the reply (the live
    # message may be faster than that).
    await wait_until(lambda: bus.published == 50, what="replies")
    assert [e.seq for e in events] == seqs
    assert live[0][1] == {**events[0].to_dict(), "seq": seqs[0]}
    assert await stream(redis, acme) == live
    assert await bus.replay(acme, None) == live

    # The other tenant's subscription got nothing: its first event is its own.
    bus.publish(Ev(other, 999))
    [(_seq, event)] = await take(sub_other, 1)
    assert event["n"] == 999 and event["tenant"] == other
    assert sub_other.depth == 0 and sub_acme.depth == 0
    await wait_until(lambda: bus.published == 51, what="replies")
    assert bus.published == 51 and not bus.dropped and bus.redis_errors == 0
    assert bus.round_trips < 51  # batched: far fewer round trips than events


async def test_replay_is_exclusive_paged_and_validates(make_bus: BusFactory) -> None:
    bus = await make_bus()
    tenant = new_tenant()
    sub = bus.subscribe(tenant)
    await ready(sub)
    for n in range(10):
        bus.publish(Ev(tenant, n))
    live = await take(sub, 10)
    assert numbers(await bus.replay(tenant, live[4][0], count=3)) == [5, 6, 7]
    assert numbers(await bus.replay(tenant, live[9][0])) == []
    assert numbers(await bus.replay(tenant, "0-0", count=2)) == [0, 1]
    assert await bus.replay(new_tenant(), None) == []  # no stream at all
    assert await bus.last_seq(tenant) == live[9][0]
    with pytest.raises(ValueError, match="invalid event id"):
        await bus.replay(tenant, "1234")
    with pytest.raises(ValueError, match="invalid event id"):
        await bus.replay(tenant, "abc-1")


async def test_two_nodes_on_one_redis_receive_exactly_once_in_order(
    make_bus: BusFactory,
) -> None:
    node_a, node_b = await make_bus(), await make_bus()
    tenant = new_tenant()
    sub_b, sub_b2 = node_b.subscribe(tenant), node_b.subscribe(tenant)
    await ready(sub_b, sub_b2)
    for n in range(500):
        node_a.publish(Ev(tenant, n))
    node_a.publish(Ev(tenant, -1))  # a marker: nothing may come between 499 and it
    for sub in (sub_b, sub_b2):
        assert numbers(await take(sub, 501)) == [*range(500), -1]
    # Decoded once per node, offered to both local subscriptions.
    assert node_b.hub.messages == 501
    assert node_b.hub.channel_count == 1 and node_b.hub.subscription_count == 2


async def test_a_nodes_own_events_are_handed_over_at_once_in_stream_order(
    make_bus: BusFactory,
) -> None:
    # Node A's subscribers get A's events from A's writer as soon as Redis answers the
    # append (one pub/sub hop sooner), B's through pub/sub; interleaved, in stream order,
    # each exactly once.
    node_a, node_b = await make_bus(), await make_bus()
    tenant = new_tenant()
    sub = node_a.subscribe(tenant, maxsize=5000)
    await ready(sub)
    node_b.publish(Ev(tenant, 0))  # the channel's first: where the stream stands
    assert numbers(await take(sub, 1)) == [0]
    rng = random.Random(4475)
    n = 1
    while n < 1000:
        writer = rng.choice([node_a, node_b])
        for _ in range(min(rng.randrange(1, 20), 1000 - n)):
            writer.publish(Ev(tenant, n))
            n += 1
        await asyncio.sleep(rng.choice([0, 0.001, 0.003]))
    got = await take(sub, 999)
    stream = await node_a.replay(tenant, None, count=10_000)
    assert [seq for seq, _ in got] == [seq for seq, _ in stream][1:]
    assert sorted(numbers(got)) == list(range(1, 1000))
    assert node_a.hub.local_deliveries > 0
    assert node_a.hub.local_deliveries + node_a.hub.messages == 1000


async def test_acknowledged_events_that_vanish_from_the_stream_are_counted_as_lost(
    make_bus: BusFactory, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # What a failover with asynchronous replication does: the newest entries, which the
    # old master acknowledged, are not in the stream of the one that took over.
    bus = await make_bus()
    tenant = new_tenant()
    for n in range(10):
        bus.publish(Ev(tenant, n))
    await wait_until(lambda: bus.published == 10)
    held = await stream(redis, tenant)
    await redis.xdel(keys.events_key(tenant), *[seq for seq, _ in held[-4:]])
    bus.publish(Ev(tenant, 10))
    await wait_until(lambda: bus.published == 11)
    assert bus.lost == 4
    [record] = [r for r in caplog.records if "no longer in the stream" in r.getMessage()]
    assert record.levelname == "WARNING" and record.lost == 4  # type: ignore[attr-defined]
    assert record.first_lost == held[-4][0] and record.stream_ends_at == held[-5][0]  # type: ignore[attr-defined]
    bus.publish(Ev(tenant, 11))  # counted once, not again
    await wait_until(lambda: bus.published == 12)
    assert bus.lost == 4


async def test_one_pubsub_connection_per_node_subscribed_while_used(
    make_bus: BusFactory, redis: Redis
) -> None:
    bus = await make_bus()
    tenants = [new_tenant() for _ in range(3)]
    subs = [bus.subscribe(t) for t in tenants for _ in range(2)]
    await ready(*subs)
    channels = [keys.live_channel(t) for t in tenants]

    async def numsub() -> list[int]:
        reply = await redis.execute_command("PUBSUB", "NUMSUB", *channels)
        return [int(x) for x in reply[1::2]]

    assert await numsub() == [1, 1, 1]  # one connection, however many local subscribers
    for sub in subs[:2]:
        sub.close()
    deadline = time.monotonic() + 5
    while await numsub() != [0, 1, 1]:  # unsubscribed after the last local one left
        assert time.monotonic() < deadline, await numsub()
        await asyncio.sleep(0.01)
    assert bus.hub.channel_count == 2


async def test_script_cache_flush_falls_back_to_eval(
    own_redis: OwnRedis, make_bus: BusFactory
) -> None:
    await own_redis.start()  # its own server: flushing scripts must not touch others
    bus = await make_bus(own_redis.url)
    tenant = new_tenant()
    sub = bus.subscribe(tenant)
    await ready(sub)
    bus.publish(Ev(tenant, 0))
    await take(sub, 1)
    flusher = Redis.from_url(own_redis.url, protocol=2)
    try:
        await flusher.script_flush()
    finally:
        await flusher.aclose()
    for n in range(1, 20):
        bus.publish(Ev(tenant, n))
    assert numbers(await take(sub, 19)) == list(range(1, 20))
    assert not bus.dropped


async def test_bus_tasks_end_on_a_single_cancel(redis_server: str) -> None:
    """What asyncio.run() does at exit when nobody called stop(): cancel every task
    once. redis-py on Python 3.11 can swallow such a cancel (asyncio.wait_for); the
    bus's loops must end anyway, or the process hangs at exit."""
    rng = random.Random(5)
    for _ in range(15):
        bus = EventBus(redis_server, counters=Counters())
        await bus.start()
        tenant = new_tenant()
        sub = bus.subscribe(tenant)
        await ready(sub)
        for n in range(rng.randrange(1, 300)):
            bus.publish(Ev(tenant, n))
        sub.close()  # makes the hub send an UNSUBSCRIBE right now
        await asyncio.sleep(rng.choice([0, 0, 0.001, 0.003]))
        tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith("bus-")]
        # The writer, the hub's router, and its reader while a channel is subscribed.
        assert {"bus-writer", "bus-live-router"} <= {t.get_name() for t in tasks}
        for task in tasks:
            task.cancel()
        _done, stuck = await asyncio.wait(tasks, timeout=5)
        assert not stuck, [t.get_name() for t in stuck]
        await bus.stop()


# -- the seam ---------------------------------------------------------------------------


@pytest.mark.parametrize("same_node", [False, True], ids=["other-node", "same-node"])
async def test_5000_events_with_random_disconnects_arrive_exactly_once_in_order(
    make_bus: BusFactory, same_node: bool
) -> None:
    # On the same node the writer hands its events to the hub (offer_local) across
    # every replay/live seam of the resumes.
    producer_node = await make_bus()
    consumer_node = producer_node if same_node else await make_bus()
    tenant = new_tenant()
    total = 5000
    rng = random.Random(3261)

    async def produce() -> None:
        # Bursts spread over a second or two: resumes land in replays and in live phases.
        n = 0
        while n < total:
            for _ in range(min(rng.randrange(1, 60), total - n)):
                assert producer_node.publish(Ev(tenant, n))
                n += 1
            await asyncio.sleep(rng.choice([0, 0.002, 0.005, 0.01]))

    producer = asyncio.create_task(produce())
    got: list[Event] = []
    since = "0-0"
    resumes = overflows = 0
    async with asyncio.timeout(60):
        while len(got) < total:
            it = events_since(
                consumer_node,
                tenant,
                since,
                maxsize=rng.choice([8, 64, 1000]),
                page_size=rng.choice([7, 100, 500]),
            )
            try:
                for _ in range(rng.randrange(1, 200)):
                    if len(got) == total:
                        break
                    got.append(await anext(it))
                    if rng.random() < 0.01:
                        await asyncio.sleep(0.02)  # a consumer that sometimes stalls
            except SubscriberOverflow as exc:
                overflows += 1
                assert exc.last_seq == (got[-1][0] if got else since)
            finally:
                await it.aclose()
            since = got[-1][0] if got else since
            resumes += 1
    await producer
    assert numbers(got) == list(range(total))
    assert [e[0] for e in got] == [
        e[0] for e in await consumer_node.replay(tenant, None, count=10_000)
    ]
    assert resumes > 10
    print(f"resumes={resumes} overflows={overflows} round_trips={producer_node.round_trips}")
    assert consumer_node.hub.subscription_count == 0  # every subscription was closed


async def test_slow_subscriber_overflows_with_last_seq_and_resumes_without_loss(
    make_bus: BusFactory,
) -> None:
    bus = await make_bus()
    tenant = new_tenant()
    # The raw subscription: 5 fit, the 6th overflows it; the hub does not wait for it.
    sub = bus.subscribe(tenant, maxsize=5)
    await ready(sub)
    for n in range(20):
        bus.publish(Ev(tenant, n))
    # The 6th message overflows it (and the hub forgets it); nothing has been read.
    await wait_until(lambda: bus.hub.overflows == 1, what="overflow")
    first = await take(sub, 5)
    with pytest.raises(SubscriberOverflow) as info:
        await asyncio.wait_for(anext(sub), 10)
    assert info.value.last_seq == first[-1][0]
    assert numbers(await bus.replay(tenant, info.value.last_seq)) == list(range(5, 20))
    assert bus.hub.subscription_count == 0

    # Through events_since, in its live phase: the consumer takes one event, then
    # stalls while 100 more arrive.
    it = events_since(bus, tenant, None, maxsize=10)
    waiting = asyncio.create_task(take(it, 1))
    await wait_until(lambda: bus.hub.subscription_count == 1, what="subscribed")
    await asyncio.sleep(0.05)  # let it finish its (empty) replay and go live
    for n in range(20, 120):
        bus.publish(Ev(tenant, n))
    received = await waiting
    await wait_until(lambda: bus.hub.overflows == 2, what="overflow")
    with pytest.raises(SubscriberOverflow) as info:
        async with asyncio.timeout(10):
            while True:
                received.append(await anext(it))
    # What fitted in the queue (10), plus the one the generator held when it overflowed
    # if it had taken it off the queue by then.
    assert numbers(received) == list(range(20, 20 + len(received)))
    assert 10 <= len(received) <= 11
    assert info.value.last_seq == received[-1][0]
    await it.aclose()
    resumed = events_since(bus, tenant, info.value.last_seq)
    received += await take(resumed, 120 - 20 - len(received))
    await resumed.aclose()
    assert numbers(received) == list(range(20, 120))


async def test_stream_is_trimmed_by_length_and_a_trimmed_gap_is_reported(
    make_bus: BusFactory, redis: Redis
) -> None:
    bus = await make_bus(stream_maxlen=100)
    tenant = new_tenant()
    sub = bus.subscribe(tenant, maxsize=2000)
    await ready(sub)
    for n in range(1000):
        bus.publish(Ev(tenant, n))
    live = await take(sub, 1000)
    length = await redis.xlen(keys.events_key(tenant))
    # "~": Redis trims whole radix-tree nodes (<= 100 entries each by default).
    assert 100 <= length <= 200, length
    held = await stream(redis, tenant)
    assert held == live[-length:]  # the newest are kept
    with pytest.raises(EventsLost) as info:
        await anext(events_since(bus, tenant, live[0][0]))
    assert info.value.oldest == held[0][0]
    it = events_since(bus, tenant, live[0][0], allow_gap=True)
    assert await take(it, length) == held
    await it.aclose()


async def test_stream_is_trimmed_by_age(make_bus: BusFactory, redis: Redis) -> None:
    offset = [0.0]
    bus = await make_bus(stream_max_age=60.0, clock=lambda: time.time() + offset[0])
    tenant = new_tenant()
    sub = bus.subscribe(tenant, maxsize=2000)
    await ready(sub)
    for n in range(500):
        bus.publish(Ev(tenant, n))
    await take(sub, 500)
    assert await redis.xlen(keys.events_key(tenant)) == 500  # all younger than 60 s
    offset[0] = 60.0  # an hour… a minute later: everything so far is too old
    bus.publish(Ev(tenant, 500))
    [(seq, _)] = await take(sub, 1)
    held = await stream(redis, tenant)
    assert len(held) < 150, len(held)  # whole nodes of old entries are gone
    assert held[-1][0] == seq


# -- Redis going away ---------------------------------------------------------------------


async def test_redis_killed_mid_stream_buffers_then_delivers_in_order(
    own_redis: OwnRedis, make_bus: BusFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sipgw.bus")
    await own_redis.start()
    producer = await make_bus(own_redis.url)
    consumer_node = await make_bus(own_redis.url)
    tenant = new_tenant()
    it = events_since(consumer_node, tenant, "0-0")
    # events_since keeps going across the outage; a raw subscription must be told.
    raw = consumer_node.subscribe(tenant)
    await ready(raw)
    for n in range(100):
        producer.publish(Ev(tenant, n))
    got = await take(it, 100)
    raw_got = await take(raw, 100)
    await wait_until(lambda: producer.published == 100, what="replies")

    consumer = asyncio.create_task(take(it, 200, timeout=30))
    await own_redis.kill()
    for n in range(100, 300):
        assert producer.publish(Ev(tenant, n))  # never raises, never blocks
    await wait_until(lambda: not producer.redis_up and producer.queued == 0, what="outage")
    assert producer.buffered == 200
    assert producer.redis_errors >= 1 and producer.last_error

    await own_redis.start()  # same port, empty: like a replaced cache node
    await wait_until(lambda: producer.buffered == 0, timeout=15, what="delivery")
    assert producer.redis_up and producer.published == 300 and not producer.dropped

    got += await consumer
    assert numbers(got) == list(range(300))  # nothing lost, nothing twice, in order
    fresh = Redis.from_url(own_redis.url, protocol=2)
    try:
        assert numbers(await stream(fresh, tenant)) == list(range(100, 300))
    finally:
        await fresh.aclose()
    with pytest.raises(SubscriberResync) as info:
        async with asyncio.timeout(10):
            async for _ in raw:
                pass
    assert info.value.last_seq == raw_got[-1][0] == got[99][0]
    assert consumer_node.hub.reconnects >= 1 and consumer_node.hub.resyncs >= 1
    await it.aclose()
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("bus: redis unavailable, buffering events") == 1
    assert messages.count("bus: redis is back") == 1


async def test_buffer_bound_drops_the_oldest_and_counts_them(
    own_redis: OwnRedis, make_bus: BusFactory
) -> None:
    # Redis is not there at all when the bus starts.
    bus = await make_bus(own_redis.url, max_buffer=50, max_queue=1000)
    tenant = new_tenant()
    for n in range(120):
        assert bus.publish(Ev(tenant, n))
    await wait_until(lambda: bus.queued == 0 and bus.redis_errors > 0, what="buffering")
    assert bus.buffered == 50
    assert bus.dropped == {"buffer_full": 70}
    await own_redis.start()
    await wait_until(lambda: bus.buffered == 0, timeout=15, what="delivery")
    assert bus.published == 50
    fresh = Redis.from_url(own_redis.url, protocol=2)
    try:
        assert numbers(await stream(fresh, tenant)) == list(range(70, 120))
    finally:
        await fresh.aclose()


async def test_stop_flushes_or_reports_what_is_left(own_redis: OwnRedis) -> None:
    await own_redis.start()
    tenant = new_tenant()
    bus = EventBus(own_redis.url, counters=Counters(), flush_timeout=5)
    await bus.start()
    for n in range(3000):
        bus.publish(Ev(tenant, n))
    assert await bus.stop() == 0  # flushed
    fresh = Redis.from_url(own_redis.url, protocol=2)
    try:
        assert await fresh.xlen(keys.events_key(tenant)) == 3000
    finally:
        await fresh.aclose()

    await own_redis.kill()
    bus = EventBus(own_redis.url, counters=Counters(), flush_timeout=0.3)
    await bus.start()
    for n in range(10):
        bus.publish(Ev(tenant, n))
    started = time.monotonic()
    assert await bus.stop() == 10
    assert time.monotonic() - started < 2
    assert bus.dropped["shutdown"] == 10


# -- the idle writer: publish() writes the append itself ---------------------------------


async def idle(bus: EventBus, tenant: str) -> None:
    """The bus has appended an event (its script is loaded) and has nothing left."""
    bus.publish(Ev(tenant, 0))
    await wait_until(lambda: bus.published == 1 and bus.buffered == 0, 5, "the first append")


async def test_with_the_writer_idle_publish_writes_the_append_itself(
    make_bus: BusFactory, redis_server: str
) -> None:
    bus = await make_bus()
    tenant = new_tenant()
    await idle(bus, tenant)
    blocking = SyncRedis.from_url(redis_server)
    try:
        bus.publish(Ev(tenant, 1))
        # The event loop is blocked from here on: no task can run, yet Redis appends
        # the event, so publish() wrote it to the connection before it returned.
        deadline = time.monotonic() + 5
        while blocking.xlen(keys.events_key(tenant)) < 2:
            assert time.monotonic() < deadline, "the append did not reach Redis"
        assert bus.queued == 0
    finally:
        blocking.close()
    await wait_until(lambda: bus.published == 2 and bus.buffered == 0, 5, "the reply")
    assert not bus.dropped


async def test_events_published_while_an_append_is_in_flight_follow_it_in_order(
    make_bus: BusFactory, redis: Redis
) -> None:
    bus = await make_bus()
    tenant = new_tenant()
    sub = bus.subscribe(tenant, maxsize=5000)
    await ready(sub)
    await idle(bus, tenant)
    rng = random.Random(2026)
    n = 1
    while n < 2000:  # bursts (one written at once, the rest queued) and pauses (idle)
        for _ in range(min(rng.randrange(1, 30), 2000 - n)):
            bus.publish(Ev(tenant, n))
            n += 1
        await asyncio.sleep(rng.choice([0, 0, 0.001, 0.002]))
    assert numbers(await take(sub, 2000)) == list(range(2000))
    assert numbers(await stream(redis, tenant)) == list(range(2000))
    assert bus.published == 2000 and not bus.dropped


async def test_an_append_in_flight_on_a_broken_connection_goes_again_once(
    own_redis: OwnRedis, make_bus: BusFactory
) -> None:
    await own_redis.start()  # its own server: the pause must not hold up other tests
    bus = await make_bus(own_redis.url, backoff_initial=0.01)
    tenant = new_tenant()
    await idle(bus, tenant)
    admin = Redis.from_url(own_redis.url, protocol=2)
    try:
        # Redis holds writes (the append script is one), so the direct append waits in
        # flight; the connection carrying it is then killed before it runs.
        await admin.execute_command("CLIENT", "PAUSE", "5000", "WRITE")
        for n in range(1, 10):
            bus.publish(Ev(tenant, n))
        assert bus.queued == 8  # the first went out itself, the rest wait behind it
        clients = await admin.client_list()
        killed = [c["id"] for c in clients if c["name"] == "sipgw-bus"]
        for client_id in killed:
            await admin.client_kill_filter(_id=client_id)
        assert killed
        await admin.execute_command("CLIENT", "UNPAUSE")
        await wait_until(lambda: bus.published == 10, 10, "the appends")
        assert numbers(await stream(admin, tenant)) == list(range(10))
        assert bus.redis_errors >= 1 and not bus.dropped
    finally:
        await admin.aclose()
