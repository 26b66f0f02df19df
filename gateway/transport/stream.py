"""TCP and TLS connections: an asyncio Protocol that frames SIP messages.

Framing (Content-Length, keep-alive CRLFs) is the sans-I/O ``StreamFramer``; this class
only moves bytes, tracks activity for the idle sweep, and protects the gateway from a
peer that stops reading (its write buffer is bounded: past the limit the connection is
aborted rather than letting memory grow).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from gateway.sip.errors import SIPParseError
from gateway.sip.framing import StreamFramer
from gateway.sip.message import Limits
from gateway.stats import parse_error_label
from gateway.transport.addresses import Source

if TYPE_CHECKING:
    from gateway.transport.layer import TransportLayer

log = logging.getLogger("sipgw.transport")

# A SIP peer that has not drained this much of what we sent is not reading.
MAX_WRITE_BUFFER = 1 << 20


class StreamConnection(asyncio.Protocol):
    def __init__(
        self,
        layer: TransportLayer,
        transport_name: str,
        limits: Limits,
        *,
        accepted: bool = False,
        on_ready: Callable[[StreamConnection], None] | None = None,
    ) -> None:
        self.layer = layer
        self.name = transport_name
        self.accepted = accepted  # a client connected to us (not one we opened)
        # The source bucket this connection is counted in (layer.register_connection)
        # while it is open; None when not counted.
        self.source_key: str | None = None
        self.framer = StreamFramer(limits)
        self.conn_id = layer.next_conn_id()
        self.transport: asyncio.Transport | None = None
        self.remote: tuple[str, int] = ("", 0)
        self.local: tuple[str, int] = ("", 0)
        self.last_activity = time.monotonic()
        self.closed = False
        self._on_ready = on_ready

    # -- asyncio callbacks -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the asyncio interfaces without subclassing them.
        self.transport = cast(asyncio.Transport, transport)
        peer = self.transport.get_extra_info("peername") or ("", 0)
        sock = self.transport.get_extra_info("sockname") or ("", 0)
        self.remote = (str(peer[0]), int(peer[1]))
        self.local = (str(sock[0]), int(sock[1]))
        self.transport.set_write_buffer_limits(high=MAX_WRITE_BUFFER // 2)
        if not self.layer.register_connection(self):
            self.transport.abort()
            return
        if self._on_ready is not None:
            self._on_ready(self)

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        try:
            messages = self.framer.feed(data)
        except SIPParseError as err:
            # A framing error leaves no way to find the next message's start:
            # RFC 3261 §18.3 says close the connection.
            self.layer.counters.parse_errors[parse_error_label(err.status, err.header)] += 1
            log.info(
                "closing stream after framing error",
                extra={"remote": f"{self.remote[0]}:{self.remote[1]}", "reason": str(err)},
            )
            self.close()
            return
        if self.framer.pings:
            # RFC 5626 §4.4.1: answer a double-CRLF keep-alive with a single CRLF.
            self.layer.counters.transport["keepalive_stream"] += self.framer.pings
            self.framer.pings = 0
            self.write(b"\r\n")
        source = Source(self.name, self.remote, self.local, self.conn_id)
        for message in messages:
            self.layer.deliver(message, source)
        if self.framer.error is not None:
            # Good messages came before the broken one in this read: they are delivered,
            # then the connection goes, as it would have for the error alone.
            error = self.framer.error
            label = parse_error_label(error.status, error.header)
            self.layer.counters.parse_errors[label] += 1
            self.close()

    def pause_writing(self) -> None:
        # The peer is slow to read; keep going but stop at the hard cap in write().
        pass

    def resume_writing(self) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.layer.unregister_connection(self)

    # -- used by the layer -------------------------------------------------------------
    def write(self, data: bytes) -> bool:
        if self.closed or self.transport is None or self.transport.is_closing():
            return False
        if self.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            self.layer.counters.transport["write_buffer_overflow"] += 1
            self.transport.abort()
            return False
        self.transport.write(data)
        self.last_activity = time.monotonic()
        return True

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True
