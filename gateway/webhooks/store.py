"""Subscriptions, positions and leases in Redis (names: keys.py).

Every script touches the keys of one tenant (one slot on a cluster); the node-wide set
of tenants with webhooks is written apart from them.
"""

from __future__ import annotations

import time
from typing import Any

from redis.exceptions import RedisError

from gateway.bus import keys as bus_keys
from gateway.redis_link import Client, LinkOptions, RedisTarget, client, raise_if_cancelled
from gateway.webhooks import keys
from gateway.webhooks.subscriptions import Subscription


class LimitReached(Exception):
    """The tenant has as many webhooks as ``[webhooks] max_per_tenant`` allows."""


class StoreUnavailable(Exception):
    """Redis could not be reached (the API answers 503, the CLI exits 1)."""


# KEYS: subscriptions, state, the tenant's events. ARGV: id, record, max, cursor field.
# The new webhook starts after the newest event: it gets what happens from now on.
_CREATE = """
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
local cursor = '0-0'
if last[1] then cursor = last[1][1] end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[4], cursor)
return 1
"""

# A lease: "<owner>|<until, ms by Redis' clock>". KEYS: state. ARGV: lease field, owner,
# ttl ms. Taken when free, lapsed or already ours (renewed); returns 1 when held.
_LEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local held = redis.call('HGET', KEYS[1], ARGV[1])
if held then
  local owner, untill = string.match(held, '^(.*)|(%d+)$')
  if owner ~= ARGV[2] and untill and tonumber(untill) > now then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. (now + tonumber(ARGV[3])))
return 1
"""

# KEYS: state. ARGV: lease field, owner. Gives the lease up if it is ours.
_RELEASE = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if held and string.match(held, '^(.*)|') == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
"""

# KEYS: state. ARGV: lease field, owner, cursor field, seq, failing field, delivered
# field. The fence: only the lease's holder moves the position (0: not ours any more).
_ADVANCE = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if not held or string.match(held, '^(.*)|') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
redis.call('HDEL', KEYS[1], ARGV[5])
redis.call('HINCRBY', KEYS[1], ARGV[6], 1)
return 1
"""


class WebhookStore:
    def __init__(self, redis: str | RedisTarget, *, socket_timeout: float = 5.0) -> None:
        self._redis: Client = client(
            redis,
            name="webhooks",
            options=LinkOptions(
                socket_timeout=socket_timeout, connect_timeout=min(socket_timeout, 2.0)
            ),
        )
        self._create = self._redis.register_script(_CREATE)
        self._lease = self._redis.register_script(_LEASE)
        self._release = self._redis.register_script(_RELEASE)
        self._advance = self._redis.register_script(_ADVANCE)

    async def close(self) -> None:
        await self._redis.aclose()

    async def _call(self, awaitable: Any) -> Any:
        try:
            result = await awaitable
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        raise_if_cancelled()
        return result

    # -- subscriptions -------------------------------------------------------------------
    async def create(self, sub: Subscription, limit: int) -> None:
        """Store a new webhook, its position at the end of the tenant's stream now.
        LimitReached when the tenant has ``limit`` already."""
        made = await self._call(
            self._create(
                keys=[
                    keys.subscriptions(sub.tenant), keys.state(sub.tenant),
                    bus_keys.events_key(sub.tenant),
                ],
                args=[sub.id, sub.to_json(), limit, keys.cursor_field(sub.id)],
            )
        )  # fmt: skip
        if not int(made):
            raise LimitReached(f"this tenant has {limit} webhooks already (the most allowed)")
        await self._call(self._redis.sadd(keys.WEBHOOK_TENANTS, sub.tenant))

    async def all(self, tenant: str) -> list[Subscription]:
        raw = await self._call(self._redis.hgetall(keys.subscriptions(tenant)))
        found = [Subscription.from_json(tenant, text) for text in raw.values()]
        return sorted(found, key=lambda s: (s.created_at, s.id))

    async def get(self, tenant: str, sub_id: str) -> Subscription | None:
        text = await self._call(self._redis.hget(keys.subscriptions(tenant), sub_id))
        return None if text is None else Subscription.from_json(tenant, text)

    async def save(self, sub: Subscription) -> bool:
        """Replace an existing webhook's record (disable, enable); False if it is gone."""
        script = "if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end " \
            "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) return 1"  # fmt: skip
        done = await self._call(
            self._redis.eval(script, 1, keys.subscriptions(sub.tenant), sub.id, sub.to_json())
        )
        return bool(int(done))

    async def delete(self, tenant: str, sub_id: str) -> bool:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hdel(keys.subscriptions(tenant), sub_id)
        pipe.hdel(keys.state(tenant), *keys.state_fields(sub_id))
        removed, _ = await self._call(pipe.execute())
        return bool(removed)

    async def tenants(self) -> list[str]:
        members = await self._call(self._redis.smembers(keys.WEBHOOK_TENANTS))
        names = (m.decode() if isinstance(m, bytes) else str(m) for m in members)
        return sorted(n for n in names if bus_keys.is_valid_tenant(n))

    # -- state ---------------------------------------------------------------------------
    async def state(self, tenant: str, sub_id: str) -> dict[str, str]:
        """The webhook's position, lease, failure start and counts (absent: none)."""
        fields = keys.state_fields(sub_id)
        values = await self._call(self._redis.hmget(keys.state(tenant), fields))
        return {
            name.removeprefix(sub_id + ":"): (v.decode() if isinstance(v, bytes) else str(v))
            for name, v in zip(fields, values, strict=True)
            if v is not None
        }

    async def cursor(self, tenant: str, sub_id: str) -> str:
        value = await self._call(self._redis.hget(keys.state(tenant), keys.cursor_field(sub_id)))
        if value is None:
            return "0-0"
        return value.decode() if isinstance(value, bytes) else str(value)

    async def set_cursor(self, tenant: str, sub_id: str, seq: str) -> None:
        await self._call(self._redis.hset(keys.state(tenant), keys.cursor_field(sub_id), seq))

    async def lease(self, tenant: str, sub_id: str, owner: str, ttl: float) -> bool:
        """Take or renew the webhook's lease; True while ``owner`` holds it."""
        held = await self._call(
            self._lease(
                keys=[keys.state(tenant)],
                args=[keys.lease_field(sub_id), owner, max(1, round(ttl * 1000))],
            )
        )
        return bool(int(held))

    async def release(self, tenant: str, sub_id: str, owner: str) -> None:
        await self._call(
            self._release(keys=[keys.state(tenant)], args=[keys.lease_field(sub_id), owner])
        )

    async def advance(self, tenant: str, sub_id: str, owner: str, seq: str) -> bool:
        """Record that ``seq`` was answered 2xx (and that the failures, if any, are
        over); False when ``owner`` no longer holds the lease (nothing written)."""
        moved = await self._call(
            self._advance(
                keys=[keys.state(tenant)],
                args=[
                    keys.lease_field(sub_id), owner, keys.cursor_field(sub_id), seq,
                    keys.failing_field(sub_id), keys.delivered_field(sub_id),
                ],
            )
        )  # fmt: skip
        return bool(int(moved))

    async def failing_since(self, tenant: str, sub_id: str, now: float | None = None) -> float:
        """When this run of failures began: now, or earlier (by any node)."""
        field = keys.failing_field(sub_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hsetnx(keys.state(tenant), field, repr(time.time() if now is None else now))
        pipe.hget(keys.state(tenant), field)
        _, value = await self._call(pipe.execute())
        return float(value)

    async def skip_to_now(self, sub: Subscription) -> int:
        """Move the webhook's position to the end of the tenant's stream (enable "from
        now"); the events it skips are its dead letters: counted, and returned."""
        key, accept = bus_keys.events_key(sub.tenant), sub.event_filter
        after = await self.cursor(sub.tenant, sub.id)
        skipped, page = 0, 1000
        while True:
            entries = await self._call(self._redis.xrange(key, "(" + after, "+", count=page))
            for raw_id, fields in entries:
                after = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                try:
                    event = bus_keys.decode_payload(after, fields[bus_keys.STREAM_FIELD])
                except (KeyError, ValueError):
                    continue
                skipped += accept(event)
            if len(entries) < page:
                break
        await self.set_cursor(sub.tenant, sub.id, after)
        if skipped:
            await self.add_dead_letters(sub.tenant, sub.id, skipped)
        return skipped

    async def add_dead_letters(self, tenant: str, sub_id: str, count: int) -> None:
        await self._call(self._redis.hincrby(keys.state(tenant), keys.dead_field(sub_id), count))
