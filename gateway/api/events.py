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
from fastapi import APIRouter, HTTPException, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from starlette.responses import JSONResponse

from gateway.api.auth import authenticate
from gateway.bus import keys
from gateway.bus.live import SubscriberOverflow
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


class EncodedCache:
    """Encode once, send many: the bytes of recent events per wire format."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()

    def get(self, tenant: str, seq: str, fmt: str, event: dict[str, Any]) -> bytes:
        key = (tenant, seq, fmt)
        data = self._items.get(key)
        if data is None:
            body = {**event, "seq": seq}
            data = (
                json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
                if fmt == "json"
                else msgpack.packb(body, use_bin_type=True)
            )
            self._items[key] = data
            if len(self._items) > self.size:
                self._items.popitem(last=False)
        return data


@dataclass(frozen=True)
class Frame:
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


async def produce(
    bus: BusReader,
    tenant: str,
    since: str | None,
    accept: EventFilter,
    fmt: str,
    cache: EncodedCache,
    out: asyncio.Queue[Frame],
    maxsize: int,
) -> None:
    """Read the bus for one subscriber and queue its frames; ends with a final frame."""
    last = since

    async def ready() -> None:
        # Only now: an event produced after the client sees "ready" is sure to reach it.
        await out.put(control(fmt, {"type": "sipgw.ready", "since": since}))

    try:
        async for seq, event in events_since(
            bus, tenant, since, accept, maxsize=maxsize, on_ready=ready
        ):
            last = seq
            await out.put(
                Frame("event", cache.get(tenant, seq, fmt, event), seq, str(event.get("type", "")))
            )
        await out.put(
            control(
                fmt,
                {"type": "sipgw.closed", "last_seq": last},
                final=True,
                close_code=1001,
                close_reason="gateway shutting down",
            )
        )
    except SubscriberOverflow as err:
        last = err.last_seq or last
        await out.put(
            control(
                fmt,
                {
                    "type": "sipgw.overflow",
                    "last_seq": last,
                    "detail": "subscriber too slow: resume with since=last_seq",
                },
                final=True,
                close_code=CLOSE_OVERFLOW,
                close_reason=f"overflow since={last}",
            )
        )
    except EventsLost as err:
        await out.put(
            control(
                fmt,
                {
                    "type": "sipgw.lost",
                    "after": err.after,
                    "oldest": err.oldest,
                    "detail": str(err),
                },
                final=True,
                close_code=CLOSE_LOST,
                close_reason="since older than retained events",
            )
        )
    except BusUnavailable:
        await out.put(
            control(
                fmt,
                {"type": "sipgw.unavailable", "last_seq": last},
                final=True,
                close_code=CLOSE_UNAVAILABLE,
                close_reason="event bus unavailable",
            )
        )


async def frames(
    bus: BusReader,
    tenant: str,
    since: str | None,
    accept: EventFilter,
    fmt: str,
    settings: EventsSettings,
    cache: EncodedCache,
    session_end: Callable[[], Awaitable[SessionEnd | None]] | None = None,
) -> AsyncIterator[Frame]:
    """Frames for one subscriber, with heartbeats while idle. The producer runs in its
    own task, so a heartbeat timeout never cancels the bus iteration mid-step.

    Every ``heartbeat`` seconds, whether events flow or not, ``session_end`` says
    whether the token still stands; if not, a final ``sipgw.unauthorized`` ends it."""
    out: asyncio.Queue[Frame] = asyncio.Queue(maxsize=64)
    producer = asyncio.create_task(
        produce(bus, tenant, since, accept, fmt, cache, out, settings.subscriber_queue)
    )
    loop = asyncio.get_running_loop()
    beat = settings.heartbeat
    next_beat = next_check = loop.time() + beat
    last = since
    try:
        while True:
            if session_end is not None and loop.time() >= next_check:
                next_check = loop.time() + beat
                reason = await _checked(session_end)
                if reason is not None:
                    yield _ended(fmt, reason, last)
                    return
            wake = min(next_beat, next_check) if session_end is not None else next_beat
            try:
                frame = await asyncio.wait_for(out.get(), max(0.0, wake - loop.time()))
            except TimeoutError:
                if producer.done():
                    producer.result()  # surface a crash of the producer
                    return
                if loop.time() >= next_beat:
                    next_beat = loop.time() + beat
                    yield control(fmt, {"type": "sipgw.heartbeat", "last_seq": last})
                continue
            next_beat = loop.time() + beat  # heartbeats only while idle
            if frame.seq is not None:
                last = frame.seq
            yield frame
            if frame.final:
                return
    finally:
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await producer


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
            await websocket.accept(subprotocol=protocol)
            await _serve_websocket(
                websocket,
                frames(
                    bus_getter(),
                    principal.tenant,
                    cursor,
                    accept,
                    fmt,
                    settings,
                    cache,
                    await session_end(bearer, principal),
                ),
                fmt,
            )
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
        stream = frames(
            bus_getter(),
            principal.tenant,
            cursor,
            accept,
            "json",
            settings,
            cache,
            await session_end(bearer, principal),
        )

        async def body() -> AsyncIterator[bytes]:
            try:
                async for frame in stream:
                    yield _sse(frame)
            finally:
                subscribers.leave(principal.tenant)

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


async def _serve_websocket(websocket: WebSocket, stream: AsyncIterator[Frame], fmt: str) -> None:
    sender = asyncio.create_task(_send_frames(websocket, stream, fmt))
    receiver = asyncio.create_task(_receive(websocket))
    done, pending = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    for task in done:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            task.result()


async def _send_frames(websocket: WebSocket, stream: AsyncIterator[Frame], fmt: str) -> None:
    async for frame in stream:
        if fmt == "json":
            await websocket.send_text(frame.data.decode())
        else:
            await websocket.send_bytes(frame.data)
        if frame.final:
            await websocket.close(code=frame.close_code, reason=frame.close_reason[:120])
            return


async def _receive(websocket: WebSocket) -> None:
    """Subscribers send nothing but small JSON pings; anything else ends the session."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is None or len(text) > CLIENT_MESSAGE_LIMIT:
            await websocket.close(code=1003, reason="this endpoint only accepts small JSON pings")
            return
        try:
            ping = json.loads(text)
        except ValueError:
            ping = None
        if not isinstance(ping, dict) or ping.get("type") != "ping":
            await websocket.close(code=1003, reason='expected {"type": "ping"}')
            return
        await websocket.send_text(json.dumps({"type": "sipgw.pong"}))


def _sse(frame: Frame) -> bytes:
    text = frame.data.decode()
    if frame.kind == "event":
        return f"id: {frame.seq}\nevent: {frame.event_type}\ndata: {text}\n\n".encode()
    if frame.event_type == "sipgw.heartbeat":
        return b": heartbeat\n\n"
    return f"event: {frame.event_type}\ndata: {text}\n\n".encode()
