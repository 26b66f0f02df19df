"""CORS: which other web pages' scripts may call the API, per tenant, off by default.

A tenant lists origins (``cors_origins``), e.g. its CRM's, whose pages may use the API
with that tenant's tokens. Credentials are bearer headers, never cookies, so no
``Access-Control-Allow-Credentials``: a page can only act with a token it was given.

- A preflight (``OPTIONS`` with ``Access-Control-Request-Method``) carries no token, so
  an origin is allowed there when *some* tenant lists it; any other origin gets 403.
- A real response allows the origin only if the tenant of the token that made the
  request lists it (the routes note the principal, gateway/api/auth.py). A response to
  no token at all (a failed login, a 401) allows the origins of every tenant: it holds
  nothing of anyone, and the page must be able to read why it failed.
- WebSocket handshakes are not subject to CORS; they need a ticket or a token, which a
  page cannot have without logging in.

With no tenant listing any origin the middleware is not installed at all.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.auth import noted_principal

ALLOW_METHODS = "GET, POST, PUT, DELETE"
ALLOW_HEADERS = "Authorization, Content-Type, Last-Event-ID"
# Response headers a page's script may read besides the CORS-safelisted ones.
EXPOSE_HEADERS = "Date, Location, Retry-After, Idempotent-Replayed, WWW-Authenticate"
PREFLIGHT_MAX_AGE = "600"  # seconds a browser may reuse a preflight's answer


class CorsMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        origins_of: Callable[[str], tuple[str, ...]],
        every_origin: frozenset[str],
    ) -> None:
        self.app = app
        self.origins_of = origins_of  # a tenant's cors_origins
        self.every_origin = every_origin  # listed by some tenant

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        preflight = scope["method"] == "OPTIONS" and "access-control-request-method" in headers
        if origin is not None and preflight:
            await self._preflight(origin)(scope, receive, send)
            return

        async def send_allowing(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                out.add_vary_header("Origin")
                if origin is not None and origin in self._allowed(scope):
                    out["Access-Control-Allow-Origin"] = origin
                    out["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
            await send(message)

        await self.app(scope, receive, send_allowing)

    def _allowed(self, scope: Scope) -> frozenset[str] | tuple[str, ...]:
        principal = noted_principal(scope)
        return self.every_origin if principal is None else self.origins_of(principal.tenant)

    def _preflight(self, origin: str) -> Response:
        if origin not in self.every_origin:
            return JSONResponse(
                {"detail": "origin not allowed"}, status_code=403, headers={"Vary": "Origin"}
            )
        return Response(
            status_code=204,
            headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": ALLOW_METHODS,
                "Access-Control-Allow-Headers": ALLOW_HEADERS,
                "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
                "Vary": "Origin",
            },
        )
