"""sipp UAC → sipgw → sipp UAS: real SIP peers through the real gateway process.

Two directions of the dial plan are exercised:
- trunk → DID → registered extension (sipp UAC sends from the trunk's trusted address;
  the sipp UAS registered as extension 201 with digest auth beforehand);
- phone → number → trunk (sipp UAC authenticates as user 202; the sipp UAS is the
  trunk's far end).
"""

from __future__ import annotations

import asyncio
import random
import signal
import socket
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conformance import rfc4475_bytes, rfc4475_manifest
from tests.integration.conftest import GatewayFactory
from tests.integration.gateway import DID, DOMAIN, PASSWORDS, GatewayProcess
from tests.peers.ports import free_port
from tests.peers.sipp import run_sipp, scenario, start_sipp

SCENARIOS = Path(__file__).with_name("scenarios")

pytestmark = [pytest.mark.peers, pytest.mark.asyncio]


async def register_sipp(gw: GatewayProcess, user: str, port: int, transport: str = "u1") -> None:
    """Register a Contact at 127.0.0.1:port for ``user`` (the UAS then binds that port)."""
    result = await run_sipp(
        [
            "-sf",
            scenario("register_uac"),
            f"127.0.0.1:{gw.ports.sip}",
            "-s",
            user,
            "-au",
            user,
            "-ap",
            PASSWORDS[user],
            "-m",
            "1",
            "-t",
            transport,
        ],
        local_port=port,
        timeout=15,
        keys={"domain": DOMAIN, "expires": "600"},
    )
    result.check(calls=1)


async def trunk_to_did(
    gw: GatewayProcess,
    uas_scenario: str,
    uac_scenario: str,
    calls: int,
    *,
    rate: int = 50,
    transport: str = "u1",
    timeout: float = 60,
    hold_ms: int | None = None,
    caller: str = "+31612345678",
) -> None:
    uas_port = free_port()
    await register_sipp(gw, "201", uas_port, transport)
    async with await start_sipp(
        ["-sf", scenario(uas_scenario), "-m", str(calls), "-t", transport],
        local_port=uas_port,
        timeout=timeout,
        name="uas",
    ) as uas:
        result = await run_sipp(
            [
                "-sf",
                scenario(uac_scenario),
                f"127.0.0.1:{gw.ports.sip}",
                "-s",
                DID,
                "-m",
                str(calls),
                "-r",
                str(rate),
                "-l",
                str(max(rate * 2, 10)),
                "-t",
                transport,
                *(["-d", str(hold_ms)] if hold_ms is not None else []),
            ],
            local_port=gw.ports.trunk_src,
            timeout=timeout,
            keys={"domain": "127.0.0.1", "caller": caller},
        )
        result.check(calls=calls)
        uas_result = await uas.wait(timeout=timeout)
        uas_result.check(calls=calls)


async def test_1000_calls_over_udp_trunk_to_registered_phone(gateway: GatewayProcess) -> None:
    await trunk_to_did(gateway, "uas", "uac", 1000, rate=200, timeout=90)
    metrics = await gateway.metrics()
    assert (
        'sipgw_sip_requests_total{direction="in",method="INVITE",transport="udp"} 1000.0' in metrics
    )


async def test_1000_calls_over_tcp_phone_to_trunk(gateway_factory: GatewayFactory) -> None:
    trunk_port = free_port()
    from tests.integration.gateway import GatewayPorts

    gw = await gateway_factory(ports=GatewayPorts(trunk=trunk_port), trunk_transport="tcp")
    calls = 1000
    async with await start_sipp(
        ["-sf", scenario("uas"), "-m", str(calls), "-t", "t1"],
        local_port=trunk_port,
        timeout=90,
        name="trunk-uas",
    ) as uas:
        result = await run_sipp(
            [
                "-sf",
                scenario("uac"),
                f"127.0.0.1:{gw.ports.sip}",
                "-s",
                "0612345678",
                "-au",
                "202",
                "-ap",
                PASSWORDS["202"],
                "-m",
                str(calls),
                "-r",
                "200",
                "-l",
                "400",
                "-t",
                "t1",
            ],
            timeout=90,
            keys={"domain": DOMAIN, "caller": "202"},
        )
        result.check(calls=calls)
        (await uas.wait(timeout=30)).check(calls=calls)


async def test_cancel_before_answer(gateway: GatewayProcess) -> None:
    await trunk_to_did(gateway, "uas_ring_no_answer", "uac_cancel", 20)


async def test_busy_486_is_relayed(gateway: GatewayProcess) -> None:
    await trunk_to_did(gateway, "uas_busy", "uac_busy", 20)


async def test_bye_from_the_caller(gateway: GatewayProcess) -> None:
    await trunk_to_did(gateway, "uas", "uac", 20, transport="t1")


async def test_bye_from_the_callee(gateway: GatewayProcess) -> None:
    await trunk_to_did(gateway, "uas_bye", "uac_expect_bye", 20)


async def test_options_to_the_gateway(gateway: GatewayProcess) -> None:
    result = await run_sipp(
        ["-sf", scenario("options_uac"), f"127.0.0.1:{gateway.ports.sip}", "-m", "10"],
        timeout=15,
        keys={"domain": "127.0.0.1"},
    )
    result.check(calls=10)


async def test_options_while_draining_is_503(gateway: GatewayProcess) -> None:
    gateway.signal(signal.SIGUSR1)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while await gateway.ready():
        assert loop.time() < deadline, "/readyz still 200 after SIGUSR1"
        await asyncio.sleep(0.05)
    status, body = await gateway.http_get("/readyz")
    assert status == 503 and b'"accepting_calls":false' in body
    result = await run_sipp(
        ["-sf", scenario("options_uac_503"), f"127.0.0.1:{gateway.ports.sip}", "-m", "5"],
        timeout=15,
        keys={"domain": "127.0.0.1"},
    )
    result.check(calls=5)
    # New calls are refused too (503 with Retry-After), so a trunk fails over to another node.
    refused = await run_sipp(
        [
            "-sf",
            str(SCENARIOS / "uac_expect_503.xml"),
            f"127.0.0.1:{gateway.ports.sip}",
            "-s",
            DID,
            "-m",
            "3",
        ],
        local_port=gateway.ports.trunk_src,
        timeout=15,
        keys={"domain": "127.0.0.1"},
    )
    refused.check(calls=3)


async def blast_garbage(port: int, stop: asyncio.Event) -> int:
    """Malformed SIP at the gateway's UDP port until ``stop``: RFC 4475's broken messages,
    truncations and random bytes. Returns how many datagrams were sent."""
    rng = random.Random(4475)
    # The vectors kept in the repository, checked against their sums (never a silent
    # empty list that would blast only random bytes).
    broken = [rfc4475_bytes(row["file"]) for row in rfc4475_manifest()]
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sent = 0
    try:
        while not stop.is_set() and sent < 20_000:
            sample = rng.choice(broken)
            kind = sent % 3
            if kind == 0:
                data = sample
            elif kind == 1:
                data = sample[: rng.randrange(1, len(sample))]
            else:
                data = rng.randbytes(rng.randrange(1, 1500))
            await loop.sock_sendto(sock, data, ("127.0.0.1", port))
            sent += 1
            if sent % 50 == 0:
                await asyncio.sleep(0.01)
    finally:
        sock.close()
    return sent


async def test_garbage_during_calls_disturbs_no_call(gateway: GatewayProcess) -> None:
    stop = asyncio.Event()
    blaster = asyncio.create_task(blast_garbage(gateway.ports.sip, stop))
    scrape: list[str] = []

    async def scrape_midway() -> None:
        await asyncio.sleep(1.5)
        scrape.append(await gateway.metrics())

    try:
        await asyncio.gather(
            trunk_to_did(gateway, "uas", "uac", 300, rate=100, timeout=60), scrape_midway()
        )
    finally:
        stop.set()
        sent = await blaster
    assert sent > 500

    # Scraped during the run, and parseable by Prometheus' own text parser.
    families = {f.name: f for f in text_string_to_metric_families(scrape[0])}
    assert families["sipgw_sip_parse_errors"].samples
    final = {f.name: f for f in text_string_to_metric_families(await gateway.metrics())}
    # Torture INVITEs that parse are counted in but refused; only the 300 calls go out.
    forwarded = [
        s.value
        for s in final["sipgw_sip_requests"].samples
        if s.labels == {"direction": "out", "transport": "udp", "method": "INVITE"}
    ]
    assert forwarded == [300.0]
    parse_errors = sum(s.value for s in final["sipgw_sip_parse_errors"].samples)
    assert parse_errors > 100
    assert (await gateway.http_get("/healthz"))[0] == 200
