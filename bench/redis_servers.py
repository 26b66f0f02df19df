"""Throw-away Redis deployments on the loopback: one server, and a Redis Cluster of 3
masters and 3 replicas. The bench's cluster scenario (bench/cluster.py) and the tests
(tests/redis_servers.py, which adds failover, healing and Sentinel) share this code.

Every server is a real ``redis-server`` on a free loopback port, in a directory of its
own, without persistence (``--save '' --appendonly no``), and is stopped by its PID. A
server started here gets SIGKILL if the process that started it dies
(``PR_SET_PDEATHSIG``), so a crashed harness or test run leaves none behind either.

- `RedisServer`: one process; `start()` waits (bounded) until it answers PING. Where
  its port comes from and how ``redis-server`` is found are class attributes: the
  bench's port range and an error here, the tests' range and a skip in tests/.
- `LocalCluster`: 3 masters and 3 replicas (`redis-cli --cluster create …
  --cluster-replicas 1`). Ready when every node says ``cluster_state:ok`` with all 16384
  slots served and every replica's link to its master is up (a failover needs a synced
  replica). A node keeps its cluster identity in ``nodes.conf`` (cluster mode writes it
  whatever the persistence settings say), so a node that was killed can be started again
  in place and rejoins.

A cluster node is failed after ``cluster-node-timeout`` (1 s here; the default is 15 s):
quick on purpose, for the tests' failovers. A node starved of the CPU for longer would
be failed over by mistake; loopback nodes answering in microseconds leave a wide margin.

Nothing announces a foreign process's state changes, so the waits here poll it, every
20 ms (50 ms for the slower cluster states), up to a deadline, and fail with the state
last seen and the tail of the servers' logs. The queries are synchronous (redis-py on
the loopback, a 1 s socket timeout).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import redis
from redis.crc import key_slot

from . import ports
from .process import _die_with_parent

T = TypeVar("T")

HOST = "127.0.0.1"
SLOTS = 16384
START_TIMEOUT = 10.0  # seconds for a server to answer PING, a cluster to form
CLUSTER_NODE_TIMEOUT_MS = 1000


class DeploymentError(AssertionError):
    """A server or a deployment did not reach the state wanted in time."""


def poll(check: Callable[[], T | None], timeout: float, what: str, *, every: float = 0.05) -> T:
    """`check()` until it returns something (not None), at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise DeploymentError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)  # a foreign process's state: bounded polling


def _tail(path: Path, lines: int = 60) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 200 * lines))
            data = fh.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(cannot read: {exc})"
    return "\n".join(data.splitlines()[-lines:])


@dataclass
class RedisServer:
    """One redis-server (or sentinel) process on ``127.0.0.1:port``, run in `directory`
    with `args` after the common ones; its log is ``directory/redis.log``."""

    name: str
    port: int
    directory: Path
    args: list[str] = field(default_factory=list)
    sentinel: bool = False
    password: str | None = None  # requirepass; `command` authenticates with it
    proc: subprocess.Popen[bytes] | None = None

    # Where a server's port comes from and how a program is found: the bench's range and
    # an error here; tests/redis_servers.py plugs in the tests' range and a skip.
    @staticmethod
    def free_port() -> int:
        return ports.free_port(udp=False)

    @staticmethod
    def find_binary(name: str) -> str:
        path = shutil.which(name)
        if path is None:
            raise DeploymentError(f"{name} is not installed (Debian package redis-server)")
        return path

    @classmethod
    def start_new(
        cls,
        name: str,
        directory: Path,
        args: Iterable[str] = (),
        *,
        sentinel: bool = False,
        password: str | None = None,
    ) -> RedisServer:
        server = cls(name, cls.free_port(), directory, list(args), sentinel, password)
        server.start()
        return server

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def log(self) -> Path:
        return self.directory / "redis.log"

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the process (again, on the same port and directory) and wait until it
        answers PING."""
        binary = self.find_binary("redis-server")
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.sentinel:
            # A sentinel rewrites its configuration file as it learns the deployment.
            head = [binary, str(self.directory / "sentinel.conf"), "--sentinel"]
        else:
            # A replica's first sync starts at once: by default a master waits 5 s for
            # more replicas to share one transfer with.
            head = [binary, "--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"]
        argv = [
            *head, "--bind", HOST, "--port", str(self.port), "--dir", str(self.directory),
            "--logfile", str(self.log), "--protected-mode", "yes", "--daemonize", "no",
            *(["--requirepass", self.password] if self.password else []), *self.args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.directory,
            preexec_fn=_die_with_parent,
            start_new_session=True,  # a Ctrl-C in the terminal goes to pytest only
        )
        try:
            poll(self._answers_ping, timeout, f"{self.name} to answer PING", every=0.02)
        except DeploymentError as exc:
            self.stop()
            raise DeploymentError(f"{exc}\n{self.describe()}") from None

    def _answers_ping(self) -> bool | None:
        if not self.running:
            raise DeploymentError(f"{self.name} exited")
        try:
            return True if self.command("PING") else None
        except (redis.RedisError, OSError):
            return None

    def command(self, *args: Any) -> Any:
        """Send one command to this server (a connection of its own), replies decoded."""
        with redis.Redis(
            HOST, self.port, password=self.password, socket_timeout=1, socket_connect_timeout=1,
            protocol=2, decode_responses=True,
        ) as conn:  # fmt: skip
            return conn.execute_command(*args)

    def info(self, section: str) -> dict[str, Any]:
        """``INFO section``, parsed by redis-py."""
        return dict(self.command("INFO", section))

    def kill(self) -> None:
        """SIGKILL: the server dies as in a crash (no shutdown, no failover handshake)."""
        self.stop(sig=signal.SIGKILL)

    def stop(self, timeout: float = 5.0, *, sig: int = signal.SIGTERM) -> None:
        """Send `sig` to the PID, SIGKILL after `timeout`, reap it. Idempotent."""
        self.signal(sig)
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    def signal(self, sig: int) -> None:
        """Send `sig` to the PID if the process still runs (not reaped)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    def describe(self, lines: int = 30) -> str:
        state = f"pid {self.proc.pid}, rc {self.proc.poll()}" if self.proc else "not started"
        return f"--- {self.name} ({self.address}, {state}), tail of {self.log}:\n" + _tail(
            self.log, lines
        )


# -- Redis Cluster ---------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterView:
    """One node's CLUSTER NODES: who is master of which slots, who replicates whom."""

    masters: dict[str, str]  # node id -> "host:port", of masters serving slots
    replicas: dict[str, str]  # node id -> the id of its master
    addresses: dict[str, str]  # node id -> "host:port", every node not failed
    slots: dict[str, list[tuple[int, int]]]  # master id -> its slot ranges

    @classmethod
    def parse(cls, text: str) -> ClusterView:
        masters: dict[str, str] = {}
        replicas: dict[str, str] = {}
        addresses: dict[str, str] = {}
        slots: dict[str, list[tuple[int, int]]] = {}
        for line in text.splitlines():
            node_id, addr, flags, master_id, *_rest, _state = line.split()[:8]
            ranges = line.split()[8:]
            flag_set = set(flags.split(","))
            if flag_set & {"fail", "handshake", "noaddr"}:
                continue
            address = addr.partition("@")[0]
            addresses[node_id] = address
            if "master" in flag_set and ranges:
                masters[node_id] = address
                slots[node_id] = [_slot_range(r) for r in ranges if not r.startswith("[")]
            elif "slave" in flag_set and master_id != "-":
                replicas[node_id] = master_id
        return cls(masters, replicas, addresses, slots)

    def master_of_slot(self, slot: int) -> str | None:
        """The address of the master serving `slot`."""
        for node_id, ranges in self.slots.items():
            if any(low <= slot <= high for low, high in ranges):
                return self.masters[node_id]
        return None


def _slot_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    return int(low), int(high or low)


@dataclass
class LocalCluster:
    """A Redis Cluster of `masters` masters with one replica each, on the loopback."""

    directory: Path
    nodes: list[RedisServer] = field(default_factory=list)
    server: ClassVar[type[RedisServer]] = RedisServer  # the kind of node it starts

    @classmethod
    def start(
        cls, directory: Path, masters: int = 3, *, node_timeout_ms: int = CLUSTER_NODE_TIMEOUT_MS
    ) -> LocalCluster:
        """Start twice `masters` nodes, create the cluster and wait until it serves every
        slot with every replica in sync. Stops what it started if that fails.
        `node_timeout_ms`: how long a node may not answer before it is failed over."""
        cli = cls.server.find_binary("redis-cli")
        cluster = cls(directory)
        try:
            for i in range(2 * masters):
                # The cluster bus port is not left to its default (port + 10000): that
                # may be taken, or be in the range the kernel hands out. A replica takes
                # over however long it was cut off from its master (validity factor 0):
                # a test kills a master the moment it needs to.
                args = [
                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-port", str(cls.server.free_port()),
                    "--cluster-node-timeout", str(node_timeout_ms),
                    "--cluster-replica-validity-factor", "0",
                ]  # fmt: skip
                node = cls.server.start_new(f"cluster-node-{i}", directory / f"node{i}", args)
                cluster.nodes.append(node)
            create = subprocess.run(
                [cli, "--cluster", "create", *(n.address for n in cluster.nodes),
                 "--cluster-replicas", "1", "--cluster-yes"],
                stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False,
            )  # fmt: skip
            if create.returncode != 0:
                out = (create.stdout + create.stderr).decode(errors="replace")
                raise DeploymentError(f"redis-cli --cluster create failed:\n{out}")
            cluster.wait_ready()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    # -- what the cluster looks like -------------------------------------------------

    def view(self) -> ClusterView:
        """The cluster as the first node that answers sees it."""
        for node in self.nodes:
            if node.running:
                with contextlib.suppress(redis.RedisError, OSError):
                    return ClusterView.parse(str(node.command("CLUSTER", "NODES")))
        raise DeploymentError("no cluster node answers\n" + self.describe())

    def node_at(self, address: str) -> RedisServer:
        return next(n for n in self.nodes if n.address == address)

    def masters(self) -> list[RedisServer]:
        """The nodes that serve slots now."""
        return [self.node_at(a) for a in self.view().masters.values()]

    def seeds(self) -> list[str]:
        """``redis://host:port`` of every running node, as ``cluster_nodes`` takes them."""
        return [f"redis://{n.address}" for n in self.nodes if n.running]

    def node_for_key(self, key: str | bytes) -> RedisServer:
        """The master that serves the slot of `key` (its ``{hash tag}`` counts)."""
        encoded = key.encode() if isinstance(key, str) else key
        address = self.view().master_of_slot(key_slot(encoded))
        if address is None:
            raise DeploymentError(f"no master serves the slot of {key!r}")
        return self.node_at(address)

    def replica_of(self, master: RedisServer) -> RedisServer:
        view = self.view()
        master_id = next(i for i, a in view.masters.items() if a == master.address)
        replica_id = next(r for r, m in view.replicas.items() if m == master_id)
        return self.node_at(view.addresses[replica_id])

    def _ready(self) -> bool | None:
        """Every running node says ok with all slots served and sees the same masters
        and replicas, and every master has a replica whose link to it is up."""
        running = [n for n in self.nodes if n.running]
        try:
            views = []
            for node in running:
                info = node.command("CLUSTER", "INFO")
                if "cluster_state:ok" not in info or f"cluster_slots_ok:{SLOTS}" not in info:
                    return None
                views.append(ClusterView.parse(str(node.command("CLUSTER", "NODES"))))
            view = views[0]
            if any(other != view for other in views):
                return None
            replicated = set(view.replicas.values())
            if not set(view.masters) <= replicated or len(view.addresses) != len(running):
                return None
            for replica_id in view.replicas:
                replica = self.node_at(view.addresses[replica_id])
                if replica.info("replication").get("master_link_status") != "up":
                    return None
        except (redis.RedisError, OSError):
            return None
        return True

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        try:
            poll(self._ready, timeout, "the cluster to serve every slot, replicas in sync")
        except DeploymentError as exc:
            raise DeploymentError(f"{exc}\n{self.describe()}") from None

    def stop(self) -> None:
        stop_all(self.nodes)

    def describe(self) -> str:
        return "\n".join(n.describe(15) for n in self.nodes)


def stop_all(servers: list[RedisServer]) -> None:
    """SIGTERM every server first, then wait for each: they shut down side by side."""
    for server in servers:
        server.signal(signal.SIGTERM)
    for server in servers:
        server.stop()
