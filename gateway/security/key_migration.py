"""Bring a data set written before hash tags (key layout 1) to today's names (layout 2).

Layout 1 is what sipgw wrote before it ran on a Redis Cluster: node-wide keys named
``sipgw:…`` without a tag, and no index of a tenant's keys (they were found by SCAN).
It can only be on one server (sipgw never ran on a cluster with it), so this runs there
with plain SCAN and RENAMENX, once: ``{sipgw}:layout`` records that it was done. Every
step is idempotent (RENAMENX keeps a new key that exists already; entering a key in an
index twice changes nothing), so two nodes starting together, or a start interrupted
half-way, are harmless. What it does (docs/upgrading.md):

- ``sipgw:tenants``, ``sipgw:epoch``, ``sipgw:audit`` become ``{sipgw}:…``;
- each ``sipgw:token:<hash>`` becomes ``sipgw:token:{<hash>}`` (its expiry kept), so
  every issued token stays valid;
- every key of a tenant whose name is not fixed (token indexes, source sets, AORs…) is
  entered in the tenant's index ``{t}:keys`` with its expiry, and a tenant with
  registrations (``{t}:loc:…``) in ``{sipgw}:location:tenants``.

A source's failed-login counters (``sipgw:login:fail:src:…``) are left to expire.
"""

from __future__ import annotations

import logging
import math
import time

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from gateway.security import keys
from gateway.security.tenant_keys import MARGIN_MS

log = logging.getLogger("sipgw.security")

_BATCH = 500


async def migrate_keys(redis: Redis | RedisCluster) -> bool:
    """Migrate the data set if it is in layout 1; True if anything was done."""
    layout = await redis.get(keys.LAYOUT)
    if layout is not None and int(layout) >= keys.LAYOUT_VERSION:
        return False
    if isinstance(redis, RedisCluster):
        # A cluster never held layout 1 (and could not RENAME across slots).
        await redis.set(keys.LAYOUT, keys.LAYOUT_VERSION)
        return False
    renamed = await _rename_node_keys(redis)
    tokens = await _rename_tokens(redis)
    indexed = await _index_tenant_keys(redis)
    await redis.set(keys.LAYOUT, keys.LAYOUT_VERSION)
    if renamed or tokens or indexed:
        log.info(
            "Redis keys migrated to the hash-tagged layout",
            extra={"renamed": renamed, "tokens": tokens, "indexed": indexed},
        )
    return True


async def _rename_node_keys(redis: Redis) -> int:
    renamed = 0
    for old, new in keys.LEGACY_RENAMED.items():
        if await redis.exists(old):
            renamed += int(await redis.renamenx(old, new))
    return renamed


async def _rename_tokens(redis: Redis) -> int:
    renamed = 0
    async for name in redis.scan_iter(match=keys.LEGACY_TOKEN_PREFIX + "*", count=1000):
        text = name.decode() if isinstance(name, bytes) else str(name)
        digest = keys.legacy_token_digest(text)
        if digest is None:
            continue  # a layout-2 token (its name has braces) or not ours
        try:
            renamed += int(await redis.renamenx(text, keys.token(digest)))
        except Exception as exc:  # expired between SCAN and RENAMENX: nothing to keep
            if "no such key" not in str(exc).lower():
                raise
    return renamed


async def _index_tenant_keys(redis: Redis) -> int:
    """Enter every tenant key not named in TENANT_FIXED in its tenant's index."""
    found: list[tuple[str, str]] = []
    async for name in redis.scan_iter(match="{*}:*", count=1000):
        text = name.decode() if isinstance(name, bytes) else str(name)
        tenant = keys.tenant_of_key(text)
        if tenant is None or text in keys.fixed_keys(tenant):
            continue
        found.append((tenant, text))
    now_ms = math.floor(time.time() * 1000)
    for start in range(0, len(found), _BATCH):
        chunk = found[start : start + _BATCH]
        async with redis.pipeline(transaction=False) as pipe:
            for _, key in chunk:
                pipe.pttl(key)
            ttls = await pipe.execute()
        async with redis.pipeline(transaction=False) as pipe:
            for (tenant, key), ttl in zip(chunk, ttls, strict=True):
                if int(ttl) == -2:
                    continue  # gone meanwhile
                score = math.inf if int(ttl) < 0 else now_ms + int(ttl) + MARGIN_MS
                pipe.zadd(keys.key_index(tenant), {key: score})
                if key.startswith(keys.tenant_tag(tenant) + ":loc:"):
                    pipe.sadd(keys.LOCATION_TENANTS, tenant)
            await pipe.execute()
    return len(found)
