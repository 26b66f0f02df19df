"""Fixtures of general use for every test suite (unit, integration, peers, e2e)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

# Before the package is imported: the suite runs the pure-Python SIP core, in this
# process and in every gateway it starts (a test may patch a module, which a compiled
# one does not allow); tests/unit/test_native.py runs the hot path's tests compiled.
if os.environ.get("PYTEST_SIPGW_NATIVE") != "1":
    os.environ["SIPGW_NATIVE"] = "0"

import pytest

from tests.peers import ports
from tests.peers.process import kill_leftovers
from tests.redis_servers import LocalCluster, LocalSentinel, RedisServer


@pytest.fixture
def free_udp_port() -> Callable[[], int]:
    """Call it to get a free loopback UDP port (not handed out again soon)."""
    return ports.free_udp_port


@pytest.fixture
def free_tcp_port() -> Callable[[], int]:
    """Call it to get a free loopback TCP port (not handed out again soon)."""
    return ports.free_tcp_port


@pytest.fixture
def free_port() -> Callable[..., int]:
    """Call it to get a loopback port free for both UDP and TCP (a SIP listener)."""
    return ports.free_port


@pytest.fixture(autouse=True)
def _no_leftover_peers() -> Iterator[None]:
    """Every peer process a test started must be stopped by it; kill (and report) any
    that is still running afterwards, so one test's leak never breaks the next ones."""
    yield
    leaked = kill_leftovers()
    if leaked:
        pytest.fail(f"test left peer processes running (killed now): {', '.join(leaked)}")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throw-away redis-server on 127.0.0.1 (free port, no persistence) for the whole
    session; yields its URL, e.g. redis://127.0.0.1:23456/0."""
    server = RedisServer.start_new("redis-server", tmp_path_factory.mktemp("redis"))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def _redis_cluster_of_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster.start(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster(_redis_cluster_of_session: LocalCluster) -> LocalCluster:
    """A Redis Cluster of 3 masters and 3 replicas on the loopback (tests/redis_servers.py),
    started once per session: each test gets it whole (the nodes an earlier test killed
    are started again and have rejoined) and empty (no keys, no cached scripts)."""
    cluster = _redis_cluster_of_session
    cluster.heal()
    cluster.flush()
    return cluster


@pytest.fixture
def redis_sentinel(tmp_path: Path) -> Iterator[LocalSentinel]:
    """A master, its replica and 3 sentinels of this test alone (it may fail the master
    over), stopped after it."""
    deployment = LocalSentinel.start(tmp_path / "sentinel")
    try:
        yield deployment
    finally:
        deployment.stop()
