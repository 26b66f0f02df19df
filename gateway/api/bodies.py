"""Request bodies and refusals: the one JSON body reader of the API, and the one error
its handlers raise.

Every endpoint that takes a body reads it the same way: JSON only (415 otherwise), at
most the endpoint's own byte limit, counted while it streams in (413 before the rest is
read), valid JSON (400). What a body must hold beyond that is the endpoint's business.
"""

from __future__ import annotations

import json

from fastapi import Request
from fastapi.responses import JSONResponse

__all__ = ["Refused", "read_json"]


class Refused(Exception):
    """A request refused with its status (4xx, or 503) and a message for the client,
    answered as ``{"detail": message}``. A 503 tells the client when to retry
    (``Retry-After: 1`` unless ``headers`` say otherwise)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        if headers is None and status == 503:
            headers = {"Retry-After": "1"}
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse({"detail": self.detail}, status_code=self.status, headers=self.headers)


async def read_json(request: Request, limit: int, *, empty: object = ...) -> object:
    """The request's JSON body, at most ``limit`` bytes; ``Refused`` otherwise. An empty
    body is ``empty`` when one is given (an optional body), else a refusal."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    is_json = content_type == "application/json" or content_type.endswith("+json")
    if not is_json and empty is ...:
        raise Refused(415, "Content-Type must be application/json")  # before reading it
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Refused(413, f"request body larger than {limit} bytes")
    if not body and empty is not ...:
        return empty
    if not is_json:
        raise Refused(415, "Content-Type must be application/json")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Refused(400, "request body is not valid JSON") from None
