"""Webhook subscriptions of a tenant (admins; docs/api.md "Webhooks").

    POST   /v1/webhooks               make one: {url, types?, extensions?, description?};
                                      the answer holds its secret, shown this once
    GET    /v1/webhooks               the tenant's, with each one's delivery state
    GET    /v1/webhooks/{id}          one of them
    DELETE /v1/webhooks/{id}          delete it (deliveries stop within a refresh)
    POST   /v1/webhooks/{id}:enable   deliver again after it was disabled, from the
                                      first event it did not get, or {"from": "now"}

The tenant is always the token's; another tenant's webhook ids answer 404 like unknown
ones. Every change is audited (without the secret or the URL's query).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from gateway.api.auth import client_address, require_principal
from gateway.api.bodies import Refused, read_json
from gateway.config import Settings
from gateway.security.directory import Directory
from gateway.security.principal import Principal
from gateway.webhooks import signing
from gateway.webhooks.destinations import WebhookDestinations
from gateway.webhooks.store import LimitReached, StoreUnavailable, WebhookStore
from gateway.webhooks.subscriptions import (
    Invalid,
    Subscription,
    check_description,
    check_extensions,
    check_types,
    check_url,
    is_id,
    new_id,
)

MAX_BODY = 16 * 1024
_FIELDS = ("url", "types", "extensions", "description")

CREATE_EXAMPLE = {
    "url": "https://crm.acme.example/sipgw/events",
    "types": ["call.offered", "call.cleared"],
    "extensions": ["201", "202"],
    "description": "CRM call log",
}


async def _json_object(request: Request, *, optional: bool = False) -> dict[str, Any]:
    data = await read_json(request, MAX_BODY, empty={} if optional else ...)
    if not isinstance(data, dict):
        raise Refused(422, "body: must be a JSON object")
    return data


def shown(sub: Subscription, state: dict[str, str]) -> dict[str, Any]:
    """A webhook as the API (and the CLI) shows it: never its secret."""
    lease = state.get("lease", "")
    return {
        **sub.public(),
        "delivered_through": state.get("cursor"),
        "delivered": int(state.get("delivered", 0)),
        "failing_since": float(state["failing_since"]) if "failing_since" in state else None,
        "dead_letters": int(state.get("dead_letters", 0)),
        # "<node>/<pid>/<random>|<until>": the node delivering it, for an operator.
        "delivering_node": lease.split("/", 1)[0] if lease else None,
    }


def webhooks_router(
    store: WebhookStore,
    directory: Directory,
    settings: Settings,
    destinations: WebhookDestinations,
    changed: Callable[[], None],
) -> APIRouter:
    router = APIRouter(tags=["webhooks"])
    admin = require_principal(roles=("admin",), directory=directory)
    hooks = settings.webhooks

    async def audit(
        request: Request, principal: Principal, event: str, ref: str, detail: str
    ) -> None:
        await directory.audit.record(
            principal.tenant, event, "ok", user=principal.user or "", ref=ref,
            source=client_address(request, directory.security), detail=detail,
        )  # fmt: skip

    def known_extensions(tenant: str) -> frozenset[str] | None:
        found = settings.tenant_by_id(tenant)
        return None if found is None else frozenset(u.extension for u in found.users)

    @router.post(
        "/v1/webhooks",
        status_code=201,
        summary="Make a webhook (its secret is in this answer only)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"example": CREATE_EXAMPLE}},
            }
        },
        responses={
            403: {"description": "Not an admin"},
            409: {"description": "The tenant has [webhooks] max_per_tenant webhooks already"},
            422: {"description": "A field is invalid (an address webhooks may not reach…)"},
            503: {"description": "Redis unavailable; retry"},
        },
    )
    async def create(request: Request, principal: Principal = Depends(admin)) -> JSONResponse:  # noqa: B008
        try:
            data = await _json_object(request)
            unknown = sorted(set(data) - set(_FIELDS))
            if unknown:
                raise Invalid(f"{unknown[0]}: unknown field (expected {', '.join(_FIELDS)})")
            sub = Subscription(
                id=new_id(),
                tenant=principal.tenant,
                url=check_url(
                    data.get("url"),
                    allow_loopback=hooks.allow_loopback,
                    refusal=destinations.refusal,
                ),
                secret=signing.new_secret(),
                types=check_types(data.get("types")),
                extensions=check_extensions(
                    data.get("extensions"), known_extensions(principal.tenant)
                ),
                description=check_description(data.get("description")),
                created_at=_now(),
                created_by=principal.user or "",
            )
            await store.create(sub, hooks.max_per_tenant)
        except Refused as refused:
            return refused.response()
        except Invalid as bad:
            return Refused(422, str(bad)).response()
        except LimitReached as full:
            return Refused(409, str(full)).response()
        except StoreUnavailable:
            return Refused(503, "Redis unavailable; retry").response()
        changed()
        await audit(request, principal, "webhook.create", sub.id, f"host={_host_of(sub.url)}")
        state = {"cursor": await _cursor_or_none(store, sub)}
        body = {**shown(sub, {k: v for k, v in state.items() if v is not None}),
                "secret": sub.secret}  # fmt: skip
        return JSONResponse(body, status_code=201, headers={"Cache-Control": "no-store"})

    @router.get("/v1/webhooks", summary="The tenant's webhooks and their delivery state")
    async def listing(principal: Principal = Depends(admin)) -> JSONResponse:  # noqa: B008
        try:
            found = await store.all(principal.tenant)
            rows = [shown(s, await store.state(s.tenant, s.id)) for s in found]
        except StoreUnavailable:
            return Refused(503, "Redis unavailable; retry").response()
        return JSONResponse({"webhooks": rows})

    async def one(principal: Principal, sub_id: str) -> Subscription:
        sub = await store.get(principal.tenant, sub_id) if is_id(sub_id) else None
        if sub is None:
            raise Refused(404, "no such webhook")
        return sub

    @router.get("/v1/webhooks/{sub_id}", summary="One webhook and its delivery state")
    async def get(sub_id: str, principal: Principal = Depends(admin)) -> JSONResponse:  # noqa: B008
        try:
            sub = await one(principal, sub_id)
            return JSONResponse(shown(sub, await store.state(sub.tenant, sub.id)))
        except Refused as refused:
            return refused.response()
        except StoreUnavailable:
            return Refused(503, "Redis unavailable; retry").response()

    @router.delete("/v1/webhooks/{sub_id}", status_code=204, summary="Delete a webhook")
    async def delete(
        sub_id: str,
        request: Request,
        principal: Principal = Depends(admin),  # noqa: B008
    ) -> Response:
        try:
            removed = is_id(sub_id) and await store.delete(principal.tenant, sub_id)
        except StoreUnavailable:
            return Refused(503, "Redis unavailable; retry").response()
        if not removed:
            return Refused(404, "no such webhook").response()
        changed()
        await audit(request, principal, "webhook.delete", sub_id, "")
        return Response(status_code=204)

    @router.post(
        "/v1/webhooks/{sub_id}:enable",
        summary="Deliver again to a disabled webhook",
        description=(
            'Body (optional): {"from": "stored"} (default: the first event it did not get) '
            'or {"from": "now"} (skip what it missed; those count as dead letters).'
        ),
    )
    async def enable(
        sub_id: str,
        request: Request,
        principal: Principal = Depends(admin),  # noqa: B008
    ) -> JSONResponse:
        try:
            data = await _json_object(request, optional=True)
            start = data.get("from", "stored")
            if start not in ("stored", "now") or set(data) - {"from"}:
                raise Invalid('from: "stored" or "now"')
            sub = await one(principal, sub_id)
            skipped = 0
            if start == "now":
                skipped = await store.skip_to_now(sub)
            await store.save(sub.enabled_again())
            state = await store.state(sub.tenant, sub.id)
        except Refused as refused:
            return refused.response()
        except Invalid as bad:
            return Refused(422, str(bad)).response()
        except StoreUnavailable:
            return Refused(503, "Redis unavailable; retry").response()
        changed()
        await audit(request, principal, "webhook.enable", sub.id, f"from={start} skipped={skipped}")
        return JSONResponse(shown(sub.enabled_again(), state))

    return router


async def _cursor_or_none(store: WebhookStore, sub: Subscription) -> str | None:
    try:
        return await store.cursor(sub.tenant, sub.id)
    except StoreUnavailable:
        return None


def _host_of(url: str) -> str:
    return urlsplit(url).hostname or ""


def _now() -> float:
    return time.time()
