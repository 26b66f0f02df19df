"""Wiring and lifecycle: build the parts, start them, drain, stop.

The only module that knows every part. One asyncio loop (uvloop) runs the SIP
transports, the proxy's timers and the HTTP server together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from gateway.api.http import Readiness, create_app
from gateway.api.metrics import GatewayCollector, Gauges, make_registry
from gateway.config import Settings
from gateway.proxy.server import ProxyServer
from gateway.stats import Counters
from gateway.transport import tls

log = logging.getLogger("sipgw.app")

DEFAULT_STATE_DIR = Path("run")


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the gateway owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Gateway:
    def __init__(self, settings: Settings, *, state_dir: Path = DEFAULT_STATE_DIR) -> None:
        self.settings = settings
        self.state_dir = state_dir
        self.counters = Counters()
        self.sip: ProxyServer | None = None
        self.http: _EmbeddedUvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        server_ssl, client_ssl = self._tls_contexts()
        self.sip = ProxyServer(
            self.settings, self.counters, server_ssl=server_ssl, client_ssl=client_ssl
        )
        await self.sip.start()
        await self._start_http()
        log.info("gateway started", extra={"node": self.settings.node.name})

    async def _start_http(self) -> None:
        sip = self.sip
        assert sip is not None
        proxy = sip.proxy
        gauges = Gauges(
            server_transactions=lambda: proxy.active_transactions[0],
            client_transactions=lambda: proxy.active_transactions[1],
            registered_contacts=lambda: proxy.location.count(proxy.clock()),
            stream_connections=lambda: sip.transport.connection_count,
            draining=lambda: proxy.draining,
        )
        registry = make_registry(GatewayCollector(self.counters, gauges, self.settings.node.name))
        readiness = Readiness(
            sip_listening=lambda: bool(sip.transport.listening),
            draining=lambda: proxy.draining,
        )
        app = create_app(registry, readiness, self.settings.node.name)
        host, port = self.settings.http.host, self.settings.http.port
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            lifespan="off",
            access_log=False,
            server_header=False,
        )
        self.http = _EmbeddedUvicorn(config)
        self._http_task = asyncio.create_task(self.http.serve())
        while not self.http.started:
            if self._http_task.done():
                self._http_task.result()  # re-raise: port in use and the like
                raise RuntimeError("HTTP server stopped during start-up")
            await asyncio.sleep(0.01)

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
        if self.http is not None:
            self.http.should_exit = True
        if self._http_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._http_task
        if self.sip is not None:
            await self.sip.stop()
        self._stopped.set()
        log.info("gateway stopped")

    async def run_until_signalled(self, drain_timeout: float = 10.0) -> None:
        """SIGTERM/SIGINT: drain, then stop. SIGUSR1: drain and keep running.

        SIGUSR1 is for a balancer's pre-stop hook: /readyz turns 503 and new calls get
        503 + Retry-After while calls in progress carry on, until SIGTERM arrives.
        """
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        assert self.sip is not None
        loop.add_signal_handler(signal.SIGUSR1, self.sip.proxy.start_draining)
        await stop.wait()
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
