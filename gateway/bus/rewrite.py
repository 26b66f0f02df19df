"""Changing events already stored in a tenant stream: erasing some, rewriting others.

Privacy needs both (api/contacts.py): a GDPR erasure deletes the entries that name a
number (XDEL), and unlinking a contact source removes that source's contact data from
the entries that hold it, keeping the rest of each event (the call happened; only who
the CRM said the caller was must go).

A stream entry cannot be changed in place, and XADD only appends after the newest id:
a rewritten entry could not go back where it was. So a rewrite copies the stream, entry
by entry with the same ids, into ``{tenant}:events:rewrite``, changing the entries that
need it, and then one Lua call swaps the copy in (RENAME) if the writer appended nothing
it has not seen; else it copies the new tail first. The swap keeps what a reader relies
on: every id and the order, the last generated id, and the entries-added / max-deleted
counters of XINFO STREAM that replay uses to tell a client about trimmed events
(streams.py `_trimmed_after`); entries that retention trimmed from the original while
the copy was made are trimmed from the copy as well.

The few entries that the writer appended in the swap's last moment are copied by the
Lua call as they are; the caller checks them after the swap and, in the rare case one of
them needs a change too, rewrites again (`MAX_PASSES`).

Erasures and rewrites of one tenant never overlap: both hold ``{tenant}:events:lock``
(SET NX with a lifetime, released by its token only). An XDEL between the copy and the
swap would otherwise be undone by the swap.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

from gateway.bus import keys
from gateway.redis_link import Client, raise_if_cancelled

CHUNK = 1000
MAX_PASSES = 3
LOCK_TTL_MS = 300_000  # a crashed holder blocks erasure for at most this long
LOCK_WAIT = 30.0  # seconds to wait for another erasure or rewrite of the tenant
TAIL_MAX = 1000  # entries the swap copies itself; more: the caller copies them first

Edit = Callable[[dict[str, Any]], dict[str, Any] | None]
"""An event dict (as stored, without ``seq``) → its new form, or None to keep it."""

Entry = tuple[bytes, dict[bytes, bytes]]  # (id, fields) as XRANGE gives them


class StreamBusy(Exception):
    """Another erasure or rewrite of the tenant's stream held the lock too long."""


# KEYS: stream, copy. ARGV: the last id copied, TAIL_MAX.
# Returns false if more than TAIL_MAX entries follow `last` (copy them first), else the
# ids of the entries it copied itself, and the copy has replaced the stream.
_SWAP = """
local key, copy, last, max = KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2])
local tail = redis.call('XRANGE', key, '(' .. last, '+', 'COUNT', max + 1)
if #tail > max then return false end
local ids = {}
for _, entry in ipairs(tail) do
  redis.call('XADD', copy, entry[1], unpack(entry[2]))
  ids[#ids + 1] = entry[1]
end
local info = redis.call('XINFO', 'STREAM', key)
local field = {}
for i = 1, #info, 2 do field[info[i]] = info[i + 1] end
if field['length'] == 0 then
  redis.call('XTRIM', copy, 'MAXLEN', 0)
else
  redis.call('XTRIM', copy, 'MINID', field['first-entry'][1])
end
redis.call('XSETID', copy, field['last-generated-id'],
           'ENTRIESADDED', field['entries-added'],
           'MAXDELETEDID', field['max-deleted-entry-id'])
redis.call('RENAME', copy, key)
return ids
"""

# KEYS: lock. ARGV: token. Deletes the lock only if it is still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@contextlib.asynccontextmanager
async def editing(redis: Client, tenant: str) -> AsyncIterator[None]:
    """Hold the tenant's stream edit lock (StreamBusy after `LOCK_WAIT` seconds)."""
    lock, token = keys.edit_lock_key(tenant), secrets.token_hex(16)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LOCK_WAIT
    delay = 0.01
    while not await redis.set(lock, token, nx=True, px=LOCK_TTL_MS):
        raise_if_cancelled()
        if loop.time() >= deadline:
            raise StreamBusy(f"the event stream of {tenant} is being edited; retry")
        await asyncio.sleep(delay)  # another node's erasure: nothing to await but time
        delay = min(delay * 2, 0.5)
    try:
        yield
    finally:
        await redis.eval(_RELEASE, 1, lock, token)


async def delete_entries(redis: Client, tenant: str, seqs: list[str]) -> int:
    """XDEL `seqs` (held lock assumed): how many were there."""
    deleted = 0
    for start in range(0, len(seqs), CHUNK):
        deleted += int(await redis.xdel(keys.events_key(tenant), *seqs[start : start + CHUNK]))
        raise_if_cancelled()
    return deleted


async def rewrite_entries(redis: Client, tenant: str, edit: Edit) -> int:
    """Apply `edit` to every entry of the tenant's stream (held lock assumed): how many
    entries changed. Nothing is copied when no entry needs a change."""
    changed = 0
    for _ in range(MAX_PASSES):
        if not await _needs_change(redis, tenant, edit):
            return changed
        done, tail_changes = await _rewrite_once(redis, tenant, edit)
        changed += done
        if not tail_changes:
            return changed
    raise StreamBusy(f"the event stream of {tenant} kept changing; retry")


async def _xrange(redis: Client, key: str, start: str, end: str, count: int | None) -> list[Entry]:
    entries = await redis.xrange(key, start, end, count=count)
    raise_if_cancelled()
    return cast(list[Entry], entries or [])


async def _needs_change(redis: Client, tenant: str, edit: Edit) -> bool:
    key, after = keys.events_key(tenant), "-"
    while True:
        entries = await _xrange(redis, key, after, "+", CHUNK)
        if any(_edited(seq, fields, edit) is not None for seq, fields in entries):
            return True
        if len(entries) < CHUNK:
            return False
        after = "(" + entries[-1][0].decode("ascii")


async def _rewrite_once(redis: Client, tenant: str, edit: Edit) -> tuple[int, bool]:
    """One copy and swap: (entries changed, whether the swap copied one that needs it)."""
    key, copy = keys.events_key(tenant), keys.rewrite_key(tenant)
    await redis.delete(copy)  # a copy left by a holder that died
    last: str | None = None
    changed = 0
    while True:
        start = "-" if last is None else "(" + last
        entries = await _xrange(redis, key, start, "+", CHUNK)
        if entries:
            pipe = redis.pipeline(transaction=False)
            for seq, fields in entries:
                new = _edited(seq, fields, edit)
                if new is not None:
                    changed += 1
                    fields = {**fields, keys.STREAM_FIELD: new}
                pipe.xadd(copy, cast(dict[Any, Any], fields), id=seq)
            await pipe.execute()
            last = entries[-1][0].decode("ascii")
            if len(entries) == CHUNK:
                continue
        if last is None:
            return 0, False  # the stream is empty (trimmed meanwhile): nothing to swap
        copied = await redis.eval(_SWAP, 2, key, copy, last, TAIL_MAX)
        raise_if_cancelled()
        if copied is None:
            continue  # many events arrived meanwhile: copy them, then swap
        tail = [seq.decode("ascii") for seq in copied]
        if not tail:
            return changed, False
        entries = await _xrange(redis, key, tail[0], tail[-1], None)
        return changed, any(_edited(s, f, edit) is not None for s, f in entries)


def _edited(seq: bytes, fields: dict[bytes, bytes], edit: Edit) -> bytes | None:
    """The new payload of one entry, or None if `edit` keeps it (or it does not decode)."""
    payload = fields.get(keys.STREAM_FIELD)
    if payload is None:
        return None
    try:
        event = keys.decode_payload(seq.decode("ascii"), payload)
    except ValueError:
        return None  # not ours to judge; replay skips it as well
    event.pop("seq", None)  # the stored payload has none: the entry id is the seq
    new = edit(event)
    return None if new is None else keys.encode_payload(new)
