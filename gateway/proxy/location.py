"""The location service: where each extension's phones can be reached (RFC 3261 §10).

In memory, per process. `gateway.runtime.shared_location.SharedLocation` keeps the same
synchronous interface and replicates the bindings between worker processes and nodes
through Redis.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.sip.errors import SIPParseError
from gateway.sip.uri import SipURI, parse_uri
from gateway.transport.addresses import DEFAULT_PORTS, Source, same_host


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

    def contact_port(self) -> int | None:
        """The port the Contact names (its transport's default when it names none)."""
        try:
            uri = parse_uri(self.contact_uri)
        except SIPParseError:
            return None
        if not isinstance(uri, SipURI):
            return None
        return uri.port or DEFAULT_PORTS.get(uri.transport, 5060)

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

    def reaches(self, host: str, port: int, now: float) -> bool:
        """A live registration is at ``host:port``: its source, or its Contact when that
        names the host the REGISTER came from. What the destination policy asks before
        sending an in-dialog request to this machine's own addresses, so it scans (a
        phone on the gateway's host is rare; everywhere else this is never called)."""
        for items in self._aors.values():
            for binding in items:
                if binding.expires_at <= now:
                    continue
                remote = binding.source.remote
                if not same_host(remote[0], host):
                    continue
                if remote[1] == port or binding.contact_port() == port:
                    return True
        return False

    def count(self, now: float) -> int:
        return sum(1 for items in self._aors.values() for b in items if b.expires_at > now)

    def __len__(self) -> int:
        """Addresses of record held (live or not yet purged)."""
        return len(self._aors)

    def purge(self, now: float) -> None:
        for key in list(self._aors):
            self.bindings(*key, now)
