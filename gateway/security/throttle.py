"""Brute-force throttling of logins: per (tenant, username) and per source address.

Each login attempt *reserves* a slot in two counters before the password is checked
(so concurrent guesses cannot slip past the limit): the (tenant, username) counter and
the source counter. A counter at its limit refuses further attempts until it expires,
``lockout`` seconds after the attempt that filled it. A counter's window is
``lockout`` seconds from its first attempt, so ``max_failures`` failures within
``lockout`` seconds lock for ``lockout`` seconds.

After the check:
- success: the (tenant, username) counter is reset; the source counter gives back
  only this attempt's slot (a valid account must not wash away the failures of the
  other usernames a source tried);
- failure: both slots stay used.

The counting is done by a ``CounterStore``: ``RedisCounterStore`` (shared by every
node, atomic Lua) in the gateway, ``MemoryCounterStore`` (same semantics, any clock)
for tests and tools.
"""

from __future__ import annotations

import ipaddress
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis

from gateway.security import keys, tenant_keys


class CounterStore(Protocol):
    async def reserve(self, key: str, limit: int, window: float) -> float | None:
        """Count one attempt under ``key``: None when allowed (the attempt is counted),
        else the seconds until the key accepts attempts again (nothing counted)."""

    async def reset(self, key: str) -> None:
        """Forget every attempt under ``key``."""

    async def release(self, key: str) -> None:
        """Give back one reserved attempt."""


class MemoryCounterStore:
    """``CounterStore`` in a dict, with an injectable clock (tests, single process)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._counters: dict[str, tuple[int, float]] = {}  # key -> (count, expires at)

    def _live(self, key: str, now: float) -> tuple[int, float] | None:
        entry = self._counters.get(key)
        if entry is not None and entry[1] <= now:
            del self._counters[key]
            return None
        return entry

    async def reserve(self, key: str, limit: int, window: float) -> float | None:
        now = self._clock()
        entry = self._live(key, now)
        count, expires = entry if entry is not None else (0, now + window)
        if count >= limit:
            return expires - now
        count += 1
        if count == 1 or count >= limit:
            expires = now + window
        self._counters[key] = (count, expires)
        return None

    async def reset(self, key: str) -> None:
        self._counters.pop(key, None)

    async def release(self, key: str) -> None:
        entry = self._live(key, self._clock())
        if entry is not None and entry[0] > 0:
            self._counters[key] = (entry[0] - 1, entry[1])


# Same semantics as MemoryCounterStore.reserve, atomically. Returns -1 when the attempt
# is counted, else the milliseconds until the key expires. KEYS[2], when given, is the
# tenant's key index (tenant_keys.py): a tenant's counter is entered there as it expires.
_RESERVE = (
    tenant_keys.INDEX_KEY_LUA
    + """
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
local limit = tonumber(ARGV[1])
if count >= limit then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl < 0 then ttl = tonumber(ARGV[2]) end
  return ttl
end
count = redis.call('INCR', KEYS[1])
if count == 1 or count >= limit then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  if KEYS[2] then
    local t = redis.call('TIME')
    index_key(KEYS[2], KEYS[1], tonumber(t[1]) * 1000 + tonumber(ARGV[2]) + 1000)
  end
end
return -1
"""
)

_RELEASE = """
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count > 0 then redis.call('DECR', KEYS[1]) end
return count
"""


class RedisCounterStore:
    """``CounterStore`` in Redis: one expiring integer per key, updated by Lua scripts."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._reserve = redis.register_script(_RESERVE)
        self._release = redis.register_script(_RELEASE)

    async def reserve(self, key: str, limit: int, window: float) -> float | None:
        window_ms = max(1, math.ceil(window * 1000))
        tenant = keys.tenant_of_key(key)
        held = [key] if tenant is None else [key, keys.key_index(tenant)]
        result = int(await self._reserve(keys=held, args=[limit, window_ms]))
        return None if result < 0 else result / 1000

    async def reset(self, key: str) -> None:
        await self._redis.delete(key)

    async def release(self, key: str) -> None:
        await self._release(keys=[key], args=[])


@dataclass(frozen=True)
class ThrottlePolicy:
    max_failures: int = 5  # per (tenant, username)
    max_failures_per_source: int = 20  # per source address (IPv6: per /64)
    lockout: float = 300.0  # seconds: the counting window and the lockout


@dataclass(frozen=True)
class Attempt:
    """A login attempt that may go on to check the password; pass it back to
    ``succeeded`` or ``failed``."""

    user_key: str | None
    source_key: str


@dataclass(frozen=True)
class Throttled:
    retry_after: float  # seconds
    scope: str  # "user" or "source"


_UNSAFE = re.compile(r"[^A-Za-z0-9.:_\[\]/-]")


def source_bucket(source: str) -> str:
    """The unit a source address is throttled by: an IPv4 address, or an IPv6 /64 (one
    customer's network; a host there can pick any of 2**64 addresses). Anything that is
    not an address is kept as it is, made safe for a key and bounded."""
    try:
        ip = ipaddress.ip_address(source.strip("[]"))
    except ValueError:
        return _UNSAFE.sub("_", source)[:64] or "unknown"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class LoginThrottle:
    def __init__(self, store: CounterStore, policy: ThrottlePolicy) -> None:
        self.store = store
        self.policy = policy

    async def acquire(self, tenant: str | None, username: str, source: str) -> Attempt | Throttled:
        """Reserve an attempt for (tenant, username) from ``source``, or say how long to
        wait. ``tenant`` None (no such tenant) counts the source only."""
        policy = self.policy
        user_key = None if tenant is None else keys.user_failures(tenant, username)
        source_key = keys.source_failures(source_bucket(source))
        if user_key is not None:
            wait = await self.store.reserve(user_key, policy.max_failures, policy.lockout)
            if wait is not None:
                return Throttled(wait, "user")
        wait = await self.store.reserve(source_key, policy.max_failures_per_source, policy.lockout)
        if wait is not None:
            if user_key is not None:
                await self.store.release(user_key)  # this attempt checks no password
            return Throttled(wait, "source")
        return Attempt(user_key, source_key)

    async def succeeded(self, attempt: Attempt) -> None:
        if attempt.user_key is not None:
            await self.store.reset(attempt.user_key)
        await self.store.release(attempt.source_key)

    async def passed(self, attempt: Attempt) -> None:
        """A right password that still owes a second factor: this attempt is no failure
        (both slots are given back), but the user's earlier failures stay counted. A
        reset here would let a holder of the password try codes for ever, one password
        step between each (second_factor.py counts codes in the same counters)."""
        if attempt.user_key is not None:
            await self.store.release(attempt.user_key)
        await self.store.release(attempt.source_key)

    async def failed(self, attempt: Attempt) -> None:
        """Nothing to do: the reserved slots are the failures. Kept for symmetry."""
