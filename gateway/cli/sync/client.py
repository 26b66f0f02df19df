"""The HTTP client of ``sipgw sync``: contact batches to the gateway's API.

    POST {url}/v1/contacts:batch          {"tenant", "source", "generation"?, "upserts", "deletes"}
    POST {url}/v1/sources/{source}:commit {"tenant", "generation"}

One persistent connection (stdlib ``http.client``; HTTPS with the system CAs or
``cafile``), the token as ``Authorization: Bearer``. Both calls are idempotent, so a
connection error, a timeout or a 502/503/504/429 is retried (3 times, backoff doubling
from ``backoff`` seconds, or the server's Retry-After); a certificate error is not.
Any other answer stops the sync with the gateway's own message: ``GatewayRefused``
(401 bad token, 403 wrong role or tenant, 413 batch too large, 422 invalid batch);
``GatewayUnavailable`` when the retries ran out. The token is never in a message.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from gateway import __version__

RETRY_STATUSES = frozenset({429, 502, 503, 504})
_MAX_RETRY_AFTER = 60.0
_MAX_DETAIL = 300  # characters of a gateway's message shown


class GatewayError(Exception):
    """The gateway did not accept a request; ``status`` is the HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class GatewayRefused(GatewayError):
    """The gateway answered no (4xx, 5xx other than a retryable one)."""


class GatewayUnavailable(GatewayError):
    """No answer from the gateway (network, TLS, or still busy after the retries)."""


@dataclass(frozen=True, slots=True)
class BatchAck:
    upserted: int
    deleted: int


def encode_batch(
    tenant: str,
    source: str,
    upserts: Sequence[bytes],
    deletes: Sequence[str],
    generation: str | None = None,
) -> bytes:
    """The body of a batch. ``upserts`` are encoded items ``{"number": …, "fields": {…}}``
    (the plan keeps them encoded, so they are never parsed again)."""
    head: dict[str, str] = {"tenant": tenant, "source": source}
    if generation is not None:
        head["generation"] = generation
    return b"".join(
        (
            json.dumps(head, separators=(",", ":")).encode()[:-1],
            b',"upserts":[',
            b",".join(upserts),
            b'],"deletes":',
            json.dumps(list(deletes), separators=(",", ":")).encode(),
            b"}",
        )
    )


class SyncClient:
    """Sends batches to one gateway over one kept-alive connection."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        cafile: Path | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 1.0,
        notice: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parts = urlsplit(url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._base = parts.path.rstrip("/")
        self._token = token
        self._context = ssl.create_default_context(cafile=cafile) if self._https else None
        self._timeout = timeout
        self._retries = retries
        self._backoff = backoff
        self._notice = notice
        self._sleep = sleep
        self._conn: http.client.HTTPConnection | None = None

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def send_batch(
        self,
        tenant: str,
        source: str,
        upserts: Sequence[bytes],
        deletes: Sequence[str],
        generation: str | None = None,
    ) -> BatchAck:
        """One batch; returns the gateway's counts once it has written it all."""
        body = encode_batch(tenant, source, upserts, deletes, generation)
        answer = self._post("/v1/contacts:batch", body)
        return BatchAck(_count(answer, "upserted"), _count(answer, "deleted"))

    def commit(self, tenant: str, source: str, generation: str) -> int:
        """End a full sync: the gateway removes what this generation did not send.
        Returns how many numbers it removed."""
        body = json.dumps({"tenant": tenant, "generation": generation}).encode()
        return _count(self._post(f"/v1/sources/{source}:commit", body), "deleted")

    # --- one request, with retries --------------------------------------------------------

    def _post(self, path: str, body: bytes) -> dict[str, object]:
        attempt = 0
        while True:
            try:
                status, payload, retry_after = self._exchange(self._base + path, body)
            except ssl.SSLError as exc:  # a certificate does not get better by retrying
                self.close()
                raise GatewayUnavailable(self._tls_message(exc)) from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                problem = f"cannot reach the gateway at {self.url}: {_describe(exc)}"
                retry_after = None
            else:
                if status == 200:
                    return _json_object(payload, status)
                if status not in RETRY_STATUSES:
                    raise GatewayRefused(_refusal(status, payload), status)
                problem = f"the gateway is busy (HTTP {status}: {_detail(payload)})"
            if attempt >= self._retries:
                raise GatewayUnavailable(f"{problem}; gave up after {attempt + 1} attempts")
            attempt += 1
            delay = retry_after if retry_after is not None else self._backoff * 2 ** (attempt - 1)
            if self._notice is not None:
                self._notice(f"{problem}; retry {attempt} of {self._retries} in {delay:g} s")
            self._sleep(delay)

    def _exchange(self, path: str, body: bytes) -> tuple[int, bytes, float | None]:
        if self._conn is None:
            if self._context is not None:
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=self._context
                )
            else:
                self._conn = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout
                )
        self._conn.request(
            "POST",
            path,
            body=body,
            headers={
                "Authorization": f"Bearer {self._token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": f"sipgw-sync/{__version__}",
            },
        )
        response = self._conn.getresponse()
        payload = response.read()  # read it all: the connection is then reusable
        if response.will_close:
            self.close()
        return response.status, payload, _retry_after(response.getheader("Retry-After"))

    def _tls_message(self, exc: ssl.SSLError) -> str:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return (
                f"the gateway's TLS certificate at {self.url} is not trusted "
                f"({exc.verify_message}); set gateway.cafile to the CA that signed it"
            )
        return f"TLS with the gateway at {self.url} failed: {exc.reason or exc}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _retry_after(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: use our own backoff
    if seconds is None or not seconds >= 0:
        return None
    return min(seconds, _MAX_RETRY_AFTER)


def _refusal(status: int, payload: bytes) -> str:
    detail = _detail(payload)
    if status == 401:
        return f"the gateway refused the token (HTTP 401: {detail})"
    if status == 403:
        return f"the gateway refused this sync (HTTP 403: {detail})"
    if status == 413:
        return f"the batch is too large for the gateway (HTTP 413: {detail}); lower --batch-size"
    if status == 422:
        return f"the gateway refused the batch (HTTP 422: {detail})"
    return f"the gateway answered HTTP {status}: {detail}"


def _detail(payload: bytes) -> str:
    """The gateway's message: ``detail`` of a JSON answer, else the start of the text."""
    try:
        data = json.loads(payload)
    except ValueError:
        data = None
    detail: object = data.get("detail") if isinstance(data, dict) else None
    if isinstance(detail, list):  # a framework's validation errors: "where: what; …"
        detail = "; ".join(_validation_item(item) for item in detail)
    text = detail if isinstance(detail, str) else payload.decode("utf-8", "replace")
    text = " ".join(text.split()) or "no message"
    return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL] + "…"


def _validation_item(item: object) -> str:
    if not isinstance(item, dict):
        return str(item)
    where = ".".join(str(part) for part in item.get("loc", ()))
    return f"{where}: {item.get('msg', '')}" if where else str(item.get("msg", item))


def _json_object(payload: bytes, status: int) -> dict[str, object]:
    try:
        data = json.loads(payload)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise GatewayRefused(f"the gateway answered HTTP {status} without a JSON object", status)
    return data


def _count(answer: dict[str, object], name: str) -> int:
    value = answer.get(name, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
