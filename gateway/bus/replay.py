"""Resume a tenant's events from a seq: replay the gap from the stream, then go live,
with no duplicate and no hole at the seam.

Why the order matters: the append script puts an event in the stream and publishes it
in one step. So once our live subscription is *confirmed* by Redis, every later event
reaches it; every earlier one is already in the stream. Hence:

1. subscribe live FIRST and wait for the confirmation; live events are buffered by the
   subscription's bounded queue meanwhile;
2. replay the stream after the cursor with XRANGE, page by page, advancing the cursor;
3. then take the buffered and live events, skipping every seq <= cursor (those came
   through the replay already).

Stream ids only grow, so "seq <= cursor" is exactly "already seen".

Loose ends, each with a defined outcome:
- the live queue overflowed while we were still replaying: not the consumer's fault
  yet, so start again from the cursor (a fresh subscription, replay the rest);
- it overflowed in the live phase: the consumer is too slow. `SubscriberOverflow` is
  raised with the last seq it was given (or skipped by the filter): resume from it;
- the node's pub/sub connection dropped and came back (`SubscriberResync`): live events
  may have been missed, so start again from the cursor; the consumer sees nothing;
- events after the cursor were trimmed from the stream: `EventsLost` (a hole would be
  silent otherwise), unless ``allow_gap=True``;
- Redis unreachable (no confirmation within ``ready_timeout``, or a failed read):
  `BusUnavailable`.

With a `sink` (the WebSocket endpoint), step 3 is the hub's: once the replay is done the
subscription is attached to the sink with the cursor as its seam and handed over, and
the iterator ends. Live events are then written from the hub's reader, never yielded;
how the subscription ends (overflow, resync, close) reaches the sink's ``ended()``, and
nothing of this generator lives on. With `wake` (SSE), the live phase yields None
whenever the consumer's wake time (a loop clock value) comes without an event: its
heartbeats and token checks need no task.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from redis.exceptions import RedisError

from gateway.bus import keys
from gateway.bus.live import LiveSubscription, Sink, SubscriberOverflow, SubscriberResync
from gateway.bus.streams import ReplayPage

EventPredicate = Callable[[dict[str, Any]], bool]
_T = TypeVar("_T")


class BusReader(Protocol):
    """What events_since needs of a bus (EventBus is one; tests use a fake)."""

    def subscribe(
        self,
        tenant: str,
        maxsize: int | None = None,
        accept: Callable[[dict[str, Any]], bool] | None = None,
    ) -> LiveSubscription: ...

    async def replay_page(
        self, tenant: str, after: str | None, *, count: int = ..., check_gap: bool = ...
    ) -> ReplayPage: ...

    async def last_seq(self, tenant: str) -> str | None: ...


class BusUnavailable(Exception):
    """Redis could not be reached to replay or to subscribe (the API answers 503)."""


@dataclass(frozen=True, slots=True)
class EventFilter:
    """The usual subscriber filter: empty sets mean "all".

    With `extensions`, only events whose ``extension`` is one of them pass; events
    without an extension (``peer.up``/``peer.down``) then do not: a user restricted
    to some extensions sees the calls of those and nothing else.
    """

    extensions: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()

    def __call__(self, event: dict[str, Any]) -> bool:
        if self.types and event.get("type") not in self.types:
            return False
        return not self.extensions or event.get("extension") in self.extensions


async def events_since(
    bus: BusReader,
    tenant: str,
    since: str | None,
    filters: EventPredicate | None = None,
    *,
    page_size: int = 500,
    maxsize: int | None = None,
    ready_timeout: float = 5.0,
    allow_gap: bool = False,
    on_ready: Callable[[], Awaitable[None]] | None = None,
    sink: Sink | None = None,
    wake: Callable[[], float] | None = None,
) -> AsyncGenerator[tuple[str, dict[str, Any]] | None, None]:
    """``(seq, event_dict)`` of `tenant` after `since`, each once and in stream order,
    then live ones as they come, until the consumer stops (or the hub closes).

    `since` None means "from now on" (no replay); ``"0-0"`` means everything the
    stream still holds (pass ``allow_gap=True`` if it was trimmed). `filters` decides
    what is yielded; filtered-out events still advance the cursor. `on_ready` is awaited
    once, when the live subscription is confirmed and the cursor fixed: from then on no
    event of the tenant can be missed (a client may start what it wants to observe).
    `sink` and `wake`: see the module docstring (None is yielded only with `wake`, and
    the consumer must move its wake time on after one). With a `sink` the iterator ends
    once the subscription is handed over to it (or ended while being attached).
    Raises ValueError (bad tenant or since), `SubscriberOverflow`, `EventsLost`,
    `BusUnavailable` as described in the module docstring.
    """
    keys.validate_tenant(tenant)
    cursor: str | None = keys.validate_seq(since) if since is not None else None
    accept: EventPredicate = filters if filters is not None else _all
    sub: LiveSubscription | None = None
    try:
        while True:
            # The new subscription before the old one goes: the hub keeps the channel
            # subscribed instead of leaving and joining it again.
            fresh = bus.subscribe(tenant, maxsize, filters)
            if sub is not None:
                sub.close()
            sub = fresh
            try:
                async with asyncio.timeout(ready_timeout):
                    await sub.wait_ready()
            except TimeoutError:
                raise BusUnavailable("live subscription not confirmed by redis") from None
            if cursor is None:
                cursor = await _guard(bus.last_seq(tenant)) or "0-0"
            if on_ready is not None:
                await on_ready()
                on_ready = None

            # Replay: everything after the cursor up to the end of the stream.
            while True:
                page = await _guard(
                    bus.replay_page(tenant, cursor, count=page_size, check_gap=not allow_gap)
                )
                for seq, event in page.events:
                    cursor = seq
                    if accept(event):
                        yield seq, event
                if page.last_seq is not None:
                    cursor = page.last_seq
                if page.exhausted:
                    break
            if sub.overflowed:
                continue  # overflowed during the replay: replay the rest, subscribe again

            # Live: buffered first, then new ones; the replay covered seq <= cursor.
            if sink is not None:
                handed, sub = sub, None  # the sink's now: not closed below
                handed.attach(sink, cursor)
                return
            cursor_key = keys.parse_seq(cursor)
            try:
                while True:
                    try:
                        if wake is None:
                            seq, event = await anext(sub)
                        else:
                            async with asyncio.timeout_at(wake()):
                                seq, event = await anext(sub)
                    except TimeoutError:
                        yield None
                        continue
                    except StopAsyncIteration:
                        return  # closed: the hub is shutting down
                    key = keys.parse_seq(seq)
                    if key <= cursor_key:
                        continue
                    cursor, cursor_key = seq, key
                    if accept(event):
                        yield seq, event
            except SubscriberResync:
                continue
            except SubscriberOverflow:
                raise SubscriberOverflow(cursor) from None
    finally:
        if sub is not None:
            sub.close()


def _all(event: dict[str, Any]) -> bool:
    return True


async def _guard(call: Awaitable[_T]) -> _T:
    try:
        return await call
    except (RedisError, OSError) as exc:  # OSError covers timeouts and refused connects
        raise BusUnavailable(f"redis: {exc}") from exc
