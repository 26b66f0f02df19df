"""Event subscriptions: WebSocket ``/v1/events`` and Server-Sent Events ``/v1/events/sse``.

Both serve the same thing: the events of the caller's tenant that it may see, replayed
from after ``since`` (or ``Last-Event-ID``) and then live, each exactly once and in
order (gateway/bus/replay.py does the seam). One producer task per subscriber reads
the bus and hands encoded frames to the connection through a small queue; when the
client reads too slowly the bus cuts the subscription off and the client is told the
last event it got, so it can resume without loss. The gateway never waits for it.

Control messages share the stream with events; their ``type`` starts with ``sipgw.``:
``sipgw.ready`` (after the subscription is live), ``sipgw.heartbeat`` (when idle),
``sipgw.overflow`` (cut off; carries ``last_seq``), ``sipgw.lost`` (``since`` is older
than what the stream retains), ``sipgw.unavailable`` (the bus is down),
``sipgw.unauthorized`` (the token was revoked or expired, or its user removed).

Credentials: the ``Authorization`` header, a single-use ``ticket``, or (WebSocket) the
token as a ``sipgw.bearer.<token>`` subprotocol; see gateway/api/tickets.py.

A subscription lives no longer than its token: every ``events.heartbeat`` seconds,
busy or idle, the token is checked again (one Redis EXISTS), and a revoked or expired
token, or a removed user, ends it with a close code naming why (4401-4403).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import msgpack
from fastapi import APIRouter, HTTPException, Query, Request, WebSocket
from fastapi.responses import StreamingResponse
from starlette.responses import JSONResponse
from websockets.frames import Frame as WireFrame
from websockets.frames import Opcode

from gateway.api.tickets import (
    BEARER_PROTOCOL_PREFIX,
    BROWSER_PROTOCOL,
    split_protocols,
    subscriber_credential,
)
from gateway.api.ws_protocol import FRAMES_EXTENSION, DetachedWebSocket, FrameLink
from gateway.bus import keys
from gateway.bus.live import LiveEvent, LiveSubscription, Sink, SubscriberOverflow
from gateway.bus.replay import BusReader, BusUnavailable, EventFilter, events_since
from gateway.bus.streams import EventsLost
from gateway.config import EventsSettings
from gateway.security.directory import Directory, DirectoryUnavailable, SessionEnd
from gateway.security.principal import Principal

log = logging.getLogger("sipgw.api.events")

JSON_PROTOCOL = "sipgw.json.v1"
MSGPACK_PROTOCOL = "sipgw.msgpack.v1"
PROTOCOLS = (JSON_PROTOCOL, MSGPACK_PROTOCOL, BROWSER_PROTOCOL)  # the last: JSON too
CLIENT_MESSAGE_LIMIT = 1024  # subscribers only ever send small pings
# A WebSocket subscriber's write buffer holds `events.subscriber_queue` events of up to
# this size before it is cut off (a call event is ~0.3-0.6 kB of JSON).
EVENT_ROOM = 1024

# WebSocket close codes: RFC 6455 §7.4.1 plus the private range for our own reasons.
CLOSE_OVERFLOW = 4008  # read too slowly; reason carries "since=<last seq>"
CLOSE_LOST = 4010  # since is older than the retained stream
CLOSE_UNAVAILABLE = 1011
# The token no longer stands: the subscription ends within one heartbeat (docs/api.md).
CLOSE_SESSION_END: dict[SessionEnd, int] = {
    "token revoked": 4401,  # logout, `sipgw token` revocation, eviction, user changed
    "token expired": 4402,
    "user removed": 4403,
}


@dataclass
class Subscribers:
    """Live subscriptions per tenant on this node (limit and metrics)."""

    limit: int
    by_tenant: dict[str, int] = field(default_factory=dict)

    def enter(self, tenant: str) -> bool:
        if self.by_tenant.get(tenant, 0) >= self.limit:
            return False
        self.by_tenant[tenant] = self.by_tenant.get(tenant, 0) + 1
        return True

    def leave(self, tenant: str) -> None:
        left = self.by_tenant.get(tenant, 1) - 1
        if left:
            self.by_tenant[tenant] = left
        else:
            self.by_tenant.pop(tenant, None)

    @property
    def total(self) -> int:
        return sum(self.by_tenant.values())


def encode(body: dict[str, Any], fmt: str) -> bytes:
    if fmt == "json":
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


def ws_frame(payload: bytes, fmt: str) -> bytes:
    """A whole server-to-client message frame (RFC 6455 §5.2): FIN set, text for JSON,
    binary for msgpack, and no mask (§5.1: only clients mask), so the same bytes suit
    every subscriber of that format."""
    opcode = Opcode.TEXT if fmt == "json" else Opcode.BINARY
    return WireFrame(opcode, payload).serialize(mask=False)


def encoded(form: str, seq: str, event: dict[str, Any]) -> bytes:
    """An event's bytes in one of `FORMS`: the JSON or msgpack payload (with its
    ``seq``), that payload as a WebSocket frame, or an SSE event block."""
    if form in WS_FORM.values():
        fmt = form.removeprefix("ws-")
        return ws_frame(encoded(fmt, seq, event), fmt)
    if form == SSE_FORM:
        return _sse(Frame("event", encoded("json", seq, event), seq, str(event.get("type", ""))))
    return encode({**event, "seq": seq}, form)


WS_FORM = {"json": "ws-json", "msgpack": "ws-msgpack"}  # the frame form of each format
SSE_FORM = "sse"
FORMS = ("json", "msgpack", *WS_FORM.values(), SSE_FORM)


class EncodedCache:
    """Encode once, send many: the bytes of recent events per form (`FORMS`), for the
    replay and for SSE. Live WebSocket events keep theirs on the `LiveEvent` itself."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()

    def get(self, tenant: str, seq: str, form: str, event: dict[str, Any]) -> bytes:
        key = (tenant, seq, form)
        data = self._items.get(key)
        if data is None:
            data = self._items[key] = encoded(form, seq, event)
            if len(self._items) > self.size:
                self._items.popitem(last=False)
        return data


@dataclass(frozen=True)
class Frame:
    """What a subscription sends. An event's ``data`` is already in the consumer's wire
    form (a WebSocket frame, an SSE block); a control's is the JSON or msgpack payload."""

    kind: str  # "event" | "control"
    data: bytes
    seq: str | None = None
    event_type: str = ""
    final: bool = False  # the subscription ends after this frame
    close_code: int = 1000
    close_reason: str = ""


def control(fmt: str, body: dict[str, Any], **frame: Any) -> Frame:
    data = json.dumps(body).encode() if fmt == "json" else msgpack.packb(body, use_bin_type=True)
    return Frame("control", data, event_type=str(body["type"]), **frame)


def subscription_filter(
    principal: Principal,
    extensions: list[str],
    types: list[str],
    tenant_extensions: frozenset[str] | None = None,
) -> EventFilter:
    """What this principal asked for, limited to what it may see (else 403).

    An extension that is not one of the tenant's is refused like a forbidden one, so a
    filter cannot be used to probe another tenant's numbering plan.
    """
    if principal.role == "sync":
        raise HTTPException(403, "forbidden: sync tokens cannot subscribe to events")
    if not principal.is_admin and not principal.extensions:
        # An empty filter means "every extension" to the bus: a user that may see none
        # must get nothing, not everything.
        raise HTTPException(
            403, "forbidden: this user has no extension of its own and watches none"
        )
    for extension in extensions:
        unknown = tenant_extensions is not None and extension not in tenant_extensions
        if unknown or not principal.may_see_extension(extension):
            raise HTTPException(403, "forbidden")
    wanted = frozenset(extensions)
    if not wanted and not principal.is_admin:
        wanted = principal.extensions
    return EventFilter(extensions=wanted, types=frozenset(types))


def checked_since(since: str | None) -> str | None:
    if since is None or since == "":
        return None
    try:
        return keys.validate_seq(since)
    except ValueError as err:
        raise HTTPException(400, f"since: {err}") from None


class SubscriberState:
    """When one subscription is due a heartbeat (idle for ``beat`` seconds) and a new
    check of its token (every ``beat`` seconds, busy or not), and the last event it got."""

    __slots__ = ("beat", "busy_at", "last_seq", "next_check", "session_end")

    def __init__(
        self,
        beat: float,
        session_end: Callable[[], Awaitable[SessionEnd | None]] | None,
        since: str | None,
    ) -> None:
        now = asyncio.get_running_loop().time()
        self.beat = beat
        self.session_end = session_end
        self.busy_at = now  # the loop clock of the last frame sent
        self.next_check = now + beat
        self.last_seq = since

    def wake(self) -> float:
        due = self.busy_at + self.beat
        return min(due, self.next_check) if self.session_end is not None else due

    async def due(self, fmt: str) -> Frame | None:
        """At a wake time: the final `sipgw.unauthorized` if the token no longer stands,
        a heartbeat if idle, or nothing."""
        now = asyncio.get_running_loop().time()
        if self.session_end is not None and now >= self.next_check:
            self.next_check = now + self.beat
            reason = await _checked(self.session_end)
            if reason is not None:
                return _ended(fmt, reason, self.last_seq)
        if now >= self.busy_at + self.beat:
            self.busy_at = now
            return control(fmt, {"type": "sipgw.heartbeat", "last_seq": self.last_seq})
        return None


async def stream(
    bus: BusReader,
    tenant: str,
    since: str | None,
    accept: EventFilter,
    fmt: str,
    form: str,
    settings: EventsSettings,
    cache: EncodedCache,
    state: SubscriberState,
    out: Callable[[Frame], Awaitable[None]],
    sink: Sink | None = None,
) -> None:
    """Send one subscription's frames through `out` until it ends; the last one sent is
    final (unless `out` raised). Events go in `form`; with a `sink`, live events bypass
    `out` (the hub writes them), replayed ones and controls still come through it."""

    async def ready() -> None:
        # Only now: an event produced after the client sees "ready" is sure to reach it.
        await out(control(fmt, {"type": "sipgw.ready", "since": since}))

    try:
        async with contextlib.aclosing(
            events_since(
                bus, tenant, since, accept, maxsize=settings.subscriber_queue,
                on_ready=ready, sink=sink, wake=state.wake,
            )
        ) as events:  # fmt: skip
            async for item in events:
                if item is None:
                    frame = await state.due(fmt)
                    if frame is not None:
                        await out(frame)
                        if frame.final:
                            return
                    continue
                seq, event = item
                state.last_seq = seq
                state.busy_at = asyncio.get_running_loop().time()
                data = cache.get(tenant, seq, form, event)
                await out(Frame("event", data, seq, str(event.get("type", ""))))
        body = {"type": "sipgw.closed", "last_seq": state.last_seq}
        end = control(fmt, body, final=True, close_code=1001, close_reason="gateway shutting down")
    except SubscriberOverflow as err:
        last = err.last_seq or state.last_seq
        body = {
            "type": "sipgw.overflow",
            "last_seq": last,
            "detail": "subscriber too slow: resume with since=last_seq",
        }
        end = control(
            fmt, body, final=True, close_code=CLOSE_OVERFLOW, close_reason=f"overflow since={last}"
        )
    except EventsLost as err:
        body = {"type": "sipgw.lost", "after": err.after, "oldest": err.oldest, "detail": str(err)}
        end = control(
            fmt, body, final=True, close_code=CLOSE_LOST,
            close_reason="since older than retained events",
        )  # fmt: skip
    except BusUnavailable:
        body = {"type": "sipgw.unavailable", "last_seq": state.last_seq}
        end = control(
            fmt,
            body,
            final=True,
            close_code=CLOSE_UNAVAILABLE,
            close_reason="event bus unavailable",
        )
    await out(end)


async def _checked(session_end: Callable[[], Awaitable[SessionEnd | None]]) -> SessionEnd | None:
    try:
        return await session_end()
    except DirectoryUnavailable:
        # Nothing can be revoked while Redis is down either, and the bus reports the
        # outage itself (sipgw.unavailable); the next heartbeat checks again.
        log.debug("token check skipped: Redis unavailable")
        return None


def _ended(fmt: str, reason: SessionEnd, last: str | None) -> Frame:
    body = {"type": "sipgw.unauthorized", "reason": reason, "last_seq": last}
    return control(fmt, body, final=True, close_code=CLOSE_SESSION_END[reason], close_reason=reason)


class ClientGone(Exception):
    """The WebSocket client left (or was refused for what it sent): stop sending."""


PONG = ws_frame(json.dumps({"type": "sipgw.pong"}).encode(), "json")
PING_PAYLOAD = b"sipgw"
# Token checks in flight at once on one node: they share the directory's connection pool.
CHECKS_IN_FLIGHT = 64


class WebSocketSubscriber(SubscriberState):
    """One ``/v1/events`` WebSocket, from its accept to its end: the hub's `Sink` for it
    and its connection's `FrameListener`.

    Live events are written by the hub straight to the transport, the frame bytes shared
    by every subscriber of the format. The handler task only replays and attaches, then
    returns: heartbeats, token checks and keep-alive pings come from the node's
    `Heartbeats` schedule, the client's frames and the connection's end from its
    `DetachedWebSocket`, and how the subscription ended from the hub (`ended`). So an
    idle subscriber is this object, its `LiveSubscription` and its transport, and
    nothing that waits."""

    __slots__ = (
        "accept",
        "fmt",
        "form",
        "gone",
        "limit",
        "link",
        "ping_at",
        "pinged_at",
        "refused",
        "sessions",
        "sub",
        "tenant",
        "transport",
    )

    def __init__(
        self,
        sessions: WebSocketSessions,
        link: FrameLink,
        fmt: str,
        tenant: str,
        accept: EventFilter,
        session_end: Callable[[], Awaitable[SessionEnd | None]] | None,
        since: str | None,
    ) -> None:
        super().__init__(sessions.settings.heartbeat, session_end, since)
        self.sessions = sessions
        self.transport = link.transport
        self.fmt = fmt
        self.form = WS_FORM[fmt]
        self.tenant = tenant
        self.accept = accept
        # The write buffer is this subscriber's queue: above `limit` bytes the transport
        # asks us to pause (replay waits), and a live event is refused (overflow).
        self.limit = sessions.settings.subscriber_queue * EVENT_ROOM
        self.transport.set_write_buffer_limits(high=self.limit)
        self.sub: LiveSubscription | None = None
        self.gone = False  # the connection is closed, or closing: write nothing more
        self.refused = False  # a final frame was sent; waiting for the client's close
        self.pinged_at: float | None = None  # a keep-alive ping not yet answered
        self.ping_at = self.busy_at + sessions.ping_interval  # the next one
        # Out of the ASGI call chain: from here the connection is ours alone.
        self.link: DetachedWebSocket = link.detach(self)

    # -- Sink: called by the hub's reader, once per live event this subscriber takes ----
    def deliver(self, item: LiveEvent) -> bool:
        transport = self.transport
        if transport.is_closing():
            return True  # it is going: lost() ends the subscription
        if transport.get_write_buffer_size() > self.limit:
            return False
        data = item.encoded.get(self.form)
        if data is None:  # the first subscriber of this format builds the frame
            data = item.encoded[self.form] = encoded(self.form, item.seq, item.event)
        transport.write(data)
        self.busy_at = item.at
        self.last_seq = item.seq
        return True

    def attached(self, sub: LiveSubscription) -> None:
        self.sub = sub

    def backlog(self) -> int:
        # In events of EVENT_ROOM bytes, rounded up, like the limit it is held to.
        return -(-self.transport.get_write_buffer_size() // EVENT_ROOM)

    def ended(self, sub: LiveSubscription) -> None:
        if sub is not self.sub or self.gone or self.refused:
            return  # a subscription we closed ourselves, or one replaced by a resync
        how = sub.ending
        if how == "overflow":
            last = sub.last_seq
            body = {
                "type": "sipgw.overflow",
                "last_seq": last,
                "detail": "subscriber too slow: resume with since=last_seq",
            }
            self.finish(control(self.fmt, body, final=True, close_code=CLOSE_OVERFLOW,
                                close_reason=f"overflow since={last}"))  # fmt: skip
        elif how == "resync":
            # The node's pub/sub connection broke and is back: replay the gap from the
            # stream, then attach again (a task only for this rare case).
            self.sessions.spawn(self.replay(sub.last_seq))
        else:  # the hub is shutting down
            self.finish(self._closed())

    # -- FrameListener: the client's messages and the connection's end -----------------
    def received(self, data: bytes, text: bool) -> None:
        """Subscribers send nothing but small JSON pings; anything else ends the session."""
        if not text or len(data) > CLIENT_MESSAGE_LIMIT:
            self._refuse(1003, "this endpoint only accepts small JSON pings")
            return
        try:
            ping = json.loads(data)
        except ValueError:
            ping = None
        if not isinstance(ping, dict) or ping.get("type") != "ping":
            self._refuse(1003, 'expected {"type": "ping"}')
            return
        if not self.gone:
            self.transport.write(PONG)

    def pong(self) -> None:
        self.pinged_at = None

    def lost(self) -> None:
        if self.gone:
            return
        self.gone = True
        if self.sub is not None:
            self.sub.close()
        self.sessions.subscribers.leave(self.tenant)

    def shutdown(self) -> None:
        """uvicorn stops: tell the client, then close at once (not waiting for its echo)."""
        self.finish(self._closed())
        self.transport.close()

    def _closed(self) -> Frame:
        body = {"type": "sipgw.closed", "last_seq": self.last_seq}
        return control(self.fmt, body, final=True, close_code=1001,
                       close_reason="gateway shutting down")  # fmt: skip

    def _refuse(self, code: int, reason: str) -> None:
        if not self.refused:
            self.refused = True
            if self.sub is not None:
                self.sub.close()
            self.link.close(code, reason)

    def finish(self, end: Frame) -> None:
        """The final control message, then the close frame with its code and reason."""
        if self.refused or self.gone:
            return
        self.refused = True
        if self.sub is not None and self.sub.ending is None:
            self.sub.close()
        self.transport.write(ws_frame(end.data, self.fmt))
        self.link.close(end.close_code, end.close_reason[:120])

    # -- the replay: the handler's, or a resync's task -----------------------------------
    async def replay(self, since: str | None, ready: bool = False) -> None:
        """Subscribe, send `sipgw.ready` (if `ready`), replay after `since`, then hand the
        subscription to the hub (`attach`); or end the connection saying why not."""
        sessions = self.sessions

        async def on_ready() -> None:
            # Only now: an event produced after the client sees "ready" is sure to reach it.
            await self.send(control(self.fmt, {"type": "sipgw.ready", "since": since}).data)
            # Heartbeats and token checks from now on (never before "ready").
            sessions.heartbeats.add(self)

        try:
            async with contextlib.aclosing(
                events_since(
                    sessions.bus(), self.tenant, since, self.accept,
                    maxsize=sessions.settings.subscriber_queue,
                    on_ready=on_ready if ready else None, sink=self,
                )
            ) as events:  # fmt: skip
                async for item in events:
                    assert item is not None  # only with `wake`
                    seq, event = item
                    self.last_seq = seq
                    await self.send(sessions.cache.get(self.tenant, seq, self.form, event), True)
        except EventsLost as err:
            body = {"type": "sipgw.lost", "after": err.after, "oldest": err.oldest,
                    "detail": str(err)}  # fmt: skip
            self.finish(control(self.fmt, body, final=True, close_code=CLOSE_LOST,
                                close_reason="since older than retained events"))  # fmt: skip
        except BusUnavailable:
            body = {"type": "sipgw.unavailable", "last_seq": self.last_seq}
            self.finish(control(self.fmt, body, final=True, close_code=CLOSE_UNAVAILABLE,
                                close_reason="event bus unavailable"))  # fmt: skip
        except ClientGone:
            pass
        if self.sub is not None and (self.gone or self.refused):
            self.sub.close()  # it went while being attached

    async def send(self, data: bytes, event: bool = False) -> None:
        """A frame of the replay (an event's, already framed; else a control payload),
        waiting while the write buffer is over its mark."""
        if self.gone or self.refused:
            raise ClientGone
        self.transport.write(data if event else ws_frame(data, self.fmt))
        self.busy_at = asyncio.get_running_loop().time()
        # Above the high-water mark: the replay waits for the client (a lost connection
        # ends the wait too); live events are meanwhile queued by the hub.
        await self.link.wait_writable()

    # -- the schedule's: heartbeats, keep-alive pings, token checks ----------------------
    def wake(self) -> float:
        return min(self.busy_at + self.beat, self.next_check)

    def tick(self, now: float) -> bool:
        """At a wake time: a heartbeat if idle, a keep-alive ping if due (or the end of a
        client that left the last one unanswered); True if the token is due a check."""
        if self.gone or self.refused:
            return False
        interval, timeout = self.sessions.ping_interval, self.sessions.ping_timeout
        if self.pinged_at is not None and timeout and now - self.pinged_at >= timeout:
            # As uvicorn's keep-alive did: the client is gone or stuck (RFC 6455 §5.5.2).
            self.refused = True
            if self.sub is not None:
                self.sub.close()
            self.link.close(1011, "keepalive ping timeout")
            self.transport.close()
            return False
        if interval and self.pinged_at is None and now >= self.ping_at:
            self.pinged_at = now
            self.ping_at = now + interval
            self.link.ping(PING_PAYLOAD)
        if now >= self.busy_at + self.beat:
            self.busy_at = now
            beat = control(self.fmt, {"type": "sipgw.heartbeat", "last_seq": self.last_seq})
            self.transport.write(ws_frame(beat.data, self.fmt))
        if now >= self.next_check:
            self.next_check = now + self.beat
            return self.session_end is not None
        return False

    async def check(self) -> None:
        """The token check (one Redis EXISTS): a revoked or expired token, or a removed
        user, ends the subscription with the close code naming why."""
        assert self.session_end is not None
        reason = await _checked(self.session_end)
        if reason is not None:
            self.finish(_ended(self.fmt, reason, self.last_seq))


class Heartbeats:
    """When each WebSocket subscriber of the node is next due a heartbeat, a keep-alive
    ping or a token check: one heap and one task for them all (a subscriber has no
    timer and no task of its own). An entry's time may be early (events moved the
    subscriber's heartbeat on since): it is then put back at its real wake time."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, WebSocketSubscriber]] = []
        self._order = itertools.count()  # ties: never compare two subscribers
        self._task: asyncio.Task[None] | None = None
        self._idle: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, conn: WebSocketSubscriber) -> None:
        heapq.heappush(self._heap, (conn.wake(), next(self._order), conn))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="events-heartbeats")
        idle, self._idle = self._idle, None
        if idle is not None and not idle.done():
            idle.set_result(None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        heap = self._heap
        while True:
            if not heap:
                self._idle = loop.create_future()
                await self._idle
                continue
            # A new subscriber is due no earlier than the first one here (its wake is a
            # full heartbeat away): sleeping until the first is never too long.
            delay = heap[0][0] - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            checks: list[WebSocketSubscriber] = []
            while heap and heap[0][0] <= now:
                _, _, conn = heapq.heappop(heap)
                if conn.gone or conn.refused:
                    continue  # forgotten here: nothing else of it is left
                if conn.wake() <= now and conn.tick(now):
                    checks.append(conn)
                else:
                    heapq.heappush(heap, (conn.wake(), next(self._order), conn))
            for i in range(0, len(checks), CHECKS_IN_FLIGHT):
                batch = checks[i : i + CHECKS_IN_FLIGHT]
                results = await asyncio.gather(*(c.check() for c in batch), return_exceptions=True)
                for conn, result in zip(batch, results, strict=True):
                    if isinstance(result, Exception):
                        log.error("token check failed", exc_info=result)
                    if not (conn.gone or conn.refused):
                        heapq.heappush(heap, (conn.wake(), next(self._order), conn))


class WebSocketSessions:
    """What the node's WebSocket subscriptions share: the bus, the encoded-event cache,
    the settings, the per-tenant count, the heartbeat schedule and uvicorn's keep-alive
    settings (applied by the schedule, not by a timer per connection)."""

    def __init__(
        self,
        bus: Callable[[], BusReader],
        settings: EventsSettings,
        cache: EncodedCache,
        subscribers: Subscribers,
    ) -> None:
        self.bus = bus
        self.settings = settings
        self.cache = cache
        self.subscribers = subscribers
        self.heartbeats = Heartbeats()
        self.ping_interval: float = 0.0
        self.ping_timeout: float = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._tasks.discard)


def events_router(
    bus_getter: Callable[[], BusReader],
    directory_getter: Callable[[], Directory],
    settings: EventsSettings,
    extensions_of: Callable[[str], frozenset[str] | None] = lambda tenant: None,
) -> tuple[APIRouter, Subscribers]:
    router = APIRouter(tags=["events"])
    subscribers = Subscribers(settings.max_subscribers_per_tenant)
    cache = EncodedCache()
    sessions = WebSocketSessions(bus_getter, settings, cache, subscribers)

    async def session_end(
        digest: str, principal: Principal
    ) -> Callable[[], Awaitable[SessionEnd | None]]:
        try:
            epoch: str | None = await directory_getter().epoch()
        except DirectoryUnavailable:
            epoch = None
        return lambda: directory_getter().session_end_of(digest, principal, epoch)

    @router.websocket("/v1/events")
    async def websocket_events(
        websocket: WebSocket,
        extension: list[str] = Query(default=[]),  # noqa: B008
        type: list[str] = Query(default=[]),  # noqa: B008
        types: str | None = None,
        since: str | None = None,
        ticket: str | None = None,
    ) -> None:
        """Live call events over WebSocket; see the module docstring for the protocol."""
        offered = [
            p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",")
        ]
        offered, protocol_bearers = split_protocols(offered)
        protocol = next((p for p in offered if p in PROTOCOLS), None)
        try:
            # What can be refused without Redis first: a ticket is used up by the check.
            cursor = checked_since(since)
            if any(offered) and protocol is None:
                raise HTTPException(400, f"subprotocol: one of {', '.join(PROTOCOLS)}")
            if protocol_bearers and protocol is None:
                # A browser fails a handshake whose answer names none of its protocols,
                # and the token's own protocol is never echoed.
                raise HTTPException(
                    400, f"subprotocol: offer {BROWSER_PROTOCOL} with {BEARER_PROTOCOL_PREFIX}…"
                )
            wanted_types = [*type, *split_types(types)]
            credential = await subscriber_credential(
                websocket, directory_getter(), ticket, protocol_bearers
            )
            principal = credential.principal
            accept = subscription_filter(
                principal, extension, wanted_types, extensions_of(principal.tenant)
            )
        except HTTPException as err:
            await _deny(websocket, err)
            return
        fmt = "msgpack" if protocol == MSGPACK_PROTOCOL else "json"
        if not subscribers.enter(principal.tenant):
            await _deny(websocket, HTTPException(429, "too many subscribers for this tenant"))
            return
        try:
            checks = await session_end(credential.token_digest, principal)
            await websocket.accept(subprotocol=protocol)
            link: FrameLink | None = websocket.scope["extensions"].get(FRAMES_EXTENSION)
            if link is None:
                raise RuntimeError("/v1/events needs the EventsWebSocketProtocol server")
            sessions.ping_interval = link.ping_interval or 0.0
            sessions.ping_timeout = link.ping_timeout or 0.0
            conn = WebSocketSubscriber(
                sessions, link, fmt, principal.tenant, accept, checks, cursor
            )
        except BaseException:
            subscribers.leave(principal.tenant)
            raise
        # Detached: the connection's end (lost) leaves the count from now on. This
        # handler returns once the replay is done and the hub delivers, and with it the
        # whole ASGI call chain is freed (gateway/api/ws_protocol.py).
        del websocket
        await conn.replay(cursor, ready=True)

    @router.get(
        "/v1/events/sse",
        summary="Live call events as Server-Sent Events",
        responses={
            200: {"content": {"text/event-stream": {}}},
            400: {"description": "`since` malformed; more than one credential"},
            401: {"description": "No token, an invalid or expired one, or a bad ticket"},
            403: {"description": "A sync token; an extension this token may not see"},
            429: {"description": "Too many subscribers for this tenant on this node"},
        },
    )
    async def sse_events(
        request: Request,
        extension: list[str] = Query(default=[]),  # noqa: B008
        type: list[str] = Query(default=[]),  # noqa: B008
        types: str | None = Query(None, description="Event types, comma-separated"),
        since: str | None = None,
        ticket: str | None = Query(None, description="From POST /v1/events/ticket"),
    ) -> StreamingResponse:
        """The same stream as ``/v1/events`` in ``text/event-stream`` form: each event is
        ``id: <seq>`` / ``event: <type>`` / ``data: <json>``; resume with the standard
        ``Last-Event-ID`` header (or ``since``). Authenticate with the
        ``Authorization`` header or, from a browser's ``EventSource``, a ``ticket``
        (single use: reconnect with a new one, not the browser's automatic retry)."""
        cursor = checked_since(request.headers.get("last-event-id") or since)
        wanted_types = [*type, *split_types(types)]
        credential = await subscriber_credential(request, directory_getter(), ticket)
        principal = credential.principal
        accept = subscription_filter(
            principal, extension, wanted_types, extensions_of(principal.tenant)
        )
        if not subscribers.enter(principal.tenant):
            raise HTTPException(429, "too many subscribers for this tenant")
        try:
            state = SubscriberState(
                settings.heartbeat, await session_end(credential.token_digest, principal), cursor
            )
        except BaseException:
            subscribers.leave(principal.tenant)
            raise
        # SSE keeps the simple path: a task fills a small queue that the response drains
        # (the backpressure of StreamingResponse), sharing the encoded event blocks.
        out: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=64)

        async def send(frame: Frame) -> None:
            await out.put(frame.data if frame.kind == "event" else _sse(frame))

        async def produce() -> None:
            try:
                await stream(
                    bus_getter(), principal.tenant, cursor, accept, "json", SSE_FORM,
                    settings, cache, state, send,
                )  # fmt: skip
            finally:
                await out.put(None)

        async def body() -> AsyncIterator[bytes]:
            producer = asyncio.create_task(produce())
            try:
                while (chunk := await out.get()) is not None:
                    yield chunk
                producer.result()  # surface a crash of the producer
            finally:
                subscribers.leave(principal.tenant)
                producer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await producer

        return StreamingResponse(
            body(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return router, subscribers


def split_types(types: str | None) -> list[str]:
    """``types=a,b``: the comma-separated form of repeated ``type=`` parameters."""
    return [t.strip() for t in (types or "").split(",") if t.strip()]


async def _deny(websocket: WebSocket, err: HTTPException) -> None:
    """Refuse the handshake with an HTTP status and a JSON message (RFC 6455 §4.2.2)."""
    headers = dict(err.headers or {})
    response = JSONResponse({"detail": err.detail}, status_code=err.status_code, headers=headers)
    try:
        await websocket.send_denial_response(response)
    except RuntimeError:
        # The server lacks the denial extension: a close before accept is a 403.
        await websocket.close(code=1008, reason=str(err.detail)[:120])


def _sse(frame: Frame) -> bytes:
    text = frame.data.decode()
    if frame.kind == "event":
        return f"id: {frame.seq}\nevent: {frame.event_type}\ndata: {text}\n\n".encode()
    if frame.event_type == "sipgw.heartbeat":
        return b": heartbeat\n\n"
    return f"event: {frame.event_type}\ndata: {text}\n\n".encode()
