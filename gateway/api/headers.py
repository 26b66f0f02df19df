"""Security headers on every HTTP response: the pages', and the API's.

The web client's pages (gateway/api/web.py) run only the gateway's own files:
``PAGE_POLICY`` allows no inline script or style, no other origin, no plugin, and
``connect-src 'self'`` (which covers ws:/wss: of the same origin in CSP Level 3), so
even a contact field rendered by mistake as HTML could run nothing. Who may frame a
page is its ``frame-ancestors`` (``/embed``: from the configuration; anything else:
nobody, with ``X-Frame-Options: DENY`` for browsers that predate CSP 2).

An API answer is data, never a document: ``default-src 'none'`` keeps a JSON body
opened as a page inert. ``/docs`` (Swagger UI, which loads its script from a CDN and
runs an inline one) gets only ``frame-ancestors 'none'``.

Everything also gets ``X-Content-Type-Options: nosniff`` (a file is only ever what its
type says) and ``Referrer-Policy: no-referrer`` (a screen-pop URL opened from the
client carries no trace of the gateway's address).
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

NOBODY = "'none'"
PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'"
)
API_POLICY = "default-src 'none'; frame-ancestors 'none'"
DOCS_POLICY = "frame-ancestors 'none'"
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect")


def page_policy(frame_ancestors: Iterable[str] = ()) -> str:
    """The Content-Security-Policy of a page that ``frame_ancestors`` (origins, already
    checked by the configuration) may frame; none by default."""
    sources = " ".join(frame_ancestors) or NOBODY
    return f"{PAGE_POLICY}; frame-ancestors {sources}"


class SecurityHeadersMiddleware:
    """Adds the headers above to each response, keeping a route's own CSP (pages)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        default = DOCS_POLICY if scope["path"] in DOCS_PATHS else API_POLICY

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                policy = headers.setdefault("Content-Security-Policy", default)
                if f"frame-ancestors {NOBODY}" in policy:
                    headers.setdefault("X-Frame-Options", "DENY")
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
            await send(message)

        await self.app(scope, receive, send_with_headers)
