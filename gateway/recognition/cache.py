"""The per-node contact cache: LRU with a time to live, and negative entries.

A hit answers a look-up without touching Redis (microseconds instead of a round trip).
"No such contact" is cached too, for a shorter time, because most callers of a busy
line are not in the CRM and would otherwise cost a round trip each time they call.

Staleness is bounded three ways: a sync's changes are pushed to every node over pub/sub
(`invalidate`); while that channel is down the cache is off (`enabled`), since a missed
invalidation could not be noticed; and every entry expires after its TTL anyway.

A look-up that raced an invalidation must not put its (older) answer back: `epoch`
counts invalidations, the look-up reads it before asking Redis and `put` ignores an
answer older than the last invalidation.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

Scalar = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class Contact:
    """The contact shown for a number: its fields and the source it came from."""

    source: str
    fields: Mapping[str, Scalar]


class ContactCache:
    def __init__(
        self,
        size: int,
        ttl: float,
        negative_ttl: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.size = size
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.clock = clock
        self.enabled = True
        self.epoch = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple[str, str], tuple[float, Contact | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, tenant: str, number: str) -> tuple[bool, Contact | None]:
        """(True, contact or None for "known absent") on a hit, (False, None) on a miss."""
        key = (tenant, number)
        entry = self._entries.get(key) if self.enabled else None
        if entry is None or entry[0] <= self.clock():
            if entry is not None:
                del self._entries[key]
            self.misses += 1
            return False, None
        self._entries.move_to_end(key)
        self.hits += 1
        return True, entry[1]

    def put(self, tenant: str, number: str, contact: Contact | None, epoch: int) -> None:
        if not self.enabled or epoch != self.epoch or self.size == 0:
            return  # an invalidation came in while this answer was on its way
        ttl = self.ttl if contact is not None else self.negative_ttl
        if ttl <= 0:
            return
        key = (tenant, number)
        self._entries[key] = (self.clock() + ttl, contact)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def invalidate(self, tenant: str, numbers: Iterable[str]) -> None:
        self.epoch += 1
        for number in numbers:
            self._entries.pop((tenant, number), None)

    def drop_tenant(self, tenant: str) -> None:
        self.epoch += 1
        for key in [k for k in self._entries if k[0] == tenant]:
            del self._entries[key]

    def clear(self) -> None:
        self.epoch += 1
        self._entries.clear()
