"""The web client, served by the gateway: static files inside the package.

    GET /                 gateway/web/static/index.html
    GET /embed[?tenant=]  gateway/web/static/embed.html, the panel a CRM page may frame
    GET /static/{path}    every other file of gateway/web/static/

No CDN and no build step at run time: the files are package data. Each comes with the
page Content-Security-Policy (gateway/api/headers.py) and ``Cache-Control: no-cache``
with an ETag: a browser revalidates (a 304 when unchanged), so an upgraded gateway never
runs yesterday's script against today's API.

Who may frame ``/embed`` is configured: ``[web] frame_ancestors`` for the node, plus the
tenant's ``frame_ancestors`` when the page is opened as ``/embed?tenant=<id>``. The page
is fetched before anyone logs in, so the query, not a token, names the tenant; what it
reveals is only which origins may frame that tenant's panel.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import anyio.to_thread
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response
from starlette.staticfiles import NotModifiedResponse, StaticFiles

from gateway.api.headers import page_policy
from gateway.config import Settings

STATIC_DIR = Path(__file__).resolve().parent.parent / "web" / "static"
# Types set here, not guessed from the host's /etc/mime.types: with nosniff, a script
# served as anything else would not run.
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
}
CACHE = "no-cache"


def web_router(settings: Settings, static_dir: Path = STATIC_DIR) -> APIRouter:
    router = APIRouter(tags=["web client"])
    files = StaticFiles(directory=static_dir, check_dir=False)

    async def serve(request: Request, path: str, policy: str) -> Response:
        parts = [p for p in path.split("/") if p]
        if not parts or any(p.startswith(".") for p in parts):
            raise HTTPException(404, "not found")
        try:
            full, found = await anyio.to_thread.run_sync(files.lookup_path, os.path.join(*parts))
        except (OSError, ValueError):  # a name too long, a NUL byte
            found = None
        if found is None or not stat.S_ISREG(found.st_mode):
            raise HTTPException(404, "not found")
        media_type = MEDIA_TYPES.get(Path(full).suffix.lower(), "application/octet-stream")
        headers = {"Content-Security-Policy": policy, "Cache-Control": CACHE}
        response = FileResponse(full, stat_result=found, media_type=media_type, headers=headers)
        if files.is_not_modified(response.headers, request.headers):
            # A 304's headers replace the cached page's: it must carry the page's policy,
            # not get the API's default-src 'none' from the middleware.
            not_modified = NotModifiedResponse(response.headers)
            not_modified.headers["Content-Security-Policy"] = policy
            return not_modified
        return response

    @router.head("/", include_in_schema=False)
    @router.get(
        "/",
        summary="The web client",
        response_class=Response,
        responses={200: {"content": {"text/html": {}}}},
    )
    async def index(request: Request) -> Response:
        return await serve(request, "index.html", page_policy())

    @router.head("/embed", include_in_schema=False)
    @router.get(
        "/embed",
        summary="The web client as a narrow panel for a CRM page to frame",
        response_class=Response,
        responses={200: {"content": {"text/html": {}}}},
    )
    async def embed(
        request: Request,
        tenant: str | None = Query(
            None, description="Whose frame_ancestors apply besides the node's [web] ones"
        ),
    ) -> Response:
        allowed = list(settings.web.frame_ancestors)
        found = settings.tenant_by_id(tenant) if tenant else None
        if found is not None:
            allowed += [o for o in found.frame_ancestors if o not in allowed]
        return await serve(request, "embed.html", page_policy(allowed))

    @router.head("/static/{path:path}", include_in_schema=False)
    @router.get(
        "/static/{path:path}",
        summary="A file of the web client (scripts, styles, images)",
        response_class=Response,
    )
    async def static(request: Request, path: str) -> Response:
        return await serve(request, path, page_policy())

    return router
