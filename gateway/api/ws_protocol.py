"""uvicorn's sans-I/O WebSocket protocol, opened up for ``/v1/events``'s pre-framed writes,
and the small protocol an events connection lives on once its handler has returned.

A server-to-client frame is not masked (RFC 6455 §5.1, §5.3), so the bytes of an event's
frame are the same for every subscriber: the events endpoint builds them once and writes
them straight to each connection's transport (gateway/api/events.py). The ASGI interface
has no way to do that, so this protocol puts itself in the scope, under the
``sipgw.frames`` extension, as a `FrameLink`: the transport, its writability, a place to
hook a `FrameListener` that takes the client's messages and the loss of the connection
as plain calls, and `detach()`.

Detaching (memory): an ASGI WebSocket keeps, for its whole life, the handler's coroutine
and the ~15 middleware and FastAPI frames above it, the scope and both sets of handshake
headers, FastAPI's exit stacks, and uvicorn's receive queue and events (bench fan-out:
~40 KiB per idle subscriber). Once a subscription is live nothing of that is needed:
`detach()` moves the transport to a `DetachedWebSocket` (``transport.set_protocol``), a
slotted object holding the websockets sans-I/O parser (for the client's pings, closes,
garbage and oversized frames), the transport and the listener; the handler then
returns and uvicorn's protocol object, with everything it held, is freed. uvicorn's own
keep-alive timer goes with it: the events endpoint pings from its shared heartbeat
schedule instead (no timer per connection).

Everything before the detach (the handshake, a refused handshake's HTTP status and body,
pings, the close handshake, size limits) is uvicorn's, so every other WebSocket route
works as before: it never sets a listener nor detaches.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.server import ServerProtocol

FRAMES_EXTENSION = "sipgw.frames"
# After our close frame, how long the client has to answer it before the TCP
# connection is closed anyway (uvicorn's close_timeout; RFC 6455 §7.1.1).
CLOSE_TIMEOUT = 10.0


class FrameListener(Protocol):
    def received(self, data: bytes, text: bool) -> None:
        """A complete message from the client."""

    def pong(self) -> None:
        """The client answered a ping (RFC 6455 §5.5.3)."""

    def lost(self) -> None:
        """The connection is gone (closed by either side, or broken)."""

    def shutdown(self) -> None:
        """The server is stopping: say goodbye and close."""


class FrameLink(Protocol):
    """What the events endpoint sees of the connection once it accepted it."""

    transport: asyncio.Transport
    ping_interval: float | None  # uvicorn's keep-alive (ws_ping_interval, ws_ping_timeout)
    ping_timeout: float | None

    def detach(self, listener: FrameListener) -> DetachedWebSocket:
        """Leave the ASGI call chain (see the module docstring): from now on `listener`
        hears of the connection; the handler should return soon."""


class DetachedWebSocket(asyncio.Protocol):
    """An events connection after `EventsWebSocketProtocol.detach()`: the client's frames
    go through the sans-I/O parser to the listener, control frames are answered, and the
    rest is the listener's (which writes its frames to `transport` itself)."""

    __slots__ = (
        "closer",
        "connections",
        "drained",
        "fragments",
        "listener",
        "parser",
        "text",
        "transport",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        parser: ServerProtocol,
        listener: FrameListener,
        connections: set[Any],
        writable: bool,
    ) -> None:
        self.transport = transport
        self.parser = parser
        self.listener: FrameListener | None = listener
        self.connections = connections  # uvicorn's: its shutdown() reaches us there
        # A future only while the write buffer is over its mark and someone waits.
        self.drained: asyncio.Future[None] | None = None if writable else _pending()
        self.fragments: list[bytes] | None = None  # a fragmented message (§5.4) so far
        self.text = False  # and whether it is text
        self.closer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        parser = self.parser
        parser.receive_data(data)
        for frame in parser.events_received():
            if not isinstance(frame, Frame):
                continue  # the handshake was uvicorn's: only frames come now
            opcode = frame.opcode
            if opcode is Opcode.PONG:
                if self.listener is not None:
                    self.listener.pong()
            elif opcode is Opcode.TEXT or opcode is Opcode.BINARY or opcode is Opcode.CONT:
                self._message(frame.opcode, bytes(frame.data), frame.fin)
            # PING: the parser has queued the pong; CLOSE: it has queued the echo (§5.5).
        self._flush()

    def eof_received(self) -> bool | None:
        self.parser.receive_eof()
        self._flush()
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        if self.closer is not None:
            self.closer.cancel()
            self.closer = None
        self._drained()
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.lost()

    def pause_writing(self) -> None:
        if self.drained is None:
            self.drained = _pending()

    def resume_writing(self) -> None:
        self._drained()

    # -- uvicorn's server, stopping ---------------------------------------------------------
    def shutdown(self) -> None:
        if self.listener is not None and not self.transport.is_closing():
            self.listener.shutdown()
        else:
            self.transport.close()

    # -- for the listener -------------------------------------------------------------------
    async def wait_writable(self) -> None:
        """Return once the write buffer is under its mark (or the connection is gone)."""
        while self.drained is not None:
            await asyncio.shield(self.drained)

    def ping(self, payload: bytes) -> None:
        self.parser.send_ping(payload)
        self._flush()

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake (§7.1.2): our close frame now; the TCP connection
        ends when the client answers, or after CLOSE_TIMEOUT."""
        if self.transport.is_closing() or self.parser.close_sent is not None:
            return
        self.parser.send_close(code, reason)
        self._flush()

    def _message(self, opcode: Opcode, data: bytes, fin: bool) -> None:
        if opcode is Opcode.CONT:
            if self.fragments is None:
                return  # the parser refuses an unexpected continuation itself
            self.fragments.append(data)
            if not fin:
                return
            data, self.fragments = b"".join(self.fragments), None
            text = self.text
        elif not fin:
            self.fragments = [data]
            self.text = opcode is Opcode.TEXT
            return
        else:
            text = opcode is Opcode.TEXT
        if self.listener is not None and self.parser.close_sent is None:
            self.listener.received(data, text)

    def _flush(self) -> None:
        parser = self.parser
        writes = parser.data_to_send()
        transport = self.transport
        if writes and not transport.is_closing():
            transport.write(b"".join(writes))
        if parser.parser_exc is not None or (writes and writes[-1] == b""):
            # A protocol error (its close frame is written: 1002, 1007, 1009), or the
            # closing handshake is complete: the server closes TCP first (§7.1.1).
            transport.close()
        elif self.closer is None and parser.close_expected():
            loop = asyncio.get_running_loop()
            self.closer = loop.call_later(CLOSE_TIMEOUT, transport.close)

    def _drained(self) -> None:
        drained, self.drained = self.drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)


def _pending() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


class EventsWebSocketProtocol(WebSocketsSansIOProtocol):
    """`WebSocketsSansIOProtocol` that offers itself as a `FrameLink` to the app."""

    detached: DetachedWebSocket | None = None

    async def run_asgi(self) -> None:
        self.scope["extensions"][FRAMES_EXTENSION] = self  # type: ignore[assignment]
        # uvicorn's run_asgi, but a detached connection is not closed when the app returns.
        try:
            result = await self.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except BaseException:
            self.logger.exception("Exception in ASGI application\n")
            self.send_500_response()
        else:
            if not self.handshake_complete:
                self.logger.error("ASGI callable returned without completing handshake.")
                self.send_500_response()
            elif result is not None:
                self.logger.error("ASGI callable should return None, but returned '%s'.", result)
        if self.detached is None and self.close_timer is None:
            self.transport.close()

    def detach(self, listener: FrameListener) -> DetachedWebSocket:
        if self.detached is not None or not self.handshake_complete or self.close_sent:
            raise RuntimeError("only an accepted, open connection detaches, once")
        self.stop_keepalive()
        conn = DetachedWebSocket(
            self.transport, self.conn, listener, self.connections, self.writable.is_set()
        )
        self.detached = conn
        self.connections.discard(self)
        # uvicorn's shutdown() calls each connection's shutdown(), which we have.
        self.connections.add(conn)  # type: ignore[arg-type]
        self.transport.set_protocol(conn)
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        # Nothing that lives on may lead back here: the scope refers to us.
        self.scope["extensions"].pop(FRAMES_EXTENSION, None)
        return conn
