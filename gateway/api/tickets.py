"""How a subscription proves who it is, from a browser too.

    POST /v1/events/ticket   (Authorization: Bearer) -> {"ticket", "expires_in"}

``/v1/events`` and ``/v1/events/sse`` accept one of three credentials:

- the ``Authorization: Bearer`` header (any client that can set headers);
- ``?ticket=`` from ``POST /v1/events/ticket``: single use, ``TICKET_TTL`` seconds,
  valid on any node (gateway/security/tickets.py). A WebSocket or an ``EventSource``
  cannot set headers, and a token in a URL would outlive the page in logs;
- on a WebSocket, the token as a subprotocol: ``Sec-WebSocket-Protocol: sipgw.v1,
  sipgw.bearer.<token>``, answered ``sipgw.v1`` (the token is never echoed back).

Whichever it was, the subscription is the token's: it is checked again every heartbeat
and ends with the token (revocation, expiry, user removal). Tickets and tokens are never
logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import APIRouter, Depends, HTTPException, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials
from starlette.requests import HTTPConnection

from gateway.api.auth import authenticate, bearer_scheme, note_principal, require_principal
from gateway.security.directory import Directory, DirectoryUnavailable
from gateway.security.principal import Principal
from gateway.security.tickets import TICKET_TTL
from gateway.security.tokens import token_hash

# The WebSocket subprotocol a browser names with its token (JSON frames, like
# sipgw.json.v1); the token rides in a second one, "sipgw.bearer.<token>".
BROWSER_PROTOCOL = "sipgw.v1"
BEARER_PROTOCOL_PREFIX = "sipgw.bearer."
INVALID_TICKET = "invalid, expired or already used ticket"

TICKET_RESPONSE_SCHEMA = {
    "type": "object",
    "required": ["ticket", "expires_in"],
    "properties": {
        "ticket": {"type": "string", "description": "Opaque; for one subscription"},
        "expires_in": {"type": "integer", "example": TICKET_TTL},
    },
}


@dataclass(frozen=True)
class SubscriberCredential:
    """Who a subscription is: the token's principal and the token's hash (what the
    session checks look for in Redis; a ticket's subscription knows no more)."""

    principal: Principal
    token_digest: str


def split_protocols(offered: list[str]) -> tuple[list[str], list[str]]:
    """The offered subprotocols without the bearer ones, and the tokens of those."""
    prefix = BEARER_PROTOCOL_PREFIX
    bearers = [p.removeprefix(prefix) for p in offered if p.startswith(prefix)]
    return [p for p in offered if not p.startswith(prefix)], bearers


async def subscriber_credential(
    conn: HTTPConnection,
    directory: Directory,
    ticket: str | None,
    protocol_bearers: Sequence[str] = (),
) -> SubscriberCredential:
    """The one credential a subscription request carries (else 400), checked: 401 for
    an invalid one, 503 when Redis cannot say. A ticket is used up by this call."""
    header = conn.headers.get("authorization")
    given = (ticket is not None) + (header is not None) + len(protocol_bearers)
    if given > 1:
        raise HTTPException(
            400,
            "give one credential: a ticket, the Authorization header or one "
            f"{BEARER_PROTOCOL_PREFIX}<token> subprotocol",
        )
    if ticket is not None:
        try:
            redeemed = await directory.redeem_ticket(ticket)
        except DirectoryUnavailable:
            raise HTTPException(
                503, "authentication temporarily unavailable", headers={"Retry-After": "5"}
            ) from None
        if redeemed is None:
            raise HTTPException(401, INVALID_TICKET, headers={"WWW-Authenticate": "Bearer"})
        principal, digest = redeemed
    else:
        bearer = bearer_of(header) if header is not None else next(iter(protocol_bearers), None)
        principal = await authenticate(directory, bearer)
        assert bearer is not None  # authenticate refuses a missing one
        digest = token_hash(bearer)
    note_principal(conn, principal)
    return SubscriberCredential(principal, digest)


def bearer_of(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


def tickets_router(directory: Directory) -> APIRouter:
    router = APIRouter(tags=["events"])
    subscriber = require_principal(roles=("admin", "user"), directory=directory)

    @router.post(
        "/v1/events/ticket",
        summary="A single-use ticket to open one event subscription",
        description=(
            "For browsers, which cannot set headers on a WebSocket or an EventSource: "
            "pass it as `?ticket=` to `/v1/events` or `/v1/events/sse` within "
            f"{TICKET_TTL} seconds. It opens one subscription, on any node, as this token "
            "(which must stay valid: the subscription ends with it). Fetch a new one for "
            "every (re)connection."
        ),
        responses={
            200: {"content": {"application/json": {"schema": TICKET_RESPONSE_SCHEMA}}},
            401: {"description": "Missing, invalid or expired token"},
            403: {"description": "A sync token (it cannot subscribe)"},
            429: {"description": "Too many tickets for this token; see Retry-After"},
            503: {"description": "Redis unreachable"},
        },
    )
    async def ticket(
        principal: Principal = Depends(subscriber),  # noqa: B008
        credentials: HTTPAuthorizationCredentials | None = Security(bearer_scheme),  # noqa: B008
    ) -> JSONResponse:
        assert credentials is not None  # the dependency has checked it
        try:
            issued = await directory.issue_ticket(credentials.credentials, principal)
        except DirectoryUnavailable:
            raise HTTPException(
                503, "authentication temporarily unavailable", headers={"Retry-After": "5"}
            ) from None
        if issued is None:
            raise HTTPException(
                429,
                "too many tickets for this token; retry later",
                headers={"Retry-After": str(TICKET_TTL)},
            )
        return JSONResponse(
            {"ticket": issued, "expires_in": TICKET_TTL},
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

    return router
