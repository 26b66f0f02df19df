"""The node's live fan-in: one Redis pub/sub connection per server, many local
subscriptions.

`LiveHub` keeps ONE pub/sub connection per node to each server that holds a subscribed
tenant's channel, subscribed to ``{tenant}:live`` of exactly the tenants that have
local subscribers (SUBSCRIBE on the first, UNSUBSCRIBE after the last). One server, or
the master Sentinel names: one connection, classic pub/sub. A Redis Cluster: sharded
pub/sub (issue #14), one connection to each master that serves a subscribed tenant's
slot, one SSUBSCRIBE per channel; the append script SPUBLISHes, which reaches that master
only (classic PUBLISH is copied to every node of a cluster, which does not scale). A
router task (`_run_router`) puts each channel on its master, again whenever a server
fails or refuses a channel with MOVED, or the cluster moves a channel away
(an unrequested SUNSUBSCRIBE): a failover or a resharding. Each connection's reader
decodes each message once and offers the same ``(seq, event_dict)`` to every local
`LiveSubscription` of that tenant ("encode once, send many": subscribers must treat
the dict as read-only).

The hub never waits for a subscriber. A subscription's queue is bounded; when an event
does not fit, the subscription is marked overflowed, dropped from the hub, and its
iterator raises `SubscriberOverflow(last_seq)` once the consumer has taken what was
queued: ``last_seq`` is the last event it delivered, so the client resumes from there
with a replay of the stream and loses nothing.

Direct delivery ("frame once, write to every transport"): a subscription can be
*attached* to a sink, a plain function the hub calls in its reader for each event the
subscriber takes. The WebSocket endpoint attaches one that writes the event's frame,
built once for all subscribers, straight to the connection's transport; live delivery
then costs no task, no queue hop and no coroutine switch per subscriber per event. The
hub keeps the subscriptions of a tenant grouped by their filter, so a filter is asked
once per event, not once per subscriber. A sink that cannot take an event (its write
buffer is over its limit) returns False: the subscription overflows exactly as a full
queue does. However an attached subscription ends (overflow, resync, close), the hub
calls the sink's ``ended()`` at once, so the sink needs no task waiting on the iterator.

The node's own events arrive sooner: the append script answers the writer with the new
id and the id before it, and the writer offers the event to the hub (`offer_local`). The
hub delivers it at once if its subscribers were given exactly that previous id last, so
the stream's order holds across writers; the pub/sub copy that follows is skipped by its
seq (read from the message's head, the payload left undecoded). Otherwise, another
writer's event in between not read yet, the pub/sub copy delivers it in its turn.

Memory: a node holds one subscription per subscriber for as long as it is connected
(10 000 in bench fan-out), so a subscription is slotted and makes its queue and its
readiness waiter only when it needs them.

Redis going away (a server, or a cluster master until its replica is promoted): the hub
reconnects with capped exponential backoff and subscribes again, where the channel lives
now. Pub/sub does not queue for absent listeners, so events published meanwhile never
arrive live. Every subscription that was live before the connection broke therefore
raises `SubscriberResync(last_seq)` as soon as its channel is subscribed again: the
API layer (or `replay.events_since`, which does it by itself) replays the gap from the
stream and continues live. A subscription made while Redis was away simply becomes
ready later (`wait_ready()`), it has missed nothing.

Readiness matters for the replay seam: a subscription is *ready* once Redis confirmed the
channel subscription, i.e. every event published from then on reaches it. Replaying the
stream only after that point is what makes "no hole" hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.exceptions import ConnectionError

from gateway.bus import keys
from gateway.redis_link import LINK_ERRORS, Backoff, RedisLink, RedisTarget, raise_if_cancelled
from gateway.redis_routes import WireRoutes, is_moved
from gateway.redis_wire import Reply, WireProtocol, connect

log = logging.getLogger("sipgw.bus")

Event = tuple[str, dict[str, Any]]
EventPredicate = Callable[[dict[str, Any]], bool]

DEFAULT_MAXSIZE = 1000
# The key whose server the hub always holds a connection to (see `LiveHub._route`).
HOME = "{sipgw}:live"


class SubscriberOverflow(Exception):
    """The subscriber did not keep up: its queue overflowed. ``last_seq`` is the last
    event it was given (None if none): resume from it."""

    def __init__(self, last_seq: str | None) -> None:
        super().__init__(f"subscriber queue overflowed; last delivered event {last_seq}")
        self.last_seq = last_seq


class SubscriberResync(Exception):
    """The node's pub/sub connection was lost and is back: live events may have been
    missed since ``last_seq``; replay the gap from the stream, then continue live."""

    def __init__(self, last_seq: str | None) -> None:
        super().__init__(f"live connection was lost; resync after {last_seq}")
        self.last_seq = last_seq


class LiveEvent:
    """One live event as the hub hands it on: decoded once, its seq parsed once, and
    ``encoded`` a memo where the API keeps the bytes it made of it (per format and
    framing), so every subscriber of the node writes the same bytes object.
    Subscribers must treat ``event`` and ``encoded`` values as read-only."""

    __slots__ = ("at", "encoded", "event", "key", "seq")

    def __init__(self, seq: str, event: dict[str, Any], at: float = 0.0) -> None:
        self.seq = seq
        self.key = keys.parse_seq(seq)
        self.event = event
        self.at = at  # the loop's clock when the hub got it (a sink's "last busy")
        self.encoded: dict[str, bytes] = {}


class Sink(Protocol):
    """Where an attached subscription's events go (the API's WebSocket connection)."""

    def deliver(self, item: LiveEvent) -> bool:
        """Write the event now, never wait; False if it cannot (the write buffer is over
        its limit): the subscription then overflows."""

    def attached(self, sub: LiveSubscription) -> None:
        """The subscription now delivers here; the sink closes it when its connection
        goes, so the hub forgets it at once."""

    def backlog(self) -> int:
        """Events (or their worth) written but not yet taken by the client: the
        subscription's `depth` once attached."""

    def ended(self, sub: LiveSubscription) -> None:
        """The attached subscription ended; `sub.ending` says how ("overflow": it
        resumes from `sub.last_seq`; "resync": replay from `sub.last_seq`, then attach
        a new one; "closed": by the sink itself, or the hub shut down). Called from the
        hub's reader or from `close()`: never wait."""


_OVERFLOW = "overflow"
_RESYNC = "resync"


class LiveSubscription:
    """Async iterator of ``(seq, event_dict)`` for one tenant, fed by a `LiveHub`.

    One consumer task iterates it. The iterator ends (StopAsyncIteration) after
    `close()`, raises `SubscriberOverflow` / `SubscriberResync` after the queued events
    were taken. `depth` is the current queue length (for metrics).

    After `attach(sink, after)` the events go to the sink instead of the queue, from the
    hub's reader; the iterator then yields nothing and only reports how it ended, and the
    sink hears of the end by itself (`Sink.ended`).
    """

    __slots__ = (
        "_after",
        "_ending",
        "_items",
        "_on_end",
        "_ready",
        "_ready_waiter",
        "_sink",
        "_waiter",
        "accept",
        "closed",
        "last_seq",
        "maxsize",
        "overflowed",
        "stale",
        "tenant",
    )

    def __init__(
        self,
        maxsize: int = DEFAULT_MAXSIZE,
        *,
        tenant: str = "",
        last_seq: str | None = None,
        on_end: Callable[[LiveSubscription], None] | None = None,
        accept: EventPredicate | None = None,
    ) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.tenant = tenant
        # The subscriber's filters (extension, type), applied before queueing: events
        # it does not want never take a place in its bounded queue (bench fan-out saw a
        # prompt reader of call.offered only cut off by the other event types). The hub
        # applies it once per event for every subscription with an equal filter.
        self.accept = accept
        self.maxsize = maxsize
        # The last seq handed to the consumer: the resume point in overflow/resync.
        self.last_seq = last_seq
        self.overflowed = False
        self.closed = False
        self._items: deque[LiveEvent] | None = None  # made by the first queued event
        self._waiter: asyncio.Future[None] | None = None
        self._ending: str | None = None
        self._ready = False
        self._ready_waiter: asyncio.Future[None] | None = None  # only while awaited
        # Set by the hub when the pub/sub connection broke while this subscription was
        # live: the next time its channel is confirmed it must resync, not just go on.
        self.stale = False
        # Called once when it ends (close, overflow, resync): the hub forgets it.
        self._on_end = on_end
        # Direct delivery (attach): the sink, and the seam — events up to this key
        # came through the replay already and are skipped (None once past it).
        self._sink: Sink | None = None
        self._after: keys.SeqKey | None = None

    # -- consumer side --------------------------------------------------------------------
    @property
    def depth(self) -> int:
        if self._sink is not None:
            return self._sink.backlog()
        return len(self._items) if self._items is not None else 0

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def ending(self) -> str | None:
        """How it ended: "overflow", "resync", "closed"; None while it runs."""
        return "closed" if self.closed else self._ending

    async def wait_ready(self) -> None:
        """Return once Redis confirmed the channel subscription (or the subscription
        ended: iterate to learn how)."""
        while not self._ready:
            if self._ready_waiter is None:
                self._ready_waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._ready_waiter)

    def __aiter__(self) -> LiveSubscription:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self.closed:
                raise StopAsyncIteration
            if self._items:
                item = self._items.popleft()
                self.last_seq = item.seq
                return item.seq, item.event
            if self._ending == _OVERFLOW:
                raise SubscriberOverflow(self.last_seq)
            if self._ending == _RESYNC:
                raise SubscriberResync(self.last_seq)
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None

    def close(self) -> None:
        """Stop: queued events are discarded, the iterator ends, the hub forgets it."""
        if self.closed:
            return
        self.closed = True
        self._items = None
        self._end()

    def attach(self, sink: Sink, after: str | None) -> None:
        """Deliver through `sink` from now on: first what is queued, then each event as
        the hub dispatches it. Events up to `after` (the replay's cursor) are skipped:
        the pub/sub message of an event the replay already read may still be on its way.
        `last_seq` then follows what the sink took: the resume point on overflow."""
        self._after = keys.parse_seq(after) if after is not None else None
        if after is not None:
            self.last_seq = after
        self._sink = sink
        sink.attached(self)
        queued, self._items = self._items, None
        for item in queued or ():
            if not self.take(item):
                return

    # -- hub side -------------------------------------------------------------------------
    def offer(self, seq: str, event: dict[str, Any]) -> bool:
        """`take` for one event not yet past this subscription's filter."""
        if self.accept is not None and not self.accept(event):
            return not (self._ending is not None or self.closed)  # not wanted: nothing lost
        return self.take(LiveEvent(seq, event))

    def take(self, item: LiveEvent) -> bool:
        """Queue (or, attached, write) an event its filter accepted, without ever
        waiting; False if it was not taken (ended, or the queue or the sink is full:
        then the subscription is overflowed and ends)."""
        if self._ending is not None or self.closed:
            return False
        sink = self._sink
        if sink is not None:
            after = self._after
            if after is not None:
                if item.key <= after:
                    return True  # the replay delivered it
                self._after = None  # stream order: everything later is new
            if sink.deliver(item):
                self.last_seq = item.seq
                return True
        else:
            items = self._items
            if items is None:
                items = self._items = deque()
            if len(items) < self.maxsize:
                items.append(item)
                self._wake()
                return True
        self.overflowed = True
        self._ending = _OVERFLOW
        self._end()
        return False

    def resync(self) -> None:
        """End with `SubscriberResync` after the queued events."""
        if self._ending is None and not self.closed:
            self._ending = _RESYNC
            self._end()

    def mark_ready(self) -> None:
        self.stale = False
        self._set_ready()

    def _set_ready(self) -> None:
        self._ready = True
        waiter, self._ready_waiter = self._ready_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def mark_unready(self) -> None:
        self._ready = False

    def _end(self) -> None:
        # Waiters of readiness must not hang on a subscription that is over.
        self._set_ready()
        self._wake()
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end(self)
        sink = self._sink
        if sink is not None:
            sink.ended(self)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


@dataclass
class _Link:
    """State of one pub/sub connection; thrown away with it."""

    sharded: bool = False  # SSUBSCRIBE (a cluster) or SUBSCRIBE
    wire: WireProtocol | None = None  # set once connected
    heard: float = 0.0  # the loop's clock when Redis last sent anything
    want: set[str] = field(default_factory=set)  # the channels this server should deliver
    requested: set[str] = field(default_factory=set)  # SUBSCRIBE sent, no UNSUBSCRIBE since
    awaiting: Counter[str] = field(default_factory=Counter)  # confirmations to come
    live: set[str] = field(default_factory=set)  # confirmed: messages flow
    # The channel of each SSUBSCRIBE sent, oldest first: a refusal (MOVED) names none.
    subscribing: deque[str] = field(default_factory=deque)


class _Shard:
    """One server's pub/sub connection and its reconnect loop: one per cluster master
    that serves a subscribed tenant's slot, one in all for a server or Sentinel."""

    __slots__ = ("address", "link", "state", "task", "wake", "want")

    def __init__(self, address: tuple[str, int], state: RedisLink) -> None:
        self.address = address
        self.want: set[str] = set()
        self.link: _Link | None = None
        self.state = state
        self.task: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()


class LiveHub:
    """One pub/sub connection per node; see the module docstring."""

    def __init__(
        self,
        redis: str | RedisTarget,
        *,
        default_maxsize: int = DEFAULT_MAXSIZE,
        ping_interval: float = 5.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 2.0,
        connect_timeout: float = 2.0,
    ) -> None:
        self.default_maxsize = default_maxsize
        self._ping_interval = ping_interval
        # Its own lean connection (gateway/redis_wire.py: every event of the node is
        # read here), which never reconnects by itself: this hub decides when to retry
        # and must see every disconnect (it signals a resync).
        self._routes = WireRoutes(redis, name="live", timeout=None, connect_timeout=connect_timeout)
        self._connect_timeout = connect_timeout
        self._backoff_initial, self._backoff_max = backoff_initial, backoff_max
        # The hub's link state: down while any server's connection is, for /metrics and
        # one log line per outage.
        self._state = RedisLink(on_change=self._link_changed)
        # tenant -> filter -> its subscriptions: a filter is asked once per event.
        self._subs: dict[str, dict[EventPredicate | None, dict[LiveSubscription, None]]] = {}
        self._shards: dict[tuple[str, int], _Shard] = {}
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._last_bad_log = 0.0
        # Counters (plain ints; folded into /metrics by the lead's collector); the
        # connection's own (connected, reconnects, redis_errors) are properties below.
        self.messages = 0  # live messages received and decoded
        self.bad_messages = 0  # messages on our channels that did not decode
        self.overflows = 0  # subscriptions ended by SubscriberOverflow
        self.resyncs = 0  # subscriptions ended by SubscriberResync
        self.local_deliveries = 0  # events handed over by this node's writer (below)
        # tenant -> the seq of the last event its subscribers were given, by either way
        # (`offer_local`): known only while its channel is live.
        self._last: dict[str, str] = {}

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        if self._tasks:
            return
        self._closing = False
        self._dirty.set()  # the first routing: the connection that is always held
        self._tasks = [asyncio.create_task(self._run_router(), name="bus-live-router")]

    async def close(self) -> None:
        """Stop the tasks, end every subscription (their iterators stop), disconnect."""
        self._closing = True
        tasks = self._tasks + [shard.task for shard in self._shards.values() if shard.task]
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: shutting down must not hang on a task stuck in a library call.
            _done, stuck = await asyncio.wait(tasks, timeout=2.0)
            if stuck:
                log.warning("bus: live tasks did not stop in time")
        self._tasks = []
        for sub in list(self._each()):
            sub.close()
        self._subs.clear()
        for shard in self._shards.values():
            if shard.link is not None and shard.link.wire is not None:
                shard.link.wire.close()
        self._shards.clear()
        await self._routes.close()
        self._state.up = None  # closed: neither up nor failed

    # -- subscriptions --------------------------------------------------------------------
    def subscribe(
        self,
        tenant: str,
        maxsize: int | None = None,
        accept: EventPredicate | None = None,
    ) -> LiveSubscription:
        """A new subscription to `tenant`'s live events (only those `accept` takes).
        Await `wait_ready()` before relying on it to see everything published from now on."""
        keys.validate_tenant(tenant)
        sub = LiveSubscription(
            maxsize or self.default_maxsize, tenant=tenant, on_end=self._detach, accept=accept
        )
        if self._closing:
            sub.close()  # the hub is shut: the iterator ends at once
            return sub
        groups = self._subs.get(tenant)
        if groups is None:
            groups = self._subs[tenant] = {}
            self._dirty.set()
        groups.setdefault(accept, {})[sub] = None
        channel = keys.live_channel(tenant)
        if any(s.link is not None and channel in s.link.live for s in self._shards.values()):
            sub.mark_ready()
        return sub

    @property
    def subscription_count(self) -> int:
        return sum(len(group) for groups in self._subs.values() for group in groups.values())

    @property
    def channel_count(self) -> int:
        return len(self._subs)

    def queue_depths(self) -> list[int]:
        """Current queue depth of every subscription (for a histogram or a max gauge)."""
        return [sub.depth for sub in self._each()]

    def _each(self, tenant: str | None = None) -> list[LiveSubscription]:
        """The subscriptions of `tenant` (None: of every tenant), as a list: ending one
        while walking them changes the hub's sets."""
        tenants = self._subs.values() if tenant is None else [self._subs.get(tenant, {})]
        return [sub for groups in tenants for group in groups.values() for sub in group]

    def _detach(self, sub: LiveSubscription) -> None:
        groups = self._subs.get(sub.tenant)
        group = groups.get(sub.accept) if groups is not None else None
        if groups is None or group is None or sub not in group:
            return
        del group[sub]
        if not group:
            del groups[sub.accept]
        if not groups:
            del self._subs[sub.tenant]
            self._last.pop(sub.tenant, None)
            self._dirty.set()

    # -- connection -----------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """No server's connection is down (none is needed while nobody subscribes)."""
        return self._state.up is not False

    @property
    def reconnects(self) -> int:
        """Connections re-established after a loss."""
        return self._state.reconnects

    def servers(self) -> dict[str, bool]:
        """Each server the hub holds a connection to (`Endpoint.label`): whether it is up."""
        return {
            self._routes.endpoint_at(address).label: shard.state.up is not False
            for address, shard in self._shards.items()
        }

    @property
    def redis_errors(self) -> int:
        return self._state.errors

    @property
    def last_error(self) -> str | None:
        return self._state.last_error

    async def _run_router(self) -> None:
        """Keeps one connection per server that serves a subscribed tenant's channel
        (one server, the Sentinel master, or each cluster master of those slots), each
        told which channels it must deliver; runs again whenever the subscribed tenants
        change or a server failed (a failover moves slots)."""
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._ping_interval):
                    await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._route()
            except LINK_ERRORS as exc:  # no slot map, no sentinel answered
                self._state.went_down(exc)
                self._routes.failed()
                self._dirty.set()
                await asyncio.sleep(self._backoff_initial)
            raise_if_cancelled()

    async def _route(self) -> None:
        # One connection is always held, subscribed or not, and pinged: it tells
        # /metrics at once when Redis goes away (the writer learns it only when it has
        # an event to write). On a cluster: the master of a node-wide key.
        want: dict[tuple[str, int], set[str]] = {await self._routes.address_for(HOME): set()}
        for tenant in list(self._subs):
            channel = keys.live_channel(tenant)
            want.setdefault(await self._routes.address_for(channel), set()).add(channel)
        for address in want.keys() - self._shards.keys():
            self._shards[address] = self._start_shard(address)
        for address, shard in list(self._shards.items()):
            if address in want:
                shard.want = want[address]
                shard.wake.set()
            else:  # nothing of ours there any more (its tenants left, or moved)
                del self._shards[address]
                if shard.task is not None:
                    shard.task.cancel()

    def _start_shard(self, address: tuple[str, int]) -> _Shard:
        shard = _Shard(address, RedisLink(on_change=self._shard_changed))
        backoff = Backoff(self._backoff_initial, self._backoff_max)
        # A session that came up and broke is retried after the first delay (even a bug
        # must not make this a busy loop); failing to connect waits longer each time.
        shard.task = asyncio.create_task(
            shard.state.run(
                lambda: self._session(shard), backoff,
                failure_log="bus: live reader failed; reconnecting", logger=log,
            ),
            name="bus-live-reader",
        )  # fmt: skip
        return shard

    def _shard_changed(self, up: bool, error: str | None) -> None:
        if not up:
            self._state.went_down(ConnectionError(error or "lost"))

    def _shard_up(self) -> None:
        if all(shard.state.up is not False for shard in self._shards.values()):
            self._state.came_up()

    async def _session(self, shard: _Shard) -> None:
        link = _Link(sharded=self._routes.clustered)

        def pushed(reply: Reply) -> None:
            link.heard = loop.time()
            self._handle(link, reply)

        loop = asyncio.get_running_loop()
        try:
            wire = link.wire = await connect(
                self._routes.endpoint_at(shard.address), name="live", timeout=None,
                connect_timeout=self._connect_timeout, on_push=pushed,
            )  # fmt: skip
        except LINK_ERRORS:
            self._routes.failed()  # a failover? the router looks where slots live
            self._dirty.set()
            raise
        link.heard = loop.time()
        shard.link = link
        shard.state.came_up()
        self._shard_up()
        try:
            await self._serve(shard, link, wire)
        except LINK_ERRORS:
            self._routes.failed()
            self._dirty.set()
            raise
        finally:
            if shard.link is link:
                shard.link = None
            self._lost(link)
            wire.close()

    async def _serve(self, shard: _Shard, link: _Link, wire: WireProtocol) -> None:
        """Keep the connection's subscriptions in line with what the shard should
        deliver, and the connection pinged, until it breaks. The only writer on the
        connection, so (UN)SUBSCRIBEs go out in the order the state changed. Data (even
        a PONG) comes at least every ping_interval: silence for three means a dead peer."""
        loop = asyncio.get_running_loop()
        silence = self._ping_interval * 3
        last_ping = loop.time()
        while True:
            shard.wake.clear()
            link.want = shard.want
            if self._reconcile(link):
                last_ping = loop.time()
            waker: asyncio.Future[Any] = asyncio.ensure_future(shard.wake.wait())
            closed: asyncio.Future[Any] = wire.closed
            try:
                await asyncio.wait(
                    {waker, closed}, timeout=self._ping_interval,
                    return_when=asyncio.FIRST_COMPLETED,
                )  # fmt: skip
            finally:
                waker.cancel()
            raise_if_cancelled()
            if wire.closed.done():
                raise ConnectionError("the live connection to redis was lost")
            now = loop.time()
            if now - link.heard >= silence:
                raise TimeoutError(f"no data from redis for {silence:.0f} s")
            if now - last_ping >= self._ping_interval:
                last_ping = now
                wire.send(["PING"])

    def _handle(self, link: _Link, response: object) -> None:
        if isinstance(response, Exception):
            self._refused(link, response)
            return
        if not (isinstance(response, list) and len(response) == 3):
            return  # a PONG, or nothing of ours
        kind, channel, data = response
        if kind in (b"message", b"smessage"):
            self._dispatch(channel, data)
            return
        if not isinstance(channel, bytes):
            return
        name = channel.decode("ascii", "replace")
        if kind in (b"subscribe", b"ssubscribe"):
            if link.subscribing and link.subscribing[0] == name:
                link.subscribing.popleft()
            link.awaiting[name] -= 1
            if link.awaiting[name] <= 0:
                del link.awaiting[name]
                # Only the confirmation of the LAST subscribe sent counts, and only if no
                # unsubscribe followed it: then messages of this channel flow from now.
                if name in link.requested:
                    link.live.add(name)
                    self._channel_live(name)
        elif kind == b"sunsubscribe" and name in link.requested and not link.awaiting[name]:
            # Not asked for: the cluster moved the channel's slot to another node.
            self._moved(link, name)

    def _refused(self, link: _Link, error: Exception) -> None:
        """An error reply: on a cluster, a SSUBSCRIBE refused (MOVED, the slot is
        elsewhere now): the router puts the channel on the right node."""
        if not link.subscribing:
            log.warning("bus: live connection: redis refused", extra={"error": str(error)})
            return
        name = link.subscribing.popleft()
        link.awaiting[name] -= 1
        if link.awaiting[name] <= 0:
            del link.awaiting[name]
        if is_moved(error):
            self._moved(link, name)
        else:
            log.warning("bus: live subscription refused", extra={"error": str(error)})

    def _moved(self, link: _Link, channel: str) -> None:
        link.requested.discard(channel)
        was_live = channel in link.live
        link.live.discard(channel)
        if was_live:
            self._channel_lost(channel)
        self._routes.failed()
        self._dirty.set()

    def _dispatch(self, channel: object, data: object) -> None:
        if not isinstance(channel, bytes) or not isinstance(data, bytes):
            return
        tenant = keys.tenant_of_channel(channel)
        groups = self._subs.get(tenant) if tenant is not None else None
        if not groups or tenant is None:
            return  # a channel we are leaving
        try:
            seq = keys.seq_of_live(data)
            last = self._last.get(tenant)
            if last is not None and keys.parse_seq(seq) <= keys.parse_seq(last):
                return  # this node's writer handed it over already (offer_local)
            seq, event = keys.decode_live(data)
            item = LiveEvent(seq, event, asyncio.get_running_loop().time())
        except ValueError as exc:
            self.bad_messages += 1
            now = time.monotonic()
            if now - self._last_bad_log >= 1.0:
                self._last_bad_log = now
                log.warning("bus: undecodable live message", extra={"error": str(exc)})
            return
        self.messages += 1
        self._last[tenant] = seq
        self._fan_out(groups, item)

    def offer_local(self, tenant: str, prev: str, seq: str, event: dict[str, Any]) -> bool:
        """An event this node's writer appended (`seq`, right after `prev` in the
        stream): delivered now, one pub/sub hop sooner, if the tenant's subscribers
        were given exactly `prev` last, so the stream's order holds. Otherwise (another
        writer's event in between not read yet, the channel not live) the pub/sub copy
        delivers it in its turn; the copy of an event delivered here is skipped."""
        groups = self._subs.get(tenant)
        if not groups or not prev or self._last.get(tenant) != prev:
            return False
        self.local_deliveries += 1
        self._last[tenant] = seq
        self._fan_out(groups, LiveEvent(seq, event, asyncio.get_running_loop().time()))
        return True

    def wants(self, tenant: str) -> bool:
        """Whether this node has live subscribers of `tenant` (`offer_local` may help)."""
        return tenant in self._subs

    def _fan_out(
        self, groups: dict[EventPredicate | None, dict[LiveSubscription, None]], item: LiveEvent
    ) -> None:
        # The hot loop of a fan-out: one filter call per group, one take() per
        # subscriber (for an attached one: a write to its transport, no task switch).
        event = item.event
        for accept, group in tuple(groups.items()):
            if accept is not None and not accept(event):
                continue
            for sub in tuple(group):
                try:
                    if not sub.take(item) and sub.overflowed:
                        self.overflows += 1
                except Exception:  # one broken sink must not stop the others' delivery
                    log.exception("bus: a subscriber's sink failed; it is closed")
                    sub.close()

    def _channel_live(self, channel: str) -> None:
        tenant = keys.tenant_of_channel(channel)
        self._last.pop(tenant or "", None)
        for sub in self._each(tenant or ""):
            if sub.stale:
                self.resyncs += 1
                sub.resync()
            else:
                sub.mark_ready()

    def _lost(self, link: _Link) -> None:
        for channel in link.live:
            self._channel_lost(channel)

    def _channel_lost(self, channel: str) -> None:
        """Messages of `channel` stopped: its live subscriptions resync once it is live
        again (on this node or on the one that serves it now)."""
        tenant = keys.tenant_of_channel(channel) or ""
        self._last.pop(tenant, None)
        for sub in self._each(tenant):
            if sub.ready:
                sub.stale = True
                sub.mark_unready()

    def _reconcile(self, link: _Link) -> bool:
        want = link.want
        add = sorted(want - link.requested)
        drop = sorted(link.requested - want)
        wire = link.wire
        # State first, then the write: a concurrent look sees what is on the wire.
        if add:
            link.requested.update(add)
            link.awaiting.update(add)
            if wire is not None and wire.is_open:
                if link.sharded:
                    # One SSUBSCRIBE a channel: a cluster refuses channels of two slots.
                    link.subscribing.extend(add)
                    wire.send(*(["SSUBSCRIBE", channel] for channel in add))
                else:
                    wire.send(["SUBSCRIBE", *add])
        if drop:
            link.requested.difference_update(drop)
            link.live.difference_update(drop)
            if wire is not None and wire.is_open:
                if link.sharded:
                    wire.send(*(["SUNSUBSCRIBE", channel] for channel in drop))
                else:
                    wire.send(["UNSUBSCRIBE", *drop])
        return bool(add or drop)

    @staticmethod
    def _link_changed(up: bool, error: str | None) -> None:
        # One line per outage, not one per retry (RedisLink reports changes only).
        if up:
            log.info("bus: live connection to redis is back")
        else:
            log.warning("bus: live connection to redis lost", extra={"error": error})
