"""Where a message came from and where one goes: plain values, no SIP semantics."""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

STREAM_TRANSPORTS = frozenset({"tcp", "tls"})
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}


@dataclass(frozen=True, slots=True)
class Listen:
    """One listening endpoint."""

    transport: str  # "udp" | "tcp" | "tls"
    host: str
    port: int


# Not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__,
# and one Source is made per datagram, one Target per message sent (0.4 and 0.7 µs
# frozen, 0.1 and 0.2 not). Nothing changes them after construction; they stay
# hashable.
@dataclass(slots=True, unsafe_hash=True)
class Source:
    """The origin of one received message.

    ``conn_id`` names the stream connection it arrived on (``None`` for UDP), so a
    response can go back over that very connection (RFC 3261 §18.2.2).
    """

    transport: str
    remote: tuple[str, int]
    local: tuple[str, int]
    conn_id: int | None = None

    @property
    def reliable(self) -> bool:
        return self.transport in STREAM_TRANSPORTS


@dataclass(slots=True, unsafe_hash=True)
class Target:
    """A destination: a transport, a host (IP literal or name) and a port.

    With ``conn_id`` set the transport layer prefers that connection and falls back to
    the address when it has gone away. With ``local_port`` set a UDP datagram leaves
    from the socket bound to that port: a response from the port its request came to,
    a request to a phone behind NAT from the port its registration came to (the only
    one its NAT lets in).

    ``flow`` marks an address a message came from (a registration's source, the client
    a response goes back to): the peer proved it is there, so the destination policy's
    loopback rule does not apply to it (gateway/proxy/destinations.py).
    """

    transport: str
    host: str
    port: int
    conn_id: int | None = None
    local_port: int | None = None
    flow: bool = False

    @property
    def reliable(self) -> bool:
        return self.transport in STREAM_TRANSPORTS


def strip_brackets(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# The same few addresses are looked at on every message (the peer's, ours): the
# ipaddress module costs microseconds per parse, a memoized hit tens of nanoseconds.
@functools.lru_cache(maxsize=8192)
def ip_address_of(host: str) -> IPAddress | None:
    """The address an IP literal names (brackets allowed), ``None`` for a name."""
    try:
        return ipaddress.ip_address(strip_brackets(host))
    except ValueError:
        return None


@functools.lru_cache(maxsize=8192)
def canonical_ip(host: str) -> str | None:
    """An IP literal in its one written form (brackets off, IPv6 compressed, lower
    case), ``None`` for a name: what a configured address is compared with."""
    addr = ip_address_of(host)
    return None if addr is None else str(addr)


def ip_version(host: str) -> int | None:
    """4 or 6 for an IP literal (brackets allowed), ``None`` for a name. The socket
    address family is the transport's business (`transport.layer.ip_family`)."""
    addr = ip_address_of(host)
    return None if addr is None else addr.version


def host_for_uri(host: str) -> str:
    """An IP or name as it is written in a SIP URI or Via: IPv6 in brackets."""
    bare = strip_brackets(host)
    return f"[{bare}]" if ":" in bare else bare


def same_host(a: str, b: str) -> bool:
    """Compare two hosts, IPv6 spelled in any valid way."""
    if a == b:
        return True
    a, b = strip_brackets(a).lower(), strip_brackets(b).lower()
    if a == b:
        return True
    first = ip_address_of(a)
    return first is not None and first == ip_address_of(b)


def source_bucket(host: str) -> str:
    """What a source is counted by (flood guard, connections per source): an IPv4
    address, or an IPv6 /64 (one customer's network: a host there can take any of 2**64
    addresses). A host that is not an address is kept as it is."""
    if ":" not in host:
        return host  # IPv4 as the socket reported it: already canonical
    try:
        ip = ipaddress.IPv6Address(strip_brackets(host))
    except ValueError:
        return host
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, 64), strict=False))
