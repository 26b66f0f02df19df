"""uvicorn's sans-I/O WebSocket protocol, opened up for ``/v1/events``'s pre-framed writes.

A server-to-client frame is not masked (RFC 6455 §5.1, §5.3), so the bytes of an event's
frame are the same for every subscriber: the events endpoint builds them once and writes
them straight to each connection's transport (gateway/api/events.py). The ASGI interface
has no way to do that, so this protocol puts itself in the scope, under the
``sipgw.frames`` extension, as a `FrameLink`: the transport, its writability, and a place
to hook a `FrameListener` that takes the client's messages and the loss of the
connection as plain calls (no receive task, no queue per subscriber).

Everything else (the handshake, a refused handshake's HTTP status and body, pings, the
close handshake, size limits) is uvicorn's, so every other WebSocket route works as
before: it never sets a listener.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

FRAMES_EXTENSION = "sipgw.frames"


class FrameListener(Protocol):
    def received(self, data: bytes, text: bool) -> None:
        """A complete message from the client."""

    def lost(self) -> None:
        """The connection is gone (closed by either side, or broken)."""


class FrameLink(Protocol):
    """What the events endpoint sees of the connection."""

    transport: asyncio.Transport
    writable: asyncio.Event  # cleared above the transport's high-water mark
    disconnected: bool
    listener: FrameListener | None


class EventsWebSocketProtocol(WebSocketsSansIOProtocol):
    """`WebSocketsSansIOProtocol` that offers itself as a `FrameLink` to the app."""

    listener: FrameListener | None = None

    async def run_asgi(self) -> None:
        self.scope["extensions"][FRAMES_EXTENSION] = self  # type: ignore[assignment]
        await super().run_asgi()

    def send_receive_event_to_app(self) -> None:
        listener = self.listener
        if listener is None:
            super().send_receive_event_to_app()
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if not self.close_sent:
            listener.received(data, self.curr_msg_data_type == "text")

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.lost()
