"""HTTP authentication: login, logout, bearer tokens and access checks.

    POST /v1/auth/login   {"tenant"?, "username", "password"} -> a bearer token
    POST /v1/auth/logout  revoke the token of the request
    GET  /v1/auth/me      who the token stands for
    GET  /v1/auth/audit   the tenant's audit log (admins)

Routes elsewhere use ``require_principal(roles=...)`` as a dependency and check what
they touch with ``ensure_tenant`` / ``ensure_extension``: another tenant's tenant id or
extension gives 403 before anything is looked up, so the answer is the same whether
the thing exists or not.
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, NoReturn

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from gateway.api.bodies import Refused, read_json
from gateway.config import SecuritySettings
from gateway.security.directory import TENANT_ID, USERNAME, Directory, DirectoryUnavailable
from gateway.security.passwords import MAX_LENGTH
from gateway.security.principal import ROLES, Principal, Role
from gateway.security.second_factor import Challenge
from gateway.security.tokens import LoginRefused, Token

MAX_LOGIN_BODY = 8192  # bytes
INVALID_CREDENTIALS = "invalid credentials"
_LOGIN_FIELDS = ("tenant", "username", "password")
_REALM = 'Bearer realm="sipgw"'

# Parses "Authorization: Bearer …" and documents the scheme in OpenAPI. Not
# auto_error: the 401 is ours, with the WWW-Authenticate header RFC 6750 asks for.
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="A token from POST /v1/auth/login (or `sipgw token create`).",
)

LOGIN_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["username", "password"],
    "additionalProperties": False,
    "properties": {
        "tenant": {
            "type": ["string", "null"],
            "description": "Tenant id; default: the configured default tenant.",
            "example": "demo",
        },
        "username": {"type": "string", "example": "201"},
        "password": {"type": "string", "format": "password"},
    },
}


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _unavailable() -> HTTPException:
    return HTTPException(
        503, "authentication temporarily unavailable", headers={"Retry-After": "5"}
    )


def client_address(conn: HTTPConnection, security: SecuritySettings) -> str:
    """The client's address: the connection's peer, or, when the peer is a trusted
    reverse proxy, the right-most address of X-Forwarded-For that is not one."""
    peer = conn.client.host if conn.client is not None else "unknown"
    if not security.trusted_proxies or not security.is_trusted_proxy(peer):
        return peer
    forwarded = ",".join(conn.headers.getlist("x-forwarded-for"))
    for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
        try:
            address = str(ipaddress.ip_address(hop.strip("[]")))
        except ValueError:
            return peer  # garbage in the chain: trust nothing beyond the proxy
        if not security.is_trusted_proxy(address):
            return address
    return peer


# Where a request's principal is noted, once known, for what answers by tenant after
# the route has run (the CORS middleware, gateway/api/cors.py).
PRINCIPAL_SCOPE_KEY = "sipgw.principal"


def note_principal(conn: HTTPConnection, principal: Principal) -> None:
    conn.scope[PRINCIPAL_SCOPE_KEY] = principal


def noted_principal(scope: Mapping[str, Any]) -> Principal | None:
    found = scope.get(PRINCIPAL_SCOPE_KEY)
    return found if isinstance(found, Principal) else None


def _unauthorized(detail: str, *, presented: bool) -> NoReturn:
    challenge = f'{_REALM}, error="invalid_token"' if presented else _REALM
    raise HTTPException(401, detail, headers={"WWW-Authenticate": challenge})


async def authenticate(directory: Directory, bearer: str | None) -> Principal:
    """The principal of a bearer token, else HTTPException 401 (503 if Redis is down).
    For WebSocket handlers too: they call it with the header's token before accepting."""
    if not bearer:
        _unauthorized("missing bearer token", presented=False)
    try:
        principal = await directory.token(bearer)
    except DirectoryUnavailable:
        raise _unavailable() from None
    if principal is None:
        _unauthorized("invalid or expired token", presented=True)
    return principal


def require_principal(
    roles: Iterable[Role] | None = None, *, directory: Directory | None = None
) -> Callable[..., Awaitable[Principal]]:
    """A dependency giving the request's ``Principal``: 401 (with ``WWW-Authenticate:
    Bearer``) without a valid token, 403 when its role is not in ``roles`` (None: any).

    ``directory`` defaults to ``app.state.directory``. Works for HTTP and WebSocket
    routes (it reads the headers of the connection).
    """
    allowed = frozenset(ROLES if roles is None else roles)
    unknown = allowed - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles: {', '.join(sorted(unknown))}")

    async def dependency(
        conn: HTTPConnection,
        credentials: HTTPAuthorizationCredentials | None = Security(bearer_scheme),  # noqa: B008
    ) -> Principal:
        found = directory if directory is not None else _app_directory(conn)
        bearer = None if credentials is None else credentials.credentials
        principal = await authenticate(found, bearer)
        note_principal(conn, principal)
        if principal.role not in allowed:
            raise HTTPException(403, "forbidden: insufficient role")
        return principal

    return dependency


def _app_directory(conn: HTTPConnection) -> Directory:
    found = getattr(conn.app.state, "directory", None)
    if not isinstance(found, Directory):
        raise RuntimeError("app.state.directory is not set: the app must store its Directory")
    return found


def ensure_tenant(principal: Principal, tenant: str) -> None:
    """403 unless ``tenant`` is the principal's own. Call it before looking anything up,
    so another tenant's things answer the same whether they exist or not."""
    if not principal.may_see_tenant(tenant):
        raise HTTPException(403, "forbidden")


def ensure_extension(principal: Principal, extension: str, tenant: str | None = None) -> None:
    """403 unless the principal may see ``extension`` (of ``tenant``, default its own)."""
    if tenant is not None:
        ensure_tenant(principal, tenant)
    if not principal.may_see_extension(extension):
        raise HTTPException(403, "forbidden")


def _principal_json(principal: Principal) -> dict[str, Any]:
    return {
        "tenant": principal.tenant,
        "user": principal.user,
        "role": principal.role,
        "extensions": sorted(principal.extensions),
        "expires_at": None if principal.expires_at is None else rfc3339(principal.expires_at),
    }


async def json_object(request: Request, fields: Iterable[str]) -> dict[str, Any]:
    """The body of an authentication request: a JSON object of at most
    ``MAX_LOGIN_BODY`` bytes with no field but ``fields``; else ``Refused``."""
    data = await read_json(request, MAX_LOGIN_BODY)
    if not isinstance(data, dict):
        raise Refused(400, "request body must be a JSON object")
    known = tuple(fields)
    for name in data:
        if name not in known:
            listed = ", ".join(known)
            raise Refused(400, f"unknown field {json.dumps(name)} (known: {listed})")
    return data


async def _login_fields(request: Request) -> tuple[str | None, str, str]:
    data = await json_object(request, _LOGIN_FIELDS)
    tenant = data.get("tenant")
    if tenant is not None and (not isinstance(tenant, str) or not TENANT_ID.fullmatch(tenant)):
        raise Refused(400, "tenant: must be a string of 1-32 of a-z, 0-9 and '-'")
    username = data.get("username")
    if username is None:
        raise Refused(400, "username: required")
    if not isinstance(username, str) or not USERNAME.fullmatch(username):
        raise Refused(400, "username: must be a string of 1-64 letters, digits, '.', '_', '-'")
    password = data.get("password")
    if password is None:
        raise Refused(400, "password: required")
    if not isinstance(password, str) or not 1 <= len(password) <= MAX_LENGTH:
        raise Refused(400, f"password: must be a string of 1-{MAX_LENGTH} characters")
    return tenant, username, password


_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def login_refused(refused: LoginRefused, detail: str = INVALID_CREDENTIALS) -> JSONResponse:
    """401 (the same for every cause), or 429 with Retry-After when throttled."""
    if refused.reason == "throttled":
        wait = str(max(1, math.ceil(refused.retry_after)))
        return _error(429, "too many failed logins, retry later", headers={"Retry-After": wait})
    return _error(401, detail, headers={"WWW-Authenticate": _REALM})


def token_response(request: Request, token: Token, **extra: Any) -> JSONResponse:
    """A login's token with its principal (and ``extra`` fields)."""
    note_principal(request, token.principal)
    body: dict[str, Any] = {"token": token.bearer, "token_type": "Bearer"}
    body.update(_principal_json(token.principal))
    body.update(extra)
    # RFC 6749 §5.1: responses with tokens must not be cached.
    return JSONResponse(body, headers=_NO_STORE)


def challenge_response(challenge: Challenge) -> JSONResponse:
    """A right password that owes a second factor: no token yet, but the challenge for
    the next step (POST /v1/auth/totp/verify, or enrol and confirm)."""
    body = {
        "second_factor": "totp" if challenge.kind == "code" else "enrol",
        "challenge": challenge.bearer,
        "expires_at": rfc3339(challenge.expires_at),
    }
    return JSONResponse(body, headers=_NO_STORE)


def auth_router(directory: Directory) -> APIRouter:
    """The /v1/auth routes, bound to ``directory``."""
    router = APIRouter(prefix="/v1/auth", tags=["authentication"])
    any_principal = require_principal(directory=directory)
    admin = require_principal(roles=("admin",), directory=directory)

    @router.post(
        "/login",
        summary="Log in with username and password",
        response_description=(
            "A bearer token for the Authorization header; or, when the user owes a "
            'second factor, no token but `second_factor` ("totp": POST '
            '/v1/auth/totp/verify; "enrol": POST /v1/auth/totp/enrol then confirm) '
            "and a single-use `challenge` for that step"
        ),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": LOGIN_REQUEST_SCHEMA}},
            }
        },
        responses={
            400: {"description": "Malformed body or field"},
            401: {"description": "Invalid credentials (the same for every cause)"},
            429: {"description": "Too many failed logins; see Retry-After"},
            503: {"description": "Authentication temporarily unavailable"},
        },
    )
    async def login(request: Request) -> Response:
        try:
            tenant, username, password = await _login_fields(request)
        except Refused as bad:
            return bad.response()
        if tenant is None and directory.default_tenant is None:
            return _error(400, "tenant: required (there is no default tenant)")
        source = client_address(request, directory.security)
        if directory.seed_pending:
            return _error(
                503,
                "the user directory is still loading, retry shortly",
                headers={"Retry-After": "1"},
            )
        try:
            outcome = await directory.login(tenant, username, password, source)
        except DirectoryUnavailable:
            raise _unavailable() from None
        if isinstance(outcome, LoginRefused):
            return login_refused(outcome)
        if isinstance(outcome, Challenge):
            return challenge_response(outcome)
        return token_response(request, outcome)

    @router.post(
        "/logout",
        status_code=204,
        summary="Revoke the token of this request",
        responses={401: {"description": "Missing, invalid or expired token"}},
    )
    async def logout(
        request: Request,
        principal: Principal = Depends(any_principal),  # noqa: B008
        credentials: HTTPAuthorizationCredentials | None = Security(bearer_scheme),  # noqa: B008
    ) -> Response:
        assert credentials is not None  # any_principal has checked it
        source = client_address(request, directory.security)
        try:
            await directory.revoke(credentials.credentials, source=source, event="logout")
        except DirectoryUnavailable:
            raise _unavailable() from None
        return Response(status_code=204)

    @router.get("/me", summary="Who the token stands for")
    async def me(principal: Principal = Depends(any_principal)) -> dict[str, Any]:  # noqa: B008
        return _principal_json(principal)

    @router.get("/audit", summary="The tenant's audit log, newest first (admins)")
    async def audit(
        principal: Principal = Depends(admin),  # noqa: B008
        limit: int = Query(100, ge=1, le=1000),
        before: str | None = Query(None, pattern=r"^[0-9]{1,20}-[0-9]{1,20}$"),
    ) -> dict[str, Any]:
        try:
            entries = await directory.audit_entries(principal.tenant, count=limit, before=before)
        except DirectoryUnavailable:
            raise _unavailable() from None
        return {"entries": [e.to_dict() for e in entries]}

    return router


__all__ = [
    "INVALID_CREDENTIALS",
    "Refused",
    "auth_router",
    "authenticate",
    "bearer_scheme",
    "challenge_response",
    "client_address",
    "ensure_extension",
    "ensure_tenant",
    "json_object",
    "login_refused",
    "note_principal",
    "noted_principal",
    "require_principal",
    "token_response",
]
