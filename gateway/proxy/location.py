"""The location service: where each extension's phones can be reached (RFC 3261 §10).

In memory, per process. `gateway.proxy.shared_location.SharedLocation` keeps the same
synchronous interface and replicates the bindings between worker processes and nodes
through Redis.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.transport.addresses import Source


@dataclass(slots=True)
class Binding:
    """One registered contact of an address of record."""

    contact_uri: str  # the Contact URI as registered, URI parameters kept (RFC 4475 cparam02)
    q: float
    expires_at: float  # on the proxy's monotonic clock
    call_id: str
    cseq: int
    source: Source  # where the REGISTER came from: its connection, or the NAT'ed address
    behind_nat: bool  # the phone asked for rport and its Contact differs from its source
    user_agent: str = ""
    instance: str | None = None  # +sip.instance (RFC 5626), when the phone gives one
    # The process whose REGISTER made this binding (SharedLocation's origin id); None:
    # this process. A binding of another process has no connection (conn_id None) here.
    origin: str | None = None

    def remaining(self, now: float) -> int:
        return max(0, round(self.expires_at - now))


@dataclass
class Location:
    """Bindings by (tenant id, extension)."""

    _aors: dict[tuple[str, str], list[Binding]] = field(default_factory=dict)

    def bindings(self, tenant: str, extension: str, now: float) -> list[Binding]:
        current = [b for b in self._aors.get((tenant, extension), ()) if b.expires_at > now]
        if current:
            self._aors[tenant, extension] = current
        else:
            self._aors.pop((tenant, extension), None)
        return sorted(current, key=lambda b: -b.q)

    def replace(self, tenant: str, extension: str, bindings: list[Binding]) -> None:
        if bindings:
            self._aors[tenant, extension] = bindings
        else:
            self._aors.pop((tenant, extension), None)

    def count(self, now: float) -> int:
        return sum(1 for items in self._aors.values() for b in items if b.expires_at > now)

    def __len__(self) -> int:
        """Addresses of record held (live or not yet purged)."""
        return len(self._aors)

    def purge(self, now: float) -> None:
        for key in list(self._aors):
            self.bindings(*key, now)
