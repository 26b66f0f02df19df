"""The contact index in Redis: one hash per tenant, E.164 number -> contact.

Writes come from the sync API in batches; each batch is one Lua script call, so a batch
is applied whole or not at all, the source's set of numbers stays in step with the hash,
and the invalidation of every node's cache is published by the same script call (no
window in which a node could keep an old answer after the write). Removals of many
numbers (a source, the rest of a full sync) go in chunks of `CHUNK`, each atomic, so
Redis never blocks on one huge script.

See keys.py for the names and the value format.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import RedisError

from gateway.recognition import keys
from gateway.recognition.cache import Contact, ContactCache, Scalar
from gateway.redis_link import (
    Backoff,
    Client,
    LinkOptions,
    RedisLink,
    RedisTarget,
    client,
    dedicated_connection,
    raise_if_cancelled,
    shard_connection,
)
from gateway.redis_routes import WireRoutes, is_moved
from gateway.redis_wire import Reply
from gateway.security import keys as tenant_names
from gateway.security import tenant_keys

log = logging.getLogger("sipgw.recognition")

CHUNK = 1000
GENERATION_TTL = 24 * 3600  # a full sync that never commits leaves no key behind for long


class IndexUnavailable(Exception):
    """Redis could not be reached (or answered an error): the caller degrades."""


# What `ContactIndex.ask` answers: the contact, None (no contact), or the failure.
Found = Contact | IndexUnavailable | None


@dataclass(frozen=True, slots=True)
class Upsert:
    number: str  # E.164, validated by the caller
    fields: Mapping[str, Scalar]  # only the tenant's configured fields, validated


@dataclass(frozen=True, slots=True)
class Held:
    """What one source holds for a number (GDPR inspection and export)."""

    source: str
    fields: Mapping[str, Scalar]
    shown: bool  # the first entry: the contact recognition shows


# Removes `source`'s entry from a number's value, and the number when no entry is left.
_DROP_ENTRY = """
local function drop_entry(contacts, number, source)
  local current = redis.call('HGET', contacts, number)
  if not current then return end
  local kept = {}
  for _, entry in ipairs(cmsgpack.unpack(current)) do
    if entry[1] ~= source then kept[#kept + 1] = entry end
  end
  if #kept == 0 then redis.call('HDEL', contacts, number)
  else redis.call('HSET', contacts, number, cmsgpack.pack(kept)) end
end
"""

# KEYS: contacts, source set, sources hash, generation set (or the source set again),
#       the tenant's key index (the source and generation sets are entered there).
# ARGV: source, tenant, now ms, upsert count, with generation "1"/"0", generation ttl,
#       then number, fields pairs, then numbers to delete.
_APPLY = (
    _DROP_ENTRY
    + tenant_keys.INDEX_KEY_LUA
    + f"""
local contacts, srcset, sources, genset, index = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local source, tenant = ARGV[1], ARGV[2]
local n, with_gen = tonumber(ARGV[4]), ARGV[5] == '1'
local touched, upserted, deleted = {{}}, 0, 0
local i = 7
for _ = 1, n do
  local number, fields = ARGV[i], ARGV[i + 1]
  i = i + 2
  local entries, replaced = {{}}, false
  local current = redis.call('HGET', contacts, number)
  if current then entries = cmsgpack.unpack(current) end
  for _, entry in ipairs(entries) do
    if entry[1] == source then entry[2] = fields; replaced = true; break end
  end
  if not replaced then entries[#entries + 1] = {{source, fields}} end
  redis.call('HSET', contacts, number, cmsgpack.pack(entries))
  redis.call('SADD', srcset, number)
  if with_gen then redis.call('SADD', genset, number) end
  upserted = upserted + 1
  touched[#touched + 1] = number
end
for j = i, #ARGV do
  local number = ARGV[j]
  if redis.call('SREM', srcset, number) == 1 then
    drop_entry(contacts, number, source)
    deleted = deleted + 1
    touched[#touched + 1] = number
  end
end
if upserted > 0 then index_key(index, srcset, nil) end
if with_gen then
  redis.call('EXPIRE', genset, tonumber(ARGV[6]))
  index_key(index, genset, tonumber(ARGV[3]) + 1000 * tonumber(ARGV[6]))
end
if upserted + deleted > 0 then
  redis.call('HSET', sources, source, ARGV[3])
  redis.call('PUBLISH', '{keys.INVALIDATE_CHANNEL}', tenant .. '\\n' .. table.concat(touched, ','))
end
return {{upserted, deleted}}
"""
)

# Removes up to ARGV[3] numbers popped from KEYS[3] from the source ARGV[1].
# KEYS: contacts, source set, set to pop from (the source set itself, or a diff set)
# ARGV: source, tenant, count.  Returns {removed, left in the pop set}.
_REMOVE_CHUNK = (
    _DROP_ENTRY
    + f"""
local contacts, srcset, popset = KEYS[1], KEYS[2], KEYS[3]
local source, tenant = ARGV[1], ARGV[2]
local numbers = redis.call('SPOP', popset, tonumber(ARGV[3]))
for _, number in ipairs(numbers) do
  redis.call('SREM', srcset, number)
  drop_entry(contacts, number, source)
end
if #numbers > 0 then
  redis.call('PUBLISH', '{keys.INVALIDATE_CHANNEL}', tenant .. '\\n' .. table.concat(numbers, ','))
end
return {{#numbers, redis.call('SCARD', popset)}}
"""
)

# Erases one number from every source of the tenant. KEYS: contacts. ARGV: number, tenant.
# Returns the number of entries removed. The source sets it touches are named by the
# sources in the value, under the tag of KEYS[1] (not from ARGV): in the slot of
# KEYS[1] by construction, where a cluster routed the call.
_ERASE = f"""
local contacts, number, tenant = KEYS[1], ARGV[1], ARGV[2]
local prefix = string.match(contacts, '^{{[^}}]*}}') .. ':source:'
local current = redis.call('HGET', contacts, number)
if not current then return 0 end
local entries = cmsgpack.unpack(current)
for _, entry in ipairs(entries) do redis.call('SREM', prefix .. entry[1], number) end
redis.call('HDEL', contacts, number)
redis.call('PUBLISH', '{keys.INVALIDATE_CHANNEL}', tenant .. '\\n' .. number)
return #entries
"""


def pack_fields(fields: Mapping[str, Scalar]) -> bytes:
    return msgpack.packb(dict(fields), use_bin_type=True)  # type: ignore[no-any-return]


def unpack_value(value: bytes) -> list[tuple[str, dict[str, Scalar]]]:
    """The [source, fields] pairs of a hash value (see keys.py), first shown first."""
    # The scripts repack the pairs with Lua strings (msgpack "str" of raw bytes), so the
    # outer layer is read raw and each inner fields map decoded on its own.
    pairs = msgpack.unpackb(value, raw=True)
    return [(bytes(src).decode("ascii"), msgpack.unpackb(bytes(f))) for src, f in pairs]


class ContactIndex:
    def __init__(self, redis: str | RedisTarget, *, socket_timeout: float = 5.0) -> None:
        """`redis`: a URL, or the [redis] settings (one server, a cluster or Sentinel)."""
        # No library retries: a look-up has a budget of milliseconds and the sync client
        # retries a refused batch itself. A RedisCluster serves the same commands here
        # (every script and transaction stays within the tenant's slot).
        self.redis: Client = client(
            redis,
            name="contacts",
            options=LinkOptions(socket_timeout=socket_timeout, connect_timeout=1.0),
        )
        self._apply = self.redis.register_script(_APPLY)
        self._remove_chunk = self.redis.register_script(_REMOVE_CHUNK)
        self._erase = self.redis.register_script(_ERASE)
        self._unlink_indexed = self.redis.register_script(tenant_keys.UNLINK_INDEXED)
        # Look-ups (one per call whose caller is not cached, on a budget of
        # milliseconds) go over lean connections (gateway/redis_wire.py), to the server
        # that holds the tenant's contacts in each mode (gateway/redis_routes.py); the
        # look-ups of concurrent calls share one connection to a server, pipelined.
        self._lookups = WireRoutes(
            redis, name="lookups", timeout=socket_timeout, connect_timeout=1.0
        )  # fmt: skip

    async def close(self) -> None:
        await self._lookups.close()
        await self.redis.aclose()

    # -- reads ---------------------------------------------------------------------------
    async def get(self, tenant: str, number: str) -> Contact | None:
        """The contact shown for `number`, None when there is none. IndexUnavailable
        (never a Redis error) when Redis cannot answer: the caller degrades. After a
        broken connection or a MOVED reply (a failover, a slot moved) the next look-up
        asks where the tenant's contacts live again; this one is not retried, its
        budget is too short."""
        key = keys.contacts(tenant)
        try:
            link = await self._lookups.link_for(key)
            wire = await link.get()
            [value] = await wire.call(("HGET", key, number))
        except (RedisError, OSError) as exc:
            self._lookups.failed()
            raise IndexUnavailable(str(exc)) from exc
        return self._contact_of(value)

    def ask(self, tenant: str, number: str, answer: Callable[[Found], None]) -> bool:
        """`get` without a task or an await, when the connection to the tenant's server
        is open now: the HGET is written at once and `answer` called from the
        connection's reader with what `get` would return or raise (an
        `IndexUnavailable` is passed, not raised). False, and no call: no open
        connection (or its server not known yet); use `get`."""
        key = keys.contacts(tenant)
        link = self._lookups.known_link(key)
        wire = link.ready() if link is not None else None
        if wire is None:
            return False

        def replied(outcome: list[Reply] | Exception) -> None:
            if isinstance(outcome, Exception):
                self._lookups.failed()
                answer(IndexUnavailable(str(outcome)))
                return
            try:
                found: Found = self._contact_of(outcome[0])
            except IndexUnavailable as exc:
                found = exc
            answer(found)

        try:
            wire.request((("HGET", key, number),), replied)
        except RedisError:  # closed since `ready`: let `get` connect again
            return False
        return True

    def _contact_of(self, value: Reply) -> Contact | None:
        """The contact of an HGET's reply; IndexUnavailable for an error reply."""
        if isinstance(value, RedisError):
            if is_moved(value):
                self._lookups.failed()
            raise IndexUnavailable(str(value))
        return self._first(value)

    @staticmethod
    def _first(value: object) -> Contact | None:
        if not isinstance(value, bytes):
            return None  # absent (the client does not decode, so a value is bytes)
        source, fields = unpack_value(value)[0]
        return Contact(source, fields)

    async def held(self, tenant: str, number: str) -> list[Held]:
        value = await self._call(self.redis.hget(keys.contacts(tenant), number))
        if value is None:
            return []
        pairs = unpack_value(value)
        return [Held(src, fields, i == 0) for i, (src, fields) in enumerate(pairs)]

    async def sources(self, tenant: str) -> dict[str, tuple[int, float]]:
        """Every source of the tenant: (numbers held, last change as a Unix time)."""
        raw = await self._call(self.redis.hgetall(keys.sources(tenant)))
        result: dict[str, tuple[int, float]] = {}
        for name, changed in sorted(raw.items()):
            source = name.decode("ascii")
            count = await self._call(self.redis.scard(keys.source(tenant, source)))
            result[source] = (int(count), int(changed) / 1000)
        return result

    async def count(self, tenant: str) -> int:
        return int(await self._call(self.redis.hlen(keys.contacts(tenant))))

    # -- writes --------------------------------------------------------------------------
    async def apply(
        self,
        tenant: str,
        source: str,
        upserts: Sequence[Upsert],
        deletes: Sequence[str],
        generation: str | None = None,
    ) -> tuple[int, int]:
        """One batch of a sync, atomically: (numbers upserted, numbers deleted)."""
        source_key = keys.source(tenant, source)
        gen_key = keys.generation(tenant, source, generation) if generation else source_key
        args: list[Any] = [
            source, tenant, int(time.time() * 1000), len(upserts),
            "1" if generation else "0", GENERATION_TTL,
        ]  # fmt: skip
        for item in upserts:
            args += (item.number, pack_fields(item.fields))
        args += deletes
        result = await self._call(
            self._apply(keys=[keys.contacts(tenant), source_key, keys.sources(tenant), gen_key,
                              tenant_names.key_index(tenant)],
                        args=args)
        )  # fmt: skip
        return int(result[0]), int(result[1])

    async def commit_generation(self, tenant: str, source: str, generation: str) -> int:
        """End a full sync: remove what the source holds that this generation did not send."""
        source_key = keys.source(tenant, source)
        gen_key = keys.generation(tenant, source, generation)
        stale = keys.erasing(tenant, secrets.token_hex(8))
        now = time.time()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.sdiffstore(stale, [source_key, gen_key])
            pipe.expire(stale, GENERATION_TTL)
            pipe.unlink(gen_key)
            tenant_keys.index_in(pipe, tenant, stale, now + GENERATION_TTL, now)
            await self._call(pipe.execute())
        return await self._drain(tenant, source, source_key, stale)

    async def remove_source(self, tenant: str, source: str) -> int | None:
        """Delete every record of a source now; None if the tenant has no such source."""
        source_key = keys.source(tenant, source)
        known = await self._call(self.redis.hexists(keys.sources(tenant), source))
        if not known:
            return None
        removed = await self._drain(tenant, source, source_key, source_key)
        await self._call(self.redis.hdel(keys.sources(tenant), source))
        index = tenant_names.key_index(tenant)
        # Its full syncs in progress, found in the tenant's index (no SCAN).
        await self._call(
            self._unlink_indexed(
                keys=[index, source_key], args=[keys.generations_prefix(tenant, source)]
            )
        )
        await self._call(self.redis.zrem(index, source_key))
        return removed

    async def erase(self, tenant: str, number: str) -> int:
        """GDPR erasure of one number from every source: entries removed."""
        result = await self._call(self._erase(keys=[keys.contacts(tenant)], args=[number, tenant]))
        return int(result)

    async def drop_tenant(self, tenant: str) -> int:
        """Delete every key of the tenant (contacts, events, users, audit…: the fixed
        names of every package and the tenant's index, security/tenant_keys.py): keys
        deleted. Tokens are the directory's (Directory.delete_tenant revokes them)."""
        index = tenant_names.key_index(tenant)
        fixed = [k for k in tenant_names.fixed_keys(tenant) if k != index]
        deleted = await self._call(
            self._unlink_indexed(keys=[index, *fixed], args=[keys.tenant_prefix(tenant)])
        )
        await self.forget_tenant(tenant)
        return int(deleted)

    async def forget_tenant(self, tenant: str) -> None:
        """Tell every node's cache that the tenant's contacts are gone."""
        await self._call(
            self.redis.publish(keys.INVALIDATE_CHANNEL, keys.invalidation(tenant, None))
        )

    # -- invalidation --------------------------------------------------------------------
    async def follow_invalidations(self, cache: ContactCache, *, ping: float = 5.0) -> None:
        """Keep `cache` in step with every node's writes, for as long as the task runs.

        The cache is off whenever the subscription is not confirmed: an invalidation
        sent meanwhile would be lost, so the cache is emptied before it is turned on.
        """
        # Lost after it worked: retry at once-ish; never came up: back off further.
        # The bus logs an outage already: these lines are for debugging.
        link = RedisLink(
            on_change=lambda up, error: log.debug(
                "contact invalidations: " + ("connection back" if up else "connection lost"),
                extra={"error": error},
            )
        )
        await link.run(
            lambda: self._follow(cache, link, ping),
            Backoff(0.1, 5.0),
            failure_log="contact invalidations: failed; reconnecting",
            logger=log,
        )

    async def _follow(self, cache: ContactCache, link: RedisLink, ping: float) -> None:
        cache.enabled = False
        conn = await self._invalidation_connection(link)
        try:
            await conn.connect()  # type: ignore[no-untyped-call]
            await conn.send_command("SUBSCRIBE", keys.INVALIDATE_CHANNEL)
            await self._listen(conn, cache, ping, link)
        finally:
            cache.enabled = False
            await conn.disconnect()

    async def _invalidation_connection(self, link: RedisLink) -> Connection:
        """Where invalidations are followed. The scripts publish them from the tenant's
        slot, and a sharded channel must be in the slot of a script's keys, so the
        node-wide channel is classic pub/sub in every mode: on a cluster, Redis copies
        each message to every node (sync batches are few: the copies cost little), and
        any node hears every tenant's. The node taken is the master of the channel's
        slot, looked up again after a failure (a failover may have taken it away)."""
        if isinstance(self.redis, RedisCluster):
            return await shard_connection(
                self.redis, keys.INVALIDATE_CHANNEL, refresh=link.errors > 0
            )
        return dedicated_connection(self.redis)

    async def _listen(
        self, conn: Connection, cache: ContactCache, ping: float, link: RedisLink
    ) -> None:
        pinged = False
        while True:
            response = await conn.read_response(timeout=ping)
            raise_if_cancelled()
            if response is None:
                if pinged:
                    raise TimeoutError(f"no answer from redis for {2 * ping:.0f} s")
                await conn.send_command("PING")
                pinged = True
                continue
            pinged = False
            if not (isinstance(response, list) and len(response) == 3):
                continue
            kind, _, data = response
            if kind == b"subscribe":
                cache.clear()
                cache.enabled = True
                link.came_up()
            elif kind == b"message" and isinstance(data, bytes):
                parsed = keys.parse_invalidation(data)
                if parsed is None:
                    continue
                tenant, numbers = parsed
                if numbers is None:
                    cache.drop_tenant(tenant)
                else:
                    cache.invalidate(tenant, numbers)

    # -- helpers -------------------------------------------------------------------------
    async def _drain(self, tenant: str, source: str, source_key: str, pop_key: str) -> int:
        removed = 0
        while True:
            result = await self._call(
                self._remove_chunk(
                    keys=[keys.contacts(tenant), source_key, pop_key], args=[source, tenant, CHUNK]
                )
            )
            removed += int(result[0])
            if int(result[1]) == 0:
                return removed

    @staticmethod
    async def _call(awaitable: Any) -> Any:
        try:
            return await awaitable
        except (RedisError, OSError) as exc:
            raise IndexUnavailable(str(exc)) from exc
