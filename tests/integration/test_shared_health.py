"""Trunk health shared by every worker and node (runtime/shared_health.py), with real
sipgw processes, a real redis-server and sipp as the trunks.

Node A probes the trunks quickly; node B (two workers) probes them once at start and
then not for ten minutes, so whatever B learns about the carrier going down it learns
from A. sipp plays both trunks ("carrier" first, "backup" second,
scenarios/trunk_uas.xml) and logs each call it gets, so every assertion about routing
is about where calls arrived.

- A finds the carrier down: calls on B, from many source ports so that both of B's
  workers route some, all reach the backup, as calls on A do; the carrier comes back,
  and B's calls reach it again.
- A is killed while it reports the carrier down: its report lapses (three refresh
  periods, 3 s here) and B routes to the carrier again.
- Without Redis, worker 1 of a node follows worker 0's probes through the envelopes.

Every wait is bounded and polls the state itself (the scrape) or the call logs.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import GatewayFactory
from tests.integration.gateway import (
    DOMAIN,
    PASSWORDS,
    GatewayPorts,
    GatewayProcess,
    RedisProcess,
)
from tests.integration.test_prober import (
    FAST_TIMERS,
    NUMBER,
    PROBING,
    calls_received,
    start_trunk,
)
from tests.integration.test_workers import samples, total
from tests.peers.ports import free_port
from tests.peers.sipp import SippProcess, run_sipp, scenario
from tests.waiting import wait_until, wait_until_true

pytestmark = [pytest.mark.peers]

# Probed once at start (answered: up), then not again within the test.
SLOW = "options_interval = 600"


def backup_trunk(port: int, probing: str) -> str:
    return f"""
[[tenants.trunks]]
name = "backup"
host = "127.0.0.1"
port = {port}
match = ["127.0.0.1:{port}"]
{probing}
"""


async def calls_out(gw: GatewayProcess, calls: int) -> None:
    """Phone 202 dials a national number `calls` times, each call from a source port of
    its own (-t un), so the kernel spreads them over the node's workers."""
    result = await run_sipp(
        ["-sf", scenario("uac"), f"127.0.0.1:{gw.ports.sip}", "-s", NUMBER,
         "-au", "202", "-ap", PASSWORDS["202"], "-m", str(calls), "-r", "20",
         "-t", "un", "-max_socket", "200"],
        keys={"domain": DOMAIN, "caller": "202"}, timeout=30,
    )  # fmt: skip
    result.check(calls=calls)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(gw: GatewayProcess) -> Samples:
    return samples(await gw.metrics())


def peer(found: Samples, name: str, trunk: str) -> float | None:
    for (sample, labels), value in found.items():
        if sample == name and dict(labels).get("peer") == trunk:
            return value
    return None


async def until(gw: GatewayProcess, what: str, check: object, timeout: float = 20) -> Samples:
    """Scrape `gw` until `check(samples)` holds (bounded)."""
    found: Samples = {}

    async def holds() -> bool:
        nonlocal found
        found = await scrape(gw)
        return bool(check(found))  # type: ignore[operator]

    try:
        await wait_until_true(holds, timeout, what)
    except AssertionError as err:
        raise AssertionError(f"{err}: {sorted(found.items())}") from None
    return found


def carrier_down_everywhere(found: Samples, workers: int = 1) -> bool:
    skipped = all(
        total(found, "sipgw_worker_peers_down", worker=str(i)) == 1 for i in range(workers)
    )
    return peer(found, "sipgw_peer_up", "carrier") == 0 and (workers == 1 or skipped)


def carrier_up_everywhere(found: Samples, workers: int = 1) -> bool:
    skipped = all(
        total(found, "sipgw_worker_peers_down", worker=str(i)) == 0
        and total(found, "sipgw_worker_up", worker=str(i)) == 1
        for i in range(workers)
    )
    return peer(found, "sipgw_peer_up", "carrier") == 1 and (workers == 1 or skipped)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """One redis-server for the nodes of a test (and none of another test's reports)."""
    server = RedisProcess.start(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def trunks() -> AsyncIterator[dict[str, SippProcess]]:
    running: dict[str, SippProcess] = {}
    yield running
    for sipp in running.values():
        await sipp.stop(grace=2)


async def test_a_trunk_seen_down_by_node_a_is_skipped_by_both_workers_of_node_b(
    gateway_factory: GatewayFactory,
    redis: RedisProcess,
    trunks: dict[str, SippProcess],
    tmp_path: Path,
) -> None:
    carrier_port, backup_port = free_port(), free_port()
    logs = {name: tmp_path / f"{name}.log" for name in ("carrier", "backup", "carrier-again")}
    trunks["carrier"] = await start_trunk(carrier_port, name="carrier", calls_log=logs["carrier"])
    trunks["backup"] = await start_trunk(backup_port, name="backup", calls_log=logs["backup"])
    a = await gateway_factory(
        ports=GatewayPorts(trunk=carrier_port), node="node-a", redis_url=redis.url,
        extra_sip=FAST_TIMERS, trunk_extra=PROBING,
        more_trunks=backup_trunk(backup_port, PROBING),
    )  # fmt: skip
    b = await gateway_factory(
        ports=GatewayPorts(trunk=carrier_port), node="node-b", redis_url=redis.url,
        workers=2, extra_sip=FAST_TIMERS, trunk_extra=SLOW,
        more_trunks=backup_trunk(backup_port, SLOW),
    )  # fmt: skip
    await until(
        b, "B's probes answered and both of its workers reporting",
        lambda s: peer(s, "sipgw_peer_options_rtt_seconds_count", "carrier") == 1
        and carrier_up_everywhere(s, workers=2),
    )  # fmt: skip
    await calls_out(b, 4)
    await wait_until(lambda: calls_received(logs["carrier"]) == 4, 5, "B's calls at the carrier")

    # The carrier stops answering: A finds it down (2 probes in a row), B is told.
    await trunks.pop("carrier").stop(grace=2)
    await until(a, "A's probes finding the carrier down", carrier_down_everywhere)
    found = await until(
        b, "B skipping the carrier on both workers", lambda s: carrier_down_everywhere(s, 2)
    )
    # B's own probes still find it up: the down comes from A's report alone.
    assert peer(found, "sipgw_peer_probe_up", "carrier") == 1
    assert peer(found, "sipgw_peer_down_reports", "carrier") == 1
    assert peer(found, "sipgw_peer_up", "backup") == 1

    requests_before = {w: total(found, "sipgw_worker_requests_total", worker=w) for w in ("0", "1")}
    await calls_out(b, 20)
    await calls_out(a, 2)
    await wait_until(lambda: calls_received(logs["backup"]) == 22, 5, "the calls at the backup")
    found = await scrape(b)
    spread = {
        w: total(found, "sipgw_worker_requests_total", worker=w) - requests_before[w]
        for w in ("0", "1")
    }
    assert all(n > 0 for n in spread.values()), f"both of B's workers routed calls: {spread}"

    # The carrier is back: A finds it up (2 answers in a row), and so does B.
    trunks["carrier"] = await start_trunk(
        carrier_port, name="carrier-again", calls_log=logs["carrier-again"]
    )
    await until(a, "A's probes finding the carrier up", carrier_up_everywhere)
    await until(b, "B routing to the carrier again", lambda s: carrier_up_everywhere(s, 2))
    await calls_out(b, 20)
    await wait_until(
        lambda: calls_received(logs["carrier-again"]) == 20, 5, "B's calls at the carrier"
    )
    assert calls_received(logs["backup"]) == 22
    # Each node logs what routing does (worker 0's line), once per change.
    for gw, nodes in ((a, ["node-a"]), (b, ["node-a"])):
        logged = [
            (r["msg"], r["peer"], r["nodes"])
            for r in gw.log_records()
            if str(r.get("msg", "")).startswith("trunk ")
        ]
        assert logged == [
            ("trunk skipped: reported down", "carrier", nodes),
            ("trunk routed again: no node reports it down", "carrier", []),
        ], logged


async def test_a_node_that_dies_stops_holding_a_trunk_down(
    gateway_factory: GatewayFactory,
    redis: RedisProcess,
    trunks: dict[str, SippProcess],
    tmp_path: Path,
) -> None:
    carrier_port, backup_port = free_port(), free_port()
    again = tmp_path / "carrier-again.log"
    trunks["carrier"] = await start_trunk(carrier_port, name="carrier")
    trunks["backup"] = await start_trunk(backup_port, name="backup")
    # A is not the factory's: it is killed, and does not exit with 0.
    (tmp_path / "node-a").mkdir()
    a = GatewayProcess(
        tmp_path / "node-a", GatewayPorts(trunk=carrier_port), FAST_TIMERS, node="node-a",
        redis_url=redis.url, trunk_extra=PROBING, more_trunks=backup_trunk(backup_port, PROBING),
    )  # fmt: skip
    try:
        b = await gateway_factory(
            ports=GatewayPorts(trunk=carrier_port), node="node-b", redis_url=redis.url,
            extra_sip=FAST_TIMERS, trunk_extra=SLOW, more_trunks=backup_trunk(backup_port, SLOW),
        )  # fmt: skip
        await a.start()
        await trunks.pop("carrier").stop(grace=2)
        found = await until(b, "B skipping the carrier A reports down", carrier_down_everywhere)
        assert peer(found, "sipgw_peer_probe_up", "carrier") == 1

        # A dies with its report in Redis; the carrier comes back, which only B can see.
        assert a.proc is not None
        os.kill(a.proc.pid, signal.SIGKILL)
        await a.proc.wait()
        trunks["carrier"] = await start_trunk(carrier_port, name="carrier-again", calls_log=again)
        loop = asyncio.get_running_loop()
        killed = loop.time()
        # A refreshed its report every second (its fastest probe interval, at least 1 s):
        # it lapses 3 s after the last refresh.
        await until(b, "A's report to lapse", carrier_up_everywhere, timeout=10)
        assert loop.time() - killed < 4.5
        await calls_out(b, 2)
        await wait_until(lambda: calls_received(again) == 2, 5, "B's calls at the carrier")
    finally:
        await a.stop()


async def test_without_redis_worker_1_follows_worker_0s_probes(
    gateway_factory: GatewayFactory, trunks: dict[str, SippProcess], tmp_path: Path
) -> None:
    carrier_port, backup_port = free_port(), free_port()
    backup_log = tmp_path / "backup.log"
    trunks["carrier"] = await start_trunk(carrier_port, name="carrier")
    trunks["backup"] = await start_trunk(backup_port, name="backup", calls_log=backup_log)
    gw = await gateway_factory(
        ports=GatewayPorts(trunk=carrier_port), redis_url=f"redis://127.0.0.1:{free_port()}/0",
        workers=2, extra_sip=FAST_TIMERS, trunk_extra=PROBING,
        more_trunks=backup_trunk(backup_port, PROBING),
    )  # fmt: skip
    await until(gw, "both workers reporting", lambda s: carrier_up_everywhere(s, 2))
    await trunks.pop("carrier").stop(grace=2)
    found = await until(
        gw, "both workers skipping the carrier", lambda s: carrier_down_everywhere(s, 2)
    )
    assert peer(found, "sipgw_peer_down_reports", "carrier") == 1
    await calls_out(gw, 20)
    await wait_until(lambda: calls_received(backup_log) == 20, 5, "the calls at the backup")
