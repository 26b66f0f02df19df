"""Every key of a tenant, found without SCAN: the tenant's index ``{t}:keys``.

On a Redis Cluster a SCAN covers one node, and a keyspace scan is the wrong tool to find
the keys of one tenant anyway. A tenant's keys are all under ``{t}`` (one slot, one
shard), and are known in two ways (security/keys.py):

- a key with a fixed name (``{t}:users``, ``{t}:contacts``, ``{t}:events``…) is listed
  in `keys.TENANT_FIXED`;
- any other (a user's token index, a source's set, an AOR, a failure counter…) is a
  member of the sorted set ``{t}:keys``, entered by the very script or transaction that
  creates the key, so no key exists unlisted. The score is when the key is gone for sure
  (its expiry plus `MARGIN_MS`, ms since the epoch; +inf without expiry); each entry
  made drops the entries past their time, so the index of expiring keys stays small.

Deleting a tenant, a source or a user's tokens unlinks index members by prefix, in one
script on the tenant's shard (`UNLINK_INDEXED`). The members are keys under the
tenant's tag by construction (only these helpers enter them, and the script checks
the prefix is inside the tag), so every key the script touches is in the slot of the
index it was given in KEYS.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from gateway.security import keys

# Slack for the clocks of the gateway and Redis (an expiry set relative to one, pruned
# by the other): an entry outlives its key by this much.
MARGIN_MS = 60_000

# A Lua function the scripts that create a tenant key include. ``gone_at``: when the key
# expires (ms since the epoch), nil when it does not. Redis's own clock prunes.
INDEX_KEY_LUA = f"""
local function index_key(index, key, gone_at)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. now)
  if gone_at then
    redis.call('ZADD', index, tonumber(gone_at) + {MARGIN_MS}, key)
  else
    redis.call('ZADD', index, '+inf', key)
  end
end
"""

# KEYS[1] the tenant's index, KEYS[2..] fixed keys of the tenant to unlink as well.
# ARGV[1] a prefix inside the tenant's tag: every indexed key starting with it goes.
# Returns the number of keys unlinked.
UNLINK_INDEXED = """
local index, prefix = KEYS[1], ARGV[1]
local tag = string.match(index, '^{[^}]*}')
if not tag or string.sub(prefix, 1, #tag) ~= tag then
  return redis.error_reply('ERR prefix outside the tenant of the index')
end
local unlinked = 0
for _, key in ipairs(redis.call('ZRANGE', index, 0, -1)) do
  if string.sub(key, 1, #prefix) == prefix then
    unlinked = unlinked + redis.call('UNLINK', key)
    redis.call('ZREM', index, key)
  end
end
for i = 2, #KEYS do unlinked = unlinked + redis.call('UNLINK', KEYS[i]) end
return unlinked
"""


class _Pipeline(Protocol):
    def zremrangebyscore(self, name: str, min: str, max: str) -> Any: ...
    def zadd(self, name: str, mapping: Any) -> Any: ...


def index_in(pipe: _Pipeline, tenant: str, key: str, gone_at: float | None, now: float) -> None:
    """Queue the entry of ``key`` in the tenant's index on a transaction (MULTI) that
    creates it. ``gone_at``/``now``: Unix times (s) by the caller's clock."""
    index = keys.key_index(tenant)
    pipe.zremrangebyscore(index, "-inf", f"({math.floor(now * 1000) - MARGIN_MS}")
    score = math.inf if gone_at is None else math.ceil(gone_at * 1000) + MARGIN_MS
    pipe.zadd(index, {key: score})


def prefix_in(tenant: str, key_prefix: str) -> str:
    """Check a prefix is a tenant key's start (what `UNLINK_INDEXED` is given)."""
    if not key_prefix.startswith(keys.tenant_tag(tenant) + ":"):
        raise ValueError(f"{key_prefix!r} is not a key of tenant {tenant!r}")
    return key_prefix
