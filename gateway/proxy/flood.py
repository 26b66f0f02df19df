"""SIP flood protection: messages counted per source, the excess dropped. Sans I/O.

``FloodGuard.admit(source)`` runs before the proxy parses anything (the cheapest place
to refuse work): each message from a source address (an IPv6 source by its /64, one
customer's network) is counted in fixed windows of ``window`` seconds; past
``max_requests`` in a window the source's messages are dropped silently until the
window ends. No answer is sent: a flood gets no reflection from us and costs no
transaction state. A legitimate client that was too eager retransmits (UDP) or retries
and gets through in the next window.

Requests and responses are counted alike: a response costs a parse and a transaction
look-up as a request does, so a flood of fake responses must not be free.

Never counted:
- anything from the ``exempt`` networks (``sip.flood_exempt``, the loopback by
  default: only our own host's processes send from there, a co-located SBC included);
- anything from a configured trunk's source address (``match``). Trunks are trusted by
  address already (no digest), their OPTIONS keep-alives must never make us refuse
  them, and a carrier's call rate is its business, not a flood (Kamailio's default
  configuration says the same of its pike module: "exclude checking trusted peers, such
  as pstn gateways"). This check runs *before* counting, so a trunk's traffic never
  fills the bucket of a phone behind the same address either.

Bounded memory under a flood from countless (spoofed) UDP sources, two levels:

1. Exact counters for the first ``max_sources`` sources of a window (a dict). Every
   source of a normal window is here, counted exactly.
2. Sources beyond them are counted in a count-min sketch (``SKETCH_ROWS`` rows of
   ``SKETCH_WIDTH`` counters, 1 MiB, allocated the first time the table fills) with
   conservative update. A sketch never under-counts, so a heavy hitter outside the
   table is dropped after ``max_requests`` messages like one inside it. It may
   over-count through collisions, but only by what collides in *every* row: the
   counters stop at ``max_requests + 1`` and rise by at most one per message, so after
   P messages in a window at most P / max_requests counters of a row are full, and a
   source below the limit is dropped only if all of its four counters are full:
   probability at most (P / (max_requests * SKETCH_WIDTH)) ** 4 (the hash is keyed with
   a random secret per process, so nobody can aim addresses at another's counters).
   With the default limit of 200 and a flood of a million messages a window (far beyond
   what one process reads), that is below 1e-4 for a source that is not in the table,
   and 0 for one that is: a legitimate source below the limit is never dropped because
   the table is full, save by this bounded chance. The per-message cost is one keyed
   hash and four array reads: O(1), whatever the number of sources.

Both levels are cleared when the window ends, so a source dropped in one window starts
afresh in the next, whichever level counted it.

This sits in the proxy layer, not in ``security/`` with the login throttle, because the
SIP server applies it and the layers point down (security → proxy).
"""

from __future__ import annotations

import hashlib
import logging
import os
from array import array
from collections.abc import Callable, Iterable

from gateway.config.syntax import parse_match
from gateway.transport.addresses import Source, ip_address_of, source_bucket

__all__ = ["MAX_SOURCES", "SKETCH_ROWS", "SKETCH_WIDTH", "FloodGuard", "source_bucket"]

log = logging.getLogger("sipgw.flood")

# Sources logged per window at most: a spoofed flood from many addresses must not
# become a log flood.
MAX_LOGGED_PER_WINDOW = 10
# Sources counted exactly per window; beyond them, the sketch.
MAX_SOURCES = 100_000
# The sketch: 4 rows of 2**16 counters, indexed by the four 16-bit quarters of one
# 64-bit keyed hash.
SKETCH_ROWS = 4
SKETCH_WIDTH = 1 << 16
_MASK = SKETCH_WIDTH - 1


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
        self._sketch: array[int] | None = None  # allocated when the table first fills
        self._sketch_used = False
        self._salt = os.urandom(16)  # keys the sketch's hash: collisions cannot be aimed
        self._window_end = float("-inf")
        self._logged = 0

    def trusted(self, host: str, port: int) -> bool:
        """A configured trunk's source or an exempt network: never limited."""
        return self.is_peer(host, port) or self._exempt(host)

    def admit(self, source: Source) -> bool:
        """False when this message (request or response) is over its source's limit:
        drop it."""
        if not self.max_requests:
            return True
        host, port = source.remote
        if self.trusted(host, port):
            return True
        now = self.clock()
        if now >= self._window_end:
            self._new_window(now)
        key = source_bucket(host)
        count = self._counts.get(key)
        if count is not None or len(self._counts) < self.max_sources:
            count = 1 if count is None else count + 1
            if count > self.max_requests + 1:
                count = self.max_requests + 2  # past the first drop: no write needed
            else:
                self._counts[key] = count
        else:
            count = self._sketch_count(key)
        if count <= self.max_requests:
            return True
        self.dropped += 1
        if count == self.max_requests + 1 and self._logged < MAX_LOGGED_PER_WINDOW:
            self._logged += 1
            log.warning(
                "sip flood: dropping messages",
                extra={
                    "source": key,
                    "limit": self.max_requests,
                    "window": self.window,
                    "transport": source.transport,
                },
            )
        return False

    @property
    def tracked(self) -> int:
        """Sources counted exactly in this window (at most ``max_sources``)."""
        return len(self._counts)

    @property
    def sketch_cells(self) -> int:
        """Counters of the sketch (0 until the table first filled; fixed after)."""
        return 0 if self._sketch is None else len(self._sketch)

    def _new_window(self, now: float) -> None:
        self._counts.clear()
        if self._sketch_used and self._sketch is not None:
            self._sketch = array("I", bytes(4 * SKETCH_ROWS * SKETCH_WIDTH))
            self._sketch_used = False
        self._window_end = now + self.window
        self._logged = 0

    def _sketch_count(self, key: str) -> int:
        """Count one message of ``key`` in the sketch (conservative update: only the
        counters at the minimum rise); the count after it, capped at limit + 2."""
        sketch = self._sketch
        if sketch is None:
            sketch = self._sketch = array("I", bytes(4 * SKETCH_ROWS * SKETCH_WIDTH))
        self._sketch_used = True
        h = int.from_bytes(
            hashlib.blake2b(key.encode(), key=self._salt, digest_size=8).digest(), "little"
        )
        cells = (
            h & _MASK,
            SKETCH_WIDTH + ((h >> 16) & _MASK),
            2 * SKETCH_WIDTH + ((h >> 32) & _MASK),
            3 * SKETCH_WIDTH + ((h >> 48) & _MASK),
        )
        low = min(sketch[cells[0]], sketch[cells[1]], sketch[cells[2]], sketch[cells[3]])
        if low > self.max_requests:
            return self.max_requests + 2  # already dropping: counters stay capped
        count = low + 1
        for i in cells:
            if sketch[i] < count:
                sketch[i] = count
        return count

    def _exempt(self, host: str) -> bool:
        if not self.exempt:
            return False
        ip = ip_address_of(host)
        return ip is not None and any(ip in network for network in self.exempt)
