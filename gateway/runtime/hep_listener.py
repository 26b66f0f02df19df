"""The HEPv3 listener of monitor mode: a thin asyncio UDP endpoint.

It decides who may feed the call tracker (a configured `[[monitor.sources]]` address,
and that source's `auth_key` when it has one), decodes with `gateway.calls.hep` and
hands each accepted SIP payload to its consumer (`gateway.calls.monitor`, wired by
app.py). See the codec's module for the wire format and the threat model.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
from collections.abc import Callable
from typing import cast

from gateway.calls.hep import MAX_CHUNKS, PROTO_TYPE_SIP, HepError, HepPacket, decode_hep
from gateway.config import MonitorSettings, MonitorSource

__all__ = ["HepIntake", "SipCallback"]

log = logging.getLogger("sipgw.hep")

SipCallback = Callable[[bytes, HepPacket, MonitorSource], None]


class HepIntake(asyncio.DatagramProtocol):
    """UDP listener for HEPv3: check the sender, decode, count, hand SIP to `on_sip`.

    Counters are plain ints (DESIGN.md: batch hot-path metrics) in dicts the owner
    passes in, to fold into Prometheus (or new ones): `counters` holds "received",
    "sip", "other_proto", "callback_error", "socket_error"; `dropped` holds refused
    packets by `DROP_REASONS`; `errors` holds malformed datagrams by `HepError.reason`.
    Nothing a datagram or the callback does raises into the event loop.

    Order of the checks, cheapest first: the sender's address (an unknown sender costs
    no decoding), the packet's structure, then the source's auth key.
    """

    def __init__(
        self,
        on_sip: SipCallback,
        monitor: MonitorSettings,
        counters: dict[str, int] | None = None,
        *,
        dropped: dict[str, int] | None = None,
        max_chunks: int = MAX_CHUNKS,
    ) -> None:
        self.on_sip = on_sip
        self.monitor = monitor
        self.counters = counters if counters is not None else {}
        for key in ("received", "sip", "other_proto", "callback_error", "socket_error"):
            self.counters.setdefault(key, 0)
        self.dropped = dropped if dropped is not None else {}
        self.errors: dict[str, int] = {}
        self.max_chunks = max_chunks
        self.transport: asyncio.DatagramTransport | None = None
        self.local: tuple[str, int] | None = None

    @property
    def received(self) -> int:
        return self.counters["received"]

    @property
    def sip(self) -> int:
        return self.counters["sip"]

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self, host: str, port: int, *, rcvbuf: int = 4 << 20) -> tuple[str, int]:
        """Bind host:port (port 0: any free port); returns the bound (host, port)."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port), family=family)
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        if sock is not None and rcvbuf:
            # A busy PBX mirrors every message twice (in and out): a burst must not be
            # dropped by a default-sized kernel buffer. Capped by net.core.rmem_max.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        assert self.local is not None
        return self.local

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    # -- DatagramProtocol --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the asyncio interfaces without subclassing them.
        self.transport = cast(asyncio.DatagramTransport, transport)
        name = self.transport.get_extra_info("sockname")
        self.local = (str(name[0]), int(name[1]))

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.counters["received"] += 1
        sender = (str(addr[0]), int(addr[1]))
        source = self.monitor.source_for(*sender)
        if source is None:
            self._drop("unknown_source", sender)
            return
        try:
            packet = decode_hep(data, max_chunks=self.max_chunks)
        except HepError as exc:
            self.errors[exc.reason] = self.errors.get(exc.reason, 0) + 1
            self._drop("malformed", sender, exc.reason)
            return
        if source.auth_key is not None:
            if packet.auth_key is None:
                self._drop("no_auth_key", sender)
                return
            if not hmac.compare_digest(packet.auth_key, source.auth_key.encode()):
                self._drop("bad_auth_key", sender)
                return
        if packet.proto_type != PROTO_TYPE_SIP:
            self.counters["other_proto"] += 1  # RTCP, logs, ...: not for the call tracker
            return
        self.counters["sip"] += 1
        try:
            self.on_sip(packet.payload, packet, source)
        except Exception:
            # A bug in one consumer must not stop the intake; log sparsely (1st, 2nd,
            # 4th, 8th, ... failure) so a failing consumer cannot flood the log.
            self.counters["callback_error"] += 1
            n = self.counters["callback_error"]
            if n & (n - 1) == 0:
                log.exception("HEP consumer failed (%d failures so far)", n)

    def _drop(self, reason: str, sender: tuple[str, int], detail: str = "") -> None:
        n = self.dropped.get(reason, 0) + 1
        self.dropped[reason] = n
        # Malformed packets are routine noise (debug); refused senders are worth a
        # warning, but sparsely (1st, 2nd, 4th, ... of a reason): a forged flood must
        # not become a log flood. Never the key that was given.
        if reason != "malformed" and n & (n - 1) == 0:
            log.warning(
                "HEP packet refused",
                extra={"reason": reason, "sender": f"{sender[0]}:{sender[1]}", "refused": n},
            )
        else:
            log.debug("dropped HEP datagram from %s:%s: %s %s", *sender, reason, detail)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors on a receive-only socket: nothing to do but count them.
        self.counters["socket_error"] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
