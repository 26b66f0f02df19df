"""Redis links: the one place that makes a Redis client, and the one reconnect loop.

Every part of the gateway that talks to Redis (the event writer and the live hub of the
bus, the contact index and its invalidations, the shared location, the security
directory) gets its client from `client()` and, when it holds a connection open
(pub/sub), a connection of its own from `dedicated_connection()` (one server, Sentinel)
or `shard_connection()` (a cluster: the node that serves a key's slot).

`client()` takes the ``[redis]`` settings (anything shaped like `RedisTarget`: this
module sits below gateway.config in the layers, so it names the fields it reads instead
of importing the class) and returns redis-py's own client for the mode:

- one server: ``redis.asyncio.Redis`` (``Redis.from_url``); a plain URL string is still
  taken and means this, so a caller that holds only ``settings.redis.url`` keeps working;
- a Redis Cluster: ``redis.asyncio.cluster.RedisCluster`` on the seed nodes; it learns
  the other nodes and the slot map from them, follows MOVED and ASK, and reads the map
  again after a connection error (at most once a second);
- Sentinel: ``Sentinel(sentinels).master_for(service)``, a ``Redis`` whose connections
  ask the sentinels for the master's address whenever they connect; a connection that
  finds the old master demoted (READONLY) drops and asks again. Closing the client
  closes the sentinel connections too.

Each gets the same `LinkOptions` (timeouts, RESP2, the ``sipgw-<name>`` client name, no
library retries unless asked) and the settings' credentials and TLS options.

The SIP path never waits on Redis (DESIGN.md), so each user decides what to do while
Redis is away (buffer events, serve registrations from memory, turn a cache off) and
retries by itself: a client made here does not retry inside the library unless asked,
because a retry hidden in redis-py would stall the caller's loop and blur its counts.
On a cluster that means: a command to a master that just died fails once with a
``ConnectionError`` and asks for a new slot map, and the caller's next try goes to the
replica that took over (once the cluster has promoted it); MOVED and ASK redirections
are not retries and are always followed.

What redis-py 8.2's asyncio cluster client offers (read in its source, and what
tests/integration/test_redis_cluster_link.py runs against a real cluster):

- Commands are routed by their keys' slot, EVAL/EVALSHA by their KEYS (the keys of one
  command must share a slot; a script without keys goes to a random node). A script
  must be loaded on the node of its key: SCRIPT LOAD goes to every master, but a master
  that was a replica until a failover has an empty script cache (Redis does not
  replicate it), so EVALSHA users keep handling NOSCRIPT.
- ``pipeline()`` without a transaction may mix slots: it is split per node and the
  replies come back in order. ``pipeline(transaction=True)`` (MULTI/EXEC) and WATCH
  need every key in one slot (``{tag}`` keys); otherwise it raises before sending.
- Pub/sub: ``RedisCluster.pubsub()`` gives a ``ClusterPubSub``. SUBSCRIBE and PUBLISH
  work on any node (the cluster bus broadcasts every PUBLISH to every node, which is
  why it does not scale). Sharded pub/sub is there: ``spublish()`` goes to the master
  of the channel's slot, ``ClusterPubSub.ssubscribe()`` keeps one connection per node
  and ``get_sharded_message()`` polls them in turn; after a failover or a slot move it
  subscribes the channels again on their new node (MOVED on a read, a failed poll, a
  refreshed slot map). SPUBLISH inside a Lua script works when the channel is in the
  slot of the script's keys.
- There is no ``connection_pool`` on a cluster client, so `dedicated_connection()` has
  nothing to take a connection from; `shard_connection()` makes one for the master of a
  key's slot from that node's own settings. A user that reads raw replies on it (the
  bus's live hub, SSUBSCRIBE) calls it again with ``refresh=True`` after the connection
  failed: a failover has moved the slot to another node.
- SCAN on a cluster client visits every master (``scan_iter``), one after the other.

`RedisLink` is the state of one link (up, down, or not known yet), its error counts and
its reconnect loop (`run`): a session that connects and serves until the connection
fails, again and again, with a `Backoff` between two sessions. Its ``on_change``
callback sees each change of state once (one log line per outage, not one per retry)
and is what ``sipgw_redis_up`` follows.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn, Protocol, overload

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger("sipgw.redis")

# What a lost or refused connection raises: redis-py's own errors, the socket's, and a
# read that timed out (ours, or the library's).
LINK_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)

# The client of each mode. A cluster client is not a ``Redis``: the commands are the
# same, the pool is not (see `shard_connection`).
Client = Redis | RedisCluster


@dataclass(frozen=True, slots=True)
class LinkOptions:
    """How a client connects. The defaults suit a request/response user that owns its
    retries; a user states what differs, and why, where it makes its client."""

    # Seconds a command may wait for its reply. None: no limit, for a connection held
    # open for pub/sub, whose reads pass their own timeout.
    socket_timeout: float | None = 5.0
    connect_timeout: float = 2.0
    decode_responses: bool = False
    # PING before a command on a connection idle this long (0: never). Never on a pub/sub
    # connection: the PING's reply would be read as a message, or a message as its reply.
    health_check_interval: float = 0.0
    # False: one try, the caller retries (see the module docstring). True: redis-py's own
    # retry policy (a few tries with jittered backoff), for a user with no loop of its own.
    library_retries: bool = False
    # RESP2: pub/sub replies come back from ``read_response`` (RESP3 diverts them to a
    # push handler). None: the library's default (RESP3 if the server speaks it).
    protocol: Literal[2, 3] | None = 2


class RedisTarget(Protocol):
    """The ``[redis]`` settings as `client()` reads them (gateway.config.RedisSettings)."""

    @property
    def mode(self) -> Literal["standalone", "cluster", "sentinel"]: ...
    @property
    def url(self) -> str: ...
    @property
    def cluster_nodes(self) -> tuple[tuple[str, int], ...]: ...
    @property
    def sentinel_service(self) -> str | None: ...
    @property
    def sentinels(self) -> tuple[tuple[str, int], ...]: ...
    @property
    def sentinel_password(self) -> str | None: ...
    @property
    def username(self) -> str | None: ...
    @property
    def password(self) -> str | None: ...
    @property
    def tls(self) -> bool: ...
    @property
    def tls_ca(self) -> Path | None: ...
    @property
    def tls_cert(self) -> Path | None: ...
    @property
    def tls_key(self) -> Path | None: ...
    @property
    def tls_verify(self) -> bool: ...


@overload
def client(target: str, *, name: str | None, options: LinkOptions = ...) -> Redis: ...
@overload
def client(target: RedisTarget, *, name: str | None, options: LinkOptions = ...) -> Client: ...
def client(
    target: str | RedisTarget, *, name: str | None, options: LinkOptions = LinkOptions()
) -> Client:
    """A client of `target`: the ``[redis]`` settings (one server, a cluster or
    Sentinel, see the module docstring), or the URL of one server (``redis://``,
    ``rediss://``, ``unix://``). It is named ``sipgw-<name>`` in CLIENT LIST so an
    operator sees which part of the gateway holds each connection (None: unnamed, one
    round trip less per connection). Nothing connects until the first command."""
    common = _common(name, options)
    if isinstance(target, str):
        return Redis.from_url(target, **common)
    secrets = _credentials(target.username, target.password)
    if target.mode == "cluster":
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.cluster_nodes],
            **common,
            **secrets,
            **_tls(target),
        )
    if target.mode == "sentinel":
        return _sentinel_master(target, common, secrets)
    rediss = target.url.startswith("rediss://")
    if target.tls and not rediss:
        raise ValueError("TLS to one server is a rediss:// URL")
    tls = _tls(target, enabled=rediss)
    tls.pop("ssl", None)  # from_url takes TLS from the scheme
    return Redis.from_url(target.url, **common, **secrets, **tls)


def _common(name: str | None, options: LinkOptions) -> dict[str, Any]:
    """The connection settings every mode shares."""
    common: dict[str, Any] = {
        "protocol": options.protocol,
        "client_name": None if name is None else f"sipgw-{name}",
        "socket_timeout": options.socket_timeout,
        "socket_connect_timeout": options.connect_timeout,
        "socket_keepalive": True,
        "decode_responses": options.decode_responses,
        "health_check_interval": options.health_check_interval,
    }
    if not options.library_retries:  # no ``retry`` at all: redis-py's default policy
        common["retry"] = Retry(NoBackoff(), 0)
    return common


def _credentials(username: str | None, password: str | None) -> dict[str, Any]:
    # Left out when unset, so a password in a URL is not overridden by None.
    found = {"username": username, "password": password}
    return {key: value for key, value in found.items() if value is not None}


def _tls(target: RedisTarget, *, enabled: bool | None = None) -> dict[str, Any]:
    """redis-py's SSL settings for `target` (none without TLS: `enabled`, by default
    the settings' ``tls``)."""
    if not (target.tls if enabled is None else enabled):
        return {}
    settings: dict[str, Any] = {
        "ssl": True,  # without it RedisCluster and Sentinel ignore the ssl_* keys
        "ssl_cert_reqs": "required" if target.tls_verify else "none",
        "ssl_check_hostname": target.tls_verify,
    }
    for key, path in (
        ("ssl_ca_certs", target.tls_ca),
        ("ssl_certfile", target.tls_cert),
        ("ssl_keyfile", target.tls_key),
    ):
        if path is not None:
            settings[key] = str(path)
    return settings


class _OwnedSentinelPool(SentinelConnectionPool):
    """The master's pool, which closes the sentinel connections when it is closed: the
    client `client()` returns is the only thing its caller closes."""

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            await self.sentinel_manager.aclose()


def sentinel_for(target: RedisTarget, options: LinkOptions = LinkOptions()) -> Sentinel:
    """redis-py's Sentinel client of `target`'s sentinels: where the master is now."""
    return _sentinel(target, _common(None, options))


def _sentinel(target: RedisTarget, common: dict[str, Any]) -> Sentinel:
    # The sentinels get the same timeouts, name, TLS and retries as the master, and
    # their own password (they have no data, and often no ACL of the master's).
    sentinel_kwargs = {**common, **_tls(target), **_credentials(None, target.sentinel_password)}
    return Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs)


def _sentinel_master(target: RedisTarget, common: dict[str, Any], secrets: dict[str, Any]) -> Redis:
    assert target.sentinel_service is not None
    tls = _tls(target)
    sentinel = _sentinel(target, common)
    master: Redis = sentinel.master_for(
        target.sentinel_service,
        connection_pool_class=_OwnedSentinelPool,
        **common,
        **secrets,
        **tls,
    )
    return master


def dedicated_connection(redis: Redis) -> Connection:
    """A connection of `redis`'s settings that no pool hands out: for SUBSCRIBE, which
    holds a connection for as long as it listens. The caller connects and disconnects it.
    With Sentinel, it connects to the master the sentinels name at that moment."""
    return redis.connection_pool.make_connection()  # type: ignore[no-untyped-call,no-any-return]


async def shard_node(cluster: RedisCluster, key: str, *, refresh: bool = False) -> ClusterNode:
    """The master that serves `key`'s slot (a ``{tag}`` in it counts). `refresh`: read
    the slot map again first (after a connection to the node failed, which a failover
    does); redis-py runs at most one refresh a second, so a refresh asked for sooner
    uses the map it has."""
    if refresh:
        # The request redis-py's own pub/sub makes after a failed read; the refresh
        # itself runs in initialize(), which serializes concurrent callers.
        cluster._request_refresh()
    await cluster.initialize()
    node = cluster.get_node_from_key(key)
    if node is None:  # pragma: no cover - get_node_from_key raises for an uncovered slot
        raise ConnectionError(f"no node serves the slot of {key!r}")
    return node


async def shard_connection(cluster: RedisCluster, key: str, *, refresh: bool = False) -> Connection:
    """A connection to the master of `key`'s slot, of the cluster's settings, that no
    pool hands out (SSUBSCRIBE to the channel `key`, which lives on that node). Not
    connected yet; the caller connects and disconnects it. See `shard_node` for
    `refresh`."""
    node = await shard_node(cluster, key, refresh=refresh)
    # As the node's own pool makes them (ClusterNode.acquire_connection), one try.
    settings = {**node.connection_kwargs, "retry": Retry(NoBackoff(), 0)}
    return node.connection_class(**settings)


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that a library swallowed.

    On Python 3.11, ``asyncio.wait_for`` (redis-py sends through it when a socket
    timeout is set) returns normally if the task is cancelled just as the inner
    operation completes: the request stays counted in ``Task.cancelling()`` but no
    CancelledError is ever raised, so a loop around redis calls would run on and
    stop()/asyncio.run() would wait for it forever. Loops around redis calls call this
    after each one."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def serve_until_one_ends(tasks: set[asyncio.Task[None]], what: str) -> NoReturn:
    """A session's tasks (a pub/sub reader, a writer): the first that ends, with its
    error or without one, ends the session; the others are cancelled (bounded) and
    their errors marked as seen. Raises ConnectionError("<what> task ended") when the
    first one returned."""
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
        raise ConnectionError(f"{what} task ended")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=1.0)
        for task in tasks:  # mark errors of the other task as seen
            if task.done() and not task.cancelled():
                task.exception()


class Backoff:
    """Capped exponential backoff with jitter: `initial`, twice that, four times … up to
    `cap`, each delay shortened by up to ``jitter`` of itself at random, so that the
    workers and nodes that lost one Redis together do not all come back in the same
    instant. `reset()` after a success starts again from `initial`."""

    def __init__(
        self,
        initial: float,
        cap: float,
        *,
        jitter: float = 0.2,
        draw: Callable[[], float] = random.random,
    ) -> None:
        if not 0 < initial <= cap:
            raise ValueError("backoff needs 0 < initial <= cap")
        if not 0 <= jitter < 1:
            raise ValueError("backoff jitter must be in [0, 1)")
        self.initial = initial
        self.cap = cap
        self.jitter = jitter
        self._draw = draw
        self._next = initial

    def next(self) -> float:
        """The delay to wait now; the one after it is twice as long (up to the cap)."""
        delay = self._next
        self._next = min(delay * 2, self.cap)
        return delay * (1 - self.jitter * self._draw())

    def reset(self) -> None:
        self._next = self.initial


class RedisLink:
    """One link's state and reconnect loop; see the module docstring.

    `up` is True while the link works, False once it failed, None before either
    happened. ``on_change(up, error)`` is called when it goes down (``error`` is the
    reason) and when it comes back after being down; coming up the first time is no
    change worth a log line. ``errors`` counts failures, ``last_error`` the latest,
    ``reconnects`` the times it came up again after having been up once.
    """

    def __init__(
        self,
        *,
        up: bool | None = None,
        on_change: Callable[[bool, str | None], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.up = up
        self.errors = 0
        self.last_error: str | None = None
        self.reconnects = 0
        self._on_change = on_change
        self._clock = clock
        self._sleep = sleep
        self._ever_up = bool(up)
        self._up_at: float | None = None

    @property
    def connected(self) -> bool:
        return self.up is True

    def came_up(self) -> None:
        """The link works (connected, subscribed, a round trip answered)."""
        was = self.up
        self.up = True
        self._up_at = self._clock()
        if self._ever_up and was is not True:
            self.reconnects += 1
        self._ever_up = True
        if was is False and self._on_change is not None:
            self._on_change(True, None)

    def went_down(self, exc: BaseException) -> None:
        """The link failed: counted every time, reported once per outage."""
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        was = self.up
        self.up = False
        if was is not False and self._on_change is not None:
            self._on_change(False, self.last_error)

    async def run(
        self,
        session: Callable[[], Awaitable[None]],
        backoff: Backoff,
        *,
        steady: float = 0.0,
        failure_log: str = "redis link failed; reconnecting",
        logger: logging.Logger = log,
    ) -> NoReturn:
        """Run `session` again and again until cancelled, waiting `backoff` between two.

        `session` connects, calls `came_up()` once the link serves, and serves until the
        connection fails (it raises; returning counts as a lost connection too). A
        session that served at least `steady` seconds starts the backoff again from its
        first delay: a link that worked and broke is retried soon, one that keeps failing
        (or fails as soon as it is up) waits longer each time. An exception that is not
        a connection error is a bug: logged with its traceback (`failure_log` on
        `logger`) and retried like a lost connection, so one bug does not end the link
        for the life of the process."""
        while True:
            self._up_at = None
            try:
                await session()
                raise ConnectionError("the session ended")
            except LINK_ERRORS as exc:
                self.went_down(exc)
            except Exception as exc:
                logger.exception(failure_log)
                self.went_down(exc)
            # After the session's state was taken into account: stopping here loses
            # nothing, and a cancellation a library swallowed ends the loop.
            raise_if_cancelled()
            up_at = self._up_at
            if up_at is not None and self._clock() - up_at >= steady:
                backoff.reset()
            await self._sleep(backoff.next())
