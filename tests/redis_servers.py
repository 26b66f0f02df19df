"""Throw-away Redis deployments for the tests: one server, a Redis Cluster, Sentinel.

One server and the cluster are bench/redis_servers.py's (the bench's cluster scenario
starts the same cluster); here they get the tests' port range and a skip (a failure
under CI) when ``redis-server`` is missing, and what only tests do:

- `LocalCluster`: kill a master and wait for its replica's promotion, start again the
  nodes a test killed (`heal()`: they rejoin as replicas of the ones that took over),
  empty every master;
- `LocalSentinel`: a master, its replica and 3 sentinels (quorum 2).

Failover is quick on purpose: a cluster node is failed after ``cluster-node-timeout``
(1 s here; the default is 15 s), and its replica is elected within about a second more
(a 500 ms delay plus up to 500 ms at random); a sentinel sees a master down after
``down-after-milliseconds`` (1 s) and the three agree and promote the replica in a
second or two more. A node starved of the CPU for longer than these timeouts would be
failed over by mistake; loopback nodes answering in microseconds leave a wide margin.

Nothing announces a foreign process's state changes, so the waits poll it, every 20 ms
(50 ms for the slower cluster and sentinel states), up to a deadline, and fail with the
state last seen and the tail of the servers' logs. The async `wait_*` helpers await
between two polls, so a test's own tasks keep running while they wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis

from bench import redis_servers as shared
from bench.redis_servers import HOST, START_TIMEOUT, ClusterView, DeploymentError, stop_all
from tests.peers import ports
from tests.peers.process import require_binary

__all__ = [
    "SENTINEL_SERVICE", "ClusterView", "DeploymentError", "LocalCluster", "LocalSentinel",
    "RedisServer",
]  # fmt: skip

T = TypeVar("T")

FAILOVER_TIMEOUT = 20.0  # seconds for a replica to take over (a few are expected)
SENTINEL_DOWN_AFTER_MS = 1000
SENTINEL_SERVICE = "mymaster"
_poll = shared.poll


async def _apoll(
    check: Callable[[], T | None], timeout: float, what: str, *, every: float = 0.05
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise DeploymentError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(every)  # a foreign process's state: bounded polling


class RedisServer(shared.RedisServer):
    """bench/redis_servers.py's server on the tests' ports; a missing ``redis-server``
    skips the test (fails it under CI)."""

    free_port = staticmethod(ports.free_tcp_port)
    find_binary = staticmethod(require_binary)


@dataclass
class LocalCluster(shared.LocalCluster):
    """A Redis Cluster of 3 masters with one replica each (bench/redis_servers.py), and
    the failures tests cause."""

    server = RedisServer

    # -- failures --------------------------------------------------------------------

    async def kill_master_and_wait_for_promotion(
        self, master: RedisServer, timeout: float = FAILOVER_TIMEOUT
    ) -> RedisServer:
        """SIGKILL `master` and wait until its replica serves its slots and every
        live node says ``cluster_state:ok``; returns the new master."""
        replica = self.replica_of(master)
        slot = self.view().slots[next(
            i for i, a in self.view().masters.items() if a == master.address
        )][0][0]  # fmt: skip
        master.kill()

        def promoted() -> RedisServer | None:
            try:
                for node in self.nodes:
                    if node.running and "cluster_state:ok" not in node.command("CLUSTER", "INFO"):
                        return None
                address = self.view().master_of_slot(slot)
            except (redis.RedisError, OSError):
                return None
            return replica if address == replica.address else None

        try:
            return await _apoll(promoted, timeout, f"{replica.name} to take over {master.name}")
        except DeploymentError as exc:
            raise DeploymentError(f"{exc}\n{self.describe()}") from None

    def heal(self) -> None:
        """Start every node a test killed (it rejoins as a replica) and wait until the
        cluster is ready again."""
        for node in self.nodes:
            if not node.running:
                node.start()
        self.wait_ready(FAILOVER_TIMEOUT)

    def flush(self) -> None:
        """Empty every master (replicas follow) and its script cache."""
        for node in self.masters():
            node.command("FLUSHALL")
            node.command("SCRIPT", "FLUSH")


# -- Sentinel --------------------------------------------------------------------------


@dataclass
class LocalSentinel:
    """A master, its replica and three sentinels watching them as `SENTINEL_SERVICE`."""

    directory: Path
    servers: list[RedisServer] = field(default_factory=list)  # master first, then replica
    sentinels: list[RedisServer] = field(default_factory=list)

    @classmethod
    def start(cls, directory: Path) -> LocalSentinel:
        """Start the two servers and the sentinels; wait until every sentinel knows the
        replica and the two other sentinels (a failover needs both)."""
        deployment = cls(directory)
        try:
            master = RedisServer.start_new("sentinel-master", directory / "master")
            deployment.servers.append(master)
            replica = RedisServer.start_new(
                "sentinel-replica", directory / "replica", ["--replicaof", HOST, str(master.port)]
            )
            deployment.servers.append(replica)
            for i in range(3):
                sentinel = RedisServer(
                    f"sentinel-{i}", ports.free_tcp_port(), directory / f"sentinel{i}",
                    sentinel=True,
                )  # fmt: skip
                sentinel.directory.mkdir(parents=True)
                (sentinel.directory / "sentinel.conf").write_text(
                    f"sentinel monitor {SENTINEL_SERVICE} {HOST} {master.port} 2\n"
                    f"sentinel down-after-milliseconds {SENTINEL_SERVICE} "
                    f"{SENTINEL_DOWN_AFTER_MS}\n"
                    f"sentinel failover-timeout {SENTINEL_SERVICE} 10000\n"
                    f"sentinel parallel-syncs {SENTINEL_SERVICE} 1\n"
                )
                deployment.sentinels.append(sentinel)
                sentinel.start()
            _poll(deployment._formed, START_TIMEOUT, "the sentinels to know each other")
        except DeploymentError as exc:
            deployment.stop()
            raise DeploymentError(f"{exc}\n{deployment.describe()}") from None
        except BaseException:
            deployment.stop()
            raise
        return deployment

    @property
    def addresses(self) -> list[str]:
        """``host:port`` of each sentinel, as ``sentinels`` takes them."""
        return [s.address for s in self.sentinels]

    def _formed(self) -> bool | None:
        try:
            for sentinel in self.sentinels:
                state = _pairs(sentinel.command("SENTINEL", "MASTER", SENTINEL_SERVICE))
                if state.get("num-other-sentinels") != "2" or state.get("num-slaves") != "1":
                    return None
            replica = self.servers[1].info("replication")
        except (redis.RedisError, OSError):
            return None
        return True if replica.get("master_link_status") == "up" else None

    def master_address(self) -> str | None:
        """The master's ``host:port`` as the first sentinel that answers says."""
        for sentinel in self.sentinels:
            with contextlib.suppress(redis.RedisError, OSError):
                host, port = sentinel.command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_SERVICE
                )
                return f"{host}:{port}"
        return None

    def master(self) -> RedisServer:
        address = self.master_address()
        return next(s for s in self.servers if s.address == address)

    async def kill_master_and_wait_for_failover(
        self, timeout: float = FAILOVER_TIMEOUT
    ) -> RedisServer:
        """SIGKILL the master and wait until every sentinel names the replica as master
        and the replica says it is one; returns the new master."""
        old = self.master()
        new = next(s for s in self.servers if s is not old)
        old.kill()

        def failed_over() -> RedisServer | None:
            try:
                for sentinel in self.sentinels:
                    host, port = sentinel.command(
                        "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_SERVICE
                    )
                    if f"{host}:{port}" != new.address:
                        return None
                role = new.info("replication").get("role")
            except (redis.RedisError, OSError):
                return None
            return new if role == "master" else None

        try:
            return await _apoll(failed_over, timeout, f"the sentinels to promote {new.name}")
        except DeploymentError as exc:
            raise DeploymentError(f"{exc}\n{self.describe()}") from None

    def stop(self) -> None:
        stop_all([*self.sentinels, *self.servers])

    def describe(self) -> str:
        return "\n".join(s.describe(15) for s in [*self.servers, *self.sentinels])


def _pairs(flat: list[Any]) -> dict[str, str]:
    """A flat [name, value, name, value …] reply as a dict."""
    return {str(k): str(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}
