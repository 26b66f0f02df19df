"""Monitor mode end to end: sipp → Kamailio (siptrace) → sipp, Kamailio mirroring every
message to sipgw over HEPv3, and a WebSocket subscriber of sipgw getting the same call
event sequences as when sipgw is the proxy itself."""

from __future__ import annotations

import pytest

from tests.integration.conftest import GatewayFactory
from tests.integration.test_events import by_call, check_stream, collect, subscribe
from tests.integration.test_hep_kamailio import HEP_AUTH_KEY, HOST, _module_dir, _start_kamailio
from tests.peers import ports
from tests.peers.process import require_binary
from tests.peers.sipp import run_sipp, scenario, start_sipp

pytestmark = [pytest.mark.peers]


FLOWS = {
    "answered": (
        "uas",
        "uac",
        ["call.offered", "call.delivered", "call.established", "call.cleared"],
    ),
    "busy": ("uas_busy", "uac_busy", ["call.offered", "call.failed"]),
    "cancelled": (
        "uas_ring_no_answer",
        "uac_cancel",
        ["call.offered", "call.delivered", "call.failed"],
    ),
}


@pytest.mark.parametrize("flow_name", sorted(FLOWS))
async def test_kamailio_calls_seen_through_hep_become_call_events(
    gateway_factory: GatewayFactory, flow_name: str
) -> None:
    uas_scenario, uac_scenario, flow = FLOWS[flow_name]
    binary = require_binary("kamailio")
    module_dir = _module_dir(binary)
    hep_port, uac_port, uas_port = ports.free_udp_port(), ports.free_port(), ports.free_port()
    monitor = f"""
[monitor]
hep_listen = "udp:127.0.0.1:{hep_port}"

[[monitor.sources]]
address = "127.0.0.1"
tenant = "acme"
trunks = ["127.0.0.1:{uac_port}"]
auth_key = "{HEP_AUTH_KEY}"
"""
    gw = await gateway_factory(extra=monitor)
    ws = await subscribe(gw, await gw.login("203"))
    kam = await _start_kamailio(binary, module_dir, hep_port)
    try:
        async with await start_sipp(
            ["-sf", scenario(uas_scenario), "-m", "2"],
            local_port=uas_port,
            name="uas",
            timeout=30,
        ) as uas:
            result = await run_sipp(
                [
                    "-sf",
                    scenario(uac_scenario),
                    f"{HOST}:{kam.port}",
                    "-m",
                    "2",
                    "-r",
                    "5",
                    "-s",
                    "201",
                ],
                local_port=uac_port,
                timeout=30,
                keys={"domain": uas.uri_host, "caller": "+31612345678"},
            )
            result.check(calls=2)
            (await uas.wait(15)).check(calls=2)
        events = await collect(ws, 2 * len(flow), timeout=15)
    finally:
        await ws.close()
        await kam.proc.stop()
        kam.rundir.cleanup()
    check_stream(events)
    # Kamailio mirrors each message twice (received and relayed): still one call each.
    assert list(by_call(events).values()) == [flow, flow]
    offered = [e for e in events if e["type"] == "call.offered"]
    assert {(e["direction"], e["extension"], e["tenant"]) for e in offered} == {
        ("inbound", "201", "acme")
    }
    assert all(e["device"]["source"].startswith("hep:") for e in offered if "device" in e)
