"""The HTTP side: health, readiness and metrics (REST and event streams come later).

``/healthz`` says the process is alive; ``/readyz`` says it should get traffic (SIP
listeners up and not draining) and answers 503 otherwise, so a balancer can drain a
node; ``/metrics`` is the Prometheus text format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from gateway import __version__
from gateway.api.auth import auth_router
from gateway.api.metrics import render
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
