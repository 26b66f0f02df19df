"""EventBus: the writer side of the tenant event streams (and the node's entry point to
the live side and to replay).

The SIP path calls `publish(event)`: synchronous, O(1), never waits and never raises
(DESIGN.md: "the SIP path never waits on Redis"). The event goes into a bounded
asyncio.Queue; a full queue drops it and counts ``dropped["queue_full"]``.

One writer task drains the queue into an ordered in-memory buffer and sends the buffer's
head in batches, ONE round trip per batch: one EVALSHA of `_APPEND_SCRIPT` per event,
pipelined on a connection of the writer's own (gateway/redis_wire.py: redis-py's
pipeline cost several times the CPU, and every call goes through here). The script
XADDs the event to ``{tenant}:events`` (trimmed by length, and by age when configured) and PUBLISHes
``seq \\n payload`` to ``{tenant}:live``; because both happen inside one script, every
live message carries the stream id the event got, and no event can be live without
being in the stream (the replay seam relies on it). The id is set as the event's seq.

The idle writer sends no batch itself: while it waits (parked, nothing buffered, no
failure to back off from), `publish` encodes the event and writes its append at once,
and the connection's reader settles the reply (redis_wire `request`) and sends what was
published meanwhile, which waited in the queue: still one batch in flight at a time, in
publish order. A task hop there let the call's own 180 be routed before its
`call.offered` left (issue #12, G4). Whatever needs waiting (a connection to make, the
script to load, a batch for several servers of a cluster, a failure to back off from)
wakes the writer task, which goes on as described here.

Redis down or slow: the batch stays at the head of the buffer and is retried with
capped exponential backoff; new events keep being taken off the queue into the buffer
(bounded by max_buffer: the OLDEST are dropped first, ``dropped["buffer_full"]``). The
buffer is FIFO, so when Redis is back the held events go out in publish order, before
the newer ones. One log line when Redis goes away, one when it is back.

Delivery is at least once in one case: a connection that breaks after Redis ran a batch
but before the replies arrived makes the batch go again. Consumers deduplicate by the
envelope's ``event_id`` (a UUIDv7), which exists for that. Per-tenant order can only
break if Redis answers "not now" (OOM, LOADING, …) to some events of a batch and runs
later ones: those few are retried after the ones that went through.

The seq is set on the event when the writer reads the reply; a live subscriber (another
connection) may see the event a moment before that.

Retention. Appending trims a stream by length and (cheaply, whole radix-tree nodes) by
age, but only the stream of a tenant that has new events: an idle tenant would keep its
old events for ever. So with ``trim_interval`` set (one bus per node gets it, see
app.py), a trimmer task cuts the stream of every tenant (the security directory's list of
tenants, `keys.TENANTS`: a SCAN would see one server of a cluster) exactly at
``stream_max_age`` (XTRIM MINID =), every ``trim_interval`` seconds and once at start.
Exact, not ``~``: retention is a promise about personal data, and a stream of a quiet
tenant may fit in one node, which ``~`` would keep whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Protocol

from redis.exceptions import RedisError, ResponseError

from gateway.bus import keys, rewrite
from gateway.bus.live import LiveHub, LiveSubscription
from gateway.redis_link import (
    Backoff,
    Client,
    LinkOptions,
    RedisLink,
    RedisTarget,
    client,
    raise_if_cancelled,
)
from gateway.redis_routes import WireRoutes, is_moved
from gateway.redis_wire import WireLink, WireProtocol
from gateway.stats import Counters, Histogram

log = logging.getLogger("sipgw.bus")

# KEYS[1] stream key; ARGV: maxlen, min id for age trimming ('' = none), live channel,
# payload. Returns the new entry's id and the id of the entry before it ('' for none:
# the live hub of this node delivers at once when it has delivered that one, see
# LiveHub.offer_local). Age trimming is a separate XTRIM because XADD takes only one
# trimming strategy; ``~`` lets Redis trim whole radix-tree nodes only, which is what
# keeps trimming cheap.
_APPEND_SCRIPT = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[4])
if ARGV[2] ~= '' then
  redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[2])
end
redis.call('PUBLISH', ARGV[3], id .. '\\n' .. ARGV[4])
local prev = ''
if last[1] then prev = last[1][1] end
return {id, prev}
"""
# On a cluster, sharded pub/sub: SPUBLISH reaches the subscribers of the channel's slot
# on its master only, where classic PUBLISH is copied to every node of the cluster (the
# channel and the stream share the tenant's tag, so the script may publish there).
_SHARDED_APPEND_SCRIPT = _APPEND_SCRIPT.replace("'PUBLISH'", "'SPUBLISH'")
_SCRIPTS = {
    sharded: (text, hashlib.sha1(text.encode()).hexdigest())
    for sharded, text in ((False, _APPEND_SCRIPT), (True, _SHARDED_APPEND_SCRIPT))
}

# Error replies that say "not now" rather than "never": the event is kept and retried.
_TRANSIENT_REPLIES = (
    "OOM",
    "BUSY",
    "LOADING",
    "READONLY",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "NOREPLICAS",
)

MAX_REPLAY_COUNT = 10_000

# Events a writer keeps as dicts for its node's live hub (`_Item.local`): beyond this
# many buffered, Redis is away and the hub will resync from the stream anyway.
LOCAL_HANDOVER_MAX = 1_000
# Acknowledged ids a writer remembers per tenant, and tenants it remembers, to notice
# events a failover lost (`EventBus._check_kept`): a loss longer than this is counted
# as at least this many.
RECENT_PER_TENANT = 256
MAX_TENANTS_TRACKED = 10_000

# Seconds from publish() to Redis' acknowledgement: milliseconds when Redis is up, up to
# minutes while it is down (the events wait in the buffer).
PUBLISH_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0)


class Publishable(Protocol):
    """What the bus needs of an event (gateway.calls.CallEvent is one). The bus also
    sets ``seq`` on it once the stream id is known."""

    @property
    def tenant(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


class EventsLost(Exception):
    """Events after ``after`` were trimmed from the stream before they could be
    replayed: resuming from ``after`` would leave a hole. ``oldest`` is the oldest seq
    still held (None for an empty stream). Redis does not record trimmed ids, so a
    client whose last event was exactly the last one trimmed is told this too (see
    `_trimmed_after`): a real hole is never silent."""

    def __init__(self, after: str, oldest: str | None) -> None:
        super().__init__(
            f"events after {after} are no longer in the stream (oldest held: {oldest})"
        )
        self.after = after
        self.oldest = oldest


@dataclass(frozen=True, slots=True)
class ReplayPage:
    events: list[tuple[str, dict[str, Any]]]  # decoded, oldest first
    last_seq: str | None  # the last entry read, decodable or not (the next cursor)
    exhausted: bool  # fewer entries than asked: the end of the stream was reached


@dataclass(slots=True)
class _Item:
    event: Publishable
    tenant: str
    payload: bytes
    queued_at: float  # time.monotonic() of publish(): for the lag and latency metrics
    # The event as a dict, for this node's live hub once the stream id is known (None:
    # the hub has no subscriber of the tenant, or the buffer is long: Redis is away).
    local: dict[str, Any] | None = None


# Seconds of one append round trip to one server (a batch: one EVALSHA per event).
ROUND_TRIP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
# Servers the writer keeps figures of (/metrics labels): a cluster's masters, and the
# addresses of masters a failover replaced; the oldest of those that are down go first.
MAX_SERVERS = 64


@dataclass(slots=True)
class ServerStats:
    """The writer's figures of one Redis server (a cluster master, or the one server)."""

    up: bool = True
    errors: int = 0
    round_trip: Histogram = field(default_factory=lambda: Histogram(ROUND_TRIP_BUCKETS))


class _TransientReply(RedisError):
    """Redis answered "not now" (OOM, LOADING, …) to some events of a batch."""


def _set_seq(event: Publishable, seq: str) -> None:
    try:
        event.seq = seq  # type: ignore[attr-defined]
    except AttributeError:
        # A frozen dataclass: its seq is filled in by the bus once and only once, which
        # is what the event model wants, so bypass the frozen guard for this field.
        with contextlib.suppress(AttributeError, TypeError):
            object.__setattr__(event, "seq", seq)


class EventBus:
    """Appends events to tenant streams (writer task), replays them, and hands out live
    subscriptions of the node's `LiveHub` (``self.hub``).

    Counters (plain numbers; api/metrics folds them in at scrape time):
    ``published`` events in the stream, ``dropped`` Counter by reason (queue_full,
    buffer_full, bad_tenant, bad_event, encode_error, rejected, stopped, shutdown),
    ``buffered`` events held by the writer (taken off the queue, not yet in Redis),
    ``queued``, ``redis_errors`` failed round trips, ``last_error``, ``redis_up``,
    ``round_trips``, ``bad_entries``, ``lag`` (age of the oldest event held),
    ``publish_latency`` (histogram, publish() to Redis' reply); ``self.hub`` has the
    live side's.
    """

    def __init__(
        self,
        redis: str | RedisTarget,
        *,
        counters: Counters,
        max_queue: int = 10_000,
        max_buffer: int = 100_000,
        stream_maxlen: int = 100_000,
        stream_max_age: float | None = None,
        batch_size: int = 256,
        flush_timeout: float = 2.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 2.0,
        socket_timeout: float = 5.0,
        live_maxsize: int = 1000,
        trim_interval: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_queue < 1 or max_buffer < 1 or batch_size < 1 or stream_maxlen < 1:
            raise ValueError("max_queue, max_buffer, batch_size and stream_maxlen must be >= 1")
        if stream_max_age is not None and stream_max_age <= 0:
            raise ValueError("stream_max_age must be positive (or None)")
        if trim_interval is not None and trim_interval <= 0:
            raise ValueError("trim_interval must be positive (or None)")
        # The SIP path's counters; the bus keeps its own numbers on this object.
        self.counters = counters
        self.max_buffer = max_buffer
        self.stream_maxlen = stream_maxlen
        self.stream_max_age = stream_max_age
        self.trim_interval = trim_interval
        self.batch_size = batch_size
        self.flush_timeout = flush_timeout
        self._backoff = Backoff(backoff_initial, backoff_max)
        self._clock = clock
        # The writer owns retrying (backoff, ordering, counting): no library retries.
        self._redis: Client = client(
            redis,
            name="bus",
            options=LinkOptions(
                socket_timeout=socket_timeout, connect_timeout=min(socket_timeout, 2.0)
            ),
        )
        # Appends go over lean connections of the writer's own, to the server of each
        # tenant's stream; the writer's own backoff paces the attempts after a failure.
        self._routes = WireRoutes(
            redis, name="bus", timeout=socket_timeout,
            connect_timeout=min(socket_timeout, 2.0), retry_after=0.0,
        )  # fmt: skip
        self._scripted: set[WireLink] = set()  # links whose server has the script
        self.servers: dict[str, ServerStats] = {}  # by `Endpoint.label`
        # tenant -> the ids of its latest appends Redis acknowledged (`_check_kept`).
        self._recent: dict[str, deque[keys.SeqKey]] = {}
        self.lost = 0  # acknowledged events a failover took away (see `_check_kept`)
        # Up until a round trip fails: the writer has nothing to say before its first.
        self._link = RedisLink(up=True, on_change=self._link_changed)
        self.hub = LiveHub(
            redis,
            default_maxsize=live_maxsize,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
        )
        # (event, time.monotonic() of publish): one clock read per event buys the lag.
        self._queue: asyncio.Queue[tuple[Publishable, float]] = asyncio.Queue(max_queue)
        self._pending: deque[_Item] = deque()
        # The writer task waits here while idle: `publish` then sends itself (`_pump`).
        self._parked: asyncio.Future[BaseException | None] | None = None
        self._direct: list[_Item] | None = None  # the batch `_pump` has in flight
        self._drained = asyncio.Event()
        self._stopping = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._trimmer: asyncio.Task[None] | None = None
        self._warned_at: dict[str, float] = {}
        self.published = 0
        self.dropped: Counter[str] = Counter()
        self.last_error: str | None = None  # a failed round trip's, or a refused event's
        self.round_trips = 0
        self.bad_entries = 0  # stream entries that did not decode on replay
        self.trimmed = 0  # entries removed by the retention timer
        self.trim_errors = 0  # timer rounds that failed (Redis down: the next one retries)
        self.publish_latency = Histogram(PUBLISH_LATENCY_BUCKETS)  # publish() -> in Redis

    # -- metrics --------------------------------------------------------------------------
    @property
    def redis_up(self) -> bool:
        return self._link.connected

    @property
    def redis_errors(self) -> int:
        return self._link.errors

    @property
    def buffered(self) -> int:
        return len(self._pending)

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    @property
    def lag(self) -> float:
        """Seconds the oldest event held by the writer has waited for Redis (0: none).
        Events still in the queue are not looked at: a running writer takes them off
        at once, into the buffer, also while Redis is down."""
        pending = self._pending
        return time.monotonic() - pending[0].queued_at if pending else 0.0

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        if self._writer is None:
            self._writer = asyncio.create_task(self._run_writer(), name="bus-writer")
        if self._trimmer is None and self.trim_interval and self.stream_max_age:
            self._trimmer = asyncio.create_task(self._run_trimmer(), name="bus-trimmer")
        await self.hub.start()

    async def stop(self) -> int:
        """Flush for at most ``flush_timeout`` seconds, then stop. Returns how many
        events were left unwritten (also counted as ``dropped["shutdown"]``).
        Events published after stop() began are refused (``dropped["stopped"]``)."""
        self._stopping.set()
        if self._trimmer is not None:
            self._trimmer.cancel()
            await asyncio.wait({self._trimmer}, timeout=1.0)
            self._trimmer = None
        writer = self._writer
        if writer is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_timeout):
                    while not writer.done() and not (self._queue.empty() and not self._pending):
                        self._drained.clear()
                        await self._drained.wait()
            writer.cancel()
            # Bounded as well: a writer stuck in a library call must not hold shutdown.
            _done, stuck = await asyncio.wait({writer}, timeout=1.0)
            if stuck:
                log.warning("bus: writer did not stop in time")
            self._writer = None
        left = self._queue.qsize() + len(self._pending)
        while not self._queue.empty():
            self._queue.get_nowait()
        self._pending.clear()
        self._direct = None  # a late reply to it changes nothing now
        if left:
            self.dropped["shutdown"] += left
            log.warning("bus: stopped with events not written to redis", extra={"left": left})
        await self.hub.close()
        await self._routes.close()
        await self._redis.aclose()
        return left

    # -- writer side ----------------------------------------------------------------------
    def publish(self, event: Publishable) -> bool:
        """Hand an event to the writer. Never blocks, never raises; False if dropped."""
        try:
            if self._stopping.is_set():
                return self._drop("stopped")
            if not keys.is_valid_tenant(event.tenant):
                return self._drop("bad_tenant")
            if self._parked is not None and self._direct is None:
                # The writer is idle and nothing is in flight: send now (see `_pump`).
                self._take((event, time.monotonic()))
                self._pump()
                return True
            self._queue.put_nowait((event, time.monotonic()))
            return True
        except asyncio.QueueFull:
            return self._drop("queue_full")
        except Exception:  # whatever the event is made of, the SIP path goes on
            return self._drop("bad_event")

    def _drop(self, reason: str, count: int = 1) -> bool:
        self.dropped[reason] += count
        now = time.monotonic()
        # At most one line per second per reason: a flood must not become a log flood.
        if now - self._warned_at.get(reason, -1.0) >= 1.0:
            self._warned_at[reason] = now
            log.warning(
                "bus: event dropped",
                extra={"reason": reason, "dropped_total": self.dropped[reason]},
            )
        return False

    async def _run_writer(self) -> None:
        delay = 0.0
        while True:
            if delay:
                if self._stopping.is_set():
                    await asyncio.sleep(min(delay, self._backoff.initial))
                else:
                    await self._absorb_for(delay)
            elif not self._pending and self._queue.empty():
                self._drained.set()
                failure = await self._park()
                if failure is not None:
                    delay = self._failed(failure)
                    continue
            self._absorb_nowait()
            if not self._pending:
                continue
            try:
                retry_now = await self._send_batch()
            except (RedisError, OSError) as exc:
                delay = self._failed(exc)
                continue
            except Exception as exc:  # a bug must not end event delivery
                log.exception("bus: writer round failed")
                delay = self._failed(exc)
                continue
            finally:
                # After the batch's results were taken into account: nothing is lost
                # or sent twice by stopping here.
                raise_if_cancelled()
            self._link.came_up()
            self._backoff.reset()
            delay = 0.0
            if not retry_now and not self._pending and self._queue.empty():
                self._drained.set()

    async def _park(self) -> BaseException | None:
        """Wait, idle, while `publish` sends each event itself (`_pump`). Back when
        there is work only this task can do: the failure of a direct batch (returned:
        back off), or events `_pump` could not send without waiting (a connection to
        make, the script to load, a batch for several servers of a cluster)."""
        parked: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self._parked = parked
        try:
            return await parked
        finally:
            self._parked = None

    def _unpark(self, failure: BaseException | None = None) -> None:
        parked = self._parked
        if parked is not None:
            self._parked = None  # from now on `publish` queues for the task again
            if not parked.done():
                parked.set_result(failure)

    def _pump(self) -> None:
        """While the writer is parked: write the head of the buffer to Redis now, from
        the caller's stack, and settle it from the connection's reader (`_direct_replied`),
        which sends what came meanwhile in its turn. One batch in flight at a time, so
        the stream gets the events in publish order; what cannot go without waiting
        is handed to the writer task."""
        if self._parked is None or self._direct is not None:
            return  # the task sends (it was woken, or stop() cancelled it)
        batch = list(islice(self._pending, self.batch_size))
        try:
            found = self._direct_link(batch)
            if found is not None:
                link, wire = found
                timed = self._timer(link)
                commands = self._commands(link, batch)
                self._direct = batch
                wire.request(
                    commands, lambda outcome: self._direct_replied(link, batch, timed, outcome)
                )
                return
        except RedisError:  # closed since `ready`: the task connects again
            pass
        except Exception:  # a bug must not leave the events unsent: the task takes over
            log.exception("bus: writing an append at once failed")
        self._direct = None
        self._unpark()

    def _direct_link(self, batch: list[_Item]) -> tuple[WireLink, WireProtocol] | None:
        """The one open connection, with the script loaded, of the server that holds
        the streams of every event of `batch`; None if there is none now."""
        links = {self._routes.known_link(keys.events_key(item.tenant)) for item in batch}
        if len(links) != 1:
            return None
        [link] = links
        if link is None or link not in self._scripted:
            return None
        wire = link.ready()
        return None if wire is None else (link, wire)

    def _direct_replied(
        self,
        link: WireLink,
        batch: list[_Item],
        timed: Callable[[bool], None],
        outcome: list[Any] | Exception,
    ) -> None:
        if self._direct is not batch:
            return  # stop() gave the batch up (counted there)
        self._direct = None
        timed(not isinstance(outcome, Exception))
        self.round_trips += 1
        try:
            retry_now = self._settle(batch, [(link, list(enumerate(batch)))], [outcome], [], None)
        except Exception as exc:  # a broken connection, "not now", a bug: the task backs off
            if not isinstance(exc, (RedisError, OSError)):
                log.exception("bus: writer round failed")
            self._unpark(exc)
            return
        self._link.came_up()
        self._backoff.reset()
        try:
            self._absorb_nowait()  # published while the batch was in flight
        except Exception:  # a bug must not leave the events unsent: the task takes over
            log.exception("bus: taking the queued events failed")
            retry_now = True
        if retry_now:
            self._unpark()
        elif self._pending:
            self._pump()
        else:
            self._drained.set()

    def _failed(self, exc: BaseException) -> float:
        self._link.went_down(exc)
        self.last_error = self._link.last_error
        return self._backoff.next()

    def _link_changed(self, up: bool, error: str | None) -> None:
        # One line when Redis goes away, one when it is back (RedisLink: once per outage).
        if up:
            log.info("bus: redis is back", extra={"buffered": len(self._pending)})
        else:
            log.warning(
                "bus: redis unavailable, buffering events",
                extra={"error": error, "buffered": len(self._pending)},
            )

    def _take(self, entry: tuple[Publishable, float]) -> None:
        event, queued_at = entry
        try:
            data = event.to_dict()
            payload = keys.encode_payload(data)
        except Exception:
            self._drop("encode_error")
            return
        pending = self._pending
        if len(pending) >= self.max_buffer:
            pending.popleft()
            self._drop("buffer_full")
        tenant = event.tenant
        local = data if len(pending) < LOCAL_HANDOVER_MAX and self.hub.wants(tenant) else None
        pending.append(_Item(event, tenant, payload, queued_at, local))

    def _absorb_nowait(self) -> None:
        queue = self._queue
        while not queue.empty():
            self._take(queue.get_nowait())

    async def _absorb_for(self, delay: float) -> None:
        """Back off for `delay` seconds while still moving published events from the
        queue into the (larger) buffer, so the queue does not fill up during an outage."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        while not self._stopping.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            getter = asyncio.ensure_future(self._queue.get())
            stopper = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait(
                    {getter, stopper}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                stopper.cancel()
                # Cancelling a pending Queue.get leaves the item in the queue; a finished
                # one holds an event that must not be lost.
                if getter.done() and not getter.cancelled():
                    self._take(getter.result())
                else:
                    getter.cancel()
            self._absorb_nowait()

    def _min_id(self) -> str:
        if self.stream_max_age is None:
            return ""
        ms = int((self._clock() - self.stream_max_age) * 1000)
        return f"{ms}-0" if ms > 0 else ""

    # -- retention ------------------------------------------------------------------------
    async def _run_trimmer(self) -> None:
        assert self.trim_interval is not None
        while True:
            try:
                await self.trim_by_age()
            except (RedisError, OSError) as exc:
                # The bus writer already says when Redis is away; count, retry next round.
                self.trim_errors += 1
                log.debug("bus: retention trim failed", extra={"error": str(exc)})
            except Exception:  # a bug must not end retention for the node's lifetime
                self.trim_errors += 1
                log.exception("bus: retention trim failed")
            finally:
                raise_if_cancelled()
            await asyncio.sleep(self.trim_interval)

    async def trim_by_age(self) -> int:
        """Remove every entry older than ``stream_max_age`` from every tenant stream in
        Redis, exactly (XTRIM MINID =). Returns how many entries went."""
        min_id = self._min_id()
        if not min_id:
            return 0
        removed = 0
        # The tenants' list, not a SCAN: a SCAN sees one server of a cluster, and
        # trimming a stream that does not exist is a no-op.
        for key in keys.tenant_streams(await self._redis.hkeys(keys.TENANTS)):
            removed += int(await self._redis.xtrim(key, minid=min_id, approximate=False))
            raise_if_cancelled()
        if removed:
            self.trimmed += removed
            log.info("bus: retention trimmed old events", extra={"entries": removed})
        return removed

    async def _send_batch(self) -> bool:
        """Send the head of the buffer, one round trip per server that holds its
        tenants (one, unless Redis is a cluster). Returns True if some events must go
        again at once (the script had to be loaded, a slot moved); raises on connection
        trouble and on "not now" replies (the caller backs off) after counting what
        went through."""
        batch = list(islice(self._pending, self.batch_size))
        try:
            groups = await self._by_server(batch)
        except (RedisError, OSError):
            self._routes.failed()  # no map of the slots, no master: look again next time
            raise
        again: list[tuple[int, _Item]] = []
        broken: BaseException | None = None
        sent: list[tuple[WireLink, list[tuple[int, _Item]]]] = []
        calls = []
        for link, items in groups.items():
            try:
                wire = await link.get()
            except (RedisError, OSError) as exc:  # this server is gone (a failover?)
                broken = exc
                again += items
                self._server(link).up = False
                continue
            sent.append((link, items))
            call = wire.call(*self._commands(link, [item for _, item in items]))
            call.add_done_callback(_answered(self._timer(link)))
            calls.append(call)
        outcome = await asyncio.gather(*calls, return_exceptions=True)
        self.round_trips += len(calls)
        return self._settle(batch, sent, outcome, again, broken)

    def _settle(
        self,
        batch: list[_Item],
        sent: list[tuple[WireLink, list[tuple[int, _Item]]]],
        outcome: list[Any],
        again: list[tuple[int, _Item]],
        broken: BaseException | None,
    ) -> bool:
        """Take a sent batch's replies into account (`outcome`: one list of replies or
        one exception per server it went to): acknowledged events leave the head of the
        buffer, those to retry go back there in publish order. Returns True if some must
        go again at once; raises on connection trouble and "not now" replies."""
        transient: Exception | None = None
        acked = time.monotonic()
        for (link, items), results in zip(sent, outcome, strict=True):
            if isinstance(results, BaseException):
                if not isinstance(results, (RedisError, OSError)):
                    raise results
                broken = results
                again += items
                continue
            self._server(link).up = True
            self._scripted.add(link)
            for (index, item), result in zip(items, results, strict=True):
                if isinstance(result, list) and len(result) == 2:
                    self._acked(item, result, acked)
                elif isinstance(result, ResponseError) and str(result).startswith("NOSCRIPT"):
                    self._scripted.discard(link)  # script cache flushed (a restart, a failover)
                    again.append((index, item))
                elif is_moved(result):
                    self._routes.failed()  # the tenant's slot is served elsewhere now
                    again.append((index, item))
                elif isinstance(result, ResponseError) and str(result).startswith(
                    _TRANSIENT_REPLIES
                ):
                    transient = result
                    again.append((index, item))
                else:
                    # WRONGTYPE and the like: retrying cannot help; say so and move on.
                    self._drop("rejected")
                    self.last_error = f"{type(result).__name__}: {result}"
        for _ in batch:
            self._pending.popleft()
        again.sort(key=lambda entry: entry[0])  # publish order, for each tenant too
        self._pending.extendleft(reversed([item for _, item in again]))
        if broken is not None:
            self._routes.failed()
            raise broken
        if transient is not None:
            raise _TransientReply(str(transient))
        return bool(again)

    def _server(self, link: WireLink) -> ServerStats:
        servers = self.servers
        label = link.endpoint.label
        found = servers.get(label)
        if found is None:
            if len(servers) >= MAX_SERVERS:
                gone = next((k for k, v in servers.items() if not v.up), next(iter(servers)))
                del servers[gone]
            found = servers[label] = ServerStats()
        return found

    def _timer(self, link: WireLink) -> Callable[[bool], None]:
        """What files the round trip's time (answered: True) or its failure under its
        server."""
        started = time.perf_counter()
        stats = self._server(link)

        def done(answered: bool) -> None:
            if answered:
                stats.round_trip.observe(time.perf_counter() - started)
            else:
                stats.up = False
                stats.errors += 1

        return done

    async def _by_server(self, batch: list[_Item]) -> dict[WireLink, list[tuple[int, _Item]]]:
        """The batch's events by the server that holds their tenant's stream, each
        server's in publish order."""
        groups: dict[WireLink, list[tuple[int, _Item]]] = {}
        link_of: dict[str, WireLink] = {}
        for index, item in enumerate(batch):
            link = link_of.get(item.tenant)
            if link is None:
                link = link_of[item.tenant] = await self._routes.link_for(
                    keys.events_key(item.tenant)
                )
            groups.setdefault(link, []).append((index, item))
        return groups

    def _commands(self, link: WireLink, items: list[_Item]) -> list[tuple[bytes | str, ...]]:
        min_id = self._min_id()
        trimmed: set[str] = set()  # age trimming once per tenant and batch is enough
        maxlen = str(self.stream_maxlen)
        commands: list[tuple[bytes | str, ...]] = []
        use_eval = link not in self._scripted
        script, sha = _SCRIPTS[self._routes.clustered]
        for item in items:
            age = ""
            if min_id and item.tenant not in trimmed:
                trimmed.add(item.tenant)
                age = min_id
            args = (
                keys.events_key(item.tenant),
                maxlen,
                age,
                keys.live_channel(item.tenant),
                item.payload,
            )
            if use_eval:
                # EVAL also caches the script: the rest of this batch, which Redis runs
                # after it, can use EVALSHA.
                commands.append(("EVAL", script, "1", *args))
                use_eval = False
            else:
                commands.append(("EVALSHA", sha, "1", *args))
        return commands

    def _acked(self, item: _Item, result: list[Any], acked: float) -> None:
        seq, prev = result[0].decode("ascii"), result[1].decode("ascii")
        _set_seq(item.event, seq)
        self.published += 1
        self.publish_latency.observe(acked - item.queued_at)
        self._check_kept(item.tenant, seq, prev)
        if item.local is not None:
            item.local["seq"] = seq
            self.hub.offer_local(item.tenant, prev, seq, item.local)

    def _check_kept(self, tenant: str, seq: str, prev: str) -> None:
        """Did the stream keep what Redis acknowledged to this writer before?

        Redis replication is asynchronous: a master that dies may have acknowledged
        appends its replica never received, and the promoted replica's stream ends
        before them. The script answers each append with the id of the entry before it
        (`prev`); when that is older than an event this writer was told is in the
        stream, those events are gone. They are counted (``lost``), logged (a warning) and (through
        the stream's ids) told apart from trimming: a subscriber that saw them live keeps
        them, one that replays will not find them. Erasing the newest events of a stream
        (GDPR) looks the same and is counted too; it is rare and never silent either."""
        recent = self._recent.get(tenant)
        if recent is None:
            recent = self._recent[tenant] = deque(maxlen=RECENT_PER_TENANT)
        before = keys.parse_seq(prev) if prev else (0, 0)
        # The ids only grow: the common case (nothing lost) is one comparison.
        if recent and recent[-1] > before:
            # Entries older than the retention may have been trimmed legitimately.
            min_id = self._min_id()
            floor = max(before, keys.parse_seq(min_id) if min_id else (0, 0))
            gone = [s for s in recent if s > floor]
            if gone:
                self._lost(tenant, gone, prev, full=len(gone) == len(recent) == recent.maxlen)
                recent.clear()
        recent.append(keys.parse_seq(seq))
        if len(self._recent) > MAX_TENANTS_TRACKED:
            del self._recent[next(iter(self._recent))]

    def _lost(self, tenant: str, gone: list[keys.SeqKey], prev: str, *, full: bool) -> None:
        self.lost += len(gone)
        # A warning, as a Redis outage is: Redis lost them, not the gateway (an ERROR
        # is a gateway's own fault); counted for alerting in sipgw_bus_events_lost.
        log.warning(
            "bus: events acknowledged by redis are no longer in the stream (a failover "
            "with asynchronous replication?)",
            extra={
                "tenant": tenant, "lost": len(gone), "at_least": full,
                "first_lost": keys.format_seq(gone[0]), "last_lost": keys.format_seq(gone[-1]),
                "stream_ends_at": prev or None,
            },
        )  # fmt: skip

    # -- reading --------------------------------------------------------------------------
    async def replay_page(
        self, tenant: str, after: str | None, *, count: int = 1000, check_gap: bool = False
    ) -> ReplayPage:
        """Up to `count` events after `after` (exclusive; None = from the oldest held).
        With `check_gap`, raise `EventsLost` if events after `after` were trimmed away
        (checked atomically with the read, so trimming racing the read is seen too).
        Raises ValueError for a bad tenant, `after` or `count`, and redis errors as is."""
        key = keys.events_key(tenant)
        if after is not None and keys.parse_seq(after) == (keys.U64, keys.U64):
            return ReplayPage([], None, True)  # nothing can follow the largest id
        if not 1 <= count <= MAX_REPLAY_COUNT:
            raise ValueError(f"count must be between 1 and {MAX_REPLAY_COUNT}")
        start = "-" if after is None else "(" + after
        if check_gap and after is not None:
            pipe = self._redis.pipeline(transaction=True)  # MULTI: one consistent view
            pipe.xrange(key, start, "+", count=count)
            pipe.execute_command("XINFO", "STREAM", key)
            entries, info = await pipe.execute(raise_on_error=False)
            raise_if_cancelled()
            if isinstance(entries, Exception):
                raise entries
            if not isinstance(info, Exception):  # no stream yet: nothing was trimmed
                oldest = _trimmed_after(info, keys.parse_seq(after))
                if oldest is not None:
                    raise EventsLost(after, oldest or None)
        else:
            entries = await self._redis.xrange(key, start, "+", count=count)
            raise_if_cancelled()
        return self._page(entries, count)

    def _page(self, entries: Any, count: int) -> ReplayPage:
        events: list[tuple[str, dict[str, Any]]] = []
        last: str | None = None
        for raw_id, fields in entries:
            last = raw_id.decode("ascii")
            try:
                events.append((last, keys.decode_payload(last, fields[keys.STREAM_FIELD])))
            except (KeyError, ValueError):
                self.bad_entries += 1  # skipped, but the cursor passes it
        return ReplayPage(events, last, len(entries) < count)

    async def older_page(self, tenant: str, before: str | None, *, count: int = 1000) -> ReplayPage:
        """Up to `count` events before `before` (exclusive; None = from the newest),
        NEWEST first: the call history reads the stream backwards (api/history.py).
        `last_seq` is the oldest entry read, the next `before`. ValueError for a bad
        tenant, `before` or `count`; redis errors as is."""
        key = keys.events_key(tenant)
        if before is not None and keys.parse_seq(before) == (0, 0):
            return ReplayPage([], None, True)  # nothing precedes the smallest id
        if not 1 <= count <= MAX_REPLAY_COUNT:
            raise ValueError(f"count must be between 1 and {MAX_REPLAY_COUNT}")
        end = "+" if before is None else "(" + before
        entries = await self._redis.xrevrange(key, end, "-", count=count)
        raise_if_cancelled()
        return self._page(entries, count)

    async def replay(
        self, tenant: str, after: str | None, *, count: int = 1000
    ) -> list[tuple[str, dict[str, Any]]]:
        """``(seq, event_dict)`` after `after` (exclusive), oldest first, at most
        `count`; from the oldest held when `after` is None. ValueError for a bad
        `after` (not ``<digits>-<digits>``), tenant or count."""
        return (await self.replay_page(tenant, after, count=count)).events

    async def last_seq(self, tenant: str) -> str | None:
        """The newest seq in the tenant's stream (None when empty): "now" as a cursor."""
        entries = await self._redis.xrevrange(keys.events_key(tenant), "+", "-", count=1)
        raise_if_cancelled()
        if not entries:
            return None
        seq = entries[0][0]
        return seq.decode("ascii") if isinstance(seq, bytes) else str(seq)

    async def delete_events(
        self, tenant: str, select: Callable[[dict[str, Any]], bool]
    ) -> list[dict[str, Any]]:
        """Remove every event of the tenant's stream that `select` picks (GDPR erasure),
        and return them. Raises `StreamBusy` if another erasure of the tenant does not
        end in time, and redis errors as is."""
        async with rewrite.editing(self._redis, tenant):
            found: list[tuple[str, dict[str, Any]]] = []
            after: str | None = None
            while True:
                page = await self.replay_page(tenant, after, count=MAX_REPLAY_COUNT)
                found += [(seq, event) for seq, event in page.events if select(event)]
                if page.exhausted or page.last_seq is None:
                    break
                after = page.last_seq
            await rewrite.delete_entries(self._redis, tenant, [seq for seq, _ in found])
        return [event for _, event in found]

    async def rewrite_events(self, tenant: str, edit: rewrite.Edit) -> int:
        """Apply `edit` to every stored event of the tenant, ids and order kept (see
        rewrite.py): how many events changed. `StreamBusy` and redis errors as above."""
        async with rewrite.editing(self._redis, tenant):
            return await rewrite.rewrite_entries(self._redis, tenant, edit)

    def subscribe(
        self,
        tenant: str,
        maxsize: int | None = None,
        accept: Callable[[dict[str, Any]], bool] | None = None,
    ) -> LiveSubscription:
        """A live subscription from the node's hub (see live.py)."""
        return self.hub.subscribe(tenant, maxsize, accept)


def _answered(timed: Callable[[bool], None]) -> Callable[[asyncio.Future[list[Any]]], None]:
    """A call's done-callback that tells `timed` whether Redis answered it."""

    def done(call: asyncio.Future[list[Any]]) -> None:
        timed(not call.cancelled() and call.exception() is None)

    return done


def _trimmed_after(info: object, after: keys.SeqKey) -> str | None:
    """From an XINFO STREAM reply: None if no event after `after` was trimmed, else the
    oldest seq still held ("" for an empty stream).

    Redis does not record the ids it trims (max-deleted-entry-id is XDEL's only), so
    this knows: something was deleted (entries-added > length), and `after` is older
    than the oldest entry held. If the oldest held is not provably `after`'s successor,
    a hole is assumed: a client whose last event was exactly the last one trimmed is
    told so needlessly, but a real hole is never silent."""
    added = _info_int(info, "entries-added")
    length = _info_int(info, "length")
    if added is None or length is None or added <= length:
        return None
    if length == 0:
        last = _info_field(info, "last-generated-id")
        return "" if last is not None and after < keys.parse_seq(last) else None
    first = _info_field(info, "first-entry")
    if first is None:
        return None
    first_key = keys.parse_seq(first)
    if after >= first_key or first_key == (after[0], after[1] + 1):
        return None
    return first


def _info_int(info: object, name: str) -> int | None:
    value = _info_raw(info, name)
    if isinstance(value, (int, str, bytes)):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _info_raw(info: object, name: str) -> object:
    if isinstance(info, dict):
        return info.get(name, info.get(name.encode()))
    if isinstance(info, list):
        for i in range(0, len(info) - 1, 2):
            if info[i] in (name, name.encode()):
                return info[i + 1]
    return None


def _info_field(info: object, name: str) -> str | None:
    """A field of an XINFO STREAM reply (flat RESP2 list, or a dict if a client-side
    callback parsed it) as text; for first-entry, its id."""
    value = _info_raw(info, name)
    if isinstance(value, (list, tuple)) and value:
        value = value[0]  # an entry: [id, fields]
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return value if isinstance(value, str) else None
