"""Where the lean connections go: the redis_wire link that serves a key, in each of
the ``[redis]`` modes.

The hot paths (the bus writer's appends, the live hub's reads, the callers' look-ups)
speak RESP over `redis_wire` connections; redis-py makes every other client
(`redis_link.client`). This module gives the hot paths what redis-py's clients do for
the rest: the right server for a key.

- One server: one link, to the URL's host.
- Sentinel: one link, to the master the sentinels name (``SENTINEL
  get-master-addr-by-name``, through redis-py's Sentinel). After a connection failure the
  owner calls `failed()`: the next `link_for` asks the sentinels again, so after a
  failover the link goes to the promoted replica.
- A cluster: one link per master, the slot map read by redis-py's cluster client from
  the seed nodes (`redis_link.shard_node`). `failed()` after a connection error or a
  MOVED reply reads the map again before the next `link_for`; redis-py reads it at most
  once a second.

Every link carries the settings' credentials and TLS. `link_for` may wait for a
connection or for the sentinels or the slot map; it raises the library's
``ConnectionError`` (or ``OSError``, ``TimeoutError``) when none answers, and the owner
retries on its own schedule (the SIP path never waits on Redis).

`on_failed` lets the runtime hear of every `failed()` in the process: a MOVED or a
failover may name a node the destination policy has not been told of yet, so the
topology watcher (gateway/runtime/redis_topology.py) reads the nodes again at once.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel

from gateway.redis_link import LinkOptions, RedisTarget, client, sentinel_for, shard_node
from gateway.redis_wire import Endpoint, WireLink, endpoint_of

# Keys whose server a cluster's routes remember for `known_link` (the hot paths use
# one or two keys per tenant).
MAX_KNOWN_KEYS = 10_000
# Called on every `WireRoutes.failed()` of the process (see the module docstring).
_failure_listeners: list[Callable[[], None]] = []


def on_failed(listener: Callable[[], None]) -> Callable[[], None]:
    """Call `listener` whenever an owner of a lean connection says a server broke or
    named another (`WireRoutes.failed`); returns what stops it. The listener must be
    quick and must not raise: it runs on the caller's path."""
    _failure_listeners.append(listener)
    return lambda: _failure_listeners.remove(listener)


class WireRoutes:
    """The `WireLink` for each key; see the module docstring."""

    def __init__(
        self,
        target: str | RedisTarget,
        *,
        name: str | None,
        timeout: float | None = 5.0,
        connect_timeout: float = 2.0,
        retry_after: float = 1.0,
    ) -> None:
        self._target = target
        self._name = name
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._retry_after = retry_after
        self._links: dict[tuple[str, int], WireLink] = {}
        self._stale = False
        self._cluster: RedisCluster | None = None
        self._sentinel: Sentinel | None = None
        self._master: tuple[str, int] | None = None  # the one the sentinels named last
        # A cluster: key -> the server `address_for` found for it last (`known_link`).
        self._server_of: dict[str, tuple[str, int]] = {}
        self.mode = "standalone" if isinstance(target, str) else target.mode
        if self.mode == "cluster":
            cluster = client(
                target, name=None, options=LinkOptions(connect_timeout=connect_timeout)
            )
            assert isinstance(cluster, RedisCluster)
            self._cluster = cluster
        elif self.mode == "sentinel":
            assert not isinstance(target, str)
            self._sentinel = sentinel_for(target, LinkOptions(connect_timeout=connect_timeout))
        self._tls = None if isinstance(target, str) else tls_context(target)

    @property
    def clustered(self) -> bool:
        return self.mode == "cluster"

    async def link_for(self, key: str) -> WireLink:
        """The link of the server that serves `key` (its ``{tag}`` counts on a cluster)."""
        return self._link(*await self.address_for(key))

    def known_link(self, key: str) -> WireLink | None:
        """`link_for` without waiting: the link when where `key` lives is known now
        (one server; the master the sentinels named, or the server of the key's slot,
        found before and not doubted since by `failed`), else None."""
        if self._stale:
            return None
        if self._cluster is not None:
            address = self._server_of.get(key)
        elif self._sentinel is not None:
            address = self._master
        else:
            address = ("", 0)
        return None if address is None else self._link(*address)

    async def address_for(self, key: str) -> tuple[str, int]:
        """The (host, port) of the server that serves `key` (("", 0): the one server of
        a URL, which may be a unix socket)."""
        stale, self._stale = self._stale, False
        if self._cluster is not None:
            if stale:
                self._server_of.clear()
            node = await shard_node(self._cluster, key, refresh=stale)
            address = self._server_of[key] = (node.host, int(node.port))
            if len(self._server_of) > MAX_KNOWN_KEYS:
                del self._server_of[next(iter(self._server_of))]
            return address
        if self._sentinel is not None:
            if stale or self._master is None:
                assert not isinstance(self._target, str)
                assert self._target.sentinel_service is not None
                host, port = await self._sentinel.discover_master(self._target.sentinel_service)
                self._master = (str(host), int(port))
                self._retire_except(self._master)
            return self._master
        return "", 0

    def endpoint_at(self, address: tuple[str, int]) -> Endpoint:
        """Where a connection of its own to the server at `address` goes (pub/sub)."""
        return self._link(*address).endpoint

    def failed(self) -> None:
        """A connection broke or a server said the key is elsewhere (MOVED): look where
        keys live again before the next `link_for`."""
        self._stale = True
        for listener in _failure_listeners:
            listener()

    def links(self) -> Iterator[WireLink]:
        return iter(list(self._links.values()))

    async def close(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()
        if self._cluster is not None:
            await self._cluster.aclose()
        if self._sentinel is not None:
            for sentinel in self._sentinel.sentinels:
                await sentinel.aclose()

    def _link(self, host: str, port: int) -> WireLink:
        link = self._links.get((host, port))
        if link is None:
            link = self._links[host, port] = WireLink(
                self._endpoint(host, port), name=self._name, timeout=self._timeout,
                connect_timeout=self._connect_timeout, retry_after=self._retry_after,
            )  # fmt: skip
        return link

    def _endpoint(self, host: str, port: int) -> Endpoint:
        target = self._target
        if isinstance(target, str):
            return endpoint_of(target)
        if self.mode == "standalone":
            found = endpoint_of(target.url, tls=self._tls)
            return Endpoint(
                host=found.host, port=found.port, path=found.path, db=found.db,
                username=target.username or found.username,
                password=target.password or found.password, tls=found.tls,
            )  # fmt: skip
        return Endpoint(
            host=host, port=port, username=target.username, password=target.password,
            tls=self._tls,
        )  # fmt: skip

    def _retire_except(self, keep: tuple[str, int]) -> None:
        for address in [a for a in self._links if a != keep]:
            self._links.pop(address).close()


def tls_context(target: RedisTarget) -> ssl.SSLContext | None:
    """The TLS settings of `target` as an SSLContext (None without TLS); a rediss://
    URL turns TLS on for one server."""
    on = target.tls or (target.mode == "standalone" and target.url.startswith("rediss://"))
    if not on:
        return None
    context = ssl.create_default_context(
        cafile=None if target.tls_ca is None else str(target.tls_ca)
    )
    if not target.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if target.tls_cert is not None and target.tls_key is not None:
        context.load_cert_chain(str(target.tls_cert), str(target.tls_key))
    return context


def is_moved(reply: object) -> bool:
    """A reply that says the key's slot is served by another node (MOVED, ASK) or that
    the cluster cannot serve it now (CLUSTERDOWN, TRYAGAIN: read the map again)."""
    text = str(reply)
    return isinstance(reply, Exception) and text.startswith(
        ("MOVED ", "ASK ", "CLUSTERDOWN", "TRYAGAIN")
    )
