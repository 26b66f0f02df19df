"""`[node] workers = 2`: two sipgw processes share the SIP ports (SO_REUSEPORT). Calls
from many source ports spread over both; a phone registered through one is reached
from the other; responses that reach the wrong worker are handed to the right one; one
/metrics scrape sums both; every call's events are complete."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from gateway.bus import keys
from tests.integration.conftest import GatewayFactory
from tests.integration.gateway import DID, DOMAIN, PASSWORDS, GatewayProcess
from tests.peers.ports import free_port
from tests.peers.sipp import run_sipp, scenario, start_sipp

pytestmark = [pytest.mark.peers]

SCENARIOS = Path(__file__).with_name("scenarios")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def total(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and want <= set(ls))


async def stream_events(gw: GatewayProcess) -> list[dict[str, Any]]:
    client = aioredis.Redis.from_url(gw.redis_url)
    try:
        entries: Any = await client.xrange(keys.events_key("acme"))
    finally:
        await client.aclose()
    return [
        keys.decode_payload(raw_id.decode(), fields[keys.STREAM_FIELD])
        for raw_id, fields in entries
    ]


async def register(gw: GatewayProcess, port: int, scenario_path: str) -> None:
    result = await run_sipp(
        ["-sf", scenario_path, f"127.0.0.1:{gw.ports.sip}", "-s", "201", "-au", "201",
         "-ap", PASSWORDS["201"], "-m", "1"],
        local_port=port, timeout=15, keys={"domain": DOMAIN, "expires": "600"},
    )  # fmt: skip
    result.check(calls=1)


async def calls_from_many_ports(gw: GatewayProcess, calls: int, uas_port: int) -> None:
    async with await start_sipp(
        ["-sf", scenario("uas"), "-m", str(calls)], local_port=uas_port, timeout=60, name="uas"
    ) as uas:
        # -t un: a socket (a source port) per call, so the kernel spreads the calls.
        result = await run_sipp(
            ["-sf", scenario("uac"), f"127.0.0.1:{gw.ports.sip}", "-s", DID, "-m", str(calls),
             "-r", "20", "-t", "un", "-max_socket", "1000"],
            timeout=60, keys={"domain": "127.0.0.1", "caller": "+31612345678"},
        )  # fmt: skip
        result.check(calls=calls)
        (await uas.wait(timeout=60)).check(calls=calls)


@pytest.mark.parametrize("nat", [False, True], ids=["direct", "behind-nat"])
async def test_two_workers_share_the_calls(gateway_factory: GatewayFactory, nat: bool) -> None:
    gw = await gateway_factory(workers=2, trunk_match=["127.0.0.1/32"])
    uas_port = free_port()
    # Behind NAT the gateway sends to the phone from the port it registered to, and the
    # phone (sipp) answers to that port: the kernel gives those answers to one worker,
    # which must hand the other worker's to it.
    path = str(SCENARIOS / "register_nat_uac.xml") if nat else scenario("register_uac")
    await register(gw, uas_port, path)
    calls = 40
    await calls_from_many_ports(gw, calls, uas_port)

    # Worker 1 sends its counters to worker 0 every second: poll the scrape (bounded).
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    async with asyncio.timeout(10):
        while total(found, "sipgw_calls_ended_total", outcome="normal") != calls:
            await asyncio.sleep(0.2)
            found = samples(await gw.metrics())
    per_worker = {
        dict(labels)["worker"]: value
        for (name, labels), value in found.items()
        if name == "sipgw_worker_requests_total"
    }
    assert set(per_worker) == {"0", "1"} and all(v > 0 for v in per_worker.values()), per_worker
    assert total(found, "sipgw_sip_requests_total", direction="in", method="INVITE") >= calls
    assert total(found, "sipgw_sip_requests_total", direction="out", method="INVITE") == calls
    if nat:
        assert total(found, "sipgw_transport_events_total", event="relayed_to_worker") > 0
    events = await stream_events(gw)
    flows: dict[str, list[str]] = {}
    for event in events:
        flows.setdefault(event["call_id"], []).append(event["type"])
    assert len(flows) == calls
    assert all(
        flow == ["call.offered", "call.delivered", "call.established", "call.cleared"]
        for flow in flows.values()
    ), json.dumps(flows)[:2000]


async def test_a_worker_that_dies_is_restarted_and_stop_is_clean(tmp_path: Path) -> None:
    gw = await GatewayProcess(tmp_path, workers=2).start()
    try:
        await _kill_and_watch_the_restart(gw)
        assert await gw.stop() == 0  # SIGTERM: the workers drain and stop, then it exits
        errors = [e["msg"] for e in gw.errors()]
        assert errors == ["worker exited"], gw.log_tail()
    finally:
        await gw.stop()


async def _kill_and_watch_the_restart(gw: GatewayProcess) -> None:
    assert gw.proc is not None
    supervisor = gw.proc.pid

    def workers() -> list[int]:
        children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text()
        return [int(pid) for pid in children.split()]

    async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
        for _ in range(100):  # 20 s, polled: the state is in another process
            if await check():
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}")

    async def worker_1_reports() -> bool:
        return total(samples(await gw.metrics()), "sipgw_worker_up", worker="1") == 1

    await until(worker_1_reports, "worker 1's counters")
    first = workers()
    assert len(first) == 2
    os.kill(first[1], signal.SIGKILL)  # worker 1: not the one serving HTTP

    async def replaced() -> bool:
        now = workers()
        return len(now) == 2 and set(now) != set(first)

    await until(replaced, "a new worker 1")
    await until(worker_1_reports, "the new worker 1's counters")
