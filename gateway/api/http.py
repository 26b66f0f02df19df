"""The HTTP app: health, readiness, metrics, and what a browser needs.

``/healthz`` says the process is alive; ``/readyz`` says it should get traffic (SIP
listeners up and not draining) and answers 503 otherwise, so a balancer can drain a
node; ``/metrics`` is the Prometheus text format.

With a directory and settings it also serves the API of the web client and the client
itself: authentication (auth.py), subscription tickets (tickets.py), ``/v1/me`` and the
call history (me.py), and ``/``, ``/embed`` and ``/static`` (web.py); every response
gets the security headers (headers.py) and, where a tenant lists origins, CORS
(cors.py). The event routes, click-to-dial and contacts are added by the gateway
(gateway/app.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from starlette.routing import NoMatchFound

from gateway import __version__
from gateway.api.auth import auth_router
from gateway.api.cors import CorsMiddleware
from gateway.api.headers import SecurityHeadersMiddleware
from gateway.api.history import StreamReader
from gateway.api.me import me_router
from gateway.api.metrics import render
from gateway.api.second_factor import second_factor_router
from gateway.api.tickets import tickets_router
from gateway.api.web import web_router
from gateway.config import Settings
from gateway.security.directory import Directory


@dataclass
class Readiness:
    sip_listening: Callable[[], bool]
    draining: Callable[[], bool]


def create_app(
    registry: CollectorRegistry,
    readiness: Readiness,
    node: str,
    directory: Directory | None = None,
    settings: Settings | None = None,
    bus: Callable[[], StreamReader] | None = None,
) -> FastAPI:
    app = FastAPI(
        title="sipgw",
        version=__version__,
        description="SIP/telephony event gateway for CTI",
        docs_url="/docs",
        redoc_url=None,
    )

    if directory is not None:
        app.state.directory = directory  # require_principal() finds it here
        app.include_router(auth_router(directory))
        app.include_router(second_factor_router(directory))
        app.include_router(tickets_router(directory))
        if settings is not None and bus is not None:
            app.include_router(me_router(directory, settings, bus))
    if settings is not None:
        app.include_router(web_router(settings))
        _allow_listed_origins(app, settings)
    # Added last, so outermost: preflights answered by CORS get the headers too.
    app.add_middleware(SecurityHeadersMiddleware)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]

    @app.get("/healthz", tags=["operations"], summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "node": node, "version": __version__}

    @app.get("/readyz", tags=["operations"], summary="Readiness for traffic")
    async def readyz() -> JSONResponse:
        checks = {
            "sip_listening": readiness.sip_listening(),
            "accepting_calls": not readiness.draining(),
        }
        ready = all(checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(render(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _allow_listed_origins(app: FastAPI, settings: Settings) -> None:
    """CORS (cors.py), only when some tenant lists an origin."""
    every_origin = frozenset(o for t in settings.tenants for o in t.cors_origins)
    if not every_origin:
        return

    def origins_of(tenant: str) -> tuple[str, ...]:
        found = settings.tenant_by_id(tenant)
        return found.cors_origins if found is not None else ()

    app.add_middleware(CorsMiddleware, origins_of=origins_of, every_origin=every_origin)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, plus the WebSocket route it leaves out (OpenAPI has no
    WebSocket operation: described as the GET that upgrades)."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        with contextlib.suppress(NoMatchFound):  # the gateway adds the events routes
            path = app.url_path_for("websocket_events")
            schema["paths"].setdefault(path, {})["get"] = EVENTS_WEBSOCKET_OPERATION
        app.openapi_schema = schema
    return app.openapi_schema


def _query(name: str, description: str, *, repeat: bool = False) -> dict[str, Any]:
    item = {"type": "string"}
    schema: dict[str, Any] = {"type": "array", "items": item} if repeat else item
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}  # fmt: skip


EVENTS_WEBSOCKET_OPERATION: dict[str, Any] = {
    "tags": ["events"],
    "summary": "Live call events over WebSocket (an upgrade, not a plain GET)",
    "description": (
        "Upgrade to a WebSocket (RFC 6455). Subprotocols: `sipgw.json.v1` (JSON text "
        "frames, the default), `sipgw.msgpack.v1` (binary frames) or `sipgw.v1` (JSON) "
        "offered with `sipgw.bearer.<token>` by a browser that has no ticket. Credentials: "
        "one of the `Authorization: Bearer` header, `?ticket=` (POST /v1/events/ticket) or "
        "the `sipgw.bearer.<token>` subprotocol. Frames: the events of docs/events.md and "
        "the `sipgw.*` control messages of docs/api.md."
    ),
    "parameters": [
        _query("ticket", "From POST /v1/events/ticket: single use, 30 s"),
        _query("since", "Replay every event after this seq, then continue live"),
        _query("extension", "Only these extensions' calls", repeat=True),
        _query("type", "Only these event types", repeat=True),
        _query("types", "Event types, comma-separated"),
    ],
    "responses": {
        "101": {"description": "Switching Protocols: the subscription is open"},
        "400": {"description": "`since` malformed; an unknown subprotocol; two credentials"},
        "401": {"description": "No token, an invalid or expired one, or a bad ticket"},
        "403": {"description": "A sync token; an extension this token may not see"},
        "429": {"description": "Too many subscribers for this tenant on this node"},
    },
    "security": [{"bearer": []}, {}],
}
