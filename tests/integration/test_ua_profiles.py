"""Phones that work without naming a profile (issue #15 part 5): baresip, sipp, linphonec
and a PJSIP phone register as users that name no profile, and call each other in a ring
(baresip → PJSIP → linphonec → sipp → baresip) over UDP, then over TCP: each client both
calls and is called on each transport.

Before profiles were chosen by User-Agent, baresip 1.0 and sipp 3.6 failed here: they
read only the first challenge, SHA-256 on the default profile ("Register: Function not
implemented"). Their User-Agents ("baresip v1.0.0 …", "sipp") now choose profiles that
offer MD5 alone; linphonec and the PJSIP phone, recognized or not, get the RFC 8760 order.
PJSIP's CRLF keep-alives over UDP, once parse errors, are counted as keep-alives.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import pytest

from tests.integration.conftest import GatewayFactory
from tests.integration.gateway import DOMAIN, PASSWORDS, GatewayProcess
from tests.peers.baresip import Baresip
from tests.peers.linphone import Linphone
from tests.peers.pjsua import PjsuaAgent
from tests.peers.ports import free_port
from tests.peers.sipp import SippProcess, run_sipp, scenario, start_sipp
from tests.waiting import wait_until_true

pytestmark = [pytest.mark.peers, pytest.mark.asyncio]

SIPP, PJSIP, LINPHONE, BARESIP = "201", "203", "205", "206"
SIPP_TRANSPORT = {"udp": "u1", "tcp": "t1"}


@dataclass
class Ring:
    gw: GatewayProcess
    transport: str
    baresip: Baresip
    linphone: Linphone
    pjsip: PjsuaAgent
    sipp_callee: SippProcess

    @property
    def registrar(self) -> str:
        uri = f"sip:127.0.0.1:{self.gw.ports.sip}"
        return uri if self.transport == "udp" else f"{uri};transport={self.transport}"


async def register_sipp(gw: GatewayProcess, transport: str, port: int) -> None:
    """sipp registers 201 with the shipped scenario ("User-Agent: sipp")."""
    result = await run_sipp(
        ["-sf", scenario("register_uac"), f"127.0.0.1:{gw.ports.sip}", "-s", SIPP,
         "-au", SIPP, "-ap", PASSWORDS[SIPP], "-m", "1", "-t", SIPP_TRANSPORT[transport]],
        local_port=port, timeout=15, keys={"domain": DOMAIN, "expires": "600"},
    )  # fmt: skip
    result.check(calls=1)


@asynccontextmanager
async def ring(gw: GatewayProcess, transport: str) -> AsyncIterator[Ring]:
    """Every phone started and registered over ``transport`` as its user (no profile)."""
    async with AsyncExitStack() as stack:
        baresip = await Baresip.start(f"baresip-{transport}")
        stack.push_async_callback(baresip.stop)
        linphone = await Linphone.start(f"linphone-{transport}")
        stack.push_async_callback(linphone.stop)
        pjsip = await PjsuaAgent.start(f"pjsua-{transport}", transport=transport)
        stack.push_async_callback(pjsip.stop)
        sipp_port = free_port()
        await register_sipp(gw, transport, sipp_port)
        callee = await start_sipp(
            ["-sf", scenario("uas"), "-m", "1", "-t", SIPP_TRANSPORT[transport], "-s", SIPP],
            local_port=sipp_port, timeout=60, name="sipp-callee",
        )  # fmt: skip
        stack.push_async_callback(callee.stop)
        phones = Ring(gw, transport, baresip, linphone, pjsip, callee)
        registrar = phones.registrar
        assert await baresip.register(registrar, BARESIP, DOMAIN, PASSWORDS[BARESIP]) == 200, (
            baresip.describe()
        )
        assert await linphone.register(registrar, LINPHONE, DOMAIN, PASSWORDS[LINPHONE]) == 200
        # Over UDP, PJSIP's own keep-alive (a bare CRLF) every second: RFC 5626 ones.
        keepalive = 1 if transport == "udp" else 0
        status = await pjsip.register(
            registrar, PJSIP, DOMAIN, PASSWORDS[PJSIP], keepalive=keepalive
        )
        assert status == 200, pjsip.describe()
        yield phones


async def baresip_calls_pjsip(r: Ring) -> None:
    call = await r.baresip.call(f"sip:{PJSIP}@{DOMAIN}")
    incoming = await r.pjsip.wait_incoming(timeout=10)
    assert BARESIP in incoming["from"]
    await r.pjsip.answer(incoming["call"], 200)
    await r.baresip.wait_call_state(call, "CONFIRMED", timeout=10)
    await r.baresip.hangup(call)
    await r.pjsip.wait_call_state(incoming["call"], "DISCONNECTED", timeout=10)


async def pjsip_calls_linphone(r: Ring) -> None:
    call = await r.pjsip.call(f"sip:{LINPHONE}@{DOMAIN}")
    incoming = await r.linphone.wait_incoming(timeout=10)
    await r.linphone.answer(incoming["call"])
    await r.pjsip.wait_call_state(call, "CONFIRMED", timeout=10)
    await r.pjsip.hangup(call)
    await r.linphone.wait_call_state(incoming["call"], "DISCONNECTED", timeout=10)


async def linphone_calls_sipp(r: Ring) -> None:
    # linphonec's `register` does not make the registrar its outbound proxy, and acme.test
    # has no DNS: its user dials the gateway's address.
    target = f"sip:{SIPP}@127.0.0.1:{r.gw.ports.sip}"
    call = await r.linphone.call(target if r.transport == "udp" else f"{target};transport=tcp")
    await r.linphone.wait_call_state(call, "CONFIRMED", timeout=10)
    await r.linphone.terminate(call)
    (await r.sipp_callee.wait(timeout=10)).check(calls=1)


async def sipp_calls_baresip(r: Ring) -> None:
    caller = await start_sipp(
        ["-sf", scenario("uac"), f"127.0.0.1:{r.gw.ports.sip}", "-s", BARESIP,
         "-au", SIPP, "-ap", PASSWORDS[SIPP], "-m", "1", "-d", "300",
         "-t", SIPP_TRANSPORT[r.transport]],
        timeout=30, keys={"domain": DOMAIN, "caller": SIPP}, name="sipp-caller",
    )  # fmt: skip
    async with caller:
        incoming = await r.baresip.wait_incoming(timeout=10)
        assert SIPP in str(incoming["from"])
        await r.baresip.answer(incoming["call"])
        (await caller.wait(timeout=15)).check(calls=1)
    await r.baresip.wait_call_state(incoming["call"], "DISCONNECTED", timeout=10)


async def keepalives(gw: GatewayProcess) -> bool:
    return 'sipgw_transport_events_total{event="keepalive_udp"}' in await gw.metrics()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_phones_without_a_profile_call_each_other(
    gateway_factory: GatewayFactory, transport: str
) -> None:
    gw = await gateway_factory(profiles=dict.fromkeys(PASSWORDS))
    async with ring(gw, transport) as r:
        await baresip_calls_pjsip(r)
        await pjsip_calls_linphone(r)
        await linphone_calls_sipp(r)
        await sipp_calls_baresip(r)
        if transport == "udp":
            await wait_until_true(
                lambda: keepalives(gw), timeout=10, what="PJSIP's CRLF keep-alives counted"
            )
    metrics = await gw.metrics()
    assert "sipgw_sip_parse_errors_total{" not in metrics, "a keep-alive is no parse error"
    # The MD5-only phones were offered MD5 alone: no digest ever failed on the way.
    assert "sipgw_sip_auth_failures_total{" not in metrics, metrics
    assert (
        f'sipgw_sip_requests_total{{direction="in",method="INVITE",transport="{transport}"}}'
        in (metrics)
    )
