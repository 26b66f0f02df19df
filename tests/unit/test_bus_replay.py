"""The replay/live seam of events_since against an in-memory bus: every event exactly
once and in order, whatever happens between the pages, the subscription and the
consumer (concurrent publishing, overflow, resync, trimming, filters)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gateway.bus import (
    BusUnavailable,
    EventFilter,
    EventsLost,
    LiveSubscription,
    ReplayPage,
    SubscriberOverflow,
    events_since,
)
from gateway.bus.keys import parse_seq

Event = tuple[str, dict[str, Any]]


class FakeBus:
    """A stream plus live fan-out in memory, with hooks to publish "concurrently"."""

    def __init__(self, *, ready: bool = True) -> None:
        self.stream: list[Event] = []
        self.subs: list[LiveSubscription] = []
        self.ready = ready
        self.max_deleted = (0, 0)
        self.on_page: Callable[[], None] | None = None
        self.pages = 0
        self.subscribes = 0

    def append(self, *, live: bool = True, **fields: Any) -> str:
        seq = f"{1000 + len(self.stream)}-{len(self.stream) % 3}"
        event = {"n": len(self.stream), "seq": seq, **fields}
        self.stream.append((seq, event))
        if live:
            for sub in list(self.subs):
                sub.offer(seq, event)
        return seq

    def trim(self, keep: int) -> None:
        cut = self.stream[: len(self.stream) - keep]
        if cut:
            self.max_deleted = parse_seq(cut[-1][0])
        self.stream = self.stream[len(self.stream) - keep :]

    def subscribe(
        self,
        tenant: str,
        maxsize: int | None = None,
        accept: Callable[[dict[str, Any]], bool] | None = None,
    ) -> LiveSubscription:
        self.subscribes += 1
        sub = LiveSubscription(
            maxsize or 1000, tenant=tenant, on_end=self.subs.remove, accept=accept
        )
        self.subs.append(sub)
        if self.ready:
            sub.mark_ready()
        return sub

    async def replay_page(
        self, tenant: str, after: str | None, *, count: int = 1000, check_gap: bool = False
    ) -> ReplayPage:
        await asyncio.sleep(0)
        self.pages += 1
        after_key = parse_seq(after) if after is not None else (-1, -1)
        if check_gap and after is not None and self.max_deleted > after_key:
            raise EventsLost(after, self.stream[0][0] if self.stream else None)
        items = [e for e in self.stream if parse_seq(e[0]) > after_key][:count]
        if self.on_page is not None:
            self.on_page()  # events published while the replay is under way
        return ReplayPage(items, items[-1][0] if items else None, len(items) < count)

    async def last_seq(self, tenant: str) -> str | None:
        await asyncio.sleep(0)
        return self.stream[-1][0] if self.stream else None


async def take(it: AsyncIterator[Event], count: int) -> list[Event]:
    out: list[Event] = []
    async with asyncio.timeout(5):
        while len(out) < count:
            out.append(await anext(it))
    return out


def numbers(events: list[Event]) -> list[int]:
    return [event["n"] for _seq, event in events]


async def test_since_none_is_live_from_now() -> None:
    bus = FakeBus()
    for _ in range(3):
        bus.append()
    it = events_since(bus, "acme", None)
    task = asyncio.create_task(take(it, 2))
    await asyncio.sleep(0.01)
    bus.append()
    bus.append()
    assert numbers(await task) == [3, 4]
    await it.aclose()
    assert bus.subs == []  # closing the generator closes its subscription


async def test_ready_is_signalled_once_the_cursor_is_fixed() -> None:
    """What a client does after "ready" is never missed: events appended from the
    on_ready callback on (as a client reacting to it would) are all delivered."""
    bus = FakeBus()
    bus.append()
    calls: list[int] = []

    async def on_ready() -> None:
        calls.append(len(bus.stream))
        bus.append()  # the client starts a call the moment it is told "ready"

    it = events_since(bus, "acme", None, on_ready=on_ready)
    assert numbers(await take(it, 1)) == [1]
    assert calls == [1]
    await it.aclose()


async def test_replay_then_live_with_publishing_between_pages() -> None:
    bus = FakeBus()
    for _ in range(10):
        bus.append()
    # Every page read publishes two more events: they reach the live queue AND the
    # stream, so the seam must drop the copies the replay already returned.
    bus.on_page = lambda: [bus.append() for _ in range(2)] if bus.pages < 6 else None
    it = events_since(bus, "acme", bus.stream[2][0], page_size=3)
    got = await take(it, 7 + 10)
    assert numbers(got) == list(range(3, 20))
    bus.append()
    assert numbers(await take(it, 1)) == [20]
    await it.aclose()


async def test_events_missing_from_live_but_in_stream_are_replayed() -> None:
    bus = FakeBus()
    bus.append()
    bus.on_page = lambda: bus.append(live=False) if bus.pages == 1 else None
    it = events_since(bus, "acme", "0-0", page_size=1)
    assert numbers(await take(it, 2)) == [0, 1]
    await it.aclose()


async def test_filters_and_cursor_advances_over_filtered_events() -> None:
    bus = FakeBus()
    for n in range(6):
        bus.append(extension="201" if n % 2 else "202", type="call.offered")
    bus.append(type="peer.up")
    only_201 = EventFilter(extensions=frozenset({"201"}))
    it = events_since(bus, "acme", "0-0", only_201)
    assert numbers(await take(it, 3)) == [1, 3, 5]
    await it.aclose()
    assert EventFilter(types=frozenset({"peer.up"}))({"type": "peer.up"})
    assert not EventFilter(types=frozenset({"peer.up"}))({"type": "call.offered"})
    assert EventFilter()({})


async def test_overflow_in_live_phase_raises_with_last_seq_and_resume_loses_nothing() -> None:
    bus = FakeBus()
    it = events_since(bus, "acme", "0-0", maxsize=4)
    task = asyncio.create_task(take(it, 1))
    await asyncio.sleep(0.01)  # the generator is in its live phase now
    bus.append()
    first = await task
    for _ in range(10):  # the consumer does not read: its queue (4) overflows
        bus.append()
    got = first + await take(it, 4)
    with pytest.raises(SubscriberOverflow) as info:
        await anext(it)
    assert info.value.last_seq == got[-1][0]
    resumed = events_since(bus, "acme", info.value.last_seq, maxsize=4)
    got += await take(resumed, 6)
    assert numbers(got) == list(range(11))
    await resumed.aclose()


async def test_overflow_during_replay_is_recovered_by_replaying_more() -> None:
    bus = FakeBus()
    for _ in range(5):
        bus.append()
    # Lots of events arrive live during the first replay page: the live queue (3)
    # overflows before the consumer even got to the live phase.
    bus.on_page = lambda: [bus.append() for _ in range(8)] if bus.pages == 1 else None
    it = events_since(bus, "acme", "0-0", maxsize=3, page_size=100)
    assert numbers(await take(it, 13)) == list(range(13))
    assert bus.subscribes >= 2
    bus.append()
    assert numbers(await take(it, 1)) == [13]
    await it.aclose()


async def test_resync_replays_the_gap_transparently() -> None:
    bus = FakeBus()
    it = events_since(bus, "acme", "0-0")
    bus.append()
    assert numbers(await take(it, 1)) == [0]
    # The node's pub/sub connection dropped: these never arrive live...
    bus.append(live=False)
    bus.append(live=False)
    for sub in list(bus.subs):
        sub.resync()  # ...and the hub says so once it is back
    bus.append()
    got = await take(it, 3)
    assert numbers(got) == [1, 2, 3]
    await it.aclose()


async def test_trimmed_gap_is_reported_not_skipped() -> None:
    bus = FakeBus()
    for _ in range(10):
        bus.append()
    since = bus.stream[1][0]
    bus.trim(keep=5)
    with pytest.raises(EventsLost) as info:
        await anext(events_since(bus, "acme", since))
    assert info.value.oldest == bus.stream[0][0]
    it = events_since(bus, "acme", since, allow_gap=True)
    assert numbers(await take(it, 5)) == [5, 6, 7, 8, 9]
    await it.aclose()


async def test_unconfirmed_subscription_is_bus_unavailable() -> None:
    bus = FakeBus(ready=False)
    with pytest.raises(BusUnavailable):
        await anext(events_since(bus, "acme", None, ready_timeout=0.05))
    assert bus.subs == []


@pytest.mark.parametrize("since", ["garbage", "1-", "$"])
async def test_bad_since_is_a_value_error(since: str) -> None:
    with pytest.raises(ValueError, match="invalid event id"):
        await anext(events_since(FakeBus(), "acme", since))


async def test_bad_tenant_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="invalid tenant"):
        await anext(events_since(FakeBus(), "ACME", None))


@pytest.mark.parametrize("seed", range(20))
async def test_random_disconnects_under_concurrent_publishing(seed: int) -> None:
    rng = random.Random(seed)
    bus = FakeBus()
    total = 600
    bus.on_page = lambda: [bus.append() for _ in range(rng.randrange(3))
                           if len(bus.stream) < total]

    async def producer() -> None:
        while len(bus.stream) < total:
            for _ in range(rng.randrange(1, 6)):
                bus.append()
            await asyncio.sleep(0)

    task = asyncio.create_task(producer())
    got: list[Event] = []
    since: str | None = "0-0"
    async with asyncio.timeout(10):
        while len(got) < len(bus.stream) or not task.done():
            it = events_since(bus, "acme", since, page_size=rng.choice([1, 7, 50]),
                              maxsize=rng.choice([2, 16, 1000]))
            try:
                for _ in range(rng.randrange(1, 80)):
                    if len(got) >= len(bus.stream) and task.done():
                        break
                    got.append(await anext(it))
                    if rng.random() < 0.1:
                        await asyncio.sleep(0)
            except SubscriberOverflow as exc:
                assert exc.last_seq == (got[-1][0] if got else since)
            finally:
                await it.aclose()
            since = got[-1][0] if got else since
    await task
    assert numbers(got) == list(range(len(bus.stream)))
