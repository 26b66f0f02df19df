"""Registrations shared between worker processes (and nodes) through Redis.

`SharedLocation` is the proxy's `Location` with the same synchronous interface: the
registrar's `replace()` changes memory at once and answers the phone without waiting
(DESIGN.md: "the SIP path never waits on Redis"); the change is queued, and the
background coroutine `run()` writes it to Redis and applies what other processes wrote.

Redis
    ``{tenant}:loc:<extension>``  hash, one per address of record: contact URI ->
        msgpack map of one binding (`encode_binding`). Its PEXPIREAT is the latest
        binding's expiry, so Redis forgets expired registrations by itself (Redis 7.0
        has no per-field expiry: expired fields are dropped whenever the key is
        written, and ignored when read). The last binding removed deletes the key.
        The key is entered in the tenant's key index ``{tenant}:keys`` (with its
        expiry) by the same script (security/tenant_keys.py): loading reads the AORs
        of each tenant from there, without a SCAN (which on a cluster covers one
        node), and deleting the tenant finds them there.
    ``{sipgw}:location:tenants``  set: every tenant that has had an AOR written (added
        with each write, before its script; removed when the tenant is deleted), the
        tenants whose index loading reads.
    ``{sipgw}:location``  pub/sub channel: after every write, the AOR's whole state as
        msgpack ``[origin, seq, tenant, extension, [binding, …]]`` (`decode_message`).
        Classic pub/sub in every mode (see `_pubsub_connection`); on a cluster each AOR
        is written on its tenant's master alone, whose messages reach every node in
        the order it ran the scripts, so the order below holds per AOR.

A hash per AOR rather than one value: two phones of one extension that register
through two workers at the same moment each change their own field, so neither
registration is lost to the other (a plain value would be last-writer-wins per AOR).

Each write is one Lua script call: it applies the process's changes (HSET/HDEL by
contact), drops expired fields, sets the expiry and publishes the resulting state, all
at once. Every process applies every message in the order Redis ran the scripts, so all
converge to what Redis holds; on top of a received state it lays its own changes that
Redis has not echoed yet (queued, or written but their message not yet read), so a
message that was published before one of our writes never undoes it. A process's own
message marks its write as seen.

Clocks: bindings expire on the proxy's monotonic clock (`loop.time()`), which means
nothing to another process; Redis holds wall-clock expiries (ms since the epoch),
converted at each end (`Clocks`).

Foreign bindings: a TCP/TLS connection belongs to the process that accepted it, so a
binding learnt from another process has no ``conn_id``; UDP phones behind NAT are still
reached at their source address (workers share the listening port through
SO_REUSEPORT, so the NAT sees the same address).

Redis down: SIP goes on with what is in memory and changes queue up (bounded, coalesced
per AOR). The loop reconnects with capped backoff; each (re)connection re-reads every
stored AOR and re-writes this process's own bindings that Redis lacks (a restarted Redis
comes back empty), so what was registered during the outage reaches the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import ResponseError

from gateway.proxy.location import Binding, Location
from gateway.redis_link import (
    Backoff,
    Client,
    LinkOptions,
    RedisLink,
    RedisTarget,
    client,
    dedicated_connection,
    raise_if_cancelled,
    serve_until_one_ends,
    shard_connection,
    shard_node,
)
from gateway.security import keys as tenant_names
from gateway.security import tenant_keys
from gateway.transport.addresses import Source

log = logging.getLogger("sipgw.location")

CHANNEL = "{sipgw}:location"
KEY_INFIX = ":loc:"

STEADY = 10.0  # seconds a session must have served for a reconnection to start quick
MAX_BINDINGS_READ = 256  # per AOR, when reading a stored or published state

AorKey = tuple[str, str]  # (tenant id, extension)
Changes = dict[str, Binding | None]  # contact URI -> the new binding, or None: removed

# -- keys ------------------------------------------------------------------------------
# Our own validation (the proxy layer may not import the bus or security key helpers):
# neither part may hold "{", "}", ":" or a glob character, so no name reaches another
# tenant's keys. Tenant ids are [a-z0-9-]{1,32} everywhere; extensions are digits in the
# configuration, a little more is allowed here.
_TENANT = re.compile(r"[a-z0-9-]{1,32}")
_EXTENSION = re.compile(r"[A-Za-z0-9._+-]{1,64}")
_KEY = re.compile(r"\{([a-z0-9-]{1,32})\}" + KEY_INFIX + r"([A-Za-z0-9._+-]{1,64})")


def is_valid_aor(tenant: str, extension: str) -> bool:
    return _TENANT.fullmatch(tenant) is not None and _EXTENSION.fullmatch(extension) is not None


def aor_key(tenant: str, extension: str) -> str:
    """``{tenant}:loc:<extension>``: in the tenant's Redis Cluster slot and its key
    index, where tenant deletion finds it (security/directory.py)."""
    if not is_valid_aor(tenant, extension):
        raise ValueError(f"invalid address of record {tenant!r}/{extension!r}")
    return "{" + tenant + "}" + KEY_INFIX + extension


def parse_aor_key(key: bytes | str) -> AorKey | None:
    name = key.decode("ascii", "replace") if isinstance(key, bytes) else key
    match = _KEY.fullmatch(name)
    return None if match is None else (match[1], match[2])


# -- clocks ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Clocks:
    """One reading of both clocks: converts an expiry between them."""

    mono: float  # the proxy's clock (loop.time())
    wall: float  # time.time()

    def to_wall_ms(self, expires_at: float) -> int:
        return round((self.wall + (expires_at - self.mono)) * 1000)

    def to_mono(self, wall_ms: int) -> float:
        return self.mono + (wall_ms / 1000 - self.wall)


# -- values ----------------------------------------------------------------------------
def encode_binding(binding: Binding, origin: str, clocks: Clocks) -> bytes:
    """The stored form of one binding: what a phone registered (contact, source
    address, User-Agent) and the registration's identity. ``conn_id`` never leaves the
    process: it names a connection only there."""
    source = binding.source
    value = {
        "expires": clocks.to_wall_ms(binding.expires_at),  # read by the Lua script
        "contact": binding.contact_uri,
        "q": binding.q,
        "call_id": binding.call_id,
        "cseq": binding.cseq,
        "transport": source.transport,
        "remote": [source.remote[0], source.remote[1]],
        "local": [source.local[0], source.local[1]],
        "nat": binding.behind_nat,
        "ua": binding.user_agent,
        "instance": binding.instance,
        "origin": binding.origin or origin,
    }
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


def decode_binding(data: bytes, clocks: Clocks) -> Binding | None:
    """A stored binding on this process's clock, with no connection and the origin as
    stored; None if it is malformed or already expired."""
    try:
        value = msgpack.unpackb(data, raw=False)
        binding = _binding_of(value, clocks)
    except (ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException):
        return None
    return binding if binding.expires_at > clocks.mono else None


def _binding_of(value: Any, clocks: Clocks) -> Binding:
    if not isinstance(value, dict):
        raise TypeError("a binding is a map")
    remote, local = _address(value["remote"]), _address(value["local"])
    q = value["q"]
    if not isinstance(q, int | float) or not math.isfinite(q):
        raise TypeError("bad q")
    instance = value.get("instance")
    return Binding(
        contact_uri=_text(value["contact"]),
        q=float(q),
        expires_at=clocks.to_mono(_integer(value["expires"])),
        call_id=_text(value["call_id"]),
        cseq=_integer(value["cseq"]),
        source=Source(_text(value["transport"]), remote, local, None),
        behind_nat=value["nat"] is True,
        user_agent=_text(value.get("ua", "")),
        instance=None if instance is None else _text(instance),
        origin=_text(value["origin"]),
    )


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _integer(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("expected an integer")
    return value


def _address(value: object) -> tuple[str, int]:
    if not (isinstance(value, list | tuple) and len(value) == 2):
        raise TypeError("an address is [host, port]")
    return _text(value[0]), _integer(value[1])


@dataclass(frozen=True, slots=True)
class Published:
    """One message of the channel: an AOR's state after one process's write."""

    origin: str
    seq: int
    tenant: str
    extension: str
    values: list[bytes]  # encoded bindings (`decode_binding`)


def encode_message(
    origin: str, seq: int, tenant: str, extension: str, values: Sequence[bytes]
) -> bytes:
    """What the write script publishes (it builds the same with cmsgpack)."""
    data: bytes = msgpack.packb([origin, seq, tenant, extension, list(values)])
    return data


def decode_message(data: bytes) -> Published | None:
    """A message of the channel, or None if it is not one of ours."""
    try:
        # The script packs Lua strings (msgpack "str" of raw bytes): read raw.
        item = msgpack.unpackb(data, raw=True)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    if not (isinstance(item, list) and len(item) == 5):
        return None
    origin, seq, tenant, extension, values = item
    if isinstance(values, dict) and not values:
        values = []  # an empty Lua table may pack as a map
    if not (
        isinstance(origin, bytes)
        and isinstance(seq, int)
        and isinstance(tenant, bytes)
        and isinstance(extension, bytes)
        and isinstance(values, list)
        and all(isinstance(v, bytes) for v in values)
    ):
        return None
    tenant_id, ext = tenant.decode("ascii", "replace"), extension.decode("ascii", "replace")
    if not is_valid_aor(tenant_id, ext):
        return None
    return Published(
        origin.decode("utf-8", "replace"), seq, tenant_id, ext, values[:MAX_BINDINGS_READ]
    )


# -- the write script --------------------------------------------------------------------
# KEYS[1] the AOR's hash, KEYS[2] the tenant's key index. ARGV: channel, origin, seq,
# tenant, extension, now (wall ms), upsert count n, then n (contact, binding) pairs, then
# contacts to remove. Returns the number of live bindings left.
_WRITE = (
    tenant_keys.INDEX_KEY_LUA
    + """
local key, now, n = KEYS[1], tonumber(ARGV[6]), tonumber(ARGV[7])
local i = 8
for _ = 1, n do
  redis.call('HSET', key, ARGV[i], ARGV[i + 1])
  i = i + 2
end
for j = i, #ARGV do redis.call('HDEL', key, ARGV[j]) end
local fields = redis.call('HGETALL', key)
local live, latest = {}, 0
for k = 1, #fields, 2 do
  local ok, binding = pcall(cmsgpack.unpack, fields[k + 1])
  local expires = 0
  if ok and type(binding) == 'table' then expires = tonumber(binding['expires']) or 0 end
  if expires > now then
    live[#live + 1] = fields[k + 1]
    if expires > latest then latest = expires end
  else
    redis.call('HDEL', key, fields[k])
  end
end
if #live > 0 then
  redis.call('PEXPIREAT', key, latest)
  index_key(KEYS[2], key, latest)
else
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[2], key)
end
redis.call('PUBLISH', ARGV[1], cmsgpack.pack({ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], live}))
return #live
"""
)


@dataclass(slots=True)
class _Write:
    """Changes of one AOR sent (or being sent) to Redis, until their echo is read."""

    seq: int
    changes: Changes
    confirmed: bool = False  # Redis answered: it ran the script


def diff(old: Iterable[Binding], new: Iterable[Binding]) -> Changes:
    """What `replace(old → new)` changed, by contact URI."""
    before = {b.contact_uri: b for b in old}
    after = {b.contact_uri: b for b in new}
    changes: Changes = {c: None for c in before if c not in after}
    changes.update((c, b) for c, b in after.items() if before.get(c) != b)
    return changes


def _merge_into(target: Changes, changes: Changes) -> None:
    """Later changes win; a changed contact moves to the end (the oldest come first)."""
    for contact, binding in changes.items():
        target.pop(contact, None)
        target[contact] = binding


class SharedLocation(Location):
    """A `Location` replicated through Redis by `run()`; see the module docstring.

    Numbers for metrics and tests: ``connected`` (the session is live), ``written``
    (AOR writes Redis ran), ``applied`` (states received and applied), ``dropped``
    (changes not queued: queue full), ``bad_messages``, ``redis_errors``,
    ``last_error``, ``pending`` (AORs waiting to be written).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] | None = None,
        wall: Callable[[], float] = time.time,
        max_pending: int = 50_000,
        max_changes_per_aor: int = 64,
        batch_size: int = 256,
        backoff_initial: float = 0.1,
        backoff_max: float = 2.0,
        socket_timeout: float = 5.0,
        ping_interval: float = 5.0,
        flush_timeout: float = 0.5,
    ) -> None:
        if min(max_pending, max_changes_per_aor, batch_size) < 1:
            raise ValueError("max_pending, max_changes_per_aor and batch_size must be >= 1")
        super().__init__()
        # The proxy's clock is the running loop's (ProxyServer passes loop.time).
        self._clock = clock or (lambda: asyncio.get_running_loop().time())
        self._wall = wall
        self.max_pending = max_pending
        self.max_changes_per_aor = max_changes_per_aor
        self.batch_size = batch_size
        self.backoff = (backoff_initial, backoff_max)
        self.socket_timeout = socket_timeout
        self.ping_interval = ping_interval
        self.flush_timeout = flush_timeout
        self.origin = ""  # set by run()
        self._pending: dict[AorKey, Changes] = {}  # insertion order: oldest first
        self._inflight: dict[AorKey, list[_Write]] = {}
        # Other processes' bindings a restarted (empty) Redis lost, kept until their
        # owner writes its state of the AOR again, Redis shows them, or they expire.
        self._kept: dict[AorKey, dict[str, Binding]] = {}
        self._seq = itertools.count(1)
        self._wake = asyncio.Event()  # a change was queued
        self._idle = asyncio.Event()  # nothing queued, nothing unanswered
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._link = RedisLink(on_change=self._link_changed)
        self._overflow_logged = False
        self._aors_read = 0  # by the session that came up last (for its log line)
        self._run_id: str | None = None  # of the Redis server last read
        self.connected = False
        self.written = 0
        self.applied = 0
        self.dropped = 0
        self.bad_messages = 0

    @property
    def redis_errors(self) -> int:
        return self._link.errors

    @property
    def last_error(self) -> str | None:
        return self._link.last_error

    def __bool__(self) -> bool:
        # Present even when empty: `Proxy` takes ``location or Location()``, and an
        # empty Location is falsy through __len__, so it would be silently replaced.
        return True

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- the synchronous side (the SIP path) ----------------------------------------------
    def replace(self, tenant: str, extension: str, bindings: list[Binding]) -> None:
        old = self._aors.get((tenant, extension), [])
        super().replace(tenant, extension, bindings)
        changes = diff(old, bindings)
        if changes:
            self._enqueue((tenant, extension), changes)

    def _enqueue(self, key: AorKey, changes: Changes, *, newer: bool = True) -> None:
        """Queue changes of one AOR, coalesced with those already queued. ``newer``:
        they are newer than what is queued (else what is queued wins)."""
        if not is_valid_aor(*key):
            log.debug("location: AOR not replicated (bad name)", extra={"aor": repr(key)})
            return
        queued = self._pending.get(key)
        if queued is None:
            if len(self._pending) >= self.max_pending:
                self._drop(len(changes))
                return
            queued = self._pending[key] = {}
        if newer:
            _merge_into(queued, changes)
        else:
            older = dict(changes)
            _merge_into(older, queued)
            queued.clear()
            queued.update(older)
        self._trim(queued)
        self._idle.clear()
        self._wake.set()

    def _trim(self, queued: Changes) -> None:
        """Bound the changes of one AOR (a phone changing contact at every REGISTER
        while Redis is away). What matters least goes first: bindings that expired
        since (Redis drops them anyway), removals (the stored binding expires), then
        the oldest. A lost upsert is written again at the next connection."""
        limit = self.max_changes_per_aor
        excess = len(queued) - limit
        if excess <= 0:
            return
        now = self._clock()
        expired = [c for c, b in queued.items() if b is not None and b.expires_at <= now]
        removals = [c for c, b in queued.items() if b is None]
        for contact in expired + removals:
            if len(queued) <= limit:
                break
            del queued[contact]
        while len(queued) > limit:
            del queued[next(iter(queued))]
        self._drop(excess)

    def _drop(self, count: int) -> None:
        self.dropped += count
        if not self._overflow_logged:  # once per episode: until the queue drains
            self._overflow_logged = True
            log.warning(
                "location: replication queue full, changes dropped (healed when redis is "
                "reconnected or the phones register again)",
                extra={"dropped_total": self.dropped, "pending": len(self._pending)},
            )

    # -- applying what Redis holds -----------------------------------------------------------
    def _clocks(self) -> Clocks:
        return Clocks(self._clock(), self._wall())

    def _overlay(self, key: AorKey, stored: list[Binding]) -> list[Binding]:
        """A stored state with our changes that Redis has not echoed yet laid on top."""
        by_contact = {b.contact_uri: b for b in stored}
        layers = [w.changes for w in self._inflight.get(key, ())]
        if key in self._pending:
            layers.append(self._pending[key])
        for changes in layers:
            for contact, binding in changes.items():
                if binding is None:
                    by_contact.pop(contact, None)
                else:
                    by_contact[contact] = binding
        return list(by_contact.values())

    def _decode_all(self, key: AorKey, values: Sequence[bytes], clocks: Clocks) -> list[Binding]:
        """Stored bindings of an AOR as this process holds them: its own become local
        again (keeping the connection of the very same registration), others' have none."""
        mine = {b.contact_uri: b for b in self._aors.get(key, ()) if b.origin is None}
        result = []
        for data in values[:MAX_BINDINGS_READ]:
            binding = decode_binding(data, clocks)
            if binding is None:
                continue
            if binding.origin == self.origin:
                binding = self._as_local(binding, mine.get(binding.contact_uri))
            result.append(binding)
        return result

    @staticmethod
    def _as_local(binding: Binding, held: Binding | None) -> Binding:
        same = held is not None and (held.call_id, held.cseq) == (binding.call_id, binding.cseq)
        source = held.source if held is not None and same else binding.source
        return dataclasses.replace(binding, origin=None, source=source)

    def _on_message(self, data: bytes) -> None:
        message = decode_message(data)
        if message is None:
            self.bad_messages += 1
            return
        key = (message.tenant, message.extension)
        if message.origin == self.origin:
            self._release(key, message.seq)
        clocks = self._clocks()
        stored = self._decode_all(key, message.values, clocks)
        stored.extend(self._still_kept(key, message.origin, stored, clocks.mono))
        Location.replace(self, *key, self._overlay(key, stored))
        self.applied += 1

    def _still_kept(
        self, key: AorKey, writer: str, stored: list[Binding], now: float
    ) -> list[Binding]:
        """Foreign bindings lost by a Redis restart that this state does not settle yet.

        Another process's write of the AOR (ours included: we write our own bindings
        again first) publishes what Redis holds, which lacks bindings whose owner has not
        reconnected yet; dropping them would fail calls meanwhile. The owner's own write
        settles them (its state is the truth about its bindings), as does their showing
        up in Redis, or their expiry."""
        kept = self._kept.get(key)
        if not kept:
            return []
        there = {b.contact_uri for b in stored}
        for contact, binding in list(kept.items()):
            if binding.origin == writer or contact in there or binding.expires_at <= now:
                del kept[contact]
        if not kept:
            del self._kept[key]
        return list(kept.values())

    def _release(self, key: AorKey, seq: int) -> None:
        """Our write `seq` is in Redis and in every state published after it."""
        writes = [w for w in self._inflight.get(key, ()) if w.seq > seq]
        if writes:
            self._inflight[key] = writes
        else:
            self._inflight.pop(key, None)

    def _merge_snapshot(
        self, snapshot: dict[AorKey, list[bytes]], *, redis_restarted: bool = False
    ) -> None:
        """Take every stored AOR (a fresh connection). This process is the authority for
        its own bindings: those Redis lacks (a restarted Redis, a change dropped from a
        full queue) are written again. Redis is the authority for other processes'
        bindings, except just after it restarted: then what we knew of them is kept
        until their owners, reconnecting too, write them again (or they expire), so
        calls through this process do not fail meanwhile."""
        clocks = self._clocks()
        self._kept.clear()  # a snapshot says what Redis holds now
        for key in list(snapshot.keys() | self._aors.keys()):
            stored = self._decode_all(key, snapshot.get(key, []), clocks)
            merged, rewrite = self._with_own(key, stored, clocks.mono, redis_restarted)
            if redis_restarted:
                there = {b.contact_uri for b in stored}
                kept = {
                    b.contact_uri: b
                    for b in merged
                    if b.origin is not None and b.contact_uri not in there
                }
                if kept:
                    self._kept[key] = kept
            Location.replace(self, *key, self._overlay(key, merged))
            if rewrite:
                self._enqueue(key, rewrite, newer=False)

    def _with_own(
        self, key: AorKey, stored: list[Binding], now: float, keep_foreign: bool
    ) -> tuple[list[Binding], Changes]:
        by_contact = {b.contact_uri: b for b in stored}
        rewrite: Changes = {}
        for binding in self._aors.get(key, ()):
            if binding.expires_at <= now:
                continue
            there = by_contact.get(binding.contact_uri)
            if binding.origin is not None:
                if keep_foreign and there is None:
                    by_contact[binding.contact_uri] = binding
                continue
            if there is None or (
                there.origin is None
                and (there.call_id, there.cseq) != (binding.call_id, binding.cseq)
            ):
                by_contact[binding.contact_uri] = binding
                rewrite[binding.contact_uri] = binding
        return list(by_contact.values()), rewrite

    # -- writes --------------------------------------------------------------------------------
    def _take_batch(self) -> list[tuple[AorKey, _Write]]:
        batch: list[tuple[AorKey, _Write]] = []
        while self._pending and len(batch) < self.batch_size:
            key = next(iter(self._pending))
            write = _Write(next(self._seq), self._pending.pop(key))
            self._inflight.setdefault(key, []).append(write)
            batch.append((key, write))
        return batch

    def _confirm(self, batch: list[tuple[AorKey, _Write]]) -> None:
        for _, write in batch:
            write.confirmed = True
        self.written += len(batch)
        if not self._pending:
            self._idle.set()
            self._overflow_logged = False

    def _requeue(self, batch: list[tuple[AorKey, _Write]]) -> None:
        """Writes whose fate is unknown go again (they are idempotent), under anything
        queued for their AOR since."""
        for key, write in batch:
            writes = self._inflight.get(key, [])
            if write in writes:
                writes.remove(write)
                if not writes:
                    self._inflight.pop(key, None)
            self._requeue_changes(key, write.changes)

    def _requeue_changes(self, key: AorKey, changes: Changes) -> None:
        queued = self._pending.pop(key, {})
        merged = dict(changes)
        _merge_into(merged, queued)
        self._pending[key] = merged  # not counted against max_pending: it was in the queue
        self._idle.clear()
        self._wake.set()

    def _end_session(self) -> None:
        """The connection is gone: writes Redis did not confirm go again; confirmed ones
        need no echo any more (the next session reads Redis again)."""
        for key, writes in list(self._inflight.items()):
            for write in writes:
                if not write.confirmed:
                    self._requeue_changes(key, write.changes)
        self._inflight.clear()

    def _script_args(self, key: AorKey, write: _Write, clocks: Clocks) -> list[Any]:
        upserts = [(c, b) for c, b in write.changes.items() if b is not None]
        removed = [c for c, b in write.changes.items() if b is None]
        args: list[Any] = [
            CHANNEL, self.origin, write.seq, key[0], key[1],
            round(clocks.wall * 1000), len(upserts),
        ]  # fmt: skip
        for contact, binding in upserts:
            args += (contact, encode_binding(binding, self.origin, clocks))
        args += removed
        return args

    # -- the asynchronous side -------------------------------------------------------------------
    async def run(self, target: RedisTarget | str, origin: str) -> None:
        """Replicate until cancelled (or `stop()`): load, then write and follow changes;
        reconnect with backoff whenever Redis goes away. `target`: the ``[redis]``
        settings (one server, a cluster or Sentinel) or one server's URL. Never raises
        but CancelledError."""
        if self._stopped:
            return
        self.origin = origin
        self._task = asyncio.current_task()
        # No library retries: the loop owns retrying (backoff, re-reading, writing again).
        redis = client(
            target,
            name="location",
            options=LinkOptions(
                socket_timeout=self.socket_timeout,
                connect_timeout=min(self.socket_timeout, 2.0),
            ),
        )
        script = redis.register_script(_WRITE)
        try:
            # Lost after it worked for a while: retry soon. Never came up, or went at
            # once (each session reads everything): back off further. Whichever process
            # reconnects first after a restart, the others' bindings are kept (_kept).
            await self._link.run(
                lambda: self._session(redis, script),
                Backoff(*self.backoff),
                steady=STEADY,
                failure_log="location: replication round failed",
                logger=log,
            )
        finally:
            self._task = None
            await redis.aclose()

    async def stop(self) -> None:
        """End replication within a second: the queue gets up to ``flush_timeout`` to
        reach Redis first if it is connected."""
        self._stopped = True
        task = self._task
        if task is None or task.done():
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        if self.connected and not self._idle.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(self.flush_timeout, 0.5)):
                    await self._idle.wait()
        task.cancel()
        _done, stuck = await asyncio.wait({task}, timeout=max(0.05, deadline - loop.time()))
        if stuck:
            log.warning("location: replication did not stop in time")
        if self._pending:
            log.info("location: stopped with changes not written", extra={"aors": self.pending})

    close = stop

    async def _session(self, redis: Client, script: Any) -> None:
        conn = await self._pubsub_connection(redis)
        try:
            await conn.connect()  # type: ignore[no-untyped-call]
            # Subscribed before reading: a change made while we read is then a message
            # read after the snapshot, never lost between the two.
            await self._subscribe(conn)
            if isinstance(redis, RedisCluster):
                # A cluster pipeline does not load a script NOSCRIPT refused (a master
                # that was a replica until a failover has none): load it on every master
                # at each session, which follows every failure.
                await redis.script_load(_WRITE)
            restarted = await self._redis_restarted(redis)
            snapshot = await self._load(redis)
            self._merge_snapshot(snapshot, redis_restarted=restarted)
            self._went_up(len(snapshot))
            await self._serve(conn, redis, script)
        finally:
            self.connected = False
            self._end_session()
            await conn.disconnect()

    async def _pubsub_connection(self, redis: Client) -> Connection:
        """Where the channel is followed. The write script publishes from the AOR's
        tenant slot, and a sharded channel must be in the slot of the script's keys, so
        the node-wide channel is classic pub/sub in every mode: on a cluster, Redis
        copies each message to every node, and one connection to any node hears every
        tenant's changes (registrations change seldom: the copies cost little). The
        node taken is the master of the channel's slot, looked up again after a
        failure (a failover may have taken it away)."""
        if isinstance(redis, RedisCluster):
            return await shard_connection(redis, CHANNEL, refresh=self._link.errors > 0)
        return dedicated_connection(redis)

    async def _subscribe(self, conn: Connection) -> None:
        await conn.send_command("SUBSCRIBE", CHANNEL)
        reply = await conn.read_response(timeout=self.socket_timeout)
        raise_if_cancelled()
        if not (isinstance(reply, list) and reply and reply[0] == b"subscribe"):
            raise ConnectionError(f"unexpected answer to SUBSCRIBE: {reply!r:.80}")

    async def _redis_restarted(self, redis: Client) -> bool:
        """Is this another Redis server process than the one of the last session? (On a
        cluster: the master of the channel's slot; a failover counts as a restart, which
        only keeps other processes' bindings a little longer.)"""
        try:
            if isinstance(redis, RedisCluster):
                node = await shard_node(redis, CHANNEL)
                info = await redis.info("server", target_nodes=node)
            else:
                info = await redis.info("server")
        except ResponseError:  # INFO refused (some managed services): assume not
            return False
        finally:
            raise_if_cancelled()
        run_id = info.get("run_id")
        before, self._run_id = self._run_id, run_id if isinstance(run_id, str) else None
        return before is not None and self._run_id is not None and before != self._run_id

    async def _load(self, redis: Client) -> dict[AorKey, list[bytes]]:
        """Every stored AOR of every tenant: the tenants that have had one, the AORs of
        each in its key index (no SCAN)."""
        members = await redis.smembers(tenant_names.LOCATION_TENANTS)
        tenants = [t.decode("ascii", "replace") for t in members if isinstance(t, bytes)]
        keys: list[AorKey] = []
        for start in range(0, len(tenants), self.batch_size):
            pipe = redis.pipeline(transaction=False)
            for tenant in tenants[start : start + self.batch_size]:
                with contextlib.suppress(ValueError):  # not a tenant id: not ours
                    pipe.zrange(tenant_names.key_index(tenant), 0, -1)
            for names in await pipe.execute():
                raise_if_cancelled()
                keys += [key for key in map(parse_aor_key, names) if key is not None]
        snapshot: dict[AorKey, list[bytes]] = {}
        for start in range(0, len(keys), self.batch_size):
            chunk = keys[start : start + self.batch_size]
            pipe = redis.pipeline(transaction=False)
            for key in chunk:
                pipe.hgetall(aor_key(*key))
            results = await pipe.execute()
            raise_if_cancelled()
            for key, fields in zip(chunk, results, strict=True):
                if isinstance(fields, dict) and fields:
                    snapshot[key] = [v for v in fields.values() if isinstance(v, bytes)]
        return snapshot

    async def _serve(self, conn: Connection, redis: Client, script: Any) -> None:
        """Follow the channel and write the queue at once, until either fails."""
        tasks = {
            asyncio.create_task(self._listen(conn), name="location-listen"),
            asyncio.create_task(self._write(redis, script), name="location-write"),
        }
        await serve_until_one_ends(tasks, "location replication")

    async def _listen(self, conn: Connection) -> None:
        pinged = False
        while True:
            reply = await conn.read_response(timeout=self.ping_interval)
            raise_if_cancelled()
            if reply is None:
                if pinged:
                    raise TimeoutError(f"no answer from redis for {2 * self.ping_interval:.0f} s")
                await conn.send_command("PING")
                pinged = True
                continue
            pinged = False
            if (
                isinstance(reply, list)
                and len(reply) == 3
                and reply[0] == b"message"
                and isinstance(reply[2], bytes)
            ):
                self._on_message(reply[2])

    async def _write(self, redis: Client, script: Any) -> None:
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._take_batch()
            clocks = self._clocks()
            try:
                pipe = redis.pipeline(transaction=False)
                pipe.sadd(tenant_names.LOCATION_TENANTS, *{key[0] for key, _ in batch})
                for key, write in batch:
                    await script(
                        keys=[aor_key(*key), tenant_names.key_index(key[0])],
                        args=self._script_args(key, write, clocks),
                        client=pipe,
                    )
                await pipe.execute()
            except BaseException:
                self._requeue(batch)
                raise
            self._confirm(batch)
            raise_if_cancelled()  # after the results were taken in: nothing lost

    def _went_up(self, aors: int) -> None:
        self.connected = True
        self._aors_read = aors
        self._link.came_up()

    def _link_changed(self, up: bool, error: str | None) -> None:
        # One line per outage (RedisLink reports changes only).
        if up:
            extra = {"aors": self._aors_read, "pending": self.pending}
            log.info("location: redis is back", extra=extra)
        else:
            log.warning(
                "location: redis unavailable, registrations served from memory",
                extra={"error": error, "pending": self.pending},
            )
