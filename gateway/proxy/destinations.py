"""Where the gateway may send SIP: the one place that decides (the destination policy).

Every address the proxy, the click-to-dial user agent or the prober sends to comes from
somewhere: the configuration (trunks), a received message (Request-URI, Route, Contact,
Via), or a registration. The last two are chosen by whoever sent the message, so without
a policy one datagram could make the gateway open a connection to its own Redis and
write a SIP body there, which Redis would run as commands (issue #11). The rules, in
order:

1. **Never our own services.** The Redis server, the HTTP listener and the HEP intake
   are refused whatever the message says: there is no legitimate reason to send SIP to
   them. Our own SIP listeners likewise, except as a configured trunk: a spiral back to
   ourselves is a decision of the configuration, never of a message.
2. **Never a denied network** (``sip.deny_destinations``): by default the unspecified
   addresses, link-local (169.254/16 holds cloud metadata services), multicast,
   reserved and broadcast space (``DEFAULT_DENY_DESTINATIONS``).
3. **Loopback only for configured peers and proven flows.** A trunk's address is
   configuration; a *flow* is an address a message came from (the source of a
   registration, the client a response goes back to): the peer is there. Anything else
   naming our own host is someone asking us to reach a process beside us.

Everything else (a phone's or a carrier's public address) is allowed: that is what a
proxy is for. Addresses are compared as IP literals; a host name is checked after it
has been resolved, by the transport (``TransportLayer.destination_check``).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable

from gateway.config import Settings
from gateway.config.model import DEFAULT_DENY_DESTINATIONS
from gateway.transport.addresses import Target, ip_address_of, strip_brackets

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
_WILDCARDS = frozenset({"", "0.0.0.0", "::", "*"})


def _address(host: str) -> IPAddress | None:
    addr = ip_address_of(host)
    if addr is None:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return addr


def is_loopback(host: str) -> bool:
    addr = _address(host)
    return addr is not None and any(addr in net for net in _LOOPBACK)


class DestinationPolicy:
    """Decides whether SIP may go to an address. Built once at start; sans I/O.

    ``services``: (host, port) of our own listeners and backends; a wildcard or local
    host stands for every local address. ``local_hosts``: addresses that are this
    machine besides loopback (our SIP listen and advertise addresses). ``is_peer``: a
    configured trunk's address.
    """

    def __init__(
        self,
        *,
        services: Iterable[tuple[str, int]],
        sip_ports: Callable[[], frozenset[int]] = frozenset,
        deny: Iterable[str] = DEFAULT_DENY_DESTINATIONS,
        local_hosts: Iterable[str] = (),
        is_peer: Callable[[str, int], bool] = lambda host, port: False,
        resolve: Callable[[str, int], list[str]] | None = None,
    ) -> None:
        self.deny: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(entry, strict=False) for entry in deny
        )
        self.is_peer = is_peer
        # Service host names (a Redis in a container network) are resolved once, here,
        # by the runtime's resolver: this module does no I/O.
        self._resolve = resolve or _unresolved
        self._local: set[IPAddress] = set()
        for host in local_hosts:
            addr = _address(host)
            if addr is not None and not addr.is_unspecified:
                self._local.add(addr)
        # Ports of services listening on this machine (any local address), and exact
        # (address, port) pairs of services elsewhere (a remote Redis).
        self._local_ports: set[int] = set()
        self._remote: set[tuple[IPAddress, int]] = set()
        for host, port in services:
            self._add_service(host, port)
        self.sip_ports = sip_ports  # as bound (port 0 in the settings), workers' too
        self._classify = functools.lru_cache(maxsize=4096)(self._classify_host)

    def add_services(self, services: Iterable[tuple[str, int]]) -> None:
        """More of our own services, learnt while running: the nodes a Redis Cluster or
        Sentinel names (runtime/redis_topology.py, which resolves their names first, so
        nothing here waits on DNS). Only ever added: a node that left may come back, and
        a refusal that outlives its node costs nothing, while a missing one is the
        attack."""
        for host, port in services:
            self._add_service(host, port)

    def _add_service(self, host: str, port: int) -> None:
        if strip_brackets(host).lower() in _WILDCARDS or host.lower() == "localhost":
            self._local_ports.add(port)
            return
        addr = _address(host)
        if addr is None:
            # A name (a Redis host in a container network): whatever it resolves to now.
            for resolved in self._resolve(host, port):
                self._add_service(resolved, port)
            return
        if self._is_local(addr):
            self._local_ports.add(port)
        else:
            self._remote.add((addr, port))

    def _is_local(self, addr: IPAddress) -> bool:
        return addr in self._local or any(addr in net for net in _LOOPBACK)

    def _classify_host(self, host: str) -> tuple[IPAddress | None, bool, bool]:
        """(address, on this machine, in a denied network) of a host; memoized per
        policy (``_classify``): it runs for every message sent, and network membership
        tests are slow."""
        addr = _address(host)
        if addr is None:
            return None, False, False
        return addr, self._is_local(addr), any(addr in net for net in self.deny)

    # -- decisions ---------------------------------------------------------------------
    def refusal(self, host: str, port: int, *, flow: bool = False) -> str | None:
        """Why SIP may not go to ``host:port`` (a short fixed phrase, a metric label),
        or None when it may. ``flow``: the address is where a message came from."""
        addr, local, denied = self._classify(host)
        if addr is None:
            return None  # a name: checked once resolved (TransportLayer.destination_check)
        if (local and port in self._local_ports) or (self._remote and (addr, port) in self._remote):
            return "own_service"
        if local and port in self.sip_ports() and not self.is_peer(str(addr), port):
            return "own_service"
        if denied:
            return "denied_network"
        if local and not flow and not self.is_peer(str(addr), port):
            return "loopback"
        return None

    def refusal_for(self, target: Target) -> str | None:
        return self.refusal(target.host, target.port, flow=target.flow)

    def contact_refusal(self, host: str, port: int, source_host: str) -> str | None:
        """Why a REGISTER may not bind this Contact address (None: it may).

        The phone is reached over its flow anyway (routing.contact_targets); this refuses
        bindings that can only be an attempt to aim us at something: our own services, a
        denied network, or this machine when the phone is not on it.
        """
        addr = _address(host)
        if addr is None:
            return None
        flow = (self._is_local(addr) and is_loopback(source_host)) or (
            _address(source_host) == addr
        )
        return self.refusal(host, port, flow=flow)


def _unresolved(host: str, port: int) -> list[str]:
    raise ValueError(f"service host {host!r} is a name and no resolver was given")


def service_endpoints(settings: Settings) -> list[tuple[str, int]]:
    """Our own listeners and backends besides SIP, from the settings: Redis as
    configured (the server, or every cluster seed and every sentinel)."""
    endpoints: list[tuple[str, int]] = list(settings.redis.endpoints)
    http_host, _, http_port = settings.http.listen.rpartition(":")
    if http_port.isdigit():
        endpoints.append((http_host, int(http_port)))
    hep = settings.monitor.hep_listen
    if hep is not None:
        endpoints.append((hep.host, hep.port))
    return endpoints
