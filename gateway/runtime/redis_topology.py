"""The Redis nodes a cluster or Sentinel names at run time, refused as SIP destinations.

The destination policy (gateway/proxy/destinations.py) refuses SIP to the Redis
endpoints of the configuration: every cluster seed, every sentinel. A cluster has more
nodes than its seeds (the replicas, the masters not listed, nodes added later) and
Sentinel names a master and replicas of its own; any of them may take over after a
failover. SIP over TCP aimed at one of them (a Via's sent-by, a Contact) would make the
gateway write SIP text into Redis, which reads inline commands line by line: a body line
``FLUSHALL`` runs on a Redis without a password (issue #11, one hop further). So every
SIP process runs a `RedisTopology`, which reads the nodes and hands their addresses to
its policies (`DestinationPolicy.add_services`):

- a cluster: ``CLUSTER SHARDS`` (Redis 7, which the cluster mode needs anyway) from any
  node the process's cluster client knows: every master and replica, healthy or not,
  with its port and TLS port, at its IP, its endpoint and its hostname;
- Sentinel: ``SENTINEL MASTER``, ``REPLICAS`` and ``SENTINELS`` of the service, from
  every configured sentinel that answers;
- and, each time, the configured seeds or sentinels again.

Names are resolved here, on the event loop's resolver, every time (a container's address
changes with it); the policies get IP literals only, and never wait on DNS.

When: at start, every `REFRESH_INTERVAL` seconds, and as soon as a lean connection says
a server broke or named another (`redis_routes.on_failed`: MOVED, ASK, a failover), at
most once every `MIN_GAP` seconds. redis-py's own clients refresh their slot map on
their own schedule; the interval bounds how long a node they found before us waits.

The set only grows: a node that left may come back, and a stale refusal is harmless
where a missing one is the attack. It is bounded (`MAX_ADDRESSES`): a cluster beyond
that is out of scope, logged once, and the addresses learnt first are kept.

Each process runs its own watcher rather than worker 0 relaying a list: every worker
sends SIP and already has Redis clients of its own, and one small read every few
seconds costs less than another envelope kind and the gap before it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import NoReturn

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisClusterException

from gateway.config import RedisSettings
from gateway.proxy.destinations import DestinationPolicy
from gateway.redis_link import (
    LINK_ERRORS,
    LinkOptions,
    RedisTarget,
    client,
    raise_if_cancelled,
    sentinel_for,
)
from gateway.redis_routes import on_failed
from gateway.transport.addresses import ip_address_of, strip_brackets

log = logging.getLogger("sipgw.redis")

REFRESH_INTERVAL = 10.0  # seconds between two reads of the nodes
MIN_GAP = 1.0  # seconds at least between two reads, however often a failure nudges
MAX_ADDRESSES = 512  # (address, port) pairs kept; a cluster this large is out of scope

Address = tuple[str, int]
Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve(host: str, port: int) -> list[str]:
    """The addresses of a host name now, on the event loop's resolver ([] if none)."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return [str(info[4][0]) for info in infos]


class RedisTopology:
    """Reads the nodes of a cluster or Sentinel and feeds them to destination policies;
    see the module docstring. ``known`` holds every (IP, port) learnt."""

    def __init__(
        self,
        target: RedisSettings,
        *,
        worker: int = 0,
        interval: float = REFRESH_INTERVAL,
        limit: int = MAX_ADDRESSES,
        resolver: Resolver = resolve,
    ) -> None:
        if target.mode == "standalone":
            raise ValueError("one Redis server has no nodes to learn")
        self.target = target
        self.worker = worker
        self.interval = interval
        self.limit = limit
        self.known: set[Address] = set()
        self.reads = 0  # rounds run, answered or not
        self._resolve = resolver
        self._policies: list[DestinationPolicy] = []
        self._wake = asyncio.Event()
        self._full_logged = False
        self._failing = False

    def feed(self, policy: DestinationPolicy) -> None:
        """Give `policy` every node learnt so far, and every node learnt from now on."""
        self._policies.append(policy)
        policy.add_services(sorted(self.known))

    def nudge(self) -> None:
        """Read the nodes again soon (a server broke or named another)."""
        self._wake.set()

    async def run(self) -> NoReturn:
        """Read the nodes now and then, for ever (until cancelled)."""
        stop_listening = on_failed(self.nudge)
        reader = _ClusterReader(self.target) if self.target.mode == "cluster" else None
        sentinels = None if reader is not None else sentinel_for(self.target, _OPTIONS)
        try:
            while True:
                self._wake.clear()
                try:
                    if reader is not None:
                        named = await reader.read()
                    else:
                        assert sentinels is not None
                        named = await _sentinel_nodes(sentinels, self.target)
                except _READ_ERRORS as exc:
                    self._went_wrong(exc)
                    named = []
                except Exception as exc:  # a bug: said, and the loop goes on
                    log.exception("redis topology read failed")
                    self._went_wrong(exc)
                    named = []
                else:
                    self._came_right()
                raise_if_cancelled()  # one that redis-py's wait_for swallowed (redis_link)
                await self.learn([*named, *self.target.endpoints])
                self.reads += 1
                await asyncio.sleep(MIN_GAP)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.interval - MIN_GAP)
        finally:
            stop_listening()
            if reader is not None:
                await reader.close()
            if sentinels is not None:
                for sentinel in sentinels.sentinels:
                    await sentinel.aclose()

    async def learn(self, named: Iterable[Address]) -> list[Address]:
        """Resolve what the nodes are named, keep the new addresses (up to the limit)
        and hand them to every policy; returns them."""
        found: list[Address] = []
        for host, port in dict.fromkeys(named):  # in order, once each
            host = strip_brackets(host)
            if ip_address_of(host) is not None:
                found.append((host, port))
            else:
                found.extend((address, port) for address in await self._resolve(host, port))
        new: list[Address] = []
        for address in dict.fromkeys(found):
            if address in self.known:
                continue
            if len(self.known) >= self.limit:
                self._log_full()
                break
            self.known.add(address)
            new.append(address)
        if new:
            for policy in self._policies:
                policy.add_services(new)
            log.info(
                "redis nodes refused as sip destinations",
                extra={"worker": self.worker, "addresses": len(self.known), "new": len(new)},
            )
        return new

    def _log_full(self) -> None:
        if not self._full_logged:
            self._full_logged = True
            log.warning(
                "redis topology too large: nodes beyond the limit are not refused as sip "
                "destinations",
                extra={"worker": self.worker, "limit": self.limit},
            )

    def _went_wrong(self, exc: BaseException) -> None:
        if not self._failing:
            self._failing = True
            log.warning(
                "redis topology unread; the nodes learnt so far stay refused",
                extra={"worker": self.worker, "reason": f"{type(exc).__name__}: {exc}"},
            )

    def _came_right(self) -> None:
        if self._failing:
            self._failing = False
            log.info("redis topology read again", extra={"worker": self.worker})


# What a read that reached no server raises (no seed answers: RedisClusterException).
_READ_ERRORS: tuple[type[BaseException], ...] = (*LINK_ERRORS, RedisClusterException)

# Short timeouts: a read that hangs only delays the next one. One try per command: the
# loop above is the retry.
_OPTIONS = LinkOptions(socket_timeout=2.0, connect_timeout=2.0)


class _ClusterReader:
    """``CLUSTER SHARDS`` from whichever node of the cluster answers first."""

    def __init__(self, target: RedisTarget) -> None:
        cluster = client(target, name="topology", options=_OPTIONS)
        assert isinstance(cluster, RedisCluster)
        self.cluster = cluster

    async def read(self) -> list[Address]:
        cluster = self.cluster
        await cluster.initialize()
        # A master first (its view of its shard is the one that counts), not always the
        # same one; a replica only when no master answers.
        masters, replicas = cluster.get_primaries(), cluster.get_replicas()
        random.shuffle(masters)
        random.shuffle(replicas)
        failure: BaseException = ConnectionError("the cluster client knows no node")
        for node in masters + replicas:
            try:
                reply = await cluster.execute_command("CLUSTER", "SHARDS", target_nodes=node)
            except LINK_ERRORS as exc:
                failure = exc
                continue
            known = [(n.host, int(n.port)) for n in masters + replicas]
            return known + shard_addresses(reply)
        # None answered: next time, ask the seeds where the cluster is now.
        cluster._request_refresh()
        raise failure

    async def close(self) -> None:
        await self.cluster.aclose()


def shard_addresses(reply: object) -> list[Address]:
    """Every (host, port) a ``CLUSTER SHARDS`` reply names: each node's IP, endpoint and
    hostname, with its port and its TLS port."""
    found: list[Address] = []
    for shard in _sequence(reply):
        for node in _sequence(_fields(shard).get("nodes")):
            fields = _fields(node)
            hosts = [_text(fields.get(key)) for key in ("ip", "endpoint", "hostname")]
            ports = [_number(fields.get(key)) for key in ("port", "tls-port")]
            found.extend(
                (host, port) for host in hosts if host not in ("", "?") for port in ports if port
            )
    return found


async def _sentinel_nodes(sentinel: Sentinel, target: RedisTarget) -> list[Address]:
    """The master, the replicas and the other sentinels of the service, as every
    configured sentinel that answers names them."""
    service = target.sentinel_service
    assert service is not None
    found: list[Address] = []
    failure: BaseException | None = None
    for server in sentinel.sentinels:
        try:
            # Raw replies: the words apart, so no client-side parser reshapes them.
            master = await server.execute_command("SENTINEL", "MASTER", service)  # type: ignore[no-untyped-call]
            replicas = await server.execute_command("SENTINEL", "REPLICAS", service)  # type: ignore[no-untyped-call]
            others = await server.execute_command("SENTINEL", "SENTINELS", service)  # type: ignore[no-untyped-call]
        except LINK_ERRORS as exc:
            failure = exc
            continue
        for entry in [master, *_sequence(replicas), *_sequence(others)]:
            fields = _fields(entry)
            host, port = _text(fields.get("ip")), _number(fields.get("port"))
            if host and port:
                found.append((host, port))
    if failure is not None and not found:
        raise failure
    return found


# -- replies: RESP2 flat [name, value, …] lists, or maps where a client parsed them ----
def _fields(entry: object) -> dict[str, object]:
    if isinstance(entry, dict):
        return {_text(key): value for key, value in entry.items()}
    items = _sequence(entry)
    return {_text(key): value for key, value in zip(items[::2], items[1::2], strict=False)}


def _sequence(value: object) -> Sequence[object]:
    return value if isinstance(value, list | tuple) else ()


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _number(value: object) -> int:
    text = _text(value)
    return int(text) if text.isdigit() else 0
