"""Real softphones through a real sipgw: linphonec and baresip register with digest auth
and call a PJSIP phone, and the reverse."""

from __future__ import annotations

import pytest

from tests.integration.gateway import DOMAIN, PASSWORDS, GatewayProcess
from tests.peers.baresip import Baresip
from tests.peers.linphone import Linphone
from tests.peers.pjsua import PjsuaAgent

pytestmark = [pytest.mark.peers, pytest.mark.asyncio]


async def pjsip_phone(gw: GatewayProcess, user: str = "203") -> PjsuaAgent:
    agent = await PjsuaAgent.start(f"pjsua-{user}", transport="udp")
    try:
        status = await agent.register(
            f"sip:127.0.0.1:{gw.ports.sip}", user, DOMAIN, PASSWORDS[user]
        )
    except BaseException:
        await agent.stop()
        raise
    assert status == 200, agent.describe()
    return agent


async def linphone(gw: GatewayProcess) -> Linphone:
    phone = await Linphone.start("linphone-205")
    try:
        assert (
            await phone.register(f"sip:127.0.0.1:{gw.ports.sip}", "205", DOMAIN, PASSWORDS["205"])
            == 200
        )
    except BaseException:
        await phone.stop()
        raise
    return phone


async def baresip(gw: GatewayProcess) -> Baresip:
    phone = await Baresip.start("baresip-206")
    try:
        status = await phone.register(
            f"sip:127.0.0.1:{gw.ports.sip}", "206", DOMAIN, PASSWORDS["206"]
        )
    except BaseException:
        await phone.stop()
        raise
    assert status == 200, phone.describe()
    return phone


async def test_linphone_calls_a_pjsip_phone(gateway: GatewayProcess) -> None:
    async with await pjsip_phone(gateway) as pj, await linphone(gateway) as lp:
        # linphonec's `register` does not make the registrar its outbound proxy, and
        # acme.test has no DNS: its user dials the gateway's address.
        call = await lp.call(f"sip:203@127.0.0.1:{gateway.ports.sip}")
        incoming = await pj.wait_incoming(timeout=10)
        assert "205" in incoming["from"]
        await pj.answer(incoming["call"], 200)
        await lp.wait_call_state(call, "CONFIRMED", timeout=10)
        await lp.terminate(call)
        await pj.wait_call_state(incoming["call"], "DISCONNECTED", timeout=10)


async def test_pjsip_phone_calls_linphone(gateway: GatewayProcess) -> None:
    async with await pjsip_phone(gateway) as pj, await linphone(gateway) as lp:
        call = await pj.call(f"sip:205@{DOMAIN}")
        incoming = await lp.wait_incoming(timeout=10)
        await lp.answer(incoming["call"])
        await pj.wait_call_state(call, "CONFIRMED", timeout=10)
        await pj.hangup(call)
        await lp.wait_call_state(incoming["call"], "DISCONNECTED", timeout=10)


async def test_baresip_calls_a_pjsip_phone(gateway: GatewayProcess) -> None:
    async with await pjsip_phone(gateway) as pj, await baresip(gateway) as bs:
        call = await bs.call(f"sip:203@{DOMAIN}")
        incoming = await pj.wait_incoming(timeout=10)
        assert "206" in incoming["from"]
        await pj.answer(incoming["call"], 200)
        await bs.wait_call_state(call, "CONFIRMED", timeout=10)
        await bs.hangup(call)
        await pj.wait_call_state(incoming["call"], "DISCONNECTED", timeout=10)


async def test_pjsip_phone_calls_baresip(gateway: GatewayProcess) -> None:
    async with await pjsip_phone(gateway) as pj, await baresip(gateway) as bs:
        call = await pj.call(f"sip:206@{DOMAIN}")
        incoming = await bs.wait_incoming(timeout=10)
        await bs.answer(incoming["call"])
        await pj.wait_call_state(call, "CONFIRMED", timeout=10)
        await pj.hangup(call)
        await bs.wait_call_state(incoming["call"], "DISCONNECTED", timeout=10)
