"""Wiring and lifecycle: build the parts, start them, drain, stop.

The only module that knows every part. One asyncio loop (uvloop) runs the SIP
transports, the proxy's timers and the HTTP server together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from gateway import native
from gateway.api.calls import calls_router
from gateway.api.contacts import contacts_router
from gateway.api.events import Subscribers, events_router
from gateway.api.http import Readiness, create_app
from gateway.api.metrics import GatewayCollector, Gauges, make_registry
from gateway.api.webhooks import webhooks_router
from gateway.api.ws_protocol import EventsWebSocketProtocol
from gateway.blf.lines import Lines
from gateway.blf.notifier import Notifier
from gateway.bus.streams import EventBus
from gateway.calls.events import CallEvent, Peer, rfc3339
from gateway.calls.hep import HepPacket
from gateway.calls.monitor import Monitor
from gateway.calls.tracker import CallTracker
from gateway.config import MonitorSource, Settings
from gateway.dial.originate import DialRequest, Originator
from gateway.dial.user_agent import UserAgent
from gateway.enrichment import Enricher
from gateway.gc_pauses import GcPauses, collect_young, gc_auto, tune_gc
from gateway.proxy.observe import Observed
from gateway.proxy.prober import OptionsProber, PeerChange
from gateway.proxy.trunk_health import HealthView
from gateway.recognition import numbers
from gateway.recognition.cache import ContactCache
from gateway.recognition.index import ContactIndex
from gateway.recognition.lookup import Recognizer
from gateway.runtime.blf_feed import BlfFeed
from gateway.runtime.caller_names import CallerNames
from gateway.runtime.hep_listener import HepIntake
from gateway.runtime.redis_topology import RedisTopology
from gateway.runtime.shared_dials import SharedDials
from gateway.runtime.shared_health import SharedHealth
from gateway.runtime.shared_location import SharedLocation
from gateway.runtime.sip_server import ProxyServer
from gateway.security.directory import Directory
from gateway.sip.message import Request, Response
from gateway.sip.uri import URI
from gateway.stats import Counters
from gateway.transport import tls
from gateway.transport.relay import WorkerPlan
from gateway.webhooks.destinations import WebhookDestinations
from gateway.webhooks.dispatcher import Dispatcher
from gateway.webhooks.metrics import WebhookCollector
from gateway.webhooks.store import WebhookStore

log = logging.getLogger("sipgw.app")

DEFAULT_STATE_DIR = Path("run")


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the gateway owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Gateway:
    def __init__(
        self,
        settings: Settings,
        *,
        state_dir: Path = DEFAULT_STATE_DIR,
        plan: WorkerPlan | None = None,
    ) -> None:
        self.settings = settings
        self.state_dir = state_dir
        # One of several worker processes (supervisor.py): all serve SIP; worker 0 also
        # serves HTTP, probes trunks and takes HEP, and sums every worker's counters.
        self.plan = plan
        self.serves_http = plan is None or plan.index == 0
        self._worker_stats: dict[int, dict[str, object]] = {}
        self.counters = Counters()
        self.gc_pauses = GcPauses(self.counters)
        self._extensions = {t.id: frozenset(u.extension for u in t.users) for t in settings.tenants}
        self.tracker = CallTracker(settings.node.name, e164=self._e164_of)
        self.monitor = Monitor(self.tracker, self.counters.hep_dropped)
        events = settings.events
        # Neither the bus nor the directory waits for Redis at start: calls flow without
        # it, events are buffered (bounded) and logins answer 503 until it is back.
        self.bus = EventBus(
            settings.redis,
            counters=self.counters,
            max_queue=events.max_queue,
            max_buffer=events.max_buffer,
            stream_maxlen=events.stream_maxlen,
            stream_max_age=events.max_age,
            live_maxsize=events.subscriber_queue,
            # Retention by age on a timer, once per node: on the worker that serves HTTP.
            trim_interval=events.trim_interval if self.serves_http else None,
        )
        self.directory = Directory(settings.redis, settings)
        recognition = settings.recognition
        self.contacts = ContactIndex(settings.redis)
        self.contact_cache = ContactCache(
            recognition.cache_size, recognition.cache_ttl, recognition.negative_ttl
        )
        self.recognizer = Recognizer(self.contacts, self.contact_cache, self.counters)
        self.enricher = Enricher(settings, self.recognizer, self._publish)
        self.caller_names: CallerNames | None = None
        self.sip: ProxyServer | None = None
        self.location: SharedLocation | None = None
        self.originator: Originator | None = None  # click-to-dial, once SIP is up
        self.dials: SharedDials | None = None  # the dial requests of every node
        self.hep: HepIntake | None = None
        self.prober: OptionsProber | None = None
        self.blf: BlfFeed | None = None  # the busy lamp field's call events
        self.trunk_health: SharedHealth | None = None  # every node's probes, merged
        # The nodes a Redis Cluster or Sentinel names, refused as SIP destinations.
        self.redis_topology: RedisTopology | None = None
        self.http: _EmbeddedUvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._background: list[asyncio.Task[None]] = []
        self.subscribers: Subscribers | None = None
        self.webhook_store: WebhookStore | None = None
        self.webhooks: Dispatcher | None = None  # deliveries, on the worker serving HTTP
        self._stopped = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._drain_at_start = False

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        server_ssl, client_ssl = self._tls_contexts()
        await self.bus.start()
        if self.serves_http:  # one seeding (and one audit line per user) is enough
            self._background.append(asyncio.create_task(self.directory.seed_when_available()))
        self._background.append(
            asyncio.create_task(self.contacts.follow_invalidations(self.contact_cache))
        )
        # Registrations live in Redis, copied in memory: every worker (and node) reaches
        # every phone, and a restart keeps them (docs/workers.md).
        self.location = SharedLocation()
        origin = f"{self.settings.node.name}/{self.plan.index if self.plan else 0}/{os.getpid()}"
        self._background.append(asyncio.create_task(self.location.run(self.settings.redis, origin)))
        self.sip = ProxyServer(
            self.settings,
            self.counters,
            server_ssl=server_ssl,
            client_ssl=client_ssl,
            observer=self._observe,
            plan=self.plan,
            on_stats=self._on_worker_stats,
            location=self.location,
        )
        if self.settings.redis.mode != "standalone":
            # Every process: each sends SIP (runtime/redis_topology.py).
            self.redis_topology = RedisTopology(
                self.settings.redis, worker=self.plan.index if self.plan else 0
            )
            self.redis_topology.feed(self.sip.proxy.destinations)
            self._background.append(asyncio.create_task(self.redis_topology.run()))
        await self.sip.start()
        if any(tenant.caller_display.enabled for tenant in self.settings.tenants):
            # The recognized caller's name on the callee's phone (runtime/caller_names.py).
            self.caller_names = CallerNames(
                self.settings, self.sip.proxy, self.recognizer, self._e164_of,
                rearm=self.sip.rearm,
            )  # fmt: skip
            self.sip.proxy.caller_names = self.caller_names
        self.originator = Originator(
            self.sip.proxy,
            UserAgent(self.sip.proxy),
            self.tracker,
            self._emit,
            self.settings.dial,
            self.settings.node.name,
            counts=self.counters.dial_requests,
        )
        if self.serves_http:
            # Dial requests in Redis: any node reads them, and relays a DELETE to the
            # node that placed the call (runtime/shared_dials.py).
            self.dials = SharedDials(self.settings.node.name, self.settings.dial.keep_finished)
            self.dials.serve(self.originator, self.sip.run)
            self.originator.on_change = self.dials.changed
            self._background.append(asyncio.create_task(self.dials.run(self.settings.redis)))
        if self.settings.blf.enabled:
            self._start_blf()
        # OPTIONS health probes of the trunks: routing skips a trunk that is down, and a
        # change becomes a peer.down/peer.up event of the trunk's tenant.
        if self.serves_http:
            self.prober = OptionsProber(
                self.sip.proxy, on_change=self._peer_changed, run=self.sip.run
            )
            self.sip.run(self.prober.start)
            await self._start_hep()
        self._start_trunk_health()
        self._background.append(asyncio.create_task(self._expire_calls()))
        if self.serves_http:
            await self._start_http()
        else:
            self._background.append(asyncio.create_task(self._report_stats()))
        log.info(
            "gateway started",
            extra={"node": self.settings.node.name, "sip_core": native.status().describe()},
        )
        tune_gc()
        self._background.append(asyncio.create_task(collect_young()))
        # Timed from here: the one full collection of the startup heap above is not a
        # pause of the running gateway.
        self.gc_pauses.install()

    def _start_blf(self) -> None:
        """The gateway as dialog-event notifier of its extensions (gateway/blf), fed
        with the call events of every worker and node from the bus."""
        assert self.sip is not None
        self.blf = BlfFeed(self.bus, catch_up=self.settings.blf.catch_up)
        self.blf.run = self.sip.run
        notifier = Notifier(
            self.sip.proxy,
            self.settings.blf,
            Lines(self.settings),
            watch=self.blf.watch,
            run=self.sip.run,
        )
        self.blf.notifier = notifier
        self.sip.proxy.notifier = notifier

    # -- trunk health of every worker and node (runtime/shared_health.py) ----------------
    def _start_trunk_health(self) -> None:
        """Routing in every worker reads the merged view of every node's probes: this
        node's prober (here on worker 0, by envelope elsewhere) and the others' (Redis)."""
        assert self.sip is not None
        proxy = self.sip.proxy
        view = HealthView(self.settings.node.name, clock=proxy.clock)
        self.trunk_health = SharedHealth(
            view,
            prober=self.prober,
            to_siblings=self._trunks_to_siblings if self.plan is not None else None,
            log_flips=self.serves_http,
        )
        proxy.directory.health = view
        self._background.append(asyncio.create_task(self.trunk_health.run(self.settings.redis)))

    def _trunks_to_siblings(self, report: list[Any]) -> None:
        assert self.sip is not None and self.plan is not None
        message = {"worker": self.plan.index, "at": time.time(), "trunks": report}
        for index in range(1, self.plan.count):
            self.sip.send_stats(message, worker=index)

    def _extensions_of(self, tenant: str) -> frozenset[str] | None:
        found = self.settings.tenant_by_id(tenant)
        return frozenset(u.extension for u in found.users) if found is not None else None

    # -- call events ---------------------------------------------------------------------
    def _observe(self, msg: Request | Response, info: Observed) -> None:
        """Proxy → tracker → bus, synchronously and without waiting on anything."""
        self._emit(self.tracker.observe(msg, info))

    def _emit(self, events: list[CallEvent]) -> None:
        for event in events:
            self.enricher.submit(event)

    def _peer_changed(self, change: PeerChange) -> None:
        """A trunk went down or came back: an event of the trunk's tenant."""
        kind = "peer.up" if change.up else "peer.down"
        peer = Peer(change.peer, address=change.address, reason=change.reason)
        node = self.settings.node.name
        self._emit([CallEvent(kind, rfc3339(time.time()), node, change.tenant, peer=peer)])
        if self.trunk_health is not None:
            self.trunk_health.prober_changed()

    def _publish(self, event: CallEvent) -> None:
        # Counted here, after enrichment, so /metrics and the stream see the same events;
        # the outcome and dialog counts of /metrics come from the same place.
        cause = event.cause
        self.counters.event_emitted(event.type, cause.normalized if cause else None)
        self.bus.publish(event)

    def _e164_of(self, tenant: str, uri: URI, region: str | None) -> str | None:
        """A party's number in E.164, read with the peer's region or else the tenant's."""
        found = self.settings.tenant_by_id(tenant)
        if found is None:
            return None
        extensions = self._extensions.get(tenant, frozenset())
        return numbers.from_uri(uri, region or found.region, extensions=extensions).e164

    async def _expire_calls(self) -> None:
        # Calls that never got their last message (setup or session timeouts) end here.
        while True:
            await asyncio.sleep(1.0)
            try:
                self._emit(self.tracker.expire(time.time()))
            except Exception:
                log.exception("call expiry failed")

    async def _start_hep(self) -> None:
        monitor = self.settings.monitor
        if monitor.hep_listen is None:
            return
        self.hep = HepIntake(
            self._on_hep, monitor, self.counters.hep, dropped=self.counters.hep_dropped
        )
        await self.hep.start(monitor.hep_listen.host, monitor.hep_listen.port)
        log.info(
            "hep intake listening",
            extra={"host": monitor.hep_listen.host, "port": monitor.hep_listen.port},
        )

    def _on_hep(self, payload: bytes, packet: HepPacket, source: MonitorSource) -> None:
        # The listener checked the sender (address, auth key): `source` is who sent it.
        self._emit(self.monitor.observe(payload, packet, source))

    async def _start_http(self) -> None:
        sip = self.sip
        assert sip is not None
        proxy = sip.proxy
        gauges = Gauges(
            server_transactions=self._summed(
                "server_transactions", lambda: proxy.active_transactions[0]
            ),
            client_transactions=self._summed(
                "client_transactions", lambda: proxy.active_transactions[1]
            ),
            registered_contacts=lambda: proxy.location.count(proxy.clock()),
            stream_connections=self._summed(
                "stream_connections", lambda: sip.transport.connection_count
            ),
            draining=lambda: proxy.draining,
            active_calls=self._summed("active_calls", lambda: self.tracker.active_calls),
            subscribers=lambda: self.subscribers.total if self.subscribers else 0,
            queue_depths=self.bus.hub.queue_depths,
            bus=self.bus,
            contact_cache=self.contact_cache,
            peers=lambda: self.prober.peers if self.prober is not None else (),
            trunk_health=self.trunk_health.view if self.trunk_health is not None else None,
            peers_down=self._peers_down,
            dial_active=self._summed(
                "dial_active", lambda: self.originator.active if self.originator else 0
            ),
            blf_subscriptions=self._summed("blf_subscriptions", self._blf_subscriptions),
        )
        registry = make_registry(
            GatewayCollector(
                self.counters,
                gauges,
                self.settings.node.name,
                workers=self._siblings if self.plan is not None else None,
            )
        )
        readiness = Readiness(
            sip_listening=lambda: bool(sip.transport.listening),
            draining=lambda: proxy.draining,
        )
        app = create_app(
            registry, readiness, self.settings.node.name, directory=self.directory,
            settings=self.settings, bus=lambda: self.bus,
        )  # fmt: skip
        router, self.subscribers = events_router(
            lambda: self.bus, lambda: self.directory, self.settings.events, self._extensions_of
        )
        app.include_router(router)
        app.include_router(
            calls_router(
                lambda: self.originator, self._run_sip, self.directory, self.settings,
                self.recognizer, self.dials,
            )
        )  # fmt: skip
        app.include_router(
            contacts_router(
                lambda: self.contacts, lambda: self.bus, self.directory, self.settings,
                self.counters,
            )
        )  # fmt: skip
        self._start_webhooks(app, registry)
        host, port = self.settings.http.host, self.settings.http.port
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            lifespan="off",
            access_log=False,
            server_header=False,
            # uvicorn's sans-I/O websockets protocol (the legacy one is deprecated; since
            # 0.55 this one refuses a handshake with its real HTTP status and body, not
            # as an application error), opened up so /v1/events writes each event's
            # frame, built once, straight to every subscriber's transport
            # (gateway/api/ws_protocol.py); frames are small: subscribers only ping.
            ws=EventsWebSocketProtocol,
            ws_max_size=64 * 1024,
            # No permessage-deflate: an event is encoded once and the same bytes go to
            # every subscriber; compressing per subscriber costs CPU per event and
            # ~100 KiB of zlib state per connection (measured by bench fan-out).
            ws_per_message_deflate=False,
            # HTTPS/WSS: the one server context of the gateway (transport/tls.py), with
            # http.tls_min_version as its floor and the same strong suites as SIP.
            ssl_context_factory=self._https_context if self.settings.http.tls_cert else None,
        )
        self.http = _EmbeddedUvicorn(config)
        self._http_task = asyncio.create_task(self.http.serve())
        while not self.http.started:
            if self._http_task.done():
                self._http_task.result()  # re-raise: port in use and the like
                raise RuntimeError("HTTP server stopped during start-up")
            await asyncio.sleep(0.01)

    def _start_webhooks(self, app: FastAPI, registry: CollectorRegistry) -> None:
        """Webhook subscriptions over the API, and their deliveries from this worker (the
        one serving HTTP: one dispatcher per node; nodes share by lease, docs/events.md)."""
        assert self.sip is not None
        hooks = self.settings.webhooks
        destinations = WebhookDestinations(
            self.settings, sip_ports=self.sip.proxy.destinations.sip_ports
        )
        if self.redis_topology is not None:
            self.redis_topology.feed(destinations.policy)
        store = self.webhook_store = WebhookStore(self.settings.redis)
        if hooks.enabled:
            self.webhooks = Dispatcher(
                store, self.bus, hooks, destinations, node=self.settings.node.name,
                publish=self._publish, queue_size=self.settings.events.subscriber_queue,
            )  # fmt: skip
            self._background.append(asyncio.create_task(self.webhooks.run()))
            registry.register(WebhookCollector(self.webhooks))
        poke = self.webhooks.poke if self.webhooks is not None else lambda: None
        app.include_router(
            webhooks_router(store, self.directory, self.settings, destinations, poke)
        )  # fmt: skip

    def _https_context(
        self, _config: uvicorn.Config, _default: Callable[[], Any]
    ) -> ssl.SSLContext:
        http = self.settings.http
        assert http.tls_cert is not None and http.tls_key is not None
        return tls.server_context(
            http.tls_cert, http.tls_key,
            min_version=http.tls_min_version, ciphers=self.settings.sip.tls_ciphers,
        )  # fmt: skip

    # -- worker processes ------------------------------------------------------------
    async def _report_stats(self) -> None:
        """A worker other than 0: send its counters to worker 0 every second."""
        assert self.sip is not None and self.plan is not None
        proxy = self.sip.proxy
        while True:
            server, client = proxy.active_transactions
            self.sip.send_stats(
                {
                    "worker": self.plan.index,
                    "at": time.time(),
                    "counters": self.counters.snapshot(),
                    "gauges": {
                        "server_transactions": server,
                        "client_transactions": client,
                        "stream_connections": self.sip.transport.connection_count,
                        "active_calls": self.tracker.active_calls,
                        "dial_active": self.originator.active if self.originator else 0,
                        "peers_down": self._peers_down(),
                        "blf_subscriptions": self._blf_subscriptions(),
                    },
                }
            )
            await asyncio.sleep(1.0)

    def _on_worker_stats(self, index: int, stats: dict[str, object]) -> None:
        if self.plan is not None and self.plan.index == 0 and 0 < index < self.plan.count:
            self._worker_stats[index] = stats
        elif index == 0 and "trunks" in stats and self.trunk_health is not None:
            self.trunk_health.from_sibling(stats["trunks"])  # worker 0's probes

    def _siblings(self) -> dict[int, dict[str, Any]]:
        """The latest counters of each sibling that reported in the last 5 seconds."""
        now = time.time()
        fresh: dict[int, dict[str, Any]] = {}
        for index, stats in self._worker_stats.items():
            at = stats.get("at")
            if isinstance(at, int | float) and now - at < 5.0:
                fresh[index] = stats
        return fresh

    def _summed(self, name: str, own: Callable[[], int]) -> Callable[[], int]:
        """A gauge of this process plus the same gauge of every sibling worker."""
        if self.plan is None:
            return own

        def total() -> int:
            others = 0
            for stats in self._siblings().values():
                gauges = stats.get("gauges")
                value = gauges.get(name, 0) if isinstance(gauges, dict) else 0
                others += value if isinstance(value, int) else 0
            return own() + others

        return total

    def _blf_subscriptions(self) -> int:
        notifier = self.blf.notifier if self.blf is not None else None
        return len(notifier.table) if notifier is not None else 0

    def _peers_down(self) -> int:
        """Trunks this worker's routing skips (sipgw_worker_peers_down)."""
        return len(self.trunk_health.view.down_trunks()) if self.trunk_health is not None else 0

    def _run_sip(self, action: Callable[[], DialRequest]) -> DialRequest:
        """Run click-to-dial work in the SIP core (it may send, and arm timers)."""
        assert self.sip is not None
        return self.sip.run(action)

    @property
    def http_port(self) -> int:
        assert self.http is not None
        sock = self.http.servers[0].sockets[0]
        return int(sock.getsockname()[1])

    async def drain(self, timeout: float = 30.0) -> None:
        """Refuse new calls (503 + Retry-After), let requests in flight get their answer.

        Established calls need no gateway state (the proxy is transaction-stateful), so
        once every pending request is answered the process may stop.
        """
        assert self.sip is not None
        proxy = self.sip.proxy
        proxy.start_draining()
        log.info("draining", extra={"timeout": timeout})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # Polled: requests end inside the proxy's synchronous code, which has no
        # business signalling the lifecycle layer.
        while proxy.pending_requests and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        self.gc_pauses.remove()
        gc_auto()
        if self.http is not None:
            self.http.should_exit = True
        if self._http_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._http_task
        if self.prober is not None:
            self.prober.stop()
        if self.blf is not None:
            notifier = self.blf.notifier
            if self.sip is not None and notifier is not None:
                self.sip.run(notifier.deactivate)  # the watchers subscribe again elsewhere
            await self.blf.close()
        if self.trunk_health is not None:
            await self.trunk_health.stop()
        if self.sip is not None:
            await self.sip.stop()
        if self.location is not None:
            await self.location.stop()
        if self.hep is not None:
            self.hep.close()
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.enricher.close()
        if self.caller_names is not None:
            await self.caller_names.close()
        if self.webhook_store is not None:
            await self.webhook_store.close()
        await self.bus.stop()
        await self.directory.stop()
        await self.contacts.close()
        self._stopped.set()
        log.info("gateway stopped")

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: drain, then stop. SIGUSR1: drain and keep running.

        Installed before start(): /readyz answers as soon as HTTP is up, and a signal
        that arrives then must find its handler, not the default action (exit).
        SIGUSR1 is for a balancer's pre-stop hook: /readyz turns 503 and new calls get
        503 + Retry-After while calls in progress carry on, until SIGTERM arrives.
        """
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop_requested.set)
        loop.add_signal_handler(signal.SIGUSR1, self._drain_requested)

    def _drain_requested(self) -> None:
        if self.sip is not None:
            self.sip.proxy.start_draining()
        else:
            self._drain_at_start = True

    async def run_until_signalled(self, drain_timeout: float = 10.0) -> None:
        if self._drain_at_start and self.sip is not None:
            self.sip.proxy.start_draining()
        await self._stop_requested.wait()
        await self.drain(drain_timeout)
        await self.stop()

    # -- pieces --------------------------------------------------------------------------
    def _tls_contexts(self) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
        sip = self.settings.sip
        wants_tls = any(spec.transport == "tls" for spec in sip.listen)
        cert, key = sip.tls_cert, sip.tls_key
        if wants_tls and cert is None:
            names = [sip.advertise or spec.host for spec in sip.listen if spec.transport == "tls"]
            cert, key = tls.ensure_self_signed(self.state_dir / "tls", names)
            log.warning("using a self-signed TLS certificate", extra={"cert": str(cert)})
        server_ssl = None
        if cert is not None and key is not None:
            server_ssl = tls.server_context(
                cert, key, min_version=sip.tls_min_version, ciphers=sip.tls_ciphers
            )
        client_ssl = tls.client_context(
            verify=getattr(sip, "tls_verify_peers", True),
            min_version=sip.tls_min_version,
            ciphers=sip.tls_ciphers,
        )
        return server_ssl, client_ssl


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep running without it
        log.warning("uvloop not available, using the default asyncio loop")
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
