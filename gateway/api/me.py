"""What the web client asks about the person signed in: who they are, what they may
see, their settings, and their call history.

    GET /v1/me            the principal, its extensions and the tenant's it may see,
                          its settings and the tenant's screen-pop templates
    PUT /v1/me/settings   change some of its settings ({"auto_open_crm": true})
    GET /v1/history       its call history (gateway/api/history.py), paged

A ``user`` sees its own extension and the ones it watches, an ``admin`` its whole
tenant, exactly as for event subscriptions; ``sync`` tokens belong to no person (403).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from gateway.api.auth import require_principal, rfc3339
from gateway.api.bodies import Refused, read_json
from gateway.api.history import (
    DIRECTIONS,
    MAX_LIMIT,
    OUTCOMES,
    HistoryQuery,
    StreamReader,
    history_page,
    parse_time,
)
from gateway.bus import keys
from gateway.config import Settings, Tenant
from gateway.security.directory import Directory, DirectoryUnavailable
from gateway.security.principal import Principal
from gateway.security.user_settings import UserSettings

MAX_SETTINGS_BODY = 1024  # bytes
MAX_Q = 64  # characters of a history search

ME_EXAMPLE: dict[str, Any] = {
    "tenant": "acme",
    "tenant_name": "Acme",
    "username": "piet",
    "role": "user",
    "extension": "201",
    "extensions": ["201"],
    "sees": "extensions",
    "visible_extensions": ["201", "202"],
    "extension_names": {"201": "Piet", "202": "Reception"},
    "settings": {"auto_open_crm": False},
    "contact_fields": ["name", "company", "crm_id"],
    "screen_pop": {
        "crm": {"when": "hit", "url": "https://crm.example.com/contacts/{contact.crm_id}"}
    },
    "expires_at": "2024-05-01T22:00:00Z",
}
HISTORY_EXAMPLE: dict[str, Any] = {
    "calls": [
        {
            "conversation_id": "018f3398-c4e8-7674-beab-45d858a37224",
            "call_id": "018f3398-c4e8-7674-beab-45d90cdb52bb",
            "direction": "inbound",
            "from": "+31612345678",
            "to": "+31201234567",
            "from_display": "Jan de Vries",
            "to_display": None,
            "extension": "201",
            "contact": {"name": "Jan de Vries", "company": "De Vries BV"},
            "screen_pop": [{"name": "crm", "url": "https://crm.example.com/contacts/C-10442"}],
            "started_at": "2024-05-01T10:00:01.000000Z",
            "answered_at": "2024-05-01T10:00:08.000000Z",
            "ended_at": "2024-05-01T10:03:12.000000Z",
            "duration_s": 184,
            "outcome": "answered",
            "missed": False,
            "cause": "normal",
        }
    ],
    "next_cursor": "1714557792000-0",
}


def natural(extensions: Iterable[str]) -> list[str]:
    """Extensions in dialling order: 99 before 100."""
    return sorted(set(extensions), key=lambda e: (len(e), e))


def _unavailable() -> HTTPException:
    return HTTPException(
        503, "temporarily unavailable, retry shortly", headers={"Retry-After": "5"}
    )


def me_router(
    directory: Directory,
    settings: Settings,
    bus: Callable[[], StreamReader],
) -> APIRouter:
    router = APIRouter(tags=["me"])
    person = require_principal(roles=("admin", "user"), directory=directory)

    def visible_extensions(principal: Principal, tenant: Tenant | None) -> list[str]:
        if principal.is_admin:
            return natural(u.extension for u in tenant.users) if tenant is not None else []
        return natural(principal.extensions)

    async def user_settings(principal: Principal) -> UserSettings:
        try:
            return await directory.user_settings(principal.tenant, principal.user or "")
        except DirectoryUnavailable:
            raise _unavailable() from None

    @router.get(
        "/v1/me",
        summary="Who I am and what I may see",
        responses={
            200: {"content": {"application/json": {"example": ME_EXAMPLE}}},
            401: {"description": "Missing, invalid or expired token"},
            403: {"description": "A sync token (it stands for no person)"},
        },
    )
    async def me(principal: Principal = Depends(person)) -> JSONResponse:  # noqa: B008
        tenant = settings.tenant_by_id(principal.tenant)
        try:
            record = await directory.user(principal.tenant, principal.user or "")
        except DirectoryUnavailable:
            raise _unavailable() from None
        own = record.extension if record is not None else None
        visible = visible_extensions(principal, tenant)
        names = {}
        if tenant is not None:
            for extension in visible:
                user = tenant.user_by_extension(extension)
                if user is not None and user.display_name:
                    names[extension] = user.display_name
        recognition = tenant.recognition if tenant is not None else None
        body = {
            "tenant": principal.tenant,
            "tenant_name": tenant.name if tenant is not None else principal.tenant,
            "username": principal.user,
            "role": principal.role,
            "extension": own,
            "extensions": [] if own is None else [own],
            "sees": "tenant" if principal.is_admin else "extensions",
            "visible_extensions": visible,
            "extension_names": names,
            "settings": (await user_settings(principal)).to_dict(),
            "contact_fields": list(recognition.fields) if recognition is not None else [],
            "screen_pop": {
                pop.name: {"when": pop.when, "url": pop.template.text}
                for pop in (recognition.screen_pop if recognition is not None else ())
            },
            "expires_at": None if principal.expires_at is None else rfc3339(principal.expires_at),
        }
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    @router.put(
        "/v1/me/settings",
        summary="Change my settings",
        description=(
            'A JSON object with the settings to change, e.g. `{"auto_open_crm": true}` '
            "(open an incoming call's screen pop by itself). Answers every setting."
        ),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"auto_open_crm": {"type": "boolean"}},
                        }
                    }
                },
            }
        },
        responses={
            400: {"description": "Body not JSON"},
            413: {"description": "Body over 1 KiB"},
            415: {"description": "Content-Type is not application/json"},
            422: {"description": "An unknown setting or a value of the wrong type"},
        },
    )
    async def put_settings(
        request: Request,
        principal: Principal = Depends(person),  # noqa: B008
    ) -> JSONResponse:
        try:
            update = await read_json(request, MAX_SETTINGS_BODY)
        except Refused as refused:
            return refused.response()
        current = await user_settings(principal)
        try:
            changed = current.changed(update)
        except ValueError as err:
            raise HTTPException(422, str(err)) from None
        try:
            await directory.save_user_settings(principal.tenant, principal.user or "", changed)
        except DirectoryUnavailable:
            raise _unavailable() from None
        return JSONResponse({"settings": changed.to_dict()})

    @router.get(
        "/v1/history",
        summary="My call history, newest first",
        description=(
            "One row per call that ended, built from the tenant's event stream (so as far "
            "back as its retention), newest ending first. Outcomes: "
            + ", ".join(f"`{o}`" for o in OUTCOMES)
            + " (docs/api.md). A page may hold fewer than `limit` rows and still have a "
            "`next_cursor`: go on with `cursor=next_cursor` until it is null."
        ),
        responses={
            200: {"content": {"application/json": {"example": HISTORY_EXAMPLE}}},
            400: {"description": "A malformed parameter (the message names it)"},
            401: {"description": "Missing, invalid or expired token"},
            403: {"description": "An extension this token may not see; a sync token"},
            503: {"description": "Redis unreachable"},
        },
    )
    async def history(
        principal: Principal = Depends(person),  # noqa: B008
        since: str | None = Query(None, description="Calls started at or after (RFC 3339)"),
        until: str | None = Query(None, description="Calls started before (RFC 3339)"),
        extension: list[str] = Query(  # noqa: B008
            default=[], description="Only these extensions' calls (repeatable)"
        ),
        direction: str | None = Query(None, description=" | ".join(DIRECTIONS)),
        missed: str | None = Query(None, description="true: only missed calls; false: none"),
        q: str | None = Query(None, description="A number (or part), a name or a company"),
        limit: str | None = Query(None, description=f"Rows per page, 1-{MAX_LIMIT}; default 50"),
        cursor: str | None = Query(None, description="next_cursor of the previous page"),
    ) -> JSONResponse:
        query = _history_query(
            principal, settings.tenant_by_id(principal.tenant),
            since=since, until=until, extension=extension, direction=direction,
            missed=missed, q=q, limit=limit, cursor=cursor,
        )  # fmt: skip
        try:
            page = await history_page(bus(), principal.tenant, query)
        except (RedisError, OSError):
            raise _unavailable() from None
        return JSONResponse(page.to_dict(), headers={"Cache-Control": "no-store"})

    return router


def _history_query(
    principal: Principal,
    tenant: Tenant | None,
    *,
    since: str | None,
    until: str | None,
    extension: list[str],
    direction: str | None,
    missed: str | None,
    q: str | None,
    limit: str | None,
    cursor: str | None,
) -> HistoryQuery:
    """The query's parameters checked (400 naming the one at fault), and the extensions
    limited to what the principal may see (403, like a subscription's filter)."""
    known = None if tenant is None else frozenset(u.extension for u in tenant.users)
    for wanted in extension:
        if (known is not None and wanted not in known) or not principal.may_see_extension(wanted):
            raise HTTPException(403, "forbidden")
    if not principal.is_admin and not principal.extensions:
        raise HTTPException(
            403, "forbidden: this user has no extension of its own and watches none"
        )
    try:
        since_at = None if since is None else parse_time("since", since)
        until_at = None if until is None else parse_time("until", until)
    except ValueError as err:
        raise HTTPException(400, str(err)) from None
    if direction is not None and direction not in DIRECTIONS:
        raise HTTPException(400, f"direction: one of {', '.join(DIRECTIONS)}")
    if missed is not None and missed not in ("true", "false"):
        raise HTTPException(400, "missed: true or false")
    if q is not None and len(q) > MAX_Q:
        raise HTTPException(400, f"q: at most {MAX_Q} characters")
    rows = 50
    if limit is not None:
        if not re.fullmatch(r"[0-9]{1,4}", limit) or not 1 <= int(limit) <= MAX_LIMIT:
            raise HTTPException(400, f"limit: an integer from 1 to {MAX_LIMIT}")
        rows = int(limit)
    if cursor is not None:
        try:
            keys.validate_seq(cursor)
        except ValueError:
            raise HTTPException(400, "cursor: not a next_cursor of this API") from None
    return HistoryQuery(
        visible=None if principal.is_admin else principal.extensions,
        extensions=frozenset(extension),
        since=since_at,
        until=until_at,
        direction=direction,
        missed=None if missed is None else missed == "true",
        q=q.strip() or None if q is not None else None,
        limit=rows,
        before=cursor,
    )
