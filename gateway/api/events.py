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

A subscription lives no longer than its token: every ``events.heartbeat`` seconds,
busy or idle, the token is checked again (one Redis EXISTS), and a revoked or expired
token, or a removed user, ends it with a close code naming why (4401-4403).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
from fastapi import APIRouter, HTTPException, Query, Request, WebSocket
from fastapi.responses import StreamingResponse
from starlette.responses import JSONResponse
from websockets.frames import Frame as WireFrame
from websockets.frames import Opcode

from gateway.api.auth import authenticate
from gateway.api.ws_protocol import FRAMES_EXTENSION, FrameLink
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
PROTOCOLS = (JSON_PROTOCOL, MSGPACK_PROTOCOL)
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


class WebSocketSubscriber(SubscriberState):
    """One ``/v1/events`` WebSocket: the hub's `Sink` for it and the connection's
    `FrameListener`. Live events are written by the hub straight to the transport, the
    frame bytes shared by every subscriber of the format; the handler task only replays,
    beats and closes."""

    __slots__ = ("fmt", "form", "gone", "limit", "link", "refused", "sub", "transport", "websocket")

    def __init__(
        self,
        websocket: WebSocket,
        link: FrameLink,
        fmt: str,
        limit: int,
        beat: float,
        session_end: Callable[[], Awaitable[SessionEnd | None]] | None,
        since: str | None,
    ) -> None:
        super().__init__(beat, session_end, since)
        self.websocket = websocket
        self.link = link
        self.transport = link.transport
        self.fmt = fmt
        self.form = WS_FORM[fmt]
        # The write buffer is this subscriber's queue: above `limit` bytes the transport
        # asks us to pause (replay waits), and a live event is refused (overflow).
        self.limit = limit
        self.transport.set_write_buffer_limits(high=limit)
        self.sub: LiveSubscription | None = None
        self.gone = False
        self.refused: tuple[int, str] | None = None
        link.listener = self

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
        if self.gone or self.refused:
            sub.close()

    def backlog(self) -> int:
        # In events of EVENT_ROOM bytes, rounded up, like the limit it is held to.
        return -(-self.transport.get_write_buffer_size() // EVENT_ROOM)

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
        self.transport.write(PONG)

    def lost(self) -> None:
        self.gone = True
        if self.sub is not None:
            self.sub.close()

    def _refuse(self, code: int, reason: str) -> None:
        if self.refused is None:
            self.refused = (code, reason)
            if self.sub is not None:
                self.sub.close()

    # -- the handler task's frames: ready, replay, heartbeats, the final one -----------
    async def send(self, frame: Frame) -> None:
        if self.gone or self.refused:
            raise ClientGone
        data = frame.data if frame.kind == "event" else ws_frame(frame.data, self.fmt)
        if frame.final:
            self.transport.write(data)
            await self.websocket.close(code=frame.close_code, reason=frame.close_reason[:120])
            return
        self.transport.write(data)
        self.busy_at = asyncio.get_running_loop().time()
        if not self.link.writable.is_set():
            # Above the high-water mark: the replay waits for the client (a lost
            # connection sets it too); live events are meanwhile queued by the hub.
            await self.link.writable.wait()


def events_router(
    bus_getter: Callable[[], BusReader],
    directory_getter: Callable[[], Directory],
    settings: EventsSettings,
    extensions_of: Callable[[str], frozenset[str] | None] = lambda tenant: None,
) -> tuple[APIRouter, Subscribers]:
    router = APIRouter(tags=["events"])
    subscribers = Subscribers(settings.max_subscribers_per_tenant)
    cache = EncodedCache()

    async def session_end(
        bearer: str, principal: Principal
    ) -> Callable[[], Awaitable[SessionEnd | None]]:
        try:
            epoch: str | None = await directory_getter().epoch()
        except DirectoryUnavailable:
            epoch = None
        return lambda: directory_getter().session_end(bearer, principal, epoch)

    @router.websocket("/v1/events")
    async def websocket_events(
        websocket: WebSocket,
        extension: list[str] = Query(default=[]),  # noqa: B008
        type: list[str] = Query(default=[]),  # noqa: B008
        since: str | None = None,
    ) -> None:
        """Live call events over WebSocket; see the module docstring for the protocol."""
        try:
            bearer = _bearer(websocket.headers.get("authorization"))
            principal = await authenticate(directory_getter(), bearer)
            assert bearer is not None  # authenticate refuses a missing one
            accept = subscription_filter(
                principal, extension, type, extensions_of(principal.tenant)
            )
            cursor = checked_since(since)
        except HTTPException as err:
            await _deny(websocket, err)
            return
        offered = [
            p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",")
        ]
        protocol = next((p for p in offered if p in PROTOCOLS), None)
        if any(offered) and protocol is None:
            await _deny(
                websocket, HTTPException(400, f"subprotocol: one of {', '.join(PROTOCOLS)}")
            )
            return
        fmt = "msgpack" if protocol == MSGPACK_PROTOCOL else "json"
        if not subscribers.enter(principal.tenant):
            await _deny(websocket, HTTPException(429, "too many subscribers for this tenant"))
            return
        try:
            checks = await session_end(bearer, principal)
            await websocket.accept(subprotocol=protocol)
            link: FrameLink | None = websocket.scope["extensions"].get(FRAMES_EXTENSION)
            if link is None:
                raise RuntimeError("/v1/events needs the EventsWebSocketProtocol server")
            conn = WebSocketSubscriber(
                websocket, link, fmt, settings.subscriber_queue * EVENT_ROOM,
                settings.heartbeat, checks, cursor,
            )  # fmt: skip
            with contextlib.suppress(ClientGone):
                await stream(
                    bus_getter(), principal.tenant, cursor, accept, fmt, conn.form,
                    settings, cache, conn, conn.send, sink=conn,
                )  # fmt: skip
            if conn.refused is not None and not conn.gone:
                code, reason = conn.refused
                await websocket.close(code=code, reason=reason)
        finally:
            subscribers.leave(principal.tenant)

    @router.get("/v1/events/sse", summary="Live call events as Server-Sent Events")
    async def sse_events(
        request: Request,
        extension: list[str] = Query(default=[]),  # noqa: B008
        type: list[str] = Query(default=[]),  # noqa: B008
        since: str | None = None,
    ) -> StreamingResponse:
        """The same stream as ``/v1/events`` in ``text/event-stream`` form: each event is
        ``id: <seq>`` / ``event: <type>`` / ``data: <json>``; resume with the standard
        ``Last-Event-ID`` header (or ``since``)."""
        bearer = _bearer(request.headers.get("authorization"))
        principal = await authenticate(directory_getter(), bearer)
        assert bearer is not None  # authenticate refuses a missing one
        accept = subscription_filter(principal, extension, type, extensions_of(principal.tenant))
        cursor = checked_since(request.headers.get("last-event-id") or since)
        if not subscribers.enter(principal.tenant):
            raise HTTPException(429, "too many subscribers for this tenant")
        try:
            state = SubscriberState(
                settings.heartbeat, await session_end(bearer, principal), cursor
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


def _bearer(header: str | None) -> str | None:
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


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
