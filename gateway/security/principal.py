"""Who is making a request: the identity a bearer token stands for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["admin", "user", "sync"]
ROLES: tuple[Role, ...] = ("admin", "user", "sync")


@dataclass(frozen=True)
class Principal:
    """The holder of a valid token: one tenant, one role, and what it may see.

    ``extensions`` is what a "user" may see (its own extension plus the ones it watches);
    it is empty for an "admin", who sees every extension of its tenant, and for "sync"
    (contact sync), which sees no calls at all. Nothing of another tenant is ever
    visible, whatever the role.
    """

    tenant: str
    user: str | None  # None for tenant-level tokens (sync)
    role: Role
    extensions: frozenset[str] = frozenset()
    token_id: str = ""  # the first 16 hex digits of the token's SHA-256: names it in logs
    expires_at: float | None = None  # Unix time

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may_see_tenant(self, tenant: str) -> bool:
        return tenant == self.tenant

    def may_see_extension(self, extension: str) -> bool:
        """True when calls of ``extension`` (of this principal's tenant) are visible."""
        if self.role == "admin":
            return True
        return self.role == "user" and extension in self.extensions
