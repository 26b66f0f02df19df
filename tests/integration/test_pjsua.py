"""Real PJSIP phones (pjsua2, one subprocess each) register with digest auth and call
each other through a real sipgw, over UDP, TCP and TLS."""

from __future__ import annotations

import pytest

from tests.integration.gateway import DOMAIN, PASSWORDS, GatewayProcess
from tests.peers.pjsua import PjsuaAgent

pytestmark = [pytest.mark.peers, pytest.mark.asyncio]


def registrar(gw: GatewayProcess, transport: str) -> str:
    port = gw.ports.tls if transport == "tls" else gw.ports.sip
    return f"sip:127.0.0.1:{port};transport={transport}"


async def phone(gw: GatewayProcess, name: str, user: str, transport: str) -> PjsuaAgent:
    agent = await PjsuaAgent.start(name, transport=transport)
    try:
        status = await agent.register(registrar(gw, transport), user, DOMAIN, PASSWORDS[user])
    except BaseException:
        await agent.stop()
        raise
    assert status == 200, f"{name} registration over {transport}: {status}\n{agent.describe()}"
    return agent


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
async def test_two_pjsip_phones_call_each_other(gateway: GatewayProcess, transport: str) -> None:
    async with (
        await phone(gateway, "alice", "203", transport) as alice,
        await phone(gateway, "bob", "204", transport) as bob,
    ):
        call = await alice.call(f"sip:204@{DOMAIN}")
        incoming = await bob.wait_incoming(timeout=10)
        headers = incoming["headers"]
        # The INVITE came through us: our Via on top of alice's, our Record-Route.
        assert len(headers["via"]) == 2, headers["via"]
        assert any("lr" in rr for rr in headers.get("record-route", [])), headers
        await bob.answer(incoming["call"], 200)
        await alice.wait_call_state(call, "CONFIRMED", timeout=10)
        await bob.wait_call_state(incoming["call"], "CONFIRMED", timeout=10)
        # BYE from the caller travels our Record-Route back to the callee.
        await alice.hangup(call)
        await bob.wait_call_state(incoming["call"], "DISCONNECTED", timeout=10)
        await alice.wait_call_state(call, "DISCONNECTED", timeout=10)


async def test_callee_hangs_up_and_phones_on_different_transports(gateway: GatewayProcess) -> None:
    # alice on UDP, bob on TCP: the gateway double-record-routes (RFC 5658) and the
    # in-dialog BYE from bob must find alice over UDP.
    async with (
        await phone(gateway, "alice", "203", "udp") as alice,
        await phone(gateway, "bob", "204", "tcp") as bob,
    ):
        call = await alice.call(f"sip:204@{DOMAIN}")
        incoming = await bob.wait_incoming(timeout=10)
        assert len(incoming["headers"].get("record-route", [])) == 2
        await bob.answer(incoming["call"], 200)
        await alice.wait_call_state(call, "CONFIRMED", timeout=10)
        await bob.hangup(incoming["call"])
        await alice.wait_call_state(call, "DISCONNECTED", timeout=10)


async def test_busy_callee(gateway: GatewayProcess) -> None:
    async with (
        await phone(gateway, "alice", "203", "udp") as alice,
        await phone(gateway, "bob", "204", "udp") as bob,
    ):
        call = await alice.call(f"sip:204@{DOMAIN}")
        incoming = await bob.wait_incoming(timeout=10)
        await bob.answer(incoming["call"], 486)
        ended = await alice.wait_call_state(call, "DISCONNECTED", timeout=10)
        assert ended["code"] == 486


async def test_caller_cancels_while_ringing(gateway: GatewayProcess) -> None:
    async with (
        await phone(gateway, "alice", "203", "tcp") as alice,
        await phone(gateway, "bob", "204", "udp") as bob,
    ):
        call = await alice.call(f"sip:204@{DOMAIN}")
        incoming = await bob.wait_incoming(timeout=10)
        await alice.wait_call_state(call, "EARLY", timeout=10)
        await alice.hangup(call)  # CANCEL
        ended = await bob.wait_call_state(incoming["call"], "DISCONNECTED", timeout=10)
        assert ended["code"] == 487
        assert (await alice.wait_call_state(call, "DISCONNECTED", timeout=10))["code"] == 487


async def test_wrong_password_is_refused(gateway: GatewayProcess) -> None:
    async with await PjsuaAgent.start("mallory", transport="udp") as mallory:
        status = await mallory.register(registrar(gateway, "udp"), "203", DOMAIN, "Wrong-pass-1!")
        assert status in (401, 403)


async def test_unregistered_extension_is_temporarily_unavailable(gateway: GatewayProcess) -> None:
    async with await phone(gateway, "alice", "203", "udp") as alice:
        call = await alice.call(f"sip:205@{DOMAIN}")
        ended = await alice.wait_call_state(call, "DISCONNECTED", timeout=10)
        assert ended["code"] == 480


async def test_pjsip_options_to_the_gateway(gateway: GatewayProcess) -> None:
    async with await phone(gateway, "alice", "203", "udp") as alice:
        assert await alice.options(f"sip:127.0.0.1:{gateway.ports.sip}", timeout=10) == 200


async def test_forked_call_answered_on_one_phone_cancels_the_other(
    gateway: GatewayProcess,
) -> None:
    # Two phones registered for extension 204 (desk phone + softphone): both ring.
    async with await phone(gateway, "alice", "203", "udp") as alice, \
            await phone(gateway, "desk", "204", "udp") as desk, \
            await phone(gateway, "soft", "204", "tcp") as soft:
        call = await alice.call(f"sip:204@{DOMAIN}")
        on_desk = await desk.wait_incoming(timeout=10)
        on_soft = await soft.wait_incoming(timeout=10)
        await alice.wait_call_state(call, "EARLY", timeout=10)
        await soft.answer(on_soft["call"], 200)
        await alice.wait_call_state(call, "CONFIRMED", timeout=10)
        # The branch that did not answer gets CANCEL from the gateway.
        ended = await desk.wait_call_state(on_desk["call"], "DISCONNECTED", timeout=10)
        assert ended["code"] == 487
        await alice.hangup(call)
        await soft.wait_call_state(on_soft["call"], "DISCONNECTED", timeout=10)
