"""The transport layer: UDP, TCP and TLS endpoints behind one ``send`` and one handler.

It knows bytes and addresses, not SIP semantics: whoever owns it hands over complete
messages and a ``Target``; it reuses a live connection (the one a request came on, or
one aliased to the target's address) before opening a new one (RFC 3261 §18).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, cast

from gateway.sip.message import Limits
from gateway.stats import Counters
from gateway.transport.addresses import (
    Listen,
    Source,
    Target,
    ip_version,
    source_bucket,
    strip_brackets,
)
from gateway.transport.stream import StreamConnection

log = logging.getLogger("sipgw.transport")

Handler = Callable[[bytes, Source], None]
ErrorCallback = Callable[[], None]

CONNECT_TIMEOUT = 5.0
IDLE_SWEEP_INTERVAL = 5.0
MAX_PENDING_PER_CONNECT = 64


def _addr_key(transport: str, host: str, port: int) -> tuple[str, str, int]:
    bare = strip_brackets(host).lower()
    with contextlib.suppress(ValueError):
        bare = ipaddress.ip_address(bare).compressed
    return transport, bare, port



def ip_family(host: str) -> socket.AddressFamily | None:
    """The socket address family of an IP literal (brackets allowed), None for a name."""
    version = ip_version(host)
    if version is None:
        return None
    return socket.AF_INET6 if version == 6 else socket.AF_INET

def resolve_host(host: str, port: int) -> list[str]:
    """The addresses a host name has now (blocking: for start-up, not the hot path)."""
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except OSError:
        return []
    return [str(info[4][0]) for info in infos]


# RFC 5626 keep-alives as they arrive over UDP: a CRLF (PJSIP's default ka_data) or a
# double CRLF. §3.5.1/§4.4.1 define the CRLF ping-pong for connection-oriented transports
# only and give UDP the STUN technique, which sipgw does not offer (it never indicates
# outbound support). Such a datagram only refreshes the phone's NAT binding, which it has
# done by arriving: it is counted and ignored, never answered (an answer would make a
# spoofed source a target) and never taken for a broken SIP message.
UDP_KEEPALIVES = frozenset({b"\r\n", b"\r\n\r\n"})


class UdpEndpoint(asyncio.DatagramProtocol):
    def __init__(self, layer: TransportLayer, local: tuple[str, int], own: bool = False) -> None:
        self.layer = layer
        self.local = local
        self.own = own  # a worker's own port: sibling workers send envelopes here
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the asyncio interfaces without subclassing them.
        self.transport = cast(asyncio.DatagramTransport, transport)
        sock = self.transport.get_extra_info("sockname")
        self.local = (str(sock[0]), int(sock[1]))

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if len(data) <= 4 and data in UDP_KEEPALIVES:  # the length first: the hot path
            self.layer.counters.transport["keepalive_udp"] += 1
            return
        if self.own and data[:1] == b"\x00" and self.layer.on_envelope is not None:
            self.layer.on_envelope(data)
            return
        self.layer.deliver(data, Source("udp", (str(addr[0]), int(addr[1])), self.local, None))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: nothing to do per datagram; the
        # transaction timers take care of the lost message.
        self.layer.counters.transport["udp_error"] += 1


class TransportLayer:
    def __init__(
        self,
        handler: Handler,
        *,
        limits: Limits,
        counters: Counters,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
        max_connections: int = 4096,
        max_connections_per_source: int = 0,
        idle_timeout: float = 300.0,
    ) -> None:
        self.after_deferred_errors: Callable[[], None] | None = None
        # The destination policy for addresses a host name resolved to (the proxy
        # checks IP literals before sending; a name is only known once resolved).
        self.destination_check: Callable[[str, int], bool] = lambda host, port: True
        self.handler = handler
        self.limits = limits
        self.counters = counters
        self.server_ssl = server_ssl
        self.client_ssl = client_ssl
        self.max_connections = max_connections
        # Accepted connections per source (IPv6: per /64); 0 = no limit. Sources for
        # which ``unlimited_source`` says True (trunks, exempt networks) are not counted.
        self.max_connections_per_source = max_connections_per_source
        self.unlimited_source: Callable[[str, int], bool] = lambda host, port: False
        self._per_source: dict[str, int] = {}  # bucket -> accepted connections open
        self.idle_timeout = idle_timeout
        self.listening: list[Listen] = []  # the shared ports, as bound
        self.own: list[Listen] = []  # this worker's own ports (multi-worker only)
        self.on_envelope: Callable[[bytes], None] | None = None  # from a sibling worker
        self._udp: dict[socket.AddressFamily, UdpEndpoint] = {}  # shared, by family
        self._own_udp: dict[socket.AddressFamily, UdpEndpoint] = {}
        self._udp_by_port: dict[tuple[socket.AddressFamily, int], UdpEndpoint] = {}
        self._servers: list[asyncio.base_events.Server] = []
        self._conns: dict[int, StreamConnection] = {}
        self._by_addr: dict[tuple[str, str, int], int] = {}
        self._connecting: dict[tuple[str, str, int], list[tuple[bytes, ErrorCallback | None]]] = {}
        self._next_id = 0
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------------------
    async def start(
        self, listens: Sequence[Listen], *, reuse_port: bool = False, own: Sequence[Listen] = ()
    ) -> None:
        """Listen on ``listens`` (with SO_REUSEPORT when worker processes share them)
        and on this worker's ``own`` ports, which then go into Via and Record-Route."""
        for spec in listens:
            self.listening.append(await self._listen(spec, reuse_port=reuse_port, own=False))
        for spec in own:
            self.own.append(await self._listen(spec, reuse_port=False, own=True))
        self._sweeper = asyncio.create_task(self._sweep_idle())

    async def _listen(self, spec: Listen, *, reuse_port: bool, own: bool) -> Listen:
        loop = asyncio.get_running_loop()
        host = strip_brackets(spec.host)
        family = ip_family(host) or socket.AF_INET
        if spec.transport == "udp":
            _, endpoint = await loop.create_datagram_endpoint(
                functools.partial(UdpEndpoint, self, (host, spec.port), own),
                local_addr=(host, spec.port),
                family=family,
                reuse_port=reuse_port or None,
            )
            (self._own_udp if own else self._udp).setdefault(family, endpoint)
            self._udp_by_port[family, endpoint.local[1]] = endpoint
            self._tune_udp_socket(endpoint)
            return Listen("udp", spec.host, endpoint.local[1])
        if spec.transport == "tls" and self.server_ssl is None:
            raise ValueError("a TLS listener needs a certificate (sip.tls_cert/sip.tls_key)")
        name = spec.transport
        server = await loop.create_server(
            functools.partial(StreamConnection, self, name, self.limits, accepted=True),
            host,
            spec.port,
            family=family,
            ssl=self.server_ssl if name == "tls" else None,
            reuse_address=True,
            reuse_port=reuse_port or None,
            backlog=1024,
        )
        self._servers.append(server)
        return Listen(name, spec.host, server.sockets[0].getsockname()[1])

    @staticmethod
    def _tune_udp_socket(endpoint: UdpEndpoint) -> None:
        # A burst of INVITEs must not be dropped by a default-sized kernel buffer.
        assert endpoint.transport is not None
        sock = endpoint.transport.get_extra_info("socket")
        if sock is None:
            return
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):  # capped by net.core.*mem_max: best effort
                sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for server in self._servers:
            server.close()
        for conn in list(self._conns.values()):
            conn.close()
        for endpoint in self._udp_by_port.values():
            if endpoint.transport is not None:
                endpoint.transport.close()
        for server in self._servers:
            await server.wait_closed()
        for task in list(self._tasks):
            task.cancel()

    # -- what the layer offers ----------------------------------------------------------
    def local_port(self, transport: str, version: int = 4) -> int:
        """The port we listen on for ``transport`` and IP ``version`` (for Via sent-by
        and Record-Route): this worker's own port when it has one, so what comes back
        comes here."""
        candidates = [spec for spec in self.own if spec.transport == transport]
        candidates = candidates or [s for s in self.listening if s.transport == transport]
        for spec in candidates:
            if (ip_version(spec.host) or 4) == version:
                return spec.port
        if candidates:
            return candidates[0].port
        raise LookupError(f"no {transport} listener")

    def send_envelope(self, packet: bytes, host: str, port: int) -> None:
        """Hand a message to a sibling worker at its own port (see transport/relay.py)."""
        family = ip_family(host) or socket.AF_INET
        endpoint = self._own_udp.get(family) or self._udp.get(family)
        if endpoint is not None and endpoint.transport is not None:
            endpoint.transport.sendto(packet, (strip_brackets(host), port))

    def supports(self, transport: str) -> bool:
        return any(spec.transport == transport for spec in self.listening)

    def connection_alive(self, conn_id: int | None) -> bool:
        conn = self._conns.get(conn_id) if conn_id is not None else None
        return conn is not None and not conn.closed

    def add_alias(self, conn_id: int, host: str, port: int) -> None:
        """Reach connection ``conn_id`` also when sending to ``host:port``.

        A phone registered over TCP advertises its listening port in Contact, but
        expects requests on the connection it opened (it may not accept new ones).
        """
        conn = self._conns.get(conn_id)
        if conn is not None:
            self._by_addr[_addr_key(conn.name, host, port)] = conn_id

    def send(self, data: bytes, target: Target, on_error: ErrorCallback | None = None) -> None:
        """Send without waiting: errors are reported through ``on_error``."""
        if target.transport == "udp":
            self._send_udp(data, target, on_error)
        else:
            self._send_stream(data, target, on_error)

    # -- UDP -----------------------------------------------------------------------------
    def _send_udp(self, data: bytes, target: Target, on_error: ErrorCallback | None) -> None:
        family = ip_family(target.host)
        if family is None:
            self._spawn(self._resolve_then_send(data, target, on_error))
            return
        endpoint = None
        if target.local_port is not None:
            endpoint = self._udp_by_port.get((family, target.local_port))
        if endpoint is None:
            endpoint = self._own_udp.get(family) or self._udp.get(family)
        if endpoint is None or endpoint.transport is None:
            self.counters.transport["udp_no_endpoint"] += 1
            if on_error is not None:
                on_error()
            return
        endpoint.transport.sendto(data, (strip_brackets(target.host), target.port))

    async def _resolve_then_send(
        self, data: bytes, target: Target, on_error: ErrorCallback | None
    ) -> None:
        # Plain A/AAAA resolution; RFC 3263 NAPTR/SRV selection is not implemented.
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_DGRAM)
        except OSError:
            infos = []
        for family, *_rest, sockaddr in infos:
            if family in self._udp:
                if not self.destination_check(str(sockaddr[0]), target.port):
                    break
                self.send(data, Target(target.transport, str(sockaddr[0]), target.port), on_error)
                return
        self.counters.transport["resolve_failed"] += 1
        if on_error is not None:
            on_error()
            self._after_deferred_errors()

    # -- streams -------------------------------------------------------------------------
    def _send_stream(self, data: bytes, target: Target, on_error: ErrorCallback | None) -> None:
        conn = self._conns.get(target.conn_id) if target.conn_id is not None else None
        if conn is None or conn.closed:
            key = _addr_key(target.transport, target.host, target.port)
            conn_id = self._by_addr.get(key)
            conn = self._conns.get(conn_id) if conn_id is not None else None
        if conn is not None and not conn.closed:
            if not conn.write(data) and on_error is not None:
                on_error()
            return
        self._connect_and_send(data, target, on_error)

    def _connect_and_send(
        self, data: bytes, target: Target, on_error: ErrorCallback | None
    ) -> None:
        key = _addr_key(target.transport, target.host, target.port)
        queue = self._connecting.get(key)
        if queue is not None:
            if len(queue) >= MAX_PENDING_PER_CONNECT:
                if on_error is not None:
                    on_error()
                return
            queue.append((data, on_error))
            return
        self._connecting[key] = [(data, on_error)]
        self._spawn(self._connect(target, key))

    async def _connect(self, target: Target, key: tuple[str, str, int]) -> None:
        loop = asyncio.get_running_loop()
        use_tls = target.transport == "tls"
        if use_tls and self.client_ssl is None:
            self._fail_pending(key)
            return
        address = await self._checked_address(target)
        if address is None:
            self._fail_pending(key)
            return
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: StreamConnection(self, target.transport, self.limits),
                    address,
                    target.port,
                    ssl=self.client_ssl if use_tls else None,
                    server_hostname=(strip_brackets(target.host) if use_tls else None),
                ),
                CONNECT_TIMEOUT,
            )
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            self.counters.transport["connect_failed"] += 1
            log.info(
                "connect failed",
                extra={
                    "target": f"{target.host}:{target.port}",
                    "transport": target.transport,
                    "error": type(exc).__name__,
                },
            )
            self._fail_pending(key)
            return
        self._by_addr[key] = conn.conn_id
        for data, on_error in self._connecting.pop(key, []):
            if not conn.write(data) and on_error is not None:
                on_error()

    async def _checked_address(self, target: Target) -> str | None:
        """The address to connect to: an IP literal as it is, a name resolved here and
        checked by ``destination_check`` (so a name cannot point us at ourselves)."""
        host = strip_brackets(target.host)
        if ip_family(host) is not None:
            return host
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, target.port, type=socket.SOCK_STREAM
            )
        except OSError:
            infos = []
        for _family, *_rest, sockaddr in infos:
            address = str(sockaddr[0])
            if self.destination_check(address, target.port):
                return address
            break
        self.counters.transport["resolve_failed" if not infos else "destination_refused"] += 1
        return None

    def _fail_pending(self, key: tuple[str, str, int]) -> None:
        for _data, on_error in self._connecting.pop(key, []):
            if on_error is not None:
                on_error()
        self._after_deferred_errors()

    def _after_deferred_errors(self) -> None:
        # Errors found later (a connect refused, a name unresolved) run their callbacks
        # outside any received message: whoever armed timers in them must re-arm.
        if self.after_deferred_errors is not None:
            self.after_deferred_errors()

    # -- connection bookkeeping (called by StreamConnection) ------------------------------
    def next_conn_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def register_connection(self, conn: StreamConnection) -> bool:
        """Admit a new connection, or say False and count why: the caller closes it.

        An accepted connection counts against its source's share (IPv6: its /64) until
        it closes: past ``max_connections_per_source`` one client cannot take the
        ``max_connections`` meant for all. Connections we open are not counted there.
        """
        if len(self._conns) >= self.max_connections:
            self._refuse("connection_refused_limit", "connection limit reached", conn)
            return False
        if conn.accepted and self.max_connections_per_source:
            host, port = conn.remote
            if not self.unlimited_source(host, port):
                key = source_bucket(host)
                if self._per_source.get(key, 0) >= self.max_connections_per_source:
                    self._refuse(
                        "connection_refused_source_limit",
                        "connection limit per source reached",
                        conn,
                        limit=self.max_connections_per_source,
                        source=key,
                    )
                    return False
                self._per_source[key] = self._per_source.get(key, 0) + 1
                conn.source_key = key
        self._conns[conn.conn_id] = conn
        self._by_addr[_addr_key(conn.name, *conn.remote)] = conn.conn_id
        self.counters.transport[f"{conn.name}_opened"] += 1
        return True

    def _refuse(self, event: str, message: str, conn: StreamConnection, **extra: object) -> None:
        self.counters.transport[event] += 1
        # Logged on the 1st, 2nd, 4th, 8th, ... refusal: a connection flood must not
        # become a log flood.
        n = self.counters.transport[event]
        if n & (n - 1) == 0:
            log.warning(
                message,
                extra={
                    "limit": self.max_connections,
                    **extra,
                    "transport": conn.name,
                    "refused": n,
                },
            )

    def unregister_connection(self, conn: StreamConnection) -> None:
        if conn.source_key is not None:
            left = self._per_source.get(conn.source_key, 1) - 1
            if left > 0:
                self._per_source[conn.source_key] = left
            else:
                self._per_source.pop(conn.source_key, None)
            conn.source_key = None
        if self._conns.pop(conn.conn_id, None) is None:
            return
        for key in [k for k, v in self._by_addr.items() if v == conn.conn_id]:
            del self._by_addr[key]
        self.counters.transport[f"{conn.name}_closed"] += 1

    @property
    def connection_count(self) -> int:
        return len(self._conns)

    def deliver(self, data: bytes, source: Source) -> None:
        try:
            self.handler(data, source)
        except Exception:
            # One bad message must never take the listener down with it.
            self.counters.transport["handler_error"] += 1
            log.exception("message handler failed", extra={"transport": source.transport})

    async def _sweep_idle(self) -> None:
        while True:
            await asyncio.sleep(min(IDLE_SWEEP_INTERVAL, self.idle_timeout / 2))
            cutoff = time.monotonic() - self.idle_timeout
            for conn in list(self._conns.values()):
                if conn.last_activity < cutoff:
                    self.counters.transport["idle_closed"] += 1
                    conn.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
