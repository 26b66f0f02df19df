"""The OPTIONS prober against real far ends, through a real sipgw process.

- sipp plays two trunks of tenant acme ("carrier" first, "backup" second) with a
  scenario that answers OPTIONS and calls (scenarios/trunk_uas.xml). Stopping the
  carrier's sipp makes the trunk go down: a ``peer.down`` event reaches an Events API
  subscriber, and a call to a number leaves through the backup; starting it again
  brings ``peer.up`` and the calls back.
- A TCP trunk: the probes go over TCP; once its sipp is gone the connection is refused
  and the trunk goes down without waiting for Timer F.
- Kamailio as a trunk's far end (tests/integration/kamailio/siptrace.cfg answers an
  OPTIONS to itself without a user with 200 "Ready").
- Flood protection: a burst of OPTIONS from the trunk's address is answered in full,
  the same burst from another address only up to the limit.

Short intervals (0.2 s) and a small T1 (Timer F = 64*T1 = 1.6 s) keep each test within
seconds; every wait is bounded and waits for the event or state itself.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection

from tests.integration.conftest import GatewayFactory
from tests.integration.gateway import DOMAIN, PASSWORDS, GatewayPorts, GatewayProcess
from tests.integration.test_events import SCHEMA, subscribe
from tests.integration.test_sipp_calls import SCENARIOS
from tests.peers.ports import free_port
from tests.peers.process import require_binary
from tests.peers.sipp import SippProcess, SippResult, run_sipp, scenario, start_sipp
from tests.waiting import wait_until

pytestmark = [pytest.mark.peers]

TRUNK_UAS = str(SCENARIOS / "trunk_uas.xml")
# T1 = 25 ms: Timer F (64*T1) is 1.6 s, so a dead trunk is noticed within seconds.
FAST_TIMERS = "t1 = 0.025"
PROBING = "options_interval = 0.2\noptions_down_after = 2\noptions_up_after = 2"
NUMBER = "0612345678"


def backup_trunk(port: int, transport: str = "udp") -> str:
    return f"""
[[tenants.trunks]]
name = "backup"
host = "127.0.0.1"
port = {port}
transport = "{transport}"
match = ["127.0.0.1:{port}"]
{PROBING}
"""


async def start_trunk(
    port: int, transport: str = "u1", name: str = "trunk", calls_log: Path | None = None
) -> SippProcess:
    """A trunk's far end; with `calls_log`, it writes a line per call it gets there.
    No -timeout: it runs as long as the test needs it and is stopped by it."""
    logs = ["-trace_logs", "-log_file", str(calls_log)] if calls_log is not None else []
    return await start_sipp(
        ["-sf", TRUNK_UAS, "-t", transport, *logs], local_port=port, timeout=None, name=name
    )


async def call_out(gw: GatewayProcess, transport: str = "u1") -> SippResult:
    """Phone 202 dials a national number: it leaves through an outbound trunk."""
    return await run_sipp(
        ["-sf", scenario("uac"), f"127.0.0.1:{gw.ports.sip}", "-s", NUMBER,
         "-au", "202", "-ap", PASSWORDS["202"], "-m", "1", "-t", transport],
        keys={"domain": DOMAIN, "caller": "202"}, timeout=20,
    )  # fmt: skip


def calls_received(calls_log: Path) -> int:
    """Calls a trunk_uas sipp got (its log action writes one line per INVITE)."""
    if not calls_log.exists():
        return 0
    return sum(1 for line in calls_log.read_text().splitlines() if line.startswith("call "))


async def next_peer_event(ws: ClientConnection, timeout: float = 20) -> dict[str, Any]:
    """The next peer.up/peer.down event (call events in between are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            message = json.loads(await ws.recv())
            if str(message.get("type", "")).startswith("peer."):
                jsonschema.validate(message, SCHEMA)
                return dict(message)


async def peer_samples(gw: GatewayProcess) -> dict[tuple[str, str], float]:
    """(metric sample name, peer) → value of the sipgw_peer_* metrics."""
    samples: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(await gw.metrics()):
        for s in family.samples:
            if s.name.startswith("sipgw_peer_") and "le" not in s.labels:
                samples[s.name, s.labels["peer"]] = s.value
    return samples


async def wait_for_samples(
    gw: GatewayProcess, check: Any, timeout: float = 20, what: str = ""
) -> dict[tuple[str, str], float]:
    """Poll /metrics until `check(samples)` holds (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        samples = await peer_samples(gw)
        if check(samples):
            return samples
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {samples}")
        await asyncio.sleep(0.05)


def answered(samples: dict[tuple[str, str], float], peer: str, count: int) -> bool:
    return samples.get(("sipgw_peer_options_rtt_seconds_count", peer), 0) >= count


@pytest.fixture
async def trunks() -> AsyncIterator[dict[str, SippProcess]]:
    """The trunks' sipp processes by name; every one still running is stopped."""
    running: dict[str, SippProcess] = {}
    yield running
    for sipp in running.values():
        await sipp.stop(grace=2)


async def test_a_dead_trunk_goes_down_calls_take_the_backup_and_it_comes_back(
    gateway_factory: GatewayFactory, trunks: dict[str, SippProcess], tmp_path: Path
) -> None:
    ports = GatewayPorts()
    backup_port = free_port()
    carrier_calls, backup_calls = tmp_path / "carrier.log", tmp_path / "backup.log"
    carrier_again_calls = tmp_path / "carrier-again.log"  # sipp truncates its log file
    # The far ends answer before the gateway sends its first probe.
    trunks["carrier"] = await start_trunk(ports.trunk, name="carrier", calls_log=carrier_calls)
    trunks["backup"] = await start_trunk(backup_port, name="backup", calls_log=backup_calls)
    gw = await gateway_factory(
        ports=ports,
        extra_sip=FAST_TIMERS,
        trunk_extra=PROBING,
        more_trunks=backup_trunk(backup_port),
    )
    await wait_for_samples(
        gw,
        lambda s: answered(s, "carrier", 2) and answered(s, "backup", 2),
        what="both trunks answering probes",
    )
    ws = await subscribe(gw, await gw.login("203"))

    (await call_out(gw)).check(calls=1)
    await wait_until(lambda: calls_received(carrier_calls) == 1, 5, "the call at the carrier")
    assert calls_received(backup_calls) == 0

    # The carrier dies: two probes in a row go unanswered (Timer F), it is down.
    first_carrier = await trunks.pop("carrier").stop(grace=2)
    down = await next_peer_event(ws)
    assert down["type"] == "peer.down" and down["tenant"] == "acme"
    assert down["peer"]["name"] == "carrier"
    assert down["peer"]["address"] == f"udp:127.0.0.1:{ports.trunk}"
    assert down["peer"]["reason"] == "no answer to OPTIONS within 1.6 s (2 probes in a row)"
    samples = await peer_samples(gw)
    assert samples["sipgw_peer_up", "carrier"] == 0 and samples["sipgw_peer_up", "backup"] == 1

    # A new call leaves through the backup (the carrier is not even tried: nothing
    # listens there, so the call could not have succeeded through it).
    (await call_out(gw)).check(calls=1)
    await wait_until(lambda: calls_received(backup_calls) == 1, 5, "the call at the backup")

    # The carrier is back: two answered probes in a row, it is up again.
    trunks["carrier"] = await start_trunk(
        ports.trunk, name="carrier-again", calls_log=carrier_again_calls
    )
    up = await next_peer_event(ws)
    assert up["type"] == "peer.up" and up["peer"]["name"] == "carrier"
    assert up["peer"]["reason"] == "OPTIONS answered 200 OK (2 probes in a row)"
    (await call_out(gw)).check(calls=1)
    await ws.close()
    second_carrier = await trunks.pop("carrier").stop(grace=2)
    backup = await trunks.pop("backup").stop(grace=2)
    # One call each: the last one went back to the first trunk once it was up.
    assert calls_received(carrier_calls) == calls_received(backup_calls) == 1
    assert calls_received(carrier_again_calls) == 1
    assert first_carrier.failed == backup.failed == second_carrier.failed == 0

    samples = await peer_samples(gw)
    assert samples["sipgw_peer_up", "carrier"] == 1
    assert samples["sipgw_peer_options_failed_total", "carrier"] >= 2
    assert samples["sipgw_peer_options_failed_total", "backup"] == 0
    assert samples["sipgw_peer_options_sent_total", "backup"] >= 4
    logged = [r for r in gw.log_records() if r.get("msg") in ("peer down", "peer up")]
    assert [(r["msg"], r["level"], r["peer"], r["tenant"]) for r in logged] == [
        ("peer down", "warning", "carrier", "acme"),
        ("peer up", "info", "carrier", "acme"),
    ]
    assert logged[0]["address"] == f"udp:127.0.0.1:{ports.trunk}"


async def test_a_tcp_trunk_is_probed_over_tcp_and_a_refused_connection_is_a_failure(
    gateway_factory: GatewayFactory, trunks: dict[str, SippProcess]
) -> None:
    ports = GatewayPorts()
    trunks["carrier"] = await start_trunk(ports.trunk, transport="t1", name="tcp-trunk")
    gw = await gateway_factory(
        ports=ports,
        extra_sip=FAST_TIMERS,
        trunk_transport="tcp",
        trunk_match=["127.0.0.1"],
        trunk_extra=PROBING,
    )
    await wait_for_samples(gw, lambda s: answered(s, "carrier", 3), what="TCP probes answered")
    metrics = await gw.metrics()
    assert 'sipgw_sip_requests_total{direction="out",method="OPTIONS",transport="tcp"}' in metrics
    ws = await subscribe(gw, await gw.login("203"))
    await trunks.pop("carrier").stop(grace=2)
    down = await next_peer_event(ws)
    assert down["peer"]["address"] == f"tcp:127.0.0.1:{ports.trunk}"
    # Connection refused: no waiting for Timer F.
    assert down["peer"]["reason"] == (
        "OPTIONS could not be sent (transport error) (2 probes in a row)"
    )
    await ws.close()


async def test_kamailio_as_a_trunks_far_end(gateway_factory: GatewayFactory) -> None:
    from tests.integration.test_hep_kamailio import _module_dir, _start_kamailio

    binary = require_binary("kamailio")
    module_dir = _module_dir(binary)
    # siptrace.cfg mirrors traffic as HEP; nothing listens on this port, and the probe
    # is answered before any tracing anyway.
    kam = await _start_kamailio(binary, module_dir, free_port(tcp=False))
    try:
        ports = GatewayPorts(trunk=kam.port)
        gw = await gateway_factory(ports=ports, extra_sip=FAST_TIMERS, trunk_extra=PROBING)
        samples = await wait_for_samples(
            gw, lambda s: answered(s, "carrier", 3), what="Kamailio answering probes"
        )
        assert samples["sipgw_peer_up", "carrier"] == 1
        assert samples["sipgw_peer_options_failed_total", "carrier"] == 0
        ws = await subscribe(gw, await gw.login("203"))
        await kam.proc.stop()
        down = await next_peer_event(ws)
        assert down["type"] == "peer.down" and down["peer"]["name"] == "carrier"
        assert down["peer"]["address"] == f"udp:127.0.0.1:{kam.port}"
        await ws.close()
        assert kam.errors() == []
    finally:
        await kam.proc.stop()
        kam.rundir.cleanup()


async def test_flood_protection_never_counts_a_trunks_options(
    gateway_factory: GatewayFactory,
) -> None:
    """The same burst of 100 OPTIONS: all answered from the trunk's address, 20 from
    another one (the loopback is not exempt here, so it is counted like any address)."""
    gw = await gateway_factory(
        extra_sip="flood_max_requests = 20\nflood_window = 60\nflood_exempt = []"
    )
    loop = asyncio.get_running_loop()
    replies: dict[str, int] = {"trunk": 0, "other": 0}

    class Counting(asyncio.DatagramProtocol):
        def __init__(self, name: str) -> None:
            self.name = name

        def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
            if data.startswith(b"SIP/2.0 200"):
                replies[self.name] += 1

    endpoints = []
    for name, port in (("trunk", gw.ports.trunk_src), ("other", free_port(tcp=False))):
        transport, _ = await loop.create_datagram_endpoint(
            lambda name=name: Counting(name),  # type: ignore[misc]
            local_addr=("127.0.0.1", port),
            remote_addr=("127.0.0.1", gw.ports.sip),
            family=socket.AF_INET,
        )
        endpoints.append((name, port, transport))
    try:
        for name, port, transport in endpoints:
            for n in range(100):
                transport.sendto(
                    (
                        f"OPTIONS sip:127.0.0.1:{gw.ports.sip} SIP/2.0\r\n"
                        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{name}-{n};rport\r\n"
                        f"From: <sip:probe@127.0.0.1>;tag={name}\r\n"
                        f"To: <sip:127.0.0.1:{gw.ports.sip}>\r\n"
                        f"Call-ID: flood-{name}-{n}@127.0.0.1\r\nCSeq: 1 OPTIONS\r\n"
                        "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
                    ).encode()
                )
        await wait_until(lambda: replies["trunk"] == 100, 10, "every trunk OPTIONS answered")
        dropped = 'sipgw_transport_events_total{event="flood_dropped"} 80.0'
        for _ in range(200):  # bounded: the counter says every datagram was handled
            if dropped in await gw.metrics():
                break
            await asyncio.sleep(0.05)
        assert dropped in await gw.metrics()
        await wait_until(lambda: replies["other"] == 20, 10, "the admitted OPTIONS answered")
        assert replies == {"trunk": 100, "other": 20}
    finally:
        for _, _, transport in endpoints:
            transport.close()
