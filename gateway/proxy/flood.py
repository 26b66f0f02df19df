"""SIP flood protection: requests counted per source, the excess dropped. Sans I/O.

``FloodGuard.admit(data, source)`` runs before the proxy parses anything (the
cheapest place to refuse work): each request from a source address (an IPv6 source by
its /64, one customer's network) is counted in fixed windows of ``window`` seconds;
past ``max_requests`` in a window the source's requests are dropped silently until the
window ends. No answer is sent: a flood gets no reflection from us and costs no
transaction state. A legitimate client that was too eager retransmits (UDP) or retries
and gets through in the next window.

Never counted:
- responses (they answer requests we sent);
- anything from the ``exempt`` networks (``sip.flood_exempt``, the loopback by
  default: only our own host's processes send from there, a co-located SBC included);
- anything from a configured trunk's source address (``match``). Trunks are trusted by
  address already (no digest), their OPTIONS keep-alives must never make us refuse
  them, and a carrier's call rate is its business, not a flood (Kamailio's default
  configuration says the same of its pike module: "exclude checking trusted peers, such
  as pstn gateways"). This check runs *before* counting, so a trunk's traffic never
  fills the bucket of a phone behind the same address either.

This sits in the proxy layer, not in ``security/`` with the login throttle, because the
SIP server applies it and the layers point down (security → proxy).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable

from gateway.config.syntax import parse_match
from gateway.transport.addresses import Source

log = logging.getLogger("sipgw.flood")

# Sources logged per window at most: a spoofed flood from many addresses must not
# become a log flood.
MAX_LOGGED_PER_WINDOW = 10
# Sources counted per window at most; beyond it new sources share one bucket, so a
# flood from countless (spoofed) addresses cannot grow memory without bound.
MAX_SOURCES = 100_000
_OVERFLOW = "*"


def source_bucket(host: str) -> str:
    """What a source is counted by: an IPv4 address, or an IPv6 /64 (a host there can
    take any of 2**64 addresses). A host that is not an address is kept as it is."""
    if ":" not in host:
        return host  # IPv4 as the socket reported it: already canonical
    try:
        ip = ipaddress.IPv6Address(host.strip("[]"))
    except ValueError:
        return host
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, 64), strict=False))


class FloodGuard:
    def __init__(
        self,
        max_requests: int,
        window: float,
        *,
        clock: Callable[[], float],
        is_peer: Callable[[str, int], bool],
        exempt: Iterable[str] = (),
        max_sources: int = MAX_SOURCES,
    ) -> None:
        self.max_requests = max_requests  # 0: off
        self.window = window
        self.clock = clock
        self.is_peer = is_peer
        self.exempt = tuple(parse_match(entry)[0] for entry in exempt)  # "ip" or CIDR
        self.max_sources = max_sources
        self.dropped = 0
        self._counts: dict[str, int] = {}
        self._window_end = float("-inf")
        self._logged = 0

    def admit(self, data: bytes, source: Source) -> bool:
        """False when this message is a request over its source's limit: drop it."""
        if not self.max_requests or data.startswith(b"SIP/"):
            return True
        host, port = source.remote
        if self.is_peer(host, port) or self._exempt(host):
            return True
        now = self.clock()
        if now >= self._window_end:
            self._counts.clear()
            self._window_end = now + self.window
            self._logged = 0
        key = source_bucket(host)
        count = self._counts.get(key)
        if count is None and len(self._counts) >= self.max_sources:
            key = _OVERFLOW
            count = self._counts.get(key)
        count = 1 if count is None else count + 1
        if count <= self.max_requests:
            self._counts[key] = count
            return True
        self.dropped += 1
        if count == self.max_requests + 1:
            self._counts[key] = count  # once: later drops need no write
            if self._logged < MAX_LOGGED_PER_WINDOW:
                self._logged += 1
                log.warning(
                    "sip flood: dropping requests",
                    extra={
                        "source": key,
                        "limit": self.max_requests,
                        "window": self.window,
                        "transport": source.transport,
                    },
                )
        return False

    def _exempt(self, host: str) -> bool:
        if not self.exempt:
            return False
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return False
        return any(ip in network for network in self.exempt)
