"""The audit log: who did what, from where, when, and with what result.

Every entry goes to two places: the tenant's capped Redis stream ``{tenant}:audit``
(``sipgw:audit`` for attempts that name no known tenant), where a tenant's admin can
read it, and the log (logger ``sipgw.audit``, one structured record per entry) for the
operator's log pipeline. An entry never holds a password or a token: a token is named
by its ``ref`` (16 hex digits of its SHA-256).

Fields: ``at`` (RFC 3339 UTC, µs), ``event`` (login, logout, token.create,
token.revoke, user.add, user.remove, tenant.create, tenant.remove), ``result`` (ok,
bad_password, unknown_user, unknown_tenant, no_api_password, throttled, …),
``tenant``, ``user``, ``source`` (client address, "cli:<os user>@<host>" or "config"),
``node``, ``ref``, ``detail``.

Text a client typed that fails its syntax check (a username, a tenant id) is never
written as typed: it may be a password put in the wrong field. ``redacted`` stands in
for it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from redis.asyncio import Redis
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from gateway.security import keys

log = logging.getLogger("sipgw.audit")

# Keys the refs of redacted text: random per process, so a ref tells equal texts apart
# within one log but is no offline test of a guessed password (an unkeyed hash would be).
_REDACTION_KEY = secrets.token_bytes(32)

FIELDS = ("at", "event", "result", "tenant", "user", "source", "node", "ref", "detail")


def rfc3339(ts: float) -> str:
    """Unix time as RFC 3339 UTC with microseconds and a Z."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def redacted(text: str, what: str) -> str:
    """What the log and the audit stream show instead of ``text``, a ``what`` (such as
    "username") that failed its syntax: its length and a keyed 32-bit reference, e.g.
    ``<invalid username, 16 chars, hmac:3f9a12bc>``."""
    digest = hmac.new(_REDACTION_KEY, text.encode("utf-8", "replace"), hashlib.sha256)
    return f"<invalid {what}, {len(text)} chars, hmac:{digest.hexdigest()[:8]}>"


@dataclass(frozen=True)
class AuditEntry:
    id: str  # the stream id ("" before it is written)
    at: str
    event: str
    result: str
    tenant: str
    user: str
    source: str
    node: str
    ref: str = ""
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_fields(cls, entry_id: str, fields: Mapping[str, str]) -> AuditEntry:
        return cls(id=entry_id, **{name: fields.get(name, "") for name in FIELDS})


class AuditLog:
    def __init__(
        self,
        redis: Redis,
        *,
        maxlen: int,
        node: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self.maxlen = maxlen
        self.node = node
        self._clock = clock

    async def record(
        self,
        tenant: str | None,
        event: str,
        result: str,
        *,
        user: str | None = None,
        source: str = "",
        ref: str = "",
        detail: str = "",
    ) -> AuditEntry:
        """Append one entry (``tenant`` None: the global stream) and log it.

        A Redis failure is logged, not raised: the attempt is still in the log, and
        whatever needed Redis besides the audit fails on its own.
        """
        entry = AuditEntry(
            id="", at=rfc3339(self._clock()), event=event, result=result,
            tenant=tenant or "", user=user or "", source=source, node=self.node,
            ref=ref, detail=detail,
        )  # fmt: skip
        fields: dict[FieldT, EncodableT] = {k: v for k, v in entry.to_dict().items() if k != "id"}
        level = logging.INFO if result == "ok" else logging.WARNING
        logged = {k: v for k, v in entry.to_dict().items() if k != "id"}
        log.log(level, "audit %s %s", event, result, extra={"audit": True, **logged})
        try:
            entry_id = await self._redis.xadd(
                keys.audit(tenant), fields, maxlen=self.maxlen, approximate=True
            )
        except (RedisError, OSError) as exc:
            log.error(
                "audit entry not stored in Redis",
                extra={"event": event, "tenant": tenant or "", "error": str(exc)},
            )
            return entry
        return AuditEntry(**{**entry.to_dict(), "id": str(entry_id)})

    async def entries(
        self, tenant: str | None, *, count: int = 100, before: str | None = None
    ) -> list[AuditEntry]:
        """The newest ``count`` entries of a tenant (``None``: the global stream), newest
        first; ``before`` (an entry id, exclusive) pages further back."""
        high = "+" if before is None else f"({before}"
        rows = await self._redis.xrevrange(keys.audit(tenant), high, "-", count=count)
        entries: list[AuditEntry] = []
        for entry_id, raw in rows or ():
            fields = {str(k): str(v) for k, v in (raw or {}).items()}
            entries.append(AuditEntry.from_fields(str(entry_id), fields))
        return entries
