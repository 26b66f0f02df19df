"""runtime/shared_health.py against real Redis deployments: a snapshot read at start
and again after a lost connection, and sharded pub/sub on a Redis Cluster through a
failover of the master that holds ``{sipgw}``. The end-to-end behaviour (real nodes,
real trunks) is in test_shared_health.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import cast

from redis.asyncio import Redis

from gateway.config.model import RedisSettings
from gateway.proxy.prober import OptionsProber
from gateway.proxy.trunk_health import DownTrunk, HealthView, NodeReport
from gateway.redis_link import RedisTarget
from gateway.runtime.shared_health import (
    _WRITE,
    CHANNEL,
    KEEP,
    REPORTS,
    SEEN,
    SharedHealth,
    pack_report,
)
from tests.redis_servers import LocalCluster
from tests.waiting import wait_until

CARRIER_DOWN = (DownTrunk("acme", "carrier", 1.7e9, "no answer"),)


class StubProber:
    """What SharedHealth reads of a prober: its down trunks and its refresh period."""

    refresh_period = 1.0

    def __init__(self) -> None:
        self.down: tuple[DownTrunk, ...] = ()

    def down_trunks(self, wall: float) -> tuple[DownTrunk, ...]:
        return self.down


def loop_clock() -> Callable[[], float]:
    return asyncio.get_running_loop().time


@asynccontextmanager
async def sharing(
    target: RedisTarget | str, node: str, prober: StubProber | None = None
) -> AsyncIterator[SharedHealth]:
    view = HealthView(node, clock=loop_clock())
    shared = SharedHealth(
        view, prober=cast(OptionsProber, prober), backoff=(0.05, 0.2), ping_interval=1.0
    )
    task = asyncio.create_task(shared.run(target))
    try:
        yield shared
    finally:
        await shared.stop()
        task.cancel()


async def write_unannounced(redis: Redis, report: NodeReport) -> None:
    """Store a report as a node would, but publish it on a channel nobody follows: a
    follower can learn it only from a snapshot."""
    args: list[str | bytes | int] = [
        "nobody-listens", report.node, pack_report(report), round(KEEP * 1000), "PUBLISH",
    ]  # fmt: skip
    await redis.eval(_WRITE, 2, REPORTS, SEEN, *args)


async def test_a_follower_reads_the_snapshot_at_start_and_after_a_lost_connection(
    redis_server: str,
) -> None:
    redis = Redis.from_url(redis_server)
    await redis.delete(REPORTS, SEEN)
    try:
        await write_unannounced(redis, NodeReport("node-a", 1, 1, 30.0, CARRIER_DOWN))
        async with sharing(redis_server, "node-b") as follower:
            view = follower.view
            await wait_until(lambda: view.is_down("acme", "carrier"), 5, "the snapshot at start")
            await write_unannounced(redis, NodeReport("node-c", 1, 1, 30.0, CARRIER_DOWN))
            await write_unannounced(redis, NodeReport("node-a", 1, 2, 30.0))
            assert view.down_by("acme", "carrier") == ("node-a",), "nothing was announced"
            # Its subscription is cut: it reconnects and reads everything again.
            killed = await redis.client_kill_filter(_type="pubsub")
            assert killed == 1
            await wait_until(
                lambda: view.down_by("acme", "carrier") == ("node-c",), 5, "the resync"
            )
            assert follower._link.reconnects == 1
    finally:
        await redis.delete(REPORTS, SEEN)
        await redis.aclose()


async def test_reports_of_a_node_reach_another_and_a_stale_node_is_pruned(
    redis_server: str,
) -> None:
    redis = Redis.from_url(redis_server)
    await redis.delete(REPORTS, SEEN)
    prober = StubProber()
    try:
        # A node last seen longer ago than KEEP: the next write drops it.
        await write_unannounced(redis, NodeReport("node-gone", 1, 1, 3.0, CARRIER_DOWN))
        await redis.zadd(SEEN, {"node-gone": 0})
        async with (
            sharing(redis_server, "node-a", prober) as writer,
            sharing(redis_server, "node-b") as follower,
        ):
            await wait_until(lambda: follower.connected and writer.written > 0, 5, "both up")
            assert await redis.hkeys(REPORTS) == [b"node-a"]
            prober.down = CARRIER_DOWN
            writer.prober_changed()
            await wait_until(lambda: follower.view.is_down("acme", "carrier"), 5, "the change")
            assert writer.view.is_down("acme", "carrier"), "the writer's own view at once"
            prober.down = ()
            writer.prober_changed()
            await wait_until(lambda: not follower.view.is_down("acme", "carrier"), 5, "back up")
    finally:
        await redis.delete(REPORTS, SEEN)
        await redis.aclose()


async def test_on_a_cluster_reports_go_by_sharded_pubsub_and_survive_a_failover(
    redis_cluster: LocalCluster,
) -> None:
    seeds = tuple(("127.0.0.1", node.port) for node in redis_cluster.nodes[:2])
    settings = RedisSettings(cluster_nodes=seeds)
    prober = StubProber()
    async with (
        sharing(settings, "node-a", prober) as writer,
        sharing(settings, "node-b") as follower,
    ):
        await wait_until(lambda: follower.connected and writer.connected, 10, "both up")
        master = redis_cluster.node_for_key(CHANNEL)
        # Both follow the channel on the master of its slot, and nowhere else.
        assert master.command("PUBSUB", "SHARDNUMSUB", CHANNEL) == [CHANNEL, 2]
        assert master.command("HEXISTS", REPORTS, "node-a") == 1
        prober.down = CARRIER_DOWN
        writer.prober_changed()
        await wait_until(lambda: follower.view.is_down("acme", "carrier"), 5, "the change")

        promoted = await redis_cluster.kill_master_and_wait_for_promotion(master)
        # Both reconnect to the promoted replica (the slot map read again) and carry on.
        await wait_until(
            lambda: writer._link.reconnects >= 1 and follower._link.reconnects >= 1,
            20,
            "both back on the new master",
        )
        prober.down = ()
        writer.prober_changed()
        await wait_until(
            lambda: not follower.view.is_down("acme", "carrier"), 10, "a change after failover"
        )
        assert redis_cluster.node_for_key(CHANNEL) is promoted
        assert promoted.command("PUBSUB", "SHARDNUMSUB", CHANNEL) == [CHANNEL, 2]
