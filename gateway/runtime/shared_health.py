"""Trunk health shared by every worker and every node, through Redis and envelopes.

Each node's OPTIONS prober (worker 0) knows which trunks it finds down; routing in every
worker of every node must skip them. `SharedHealth` carries each node's `NodeReport`
(gateway/proxy/trunk_health.py, where the merge rule is, and why) to every process,
into its `HealthView`, which routing reads in memory: the SIP path never waits on
Redis, as with registrations (shared_location.py, whose pattern this follows: a local
copy, a snapshot at each (re)connection, then pub/sub).

Redis (every key and the channel under the node-wide tag ``{sipgw}``, so the script
below and sharded pub/sub stay in one slot of a cluster)
    ``{sipgw}:trunks``  hash: node name -> that node's latest report (msgpack,
        `encode_report`). Node names must be unique: a node writes its own field.
    ``{sipgw}:trunks:seen``  sorted set: node name -> when Redis last had its report
        (Redis's clock, ms). A reader ages each report by Redis's ``TIME``, so clock
        skew between gateway hosts does not matter; a node not seen for `KEEP` is
        dropped from both keys by the next write (Redis 7.0 has no per-field expiry).
    ``{sipgw}:trunks:changes``  channel: every report as it is written. Sharded pub/sub
        (``SPUBLISH``/``SSUBSCRIBE``) on a cluster, where a classic PUBLISH would go to
        every node of the cluster; classic pub/sub on one server or with Sentinel.

Writing: worker 0 writes its node's report (one script call: store, stamp, prune,
publish) when its prober changes its mind and again every `OptionsProber.refresh_period`
(1-5 s): the refreshes are what keep a report alive elsewhere, so a node that dies
stops holding trunks down after three periods.

Reading: every worker subscribes first, then reads the snapshot (so a report written
while it reads arrives as a message afterwards, never lost between the two), and after a
lost connection it reconnects with backoff and reads the snapshot again (`resync`: a
report it missed meanwhile is in it; a node gone meanwhile is not).

Within a node: worker 0 also sends its report to its sibling workers in a worker
envelope (transport/relay.py, the one that carries counters to worker 0) on every change
and every second, so siblings follow their own node's probes without Redis too. Without
Redis each worker thus falls back to what its own node knows; other nodes' reports
lapse once they stop coming.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import msgpack
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection

from gateway.proxy.prober import REPORT_LIFE, OptionsProber
from gateway.proxy.trunk_health import DownTrunk, HealthView, NodeReport
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
)

log = logging.getLogger("sipgw.trunks")

REPORTS = "{sipgw}:trunks"
SEEN = "{sipgw}:trunks:seen"
CHANNEL = "{sipgw}:trunks:changes"
# A node not seen for this long is dropped from Redis (its report lapsed long before:
# the longest life of a report is REPORT_LIFE x 5 s).
KEEP = 60.0
STEADY = 10.0  # seconds a session must have served for a reconnection to start quick
SIBLING_PERIOD = 1.0  # worker 0 -> its siblings, besides every change

# Bounds on what is read back (Redis is ours, but a bad value must not cost much).
MAX_DOWN = 4096
MAX_NAME = 128
MAX_REASON = 256

# KEYS: REPORTS, SEEN. ARGV: channel, node, report, keep (ms), the publish command.
_WRITE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], now, ARGV[2])
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[4]))
for _, node in ipairs(gone) do
  redis.call('HDEL', KEYS[1], node)
  redis.call('ZREM', KEYS[2], node)
end
redis.call(ARGV[5], ARGV[1], ARGV[3])
return now
"""

# KEYS: REPORTS, SEEN. Returns {now (ms), node, report, seen (ms), node, ...}.
_READ = """
local t = redis.call('TIME')
local out = {tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local seen = redis.call('ZSCORE', KEYS[2], all[i])
  if seen then
    table.insert(out, all[i])
    table.insert(out, all[i + 1])
    table.insert(out, math.floor(tonumber(seen)))
  end
end
return out
"""


# -- values ----------------------------------------------------------------------------
def encode_report(report: NodeReport) -> list[Any]:
    """The wire form (msgpack in Redis, JSON in an envelope)."""
    return [
        report.node,
        report.started,
        report.seq,
        report.ttl,
        [[d.tenant, d.trunk, round(d.since * 1000), d.reason] for d in report.down],
    ]


def decode_report(value: Any) -> NodeReport | None:
    """A report from its wire form; None if malformed."""
    try:
        node, started, seq, ttl, down = value
        if not (_name(node) and _int(started) and _int(seq) and _number(ttl)):
            return None
        if not (0 < ttl <= 3600) or not isinstance(down, list) or len(down) > MAX_DOWN:
            return None
        entries = []
        for tenant, trunk, since, reason in down:
            if not (_name(tenant) and _name(trunk) and _int(since) and isinstance(reason, str)):
                return None
            entries.append(DownTrunk(tenant, trunk, since / 1000, reason[:MAX_REASON]))
    except (TypeError, ValueError):
        return None
    return NodeReport(node, started, seq, float(ttl), tuple(entries))


def pack_report(report: NodeReport) -> bytes:
    data: bytes = msgpack.packb(encode_report(report), use_bin_type=True)
    return data


def unpack_report(data: bytes) -> NodeReport | None:
    try:
        value = msgpack.unpackb(data, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    return decode_report(value)


def _name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# -- the process's side ----------------------------------------------------------------
class SharedHealth:
    """Feeds one process's `HealthView`: this node's prober (worker 0), the sibling
    envelopes (other workers), and Redis (every node)."""

    def __init__(
        self,
        view: HealthView,
        *,
        prober: OptionsProber | None = None,
        to_siblings: Callable[[list[Any]], None] | None = None,
        log_flips: bool = False,
        wall: Callable[[], float] = time.time,
        backoff: tuple[float, float] = (0.2, 5.0),
        socket_timeout: float = 5.0,
        ping_interval: float = 5.0,
    ) -> None:
        self.view = view
        self.prober = prober
        self.to_siblings = to_siblings
        self.log_flips = log_flips  # one process per node logs (worker 0)
        self._wall = wall
        self.backoff = backoff
        self.socket_timeout = socket_timeout
        self.ping_interval = ping_interval
        self._started_ms = round(wall() * 1000)
        self._seq = 0
        self._dirty = asyncio.Event()  # our report changed: write it now
        self._link = RedisLink(on_change=self._link_changed)
        self._failed_before = False  # a cluster's slot map may be stale: refresh it
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.bad_messages = 0
        if prober is not None:
            self.view.set_local(self.local_report())

    @property
    def connected(self) -> bool:
        return self._link.connected

    # -- this node's prober ------------------------------------------------------------------
    def local_report(self) -> NodeReport:
        assert self.prober is not None
        return NodeReport(
            self.view.node,
            self._started_ms,
            self._seq,
            REPORT_LIFE * self.prober.refresh_period,
            self.prober.down_trunks(self._wall()),
        )

    def prober_changed(self) -> None:
        """The prober marked a trunk down or up: every process hears of it now."""
        if self.prober is None:
            return
        self._seq += 1
        report = self.local_report()
        self.view.set_local(report)
        self._dirty.set()
        self._send_to_siblings(report)
        self._flipped()

    def _send_to_siblings(self, report: NodeReport) -> None:
        if self.to_siblings is not None:
            try:
                self.to_siblings(encode_report(report))
            except Exception:
                log.exception("trunks: could not send the report to the sibling workers")

    # -- sibling workers -----------------------------------------------------------------------
    def from_sibling(self, wire: Any) -> None:
        """Worker 0's report, in an envelope (authenticated by the transport)."""
        report = decode_report(wire)
        if report is None:
            self.bad_messages += 1
            return
        self.view.apply(report)
        self._flipped()

    def _flipped(self) -> None:
        for flip in self.view.flips():
            if not self.log_flips:
                continue
            extra = {"tenant": flip.tenant, "peer": flip.trunk, "nodes": list(flip.nodes)}
            if flip.down:
                log.warning("trunk skipped: reported down", extra=extra)
            else:
                log.info("trunk routed again: no node reports it down", extra=extra)

    # -- the asynchronous side ---------------------------------------------------------------
    async def run(self, target: RedisTarget | str) -> None:
        """Share until cancelled (or `stop()`): the periodic work, and the Redis link
        (reconnecting with backoff). Never raises but CancelledError."""
        self._task = asyncio.current_task()
        # No library retries: the loop owns retrying (backoff, reading the snapshot again).
        redis = client(
            target,
            name="trunks",
            options=LinkOptions(
                socket_timeout=self.socket_timeout,
                connect_timeout=min(self.socket_timeout, 2.0),
            ),
        )
        write = redis.register_script(_WRITE)
        read = redis.register_script(_READ)
        ticker = asyncio.create_task(self._tick(), name="trunks-tick")
        try:
            await self._link.run(
                lambda: self._session(redis, write, read),
                Backoff(*self.backoff),
                steady=STEADY,
                failure_log="trunks: sharing round failed",
                logger=log,
            )
        finally:
            ticker.cancel()
            await asyncio.wait({ticker}, timeout=1.0)
            self._task = None
            await redis.aclose()

    async def stop(self) -> None:
        task = self._task
        if task is None or task.done():
            return
        task.cancel()
        _done, stuck = await asyncio.wait({task}, timeout=1.0)
        if stuck:
            log.warning("trunks: sharing did not stop in time")

    async def _tick(self) -> None:
        """Lapsed reports out (for the log and the metrics: routing ignores them
        already); worker 0's report to its siblings again (a lost envelope is made good)."""
        while True:
            await asyncio.sleep(SIBLING_PERIOD)
            try:
                self.view.expire()
                self._flipped()
                if self.prober is not None:
                    self._send_to_siblings(self.local_report())
            except Exception:
                log.exception("trunks: periodic work failed")

    async def _session(self, redis: Client, write: Any, read: Any) -> None:
        cluster = isinstance(redis, RedisCluster)
        conn = await self._pubsub_connection(redis)
        try:
            await conn.connect()  # type: ignore[no-untyped-call]
            # Subscribed before reading: a report written while we read arrives as a
            # message afterwards, never lost between the two.
            await self._subscribe(conn, cluster)
            snapshot = await read(keys=[REPORTS, SEEN], client=redis)
            raise_if_cancelled()
            self.view.resync(self._snapshot(snapshot))
            self._flipped()
            if self.prober is not None:  # at once: a restarted Redis has lost it
                await self._write(redis, write, cluster)
            self._failed_before = False
            self._link.came_up()
            await self._serve(conn, redis, write, cluster)
        except BaseException:
            self._failed_before = True
            raise
        finally:
            await conn.disconnect()

    async def _pubsub_connection(self, redis: Client) -> Connection:
        if isinstance(redis, RedisCluster):
            # The master of the channel's slot: SSUBSCRIBE lives there.
            return await shard_connection(redis, CHANNEL, refresh=self._failed_before)
        return dedicated_connection(redis)

    async def _subscribe(self, conn: Connection, cluster: bool) -> None:
        command = "SSUBSCRIBE" if cluster else "SUBSCRIBE"
        await conn.send_command(command, CHANNEL)
        reply = await conn.read_response(timeout=self.socket_timeout)
        raise_if_cancelled()
        if not (isinstance(reply, list) and reply and reply[0] == command.lower().encode()):
            raise ConnectionError(f"unexpected answer to {command}: {reply!r:.80}")

    def _snapshot(self, reply: Any) -> list[tuple[NodeReport, float]]:
        if not isinstance(reply, list) or not reply or not isinstance(reply[0], int):
            raise ConnectionError(f"unexpected snapshot: {reply!r:.80}")
        now_ms = reply[0]
        reports: list[tuple[NodeReport, float]] = []
        for index in range(1, len(reply) - 2, 3):
            data, seen_ms = reply[index + 1], reply[index + 2]
            report = unpack_report(data) if isinstance(data, bytes) else None
            if report is None or not isinstance(seen_ms, int):
                self.bad_messages += 1
                continue
            age = max(0.0, (now_ms - seen_ms) / 1000)
            if age < report.ttl:
                reports.append((report, age))
        return reports

    async def _serve(self, conn: Connection, redis: Client, write: Any, cluster: bool) -> None:
        """Follow the channel, and write our report when it changes or is due, until
        either fails."""
        tasks = {asyncio.create_task(self._listen(conn, cluster), name="trunks-listen")}
        if self.prober is not None:
            tasks.add(asyncio.create_task(self._writer(redis, write, cluster), name="trunks-write"))
        await serve_until_one_ends(tasks, "trunks sharing")

    async def _listen(self, conn: Connection, cluster: bool) -> None:
        kind = b"smessage" if cluster else b"message"
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
            if isinstance(reply, list) and len(reply) == 3 and reply[0] == kind:
                self._on_message(reply[2])

    def _on_message(self, data: Any) -> None:
        report = unpack_report(data) if isinstance(data, bytes) else None
        if report is None:
            self.bad_messages += 1
            return
        self.view.apply(report)
        self._flipped()

    async def _writer(self, redis: Client, write: Any, cluster: bool) -> None:
        assert self.prober is not None
        period = self.prober.refresh_period
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(period):
                    await self._dirty.wait()
            await self._write(redis, write, cluster)

    async def _write(self, redis: Client, write: Any, cluster: bool) -> None:
        self._dirty.clear()  # before building the report: a change from now on is news
        data = pack_report(self.local_report())
        args = [CHANNEL, self.view.node, data, round(KEEP * 1000), _publish(cluster)]
        await write(keys=[REPORTS, SEEN], args=args, client=redis)
        raise_if_cancelled()
        self.written += 1

    def _link_changed(self, up: bool, error: str | None) -> None:
        # One line per outage (RedisLink reports changes only).
        if up:
            log.info("trunks: redis is back, reports shared again")
        else:
            log.warning(
                "trunks: redis unavailable, routing on this node's own probes",
                extra={"error": error},
            )


def _publish(cluster: bool) -> str:
    return "SPUBLISH" if cluster else "PUBLISH"
