"""The second factor over HTTP (TOTP, RFC 6238; docs/api.md "Second factor").

    POST   /v1/auth/totp/verify   {challenge, code | recovery_code}  -> a bearer token
    GET    /v1/auth/totp          the caller's second factor: enrolled, required, codes left
    POST   /v1/auth/totp/enrol    a new secret: otpauth:// URI and QR code, shown once
                                  (with a token, or {challenge} from a login told to enrol)
    POST   /v1/auth/totp/confirm  {code[, challenge]} -> the ten recovery codes (and,
                                  with a challenge, the login's token)
    DELETE /v1/auth/totp/users/{username}        disable a user's second factor (admin)
    POST   /v1/auth/totp/users/{username}/reset  reset it: enrol again, tokens revoked

Each step a client takes between the password and the token is refused with the same
401 whatever went wrong (unknown challenge, expired, used, wrong code, replayed code),
and counted by the login throttle (429 with Retry-After).
"""

from __future__ import annotations

import base64
from typing import Any

import qrcode  # type: ignore[import-untyped]
import qrcode.image.svg  # type: ignore[import-untyped]
from fastapi import APIRouter, Depends, HTTPException, Path, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials

from gateway.api.auth import (
    authenticate,
    bearer_scheme,
    client_address,
    json_object,
    login_refused,
    note_principal,
    require_principal,
    token_response,
)
from gateway.api.bodies import Refused
from gateway.security.directory import (
    USERNAME,
    Directory,
    DirectoryError,
    DirectoryUnavailable,
)
from gateway.security.principal import Principal
from gateway.security.second_factor import NewEnrolment
from gateway.security.tokens import LoginRefused

INVALID_CODE = "invalid code or challenge"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_CHALLENGE = {"type": "string", "description": "From POST /v1/auth/login (single use, 5 min)"}
_CODE = {"type": "string", "pattern": "^[0-9]{6}$", "example": "123456"}
_RECOVERY = {"type": "string", "description": "One of the ten recovery codes (single use)"}


def _body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {"type": "object", "additionalProperties": False, "required": required,
              "properties": properties}  # fmt: skip
    return {"requestBody": {"required": bool(required),
                            "content": {"application/json": {"schema": schema}}}}  # fmt: skip


def qr_svg_data_uri(text: str) -> str:
    """``text`` as a QR code: an SVG, as a data: URI an <img> shows (no script, no
    request: the page's CSP allows ``img-src data:``)."""
    image = qrcode.make(text, image_factory=qrcode.image.svg.SvgPathImage, border=2)
    svg: bytes = image.to_string(encoding="utf-8")
    return "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")


def _enrolment_json(enrolment: NewEnrolment) -> JSONResponse:
    body = {
        "secret": enrolment.secret,
        "otpauth_uri": enrolment.uri,
        "qr_svg": qr_svg_data_uri(enrolment.uri),
        "algorithm": "SHA1",
        "digits": 6,
        "period": 30,
    }
    return JSONResponse(body, headers=_NO_STORE)


def _text(data: dict[str, Any], name: str, limit: int = 128) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= limit:
        raise Refused(400, f"{name}: must be a string of 1-{limit} characters")
    return value


def _unavailable() -> HTTPException:
    return HTTPException(
        503, "authentication temporarily unavailable", headers={"Retry-After": "5"}
    )


def second_factor_router(directory: Directory) -> APIRouter:
    """The /v1/auth/totp routes, bound to ``directory``."""
    router = APIRouter(prefix="/v1/auth/totp", tags=["authentication"])
    any_principal = require_principal(directory=directory)
    admin = require_principal(roles=("admin",), directory=directory)
    refusals: dict[int | str, dict[str, Any]] = {
        400: {"description": "Malformed body or field"},
        401: {"description": "Invalid code or challenge (the same for every cause)"},
        429: {"description": "Too many failed attempts; see Retry-After"},
        503: {"description": "Authentication temporarily unavailable"},
    }

    @router.post(
        "/verify",
        summary="The second step of a login: a TOTP code or a recovery code",
        response_description="A bearer token, as POST /v1/auth/login gives",
        openapi_extra=_body(
            {"challenge": _CHALLENGE, "code": _CODE, "recovery_code": _RECOVERY}, ["challenge"]
        ),
        responses=refusals,
    )
    async def verify(request: Request) -> Response:
        try:
            data = await json_object(request, ("challenge", "code", "recovery_code"))
            challenge = _text(data, "challenge")
            code, recovery_code = _text(data, "code", 16), _text(data, "recovery_code", 32)
            if challenge is None:
                raise Refused(400, "challenge: required")
            if (code is None) == (recovery_code is None):
                raise Refused(400, "give either code or recovery_code")
        except Refused as bad:
            return bad.response()
        source = client_address(request, directory.security)
        try:
            outcome = await directory.complete_login(
                challenge, code=code, recovery_code=recovery_code, source=source
            )
        except DirectoryUnavailable:
            raise _unavailable() from None
        if isinstance(outcome, LoginRefused):
            return login_refused(outcome, INVALID_CODE)
        return token_response(request, outcome)

    @router.get("", summary="The caller's second factor")
    async def status(principal: Principal = Depends(any_principal)) -> dict[str, Any]:  # noqa: B008
        if principal.user is None:
            raise HTTPException(403, "forbidden: a token without a user has no second factor")
        policy = directory.second_factor_policy(principal.tenant)
        try:
            record = await directory.second_factors.enrolment(principal.tenant, principal.user)
            left = await directory.second_factors.recovery_codes_left(
                principal.tenant, principal.user
            )
        except (DirectoryUnavailable, OSError):
            raise _unavailable() from None
        return {
            "policy": policy.policy,
            "required": policy.required_for(principal.role),
            "enrolled": record is not None and record.confirmed,
            "pending": record is not None and not record.confirmed and record.has_secret,
            "recovery_codes_left": left,
        }

    @router.post(
        "/enrol",
        summary="Start an enrolment: a new secret, shown once (token, or a login's challenge)",
        response_description=(
            "secret (base32), otpauth_uri and qr_svg (a data: URI of an SVG QR code) for an "
            "authenticator app; confirm with its first code"
        ),
        openapi_extra=_body({"challenge": _CHALLENGE}, []),
        responses={
            **refusals,
            409: {"description": "Enrolled already, the policy is off, or no totp_key"},
        },
    )
    async def enrol(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Security(bearer_scheme),  # noqa: B008
    ) -> Response:
        source = client_address(request, directory.security)
        try:
            data = await _optional_body(request, ("challenge",))
            challenge = _text(data, "challenge")
        except Refused as bad:
            return bad.response()
        try:
            if challenge is not None:
                if credentials is not None:
                    return Refused(400, "give a token or a challenge, not both").response()
                found = await directory.enrol_with_challenge(challenge, source=source)
                if found is None:
                    return login_refused(LoginRefused("invalid"), INVALID_CODE)
                return _enrolment_json(found)
            principal = await _user_principal(request, credentials)
            assert principal.user is not None
            enrolment = await directory.enrol_second_factor(
                principal.tenant, principal.user, source=source
            )
        except DirectoryError as err:
            raise HTTPException(409, str(err)) from None
        except DirectoryUnavailable:
            raise _unavailable() from None
        return _enrolment_json(enrolment)

    @router.post(
        "/confirm",
        summary="Confirm an enrolment with its first code: the ten recovery codes, once",
        response_description=(
            "recovery_codes; with a challenge, also the login's token (as POST "
            "/v1/auth/login gives)"
        ),
        openapi_extra=_body({"code": _CODE, "challenge": _CHALLENGE}, ["code"]),
        responses=refusals,
    )
    async def confirm(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Security(bearer_scheme),  # noqa: B008
    ) -> Response:
        source = client_address(request, directory.security)
        try:
            data = await json_object(request, ("code", "challenge"))
            code, challenge = _text(data, "code", 16), _text(data, "challenge")
            if code is None:
                raise Refused(400, "code: required")
            if challenge is not None and credentials is not None:
                raise Refused(400, "give a token or a challenge, not both")
        except Refused as bad:
            return bad.response()
        try:
            if challenge is not None:
                outcome = await directory.confirm_with_challenge(challenge, code, source=source)
                if isinstance(outcome, LoginRefused):
                    return login_refused(outcome, INVALID_CODE)
                token, codes = outcome
                return token_response(request, token, recovery_codes=list(codes))
            principal = await _user_principal(request, credentials)
            assert principal.user is not None
            confirmed = await directory.confirm_second_factor(
                principal.tenant, principal.user, code, source=source
            )
        except DirectoryUnavailable:
            raise _unavailable() from None
        if isinstance(confirmed, LoginRefused):
            return login_refused(confirmed, INVALID_CODE)
        return JSONResponse({"recovery_codes": list(confirmed)}, headers=_NO_STORE)

    @router.post(
        "/recovery-codes",
        summary="Ten new recovery codes for a current code (the old ones stop working)",
        response_description="recovery_codes: shown in this answer only",
        openapi_extra=_body({"code": _CODE}, ["code"]),
        responses=refusals,
    )
    async def recovery_codes(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Security(bearer_scheme),  # noqa: B008
    ) -> Response:
        asked = await _code_of_user(request, credentials)
        if isinstance(asked, Response):
            return asked
        code, principal, user, source = asked
        try:
            made = await directory.new_recovery_codes(principal.tenant, user, code, source=source)
        except DirectoryUnavailable:
            raise _unavailable() from None
        if isinstance(made, LoginRefused):
            return login_refused(made, INVALID_CODE)
        return JSONResponse({"recovery_codes": list(made)}, headers=_NO_STORE)

    @router.post(
        "/disable",
        status_code=204,
        summary="Turn off the caller's own second factor, for a current code",
        openapi_extra=_body({"code": _CODE}, ["code"]),
        responses={
            **refusals,
            403: {"description": "The tenant's policy requires a second factor of this user"},
        },
    )
    async def turn_off(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Security(bearer_scheme),  # noqa: B008
    ) -> Response:
        asked = await _code_of_user(request, credentials)
        if isinstance(asked, Response):
            return asked
        code, principal, user, source = asked
        if directory.second_factor_policy(principal.tenant).required_for(principal.role):
            return Refused(
                403, "the tenant's policy requires a second factor: ask an admin"
            ).response()
        try:
            refused = await directory.turn_off_second_factor(
                principal.tenant, user, code, source=source
            )
        except DirectoryUnavailable:
            raise _unavailable() from None
        if refused is not None:
            return login_refused(refused, INVALID_CODE)
        return Response(status_code=204)

    async def _code_of_user(
        request: Request, credentials: HTTPAuthorizationCredentials | None
    ) -> tuple[str, Principal, str, str] | Response:
        """A user's own action for a current code: (code, principal, its user, source),
        or the refusal of a malformed body."""
        try:
            code = _text(await json_object(request, ("code",)), "code", 16)
            if code is None:
                raise Refused(400, "code: required")
        except Refused as bad:
            return bad.response()
        principal = await _user_principal(request, credentials)
        assert principal.user is not None
        return code, principal, principal.user, client_address(request, directory.security)

    async def _user_principal(
        request: Request, credentials: HTTPAuthorizationCredentials | None
    ) -> Principal:
        bearer = None if credentials is None else credentials.credentials
        principal = await authenticate(directory, bearer)
        note_principal(request, principal)
        if principal.user is None:
            raise HTTPException(403, "forbidden: a token without a user has no second factor")
        return principal

    username_path = Path(pattern=USERNAME.pattern, max_length=64)

    @router.delete(
        "/users/{username}",
        status_code=204,
        summary="Disable a user's second factor (admins; audited)",
        responses={404: {"description": "No such user, or no second factor"}},
    )
    async def disable(
        request: Request,
        username: str = username_path,
        principal: Principal = Depends(admin),  # noqa: B008
    ) -> Response:
        source = client_address(request, directory.security)
        try:
            removed = await directory.disable_second_factor(
                principal.tenant, username, source=_admin_source(principal, source)
            )
        except DirectoryError:
            raise HTTPException(404, "no such user") from None
        except DirectoryUnavailable:
            raise _unavailable() from None
        if not removed:
            raise HTTPException(404, "the user has no second factor")
        return Response(status_code=204)

    @router.post(
        "/users/{username}/reset",
        summary="Reset a user's second factor: enrol again at the next login (admins)",
        response_description="tokens_revoked: the user's tokens revoked with it",
        responses={404: {"description": "No such user"}},
    )
    async def reset(
        request: Request,
        username: str = username_path,
        principal: Principal = Depends(admin),  # noqa: B008
    ) -> dict[str, int]:
        source = client_address(request, directory.security)
        try:
            revoked = await directory.reset_second_factor(
                principal.tenant, username, source=_admin_source(principal, source)
            )
        except DirectoryError:
            raise HTTPException(404, "no such user") from None
        except DirectoryUnavailable:
            raise _unavailable() from None
        return {"tokens_revoked": revoked}

    return router


def _admin_source(principal: Principal, address: str) -> str:
    """Who did it, for the audit: the admin's name and address."""
    return f"{address} (admin {principal.user})"


async def _optional_body(request: Request, fields: tuple[str, ...]) -> dict[str, Any]:
    """An optional JSON body: none at all reads as {}."""
    empty = request.headers.get("content-length", "0") == "0"
    if empty and "transfer-encoding" not in request.headers:
        return {}
    return await json_object(request, fields)
