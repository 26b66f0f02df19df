"""Contact sync and privacy: the recognition data of a tenant, written and erased here.

    POST   /v1/contacts:batch               upserts and deletes of one source (sync, admin)
    GET    /v1/sources                      sources with their counts (sync, admin)
    POST   /v1/sources/{source}:commit      end a full sync: drop what it did not send
    DELETE /v1/sources/{source}             delete every record of a source, now, and
                                            its contact data from the stored events
    GET    /v1/privacy/numbers/{number}         what is held for one number (admin)
    GET    /v1/privacy/numbers/{number}/export  all of it: contacts and call events (admin)
    DELETE /v1/privacy/numbers/{number}         erase it: contacts and call events (admin)

Erasure reaches the stored call events too (gateway/recognition/privacy.py says how they
are searched): a number's erasure deletes every event that names it in any field and
form; a source's removal rewrites the events whose contact came from it without the
contact and its screen-pop URLs (gateway/bus/rewrite.py). Both happen before the answer.

The full contact set is never readable here: contacts are written in batches and read
one number at a time by an admin (GDPR access requests), each read audited. The tenant
is always the token's own; a body naming another tenant is refused with 403 and
nothing is written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from gateway.api.auth import client_address, require_principal
from gateway.api.bodies import Refused, read_json
from gateway.bus.rewrite import StreamBusy
from gateway.bus.streams import EventBus
from gateway.config import Settings
from gateway.recognition.batch import BatchError, TooLarge, parse_batch
from gateway.recognition.index import ContactIndex, IndexUnavailable
from gateway.recognition.keys import is_generation, is_source_id
from gateway.recognition.numbers import normalize
from gateway.recognition.privacy import NumberMentions, without_source
from gateway.security.directory import Directory
from gateway.security.principal import Principal
from gateway.stats import Counters

MAX_BODY = 4 * 1024 * 1024  # bytes: 5000 contacts of a few fields fit comfortably

BATCH_EXAMPLE = {
    "tenant": "demo",
    "source": "crm",
    "upserts": [{"number": "+31612345678", "fields": {"name": "Jane Example"}}],
    "deletes": ["+31612345679"],
}


def _own_tenant(principal: Principal, named: object) -> None:
    if named is not None and named != principal.tenant:
        raise Refused(403, "the token is for another tenant")


def contacts_router(
    index_getter: Callable[[], ContactIndex],
    bus_getter: Callable[[], EventBus],
    directory: Directory,
    settings: Settings,
    counters: Counters,
) -> APIRouter:
    router = APIRouter(tags=["contacts"])
    writer = require_principal(roles=("sync", "admin"), directory=directory)
    admin = require_principal(roles=("admin",), directory=directory)

    def fields_of(tenant: str) -> tuple[str, ...]:
        found = settings.tenant_by_id(tenant)
        return found.recognition.fields if found is not None else ()

    async def audit(request: Request, principal: Principal, event: str, detail: str) -> None:
        await directory.audit.record(
            principal.tenant, event, "ok", user=principal.user or "@sync",
            source=client_address(request, directory.security), detail=detail,
        )  # fmt: skip

    @router.post(
        "/v1/contacts:batch",
        summary="Upsert and delete contacts of one source (the sync client's call)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"example": BATCH_EXAMPLE}},
            }
        },
        responses={
            403: {"description": "Wrong role, or the body names another tenant"},
            413: {"description": "Too many items or too large a body"},
            422: {"description": "A field is invalid; nothing was written"},
            503: {"description": "Redis unavailable; retry"},
        },
    )
    async def batch(request: Request, principal: Principal = Depends(writer)) -> JSONResponse:  # noqa: B008
        try:
            data = await read_json(request, MAX_BODY)
            _own_tenant(principal, data.get("tenant") if isinstance(data, dict) else None)
            limit = settings.recognition.max_batch
            parsed = parse_batch(data, fields_of(principal.tenant), limit)
            upserted, deleted = await index_getter().apply(
                principal.tenant, parsed.source, parsed.upserts, parsed.deletes, parsed.generation
            )
        except Refused as refused:
            return refused.response()
        except TooLarge as bad:
            return Refused(413, str(bad)).response()
        except BatchError as bad:
            return Refused(422, str(bad)).response()
        except IndexUnavailable:
            return Refused(503, "contact index unavailable; retry").response()
        counters.contacts["upsert"] += upserted
        counters.contacts["delete"] += deleted
        return JSONResponse({"upserted": upserted, "deleted": deleted})

    @router.get("/v1/sources", summary="The tenant's contact sources and their sizes")
    async def sources(principal: Principal = Depends(writer)) -> JSONResponse:  # noqa: B008
        try:
            found = await index_getter().sources(principal.tenant)
        except IndexUnavailable:
            return Refused(503, "contact index unavailable; retry").response()
        return JSONResponse(
            {
                "sources": [
                    {"id": name, "numbers": count, "changed_at": changed}
                    for name, (count, changed) in found.items()
                ]
            }
        )

    @router.post("/v1/sources/{source}:commit", summary="End a full sync (--full)")
    async def commit(
        source: str,
        request: Request,
        principal: Principal = Depends(writer),  # noqa: B008
    ) -> JSONResponse:
        try:
            data = await read_json(request, MAX_BODY)
            if not isinstance(data, dict):
                raise Refused(422, "body: must be a JSON object")
            _own_tenant(principal, data.get("tenant"))
            generation = data.get("generation")
            if not is_source_id(source):
                raise Refused(422, "source: not a valid source id")
            if not is_generation(generation):
                raise Refused(422, "generation: must be 1-64 of A-Z, a-z, 0-9, '_', '-'")
            assert isinstance(generation, str)
            deleted = await index_getter().commit_generation(principal.tenant, source, generation)
        except Refused as refused:
            return refused.response()
        except IndexUnavailable:
            return Refused(503, "contact index unavailable; retry").response()
        counters.contacts["delete"] += deleted
        return JSONResponse({"deleted": deleted})

    @router.delete("/v1/sources/{source}", summary="Delete every record of a source at once")
    async def remove_source(
        source: str,
        request: Request,
        principal: Principal = Depends(writer),  # noqa: B008
    ) -> JSONResponse:
        if not is_source_id(source):
            return Refused(404, "no such source").response()
        tenant = principal.tenant
        try:
            deleted = await index_getter().remove_source(tenant, source)
            # Now, not when retention gets to them: events keep no contact of the source.
            # Also for a source the index no longer has, so that a retry after a 503
            # between the two steps finishes the job.
            redacted = await bus_getter().rewrite_events(
                tenant, lambda event: without_source(event, source)
            )
        except (IndexUnavailable, RedisError, OSError, StreamBusy):
            return Refused(503, "Redis unavailable or busy; retry").response()
        if deleted is None and not redacted:
            return Refused(404, "no such source").response()
        deleted = deleted or 0
        counters.contacts["delete"] += deleted
        counters.contacts["source_removed"] += 1
        detail = f"source={source} numbers={deleted} events={redacted}"
        await audit(request, principal, "source.remove", detail)
        return JSONResponse({"source": source, "deleted": deleted, "events_redacted": redacted})

    # -- GDPR ------------------------------------------------------------------------------
    def region_of(principal: Principal) -> str:
        tenant = settings.tenant_by_id(principal.tenant)
        return tenant.region if tenant is not None else "NL"

    def number_of(principal: Principal, text: str) -> str:
        found = normalize(text, region_of(principal))
        if found.e164 is None:
            raise HTTPException(422, f"number: {found.reason or 'not a phone number'}")
        return found.e164

    async def held(principal: Principal, number: str) -> list[dict[str, Any]]:
        entries = await index_getter().held(principal.tenant, number)
        return [{"source": e.source, "shown": e.shown, "fields": dict(e.fields)} for e in entries]

    async def events_of(principal: Principal, number: str) -> list[dict[str, Any]]:
        bus, mentions = bus_getter(), NumberMentions(number, region_of(principal))
        found: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            page = await bus.replay_page(principal.tenant, after, count=1000)
            found += [e for _, e in page.events if mentions.in_event(e)]
            if page.exhausted or page.last_seq is None:
                return found
            after = page.last_seq

    async def held_for(
        principal: Principal, number: str
    ) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]] | JSONResponse:
        """(E.164, contact entries, call events naming it), or the 503 to answer."""
        e164 = number_of(principal, number)
        try:
            contacts = await held(principal, e164)
            events = await events_of(principal, e164)
        except (IndexUnavailable, RedisError, OSError):
            return Refused(503, "Redis unavailable; retry").response()
        return e164, contacts, events

    @router.get("/v1/privacy/numbers/{number}", tags=["privacy"], summary="What is held")
    async def inspect(
        number: str,
        request: Request,
        principal: Principal = Depends(admin),  # noqa: B008
    ) -> JSONResponse:
        found = await held_for(principal, number)
        if isinstance(found, JSONResponse):
            return found
        e164, contacts, events = found
        await audit(request, principal, "privacy.inspect", f"contacts={len(contacts)}")
        return JSONResponse({"number": e164, "contacts": contacts, "events": len(events)})

    @router.get("/v1/privacy/numbers/{number}/export", tags=["privacy"], summary="Export")
    async def export(
        number: str,
        request: Request,
        principal: Principal = Depends(admin),  # noqa: B008
    ) -> JSONResponse:
        found = await held_for(principal, number)
        if isinstance(found, JSONResponse):
            return found
        e164, contacts, events = found
        await audit(request, principal, "privacy.export", f"events={len(events)}")
        return JSONResponse(
            {"number": e164, "contacts": contacts, "events": events},
            headers={"Content-Disposition": 'attachment; filename="sipgw-export.json"'},
        )

    @router.delete("/v1/privacy/numbers/{number}", tags=["privacy"], summary="Erase")
    async def erase(
        number: str,
        request: Request,
        principal: Principal = Depends(admin),  # noqa: B008
    ) -> JSONResponse:
        e164 = number_of(principal, number)
        mentions = NumberMentions(e164, region_of(principal))
        try:
            removed = await index_getter().erase(principal.tenant, e164)
            # Whole events, not the fields naming the number: an event is a record of a
            # call with that person, and what is left of it (times, the extension) would
            # still tell who called whom when.
            erased = len(await bus_getter().delete_events(principal.tenant, mentions.in_event))
        except (IndexUnavailable, RedisError, OSError, StreamBusy):
            return Refused(503, "Redis unavailable or busy; retry").response()
        # The number itself is not audited: the log would keep what was just erased.
        await audit(request, principal, "privacy.erase", f"contacts={removed} events={erased}")
        return JSONResponse({"number": e164, "contacts_removed": removed, "events_removed": erased})

    return router
