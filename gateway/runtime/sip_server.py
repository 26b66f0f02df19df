"""The thin asyncio layer over the sans-I/O proxy: sockets in, one timer armed.

Like uvicorn's protocol classes, this holds no SIP logic: the transport layer delivers
complete messages to ``Proxy.receive``, and a single ``loop.call_at`` is kept armed at
the proxy's earliest deadline.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import TypeVar

from gateway.config import Settings
from gateway.proxy.core import Proxy
from gateway.proxy.flood import FloodGuard
from gateway.proxy.location import Location
from gateway.proxy.observe import Observer
from gateway.sip.message import Limits
from gateway.stats import Counters
from gateway.transport.addresses import Listen, Source, ip_version
from gateway.transport.layer import TransportLayer, resolve_host
from gateway.transport.relay import STATS, WorkerPlan, open_stats, seal_stats, unwrap, wrap

log = logging.getLogger("sipgw.proxy")

_T = TypeVar("_T")


class ProxyServer:
    def __init__(
        self,
        settings: Settings,
        counters: Counters,
        *,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
        location: Location | None = None,
        observer: Observer | None = None,
        plan: WorkerPlan | None = None,
        on_stats: Callable[[int, dict[str, object]], None] | None = None,
    ) -> None:
        sip = settings.sip
        self.plan = plan
        self.on_stats = on_stats
        self.settings = settings
        self.counters = counters
        self.loop = asyncio.get_running_loop()
        self.transport = TransportLayer(
            self._on_message,
            limits=Limits(
                max_message=sip.max_message_size,
                max_headers=sip.max_headers,
                max_header_line=sip.max_header_line,
            ),
            counters=counters,
            server_ssl=server_ssl,
            client_ssl=client_ssl,
            max_connections=sip.max_connections,
            max_connections_per_source=sip.max_connections_per_source,
            idle_timeout=sip.idle_timeout,
        )
        # Workers must share the key of nonces and Record-Route signatures: without an
        # auth_secret, the supervisor's secret of this start serves.
        secret = sip.auth_secret.encode() if sip.auth_secret else None
        if secret is None and plan is not None:
            secret = plan.secret
        self.proxy = Proxy(
            settings,
            transport=self.transport,
            counters=counters,
            clock=self.loop.time,
            location=location,
            auth_secret=secret,
            observer=observer,
            resolve=resolve_host,
        )
        directory = self.proxy.directory
        policy = self.proxy.destinations
        self.transport.destination_check = lambda host, port: policy.refusal(host, port) is None
        self.flood = FloodGuard(
            sip.flood_max_requests,
            sip.flood_window,
            clock=self.loop.time,
            is_peer=lambda host, port: directory.trunk_for_source(host, port) is not None,
            exempt=sip.flood_exempt,
        )
        # Trunks and exempt networks are no more limited in connections than in messages.
        self.transport.unlimited_source = self.flood.trusted
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.transport.after_deferred_errors = self._arm
        if plan is not None:
            self.transport.on_envelope = self._on_envelope
            self.proxy.siblings = plan.siblings()
            self.proxy.worker_ports = plan.all_ports()
            self.proxy.relay = self._relay

    async def start(self) -> None:
        specs = self.settings.sip.listen
        own: list[Listen] = []
        if self.plan is not None:
            ports = self.plan.own_ports
            own = [Listen(s.transport, s.host, ports[j]) for j, s in enumerate(specs)]
        await self.transport.start(
            [Listen(spec.transport, spec.host, spec.port) for spec in specs],
            reuse_port=self.plan is not None,
            own=own,
        )
        for spec in self.transport.listening:
            log.info(
                "sip listening",
                extra={"transport": spec.transport, "host": spec.host, "port": spec.port},
            )

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        await self.transport.close()

    def run(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` (something that may send requests or arm timers: click-to-dial,
        the prober) from outside a received message, then re-arm the timer."""
        try:
            return fn()
        finally:
            self._arm()

    # -- worker processes (transport/relay.py) ------------------------------------------
    def _relay(self, worker: int, data: bytes, source: Source) -> None:
        """Hand a datagram to the sibling worker it belongs to, at that worker's port."""
        assert self.plan is not None
        spec_index = self._udp_spec(source.local[0])
        if spec_index is None:
            return
        packet = wrap(self.plan.secret, source, data)
        host = self.settings.sip.listen[spec_index].host
        self.transport.send_envelope(packet, host, self.plan.ports[worker][spec_index])

    def send_stats(self, stats: dict[str, object], worker: int = 0) -> None:
        """This worker's counters, to worker 0 (which answers /metrics for all); or,
        from worker 0, its node's trunk health to a sibling (runtime/shared_health.py)."""
        assert self.plan is not None
        spec_index = self._udp_spec(None)
        if spec_index is None:
            return
        host = self.settings.sip.listen[spec_index].host
        packet = seal_stats(self.plan.secret, stats)
        self.transport.send_envelope(packet, host, self.plan.ports[worker][spec_index])

    def _udp_spec(self, local_host: str | None) -> int | None:
        """The first UDP listen entry (of the family of ``local_host``, if given)."""
        version = ip_version(local_host) if local_host else None
        fallback: int | None = None
        for index, spec in enumerate(self.settings.sip.listen):
            if spec.transport != "udp":
                continue
            if fallback is None:
                fallback = index
            if version is None or (ip_version(spec.host) or 4) == version:
                return index
        return fallback

    def _on_envelope(self, packet: bytes) -> None:
        assert self.plan is not None
        if packet.startswith(STATS):
            stats = open_stats(self.plan.secret, packet)
            index = stats.get("worker") if stats is not None else None
            if stats is not None and isinstance(index, int) and self.on_stats is not None:
                self.on_stats(index, stats)
            return
        opened = unwrap(self.plan.secret, packet)
        if opened is None:
            self.counters.transport["bad_envelope"] += 1
            return
        source, data = opened
        self._on_message(data, source)

    def _on_message(self, data: bytes, source: Source) -> None:
        if not self.flood.admit(source):
            self.counters.transport["flood_dropped"] += 1
            return
        rearm = True
        try:
            rearm = self.proxy.receive(data, source)
        finally:
            if rearm:
                self._arm()

    def rearm(self) -> None:
        """Something outside a received message changed the proxy's timers (an answer
        it waited for came back on the event loop): re-arm the one loop timer."""
        self._arm()

    def _arm(self) -> None:
        deadline = self.proxy.next_deadline()
        if deadline is None:
            return
        if self._timer_at is not None and self._timer_at <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            self.proxy.fire_timers(self.loop.time())
        except Exception:
            log.exception("timer callback failed")
        finally:
            self._arm()
