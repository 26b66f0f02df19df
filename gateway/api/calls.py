"""Click-to-dial over HTTP: a CRM user clicks a number, their own phone rings.

    POST   /v1/calls        start a dial request (user or admin token)        → 202
    GET    /v1/calls/{id}   its state (calling_phone … connected, failed)     → 200
    DELETE /v1/calls/{id}   cancel it, at any stage until it is finished      → 200

A "user" dials from their own extension only; an "admin" from any extension of the
tenant, without auto-answer when it is not the admin's own phone. Destinations are
checked against the tenant's `[tenants.dial]` prefixes (premium ranges denied by
default) before any SIP is sent: 403. The same `request_id` (idempotency key) twice
gives the one request it started.
Requests are rate-limited per user (token bucket, `[dial] rate_per_minute` / `burst`).
Whatever is not the caller's — another tenant's request, another user's — answers 404,
exactly like an id that does not exist.

Any node answers (runtime/shared_dials.py): a request placed by another node is read
from Redis, where its owner writes every change, and a DELETE of it is relayed to the
owner, which cancels it (503 when the owner cannot be reached, 504 when it does not
answer in time).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from gateway.api.auth import client_address, require_principal
from gateway.api.bodies import Refused, read_json
from gateway.config import Settings, Tenant
from gateway.dial.originate import Destination, DialError, DialOrder, DialRequest, Originator
from gateway.recognition.lookup import Recognizer
from gateway.recognition.numbers import normalize
from gateway.runtime.shared_dials import SharedDials, StoredDial
from gateway.security.directory import Directory
from gateway.security.principal import Principal
from gateway.security.ratelimit import TokenBuckets

MAX_BODY = 4096
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:~-]{1,128}")
NAME_LOOKUP_TIMEOUT = 0.2  # seconds: the phone's display name is nice, not essential

DIAL_EXAMPLE = {"to": "06 1234 5678", "from": "201", "auto_answer": True, "request_id": "crm-42"}
ACCEPTED_EXAMPLE = {
    "id": "019378a2-5c1e-7d3a-9a51-2f0c5e1d4b77",
    "state": "calling_phone",
    "finished": False,
    "mode": "refer",
    "from": "201",
    "to": {"raw": "06 1234 5678", "dialled": "+31612345678", "e164": "+31612345678"},
    "auto_answer": "answer-mode",
    "requested_by": "piet",
    "conversation_id": "019378a2-5c1e-7d3a-9a51-2f0c5e1d4b78",
    "phone_call_id": "019378a2-5c1e-7d3a-9a51-2f0c5e1d4b79",
    "created_at": "2026-11-22T10:15:00.000000Z",
    "updated_at": "2026-11-22T10:15:00.000000Z",
    "request_id": "crm-42",
    "links": {
        "self": "/v1/calls/019378a2-5c1e-7d3a-9a51-2f0c5e1d4b77",
        "events": "/v1/events",
    },
}


def _view(
    request: DialRequest | StoredDial,
    status: int = 200,
    replayed: bool = False,
    body: dict[str, Any] | None = None,
) -> JSONResponse:
    """The request as JSON (held here, or another node's as stored in Redis); `body`:
    its state captured earlier (the SIP side moves on while the response is being
    written)."""
    if body is None:
        body = request.to_dict() if isinstance(request, DialRequest) else dict(request.view)
    link = f"/v1/calls/{request.id}"
    body["links"] = {"self": link, "events": "/v1/events"}
    headers = {"Location": link}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(body, status_code=status, headers=headers)


async def _body(request: Request) -> dict[str, Any]:
    data = await read_json(request, MAX_BODY)
    if not isinstance(data, dict):
        raise Refused(422, "body: expected a JSON object")
    unknown = sorted(set(data) - {"to", "from", "auto_answer", "request_id"})
    if unknown:
        raise Refused(422, f"{unknown[0]}: unknown field")
    return data


def _text(data: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = data.get(name)
    if value is None:
        if required:
            raise Refused(422, f"{name}: required")
        return None
    if not isinstance(value, str) or not value.strip():
        raise Refused(422, f"{name}: expected a non-empty string")
    if len(value) > 64 and name != "request_id":
        raise Refused(422, f"{name}: longer than 64 characters")
    return value.strip()


def calls_router(
    originator_getter: Callable[[], Originator | None],
    run: Callable[[Callable[[], DialRequest]], DialRequest],
    directory: Directory,
    settings: Settings,
    recognizer: Recognizer | None = None,
    shared: SharedDials | None = None,
) -> APIRouter:
    """`shared`: the dial requests of every node (None: this node's only)."""
    router = APIRouter(tags=["click-to-dial"])
    dialer = require_principal(roles=("user", "admin"), directory=directory)
    dial = settings.dial
    buckets = TokenBuckets(rate=dial.rate_per_minute / 60.0, burst=dial.burst)

    def originator() -> Originator:
        found = originator_getter()
        if found is None:
            raise Refused(503, "SIP is not running yet; retry", {"Retry-After": "1"})
        return found

    def sip_tenant(principal: Principal) -> Tenant:
        tenant = settings.tenant_by_id(principal.tenant)
        if tenant is None:
            raise Refused(409, "this tenant has no phones (no SIP configuration)")
        return tenant

    def visible(principal: Principal, request: DialRequest | None) -> DialRequest:
        if request is None or not may_see(
            principal, request.tenant, request.order.requested_by, request.order.user.extension
        ):
            raise Refused(404, "no such dial request")
        return request

    def may_see(principal: Principal, tenant: str, requested_by: str, extension: str) -> bool:
        return tenant == principal.tenant and (
            principal.is_admin
            or requested_by == principal.user
            or principal.may_see_extension(extension)
        )

    async def elsewhere(principal: Principal, dial_id: str) -> StoredDial:
        """Another node's request, as stored in Redis, under the same rules."""
        if shared is None:
            raise Refused(404, "no such dial request")
        try:
            stored = await shared.read(principal.tenant, dial_id)
        except DialError as err:
            raise Refused(err.status, err.message, {"Retry-After": "1"}) from None
        if stored is None or not may_see(
            principal, stored.tenant, stored.requested_by, stored.extension
        ):
            raise Refused(404, "no such dial request")
        return stored

    async def contact_name(tenant: Tenant, e164: str | None) -> str | None:
        if recognizer is None or e164 is None or not tenant.recognition.enabled:
            return None
        try:
            found = await asyncio.wait_for(recognizer.lookup(tenant.id, e164), NAME_LOOKUP_TIMEOUT)
        except TimeoutError:
            return None
        fields = found.contact.fields if found.contact is not None else {}
        name = fields.get("name")
        return name if isinstance(name, str) and name else None

    @router.post(
        "/v1/calls",
        status_code=202,
        summary="Click-to-dial: ring the user's own phone, then connect it to `to`",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"example": DIAL_EXAMPLE}},
            }
        },
        responses={
            202: {
                "description": "Accepted: the phone is being called",
                "content": {"application/json": {"example": ACCEPTED_EXAMPLE}},
            },
            403: {
                "description": "`from` is another user's extension (users dial from their own); "
                "`to` is in a denied range; `auto_answer` on someone else's phone"
            },
            409: {"description": "The extension has no registered phone, or the key was reused"},
            422: {"description": "A field is invalid (the message names it)"},
            429: {"description": "Too many dial requests: see Retry-After"},
        },
    )
    async def create(request: Request, principal: Principal = Depends(dialer)) -> JSONResponse:  # noqa: B008
        try:
            data = await _body(request)
            tenant = sip_tenant(principal)
            to_text = _text(data, "to", required=True)
            assert to_text is not None
            request_id = _text(data, "request_id")
            if request_id is not None and not _REQUEST_ID.fullmatch(request_id):
                raise Refused(422, "request_id: 1-128 characters of A-Z a-z 0-9 . _ : ~ -")
            auto_answer = data.get("auto_answer", True)
            if not isinstance(auto_answer, bool):
                raise Refused(422, "auto_answer: expected true or false")
            own = tenant.user_by_username(principal.user or "")
            from_ext = _text(data, "from") or (own.extension if own is not None else None)
            if from_ext is None:
                raise Refused(422, "from: required (this user has no extension of its own)")
            if not principal.is_admin and (own is None or from_ext != own.extension):
                raise Refused(403, "from: you may dial only from your own extension")
            phone_user = tenant.user_by_extension(from_ext)
            if phone_user is None:
                raise Refused(422, f"from: no extension {from_ext} in this tenant")
            if phone_user.username != principal.user:
                # Auto-answer opens a colleague's microphone: only on one's own phone. Not
                # asked for: the phone simply rings; asked for: refused, not ignored.
                if data.get("auto_answer") is True:
                    raise Refused(
                        403, "auto_answer: only on your own phone; leave it out to ring this one"
                    )
                auto_answer = False
            found = originator().existing(tenant.id, principal.user or "", request_id)
            if found is not None:
                if found.order.to.raw != to_text or found.order.user.extension != from_ext:
                    raise Refused(409, "request_id: already used for another dial request")
                return _view(found, 202, replayed=True)
            destination = await _destination(tenant, to_text, contact_name)
            # Counted once the request is valid: a typo does not cost a dial.
            wait = buckets.take((tenant.id, principal.user or ""))
            if wait is not None:
                retry = str(max(1, round(wait)))
                raise Refused(429, "too many dial requests; slow down", {"Retry-After": retry})
            order = DialOrder(
                tenant=tenant,
                user=phone_user,
                requested_by=principal.user or "",
                to=destination,
                auto_answer=auto_answer,
                request_id=request_id,
            )
            try:
                started = run(lambda: originator().dial(order))
            except DialError:
                buckets.refund((tenant.id, principal.user or ""))  # nothing was started
                raise
            accepted = started.to_dict()  # the state it was accepted in
        except Refused as refused:
            return refused.response()
        except DialError as err:
            return Refused(err.status, err.message).response()
        await directory.audit.record(
            principal.tenant, "dial", "ok", user=principal.user or "",
            source=client_address(request, directory.security), detail=f"id={started.id}",
        )  # fmt: skip
        return _view(started, 202, body=accepted)

    @router.get(
        "/v1/calls/{dial_id}",
        summary="The state of a dial request (placed through any node)",
        responses={503: {"description": "Another node's requests cannot be read now"}},
    )
    async def read(dial_id: str, principal: Principal = Depends(dialer)) -> JSONResponse:  # noqa: B008
        try:
            here = originator().get(principal.tenant, dial_id)
            if here is not None:
                return _view(visible(principal, here))
            return _view(await elsewhere(principal, dial_id))
        except Refused as refused:
            return refused.response()

    @router.delete(
        "/v1/calls/{dial_id}",
        summary="Cancel a dial request (rings no more, or hangs up the legs the gateway holds)",
        responses={
            409: {"description": "The request is already finished"},
            503: {"description": "The node that placed the call cannot be reached"},
            504: {"description": "The node that placed the call did not answer in time"},
        },
    )
    async def cancel(dial_id: str, principal: Principal = Depends(dialer)) -> JSONResponse:  # noqa: B008
        try:
            here = originator().get(principal.tenant, dial_id)
            if here is None:
                return await cancel_elsewhere(await elsewhere(principal, dial_id))
            found = visible(principal, here)
            cancelled = run(lambda: originator().cancel(found.tenant, found.id))
            return _view(cancelled, body=cancelled.to_dict())
        except Refused as refused:
            return refused.response()
        except DialError as err:
            return Refused(err.status, err.message).response()

    async def cancel_elsewhere(stored: StoredDial) -> JSONResponse:
        """Relayed to the node that holds the request's calls (it alone can end them)."""
        assert shared is not None  # elsewhere() found it there
        if stored.finished:
            return Refused(409, f"the dial request is already {stored.state}").response()
        reply = await shared.relay_cancel(stored)
        if reply.status != 200 or reply.view is None:
            return Refused(reply.status, reply.detail or "not cancelled").response()
        return _view(stored, body=reply.view)

    return router


async def _destination(
    tenant: Tenant,
    text: str,
    contact_name: Callable[[Tenant, str | None], Any],
) -> Destination:
    """What the user typed → the number to dial, or a 422 naming `to`."""
    extensions = frozenset(u.extension for u in tenant.users)
    number = normalize(text, tenant.region, extensions=extensions)
    if number.kind == "e164":
        assert number.e164 is not None
        name = await contact_name(tenant, number.e164)
        return Destination(dial=number.e164, raw=text, e164=number.e164, name=name)
    if number.kind == "extension":
        user = tenant.user_by_extension(number.raw.strip())
        name = user.display_name if user is not None and user.display_name else None
        return Destination(dial=number.raw.strip(), raw=text, name=name)
    if number.kind == "short":
        digits = re.sub(r"[\s().-]", "", number.raw)
        if re.fullmatch(r"[0-9*#]{2,16}", digits):
            return Destination(dial=digits, raw=text)
    raise Refused(422, f"to: not a number that can be dialled ({number.reason or number.kind})")
