"""The Redis topology watcher's decisions (gateway/runtime/redis_topology.py): what a
CLUSTER SHARDS reply names, how learnt names reach the destination policies, that the
set only grows and stays bounded, and that a lean connection's failure wakes it. Its
reads of real clusters and sentinels are tests/security/test_redis_topology.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from gateway.config import RedisSettings
from gateway.proxy.destinations import DestinationPolicy
from gateway.redis_routes import WireRoutes, on_failed
from gateway.runtime.redis_topology import RedisTopology, shard_addresses
from tests.peers.ports import free_tcp_port
from tests.waiting import wait_until

CLUSTER = RedisSettings(cluster_nodes=(("10.1.0.1", 7000),))

# As Redis 7.0 answers CLUSTER SHARDS in RESP2 (flat name/value lists), with a node
# announcing a hostname and a TLS port, and one whose endpoint is unknown ("?").
SHARDS = [
    [b"slots", [0, 8191], b"nodes", [
        [b"id", b"a1", b"port", 7000, b"ip", b"10.1.0.1", b"endpoint", b"10.1.0.1",
         b"role", b"master", b"replication-offset", 10, b"health", b"online"],
        [b"id", b"a2", b"port", 7003, b"tls-port", 17003, b"ip", b"10.1.0.4",
         b"endpoint", b"redis-4.internal", b"hostname", b"redis-4.internal",
         b"role", b"replica", b"replication-offset", 10, b"health", b"online"],
    ]],
    [b"slots", [8192, 16383], b"nodes", [
        [b"id", b"b1", b"port", 7001, b"ip", b"10.1.0.2", b"endpoint", b"?",
         b"role", b"master", b"replication-offset", 0, b"health", b"fail"],
    ]],
]  # fmt: skip


def test_every_node_of_every_shard_at_each_of_its_names_and_ports() -> None:
    assert sorted(set(shard_addresses(SHARDS))) == [
        ("10.1.0.1", 7000),
        ("10.1.0.2", 7001),  # failed, still named: it may come back
        ("10.1.0.4", 7003),
        ("10.1.0.4", 17003),
        ("redis-4.internal", 7003),
        ("redis-4.internal", 17003),
    ]


def test_a_reply_a_client_parsed_into_maps_reads_the_same() -> None:
    parsed = [{"slots": [0, 16383], "nodes": [{"ip": "10.1.0.9", "port": 7009, "endpoint": "?"}]}]
    assert shard_addresses(parsed) == [("10.1.0.9", 7009)]
    assert shard_addresses(None) == []


def policy() -> DestinationPolicy:
    return DestinationPolicy(services=[])


async def resolve(host: str, port: int) -> list[str]:
    return {"redis-4.internal": ["10.1.0.4", "fd00::4"]}.get(host, [])


async def test_learnt_names_are_resolved_and_every_policy_refuses_them() -> None:
    topology = RedisTopology(CLUSTER, resolver=resolve)
    early = policy()
    topology.feed(early)
    new = await topology.learn([("redis-4.internal", 17003), ("10.1.0.2", 7001), ("nowhere", 1)])
    assert sorted(new) == [("10.1.0.2", 7001), ("10.1.0.4", 17003), ("fd00::4", 17003)]
    late = policy()  # fed after the fact: it gets what was learnt before
    topology.feed(late)
    for refusing in (early, late):
        assert refusing.refusal("10.1.0.4", 17003, flow=True) == "own_service"
        assert refusing.refusal("fd00::4", 17003, flow=True) == "own_service"
        assert refusing.refusal("10.1.0.2", 7001, flow=True) == "own_service"
        assert refusing.refusal("10.1.0.4", 5060, flow=True) is None


async def test_the_set_only_grows() -> None:
    topology = RedisTopology(CLUSTER, resolver=resolve)
    refusing = policy()
    topology.feed(refusing)
    await topology.learn([("10.1.0.1", 7000), ("10.1.0.2", 7001)])
    assert await topology.learn([("10.1.0.2", 7001)]) == []  # 10.1.0.1 left the cluster
    assert topology.known == {("10.1.0.1", 7000), ("10.1.0.2", 7001)}
    assert refusing.refusal("10.1.0.1", 7000) == "own_service"


async def test_beyond_the_limit_the_first_are_kept_and_it_is_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    topology = RedisTopology(CLUSTER, limit=3, resolver=resolve)
    refusing = policy()
    topology.feed(refusing)
    with caplog.at_level(logging.WARNING, logger="sipgw.redis"):
        await topology.learn([(f"10.1.0.{i}", 7000) for i in range(1, 6)])
        await topology.learn([("10.1.0.9", 7000)])
    assert topology.known == {("10.1.0.1", 7000), ("10.1.0.2", 7000), ("10.1.0.3", 7000)}
    assert refusing.refusal("10.1.0.3", 7000) == "own_service"
    assert refusing.refusal("10.1.0.4", 7000) is None
    assert [r.getMessage() for r in caplog.records].count(
        "redis topology too large: nodes beyond the limit are not refused as sip destinations"
    ) == 1


def test_one_server_has_no_topology() -> None:
    with pytest.raises(ValueError, match="no nodes"):
        RedisTopology(RedisSettings())


async def test_a_lean_connection_that_failed_wakes_the_watcher() -> None:
    topology = RedisTopology(CLUSTER, resolver=resolve)
    routes = WireRoutes("redis://127.0.0.1:1/0", name=None)  # connects to nothing
    stop = on_failed(topology.nudge)
    try:
        assert not topology._wake.is_set()
        routes.failed()  # a MOVED, a broken connection
        assert topology._wake.is_set()
    finally:
        stop()
    topology._wake.clear()
    routes.failed()
    assert not topology._wake.is_set()
    await routes.close()


async def test_a_cluster_that_does_not_answer_leaves_the_seeds_refused_and_the_loop_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No Redis listens at the seed: every read fails, said once; the configured seed
    (a name here) is still resolved and fed, and the watcher keeps trying."""
    port = free_tcp_port()  # nothing listens there
    topology = RedisTopology(
        RedisSettings(cluster_nodes=(("localhost", port),)), interval=1.5, resolver=resolve_local
    )
    refusing = policy()
    topology.feed(refusing)
    with caplog.at_level(logging.INFO, logger="sipgw.redis"):
        task = asyncio.create_task(topology.run())
        try:
            await wait_until(lambda: topology.known != set(), timeout=10, what="the seed")
            assert refusing.refusal("127.0.0.1", port, flow=True) == "own_service"
            unread = "redis topology unread; the nodes learnt so far stay refused"
            await wait_until(lambda: topology.reads >= 2, timeout=10, what="a second read")
            assert [r.getMessage() for r in caplog.records].count(unread) == 1
            assert not task.done()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def resolve_local(host: str, port: int) -> list[str]:
    return ["127.0.0.1"] if host == "localhost" else []
