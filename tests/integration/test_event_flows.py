"""Call event flows end to end: real SIP peers (sipp, PJSIP phones) through a real sipgw
process, the events read by an admin subscriber over WebSocket.

Each test drives one call scenario to its end and checks the exact event sequence per
call, the fields that scenario is about, and every event against the published schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from tests.integration.gateway import DID, DOMAIN, GatewayProcess
from tests.integration.test_events import by_call, check_stream, collect, subscribe
from tests.integration.test_pjsua import phone
from tests.integration.test_sipp_calls import trunk_to_did
from tests.peers.pjsua import PjsuaAgent

pytestmark = [pytest.mark.peers]

SCENARIOS = Path(__file__).with_name("scenarios")

# What uas_302.xml answers (the scenario has these values written in).
REDIRECT_CONTACT = "sip:+31207654321@voicemail.acme.test"
DIVERSION_REASON = "user-busy"

ANSWERED = ["call.offered", "call.delivered", "call.established", "call.cleared"]


async def admin_events(gw: GatewayProcess) -> ClientConnection:
    return await subscribe(gw, await gw.login("203"))


async def collect_all(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    """Exactly `count` events: they arrive within 20 s, and nothing more within 1.5 s."""
    events = await collect(ws, count, timeout=20)
    with pytest.raises(TimeoutError):
        extra = await collect(ws, 1, timeout=1.5)
        pytest.fail(f"an event more than the {count} expected: {extra}")  # pragma: no cover
    await ws.close()
    check_stream(events)
    return events


def of_type(events: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [e for e in events if e["type"] == kind]
    assert len(found) == 1, (kind, [e["type"] for e in events])
    return found[0]


def since(agent: PjsuaAgent) -> int:
    """Where the agent's event list ends now: wait only for what comes after."""
    return len(agent.events)


async def wait_media_after(
    agent: PjsuaAgent, handle: str, status: str, start: int, timeout: float = 10.0
) -> dict[str, Any]:
    """Like PjsuaAgent.wait_media, but only a media_state event at index >= start (the
    call's first "active" must not satisfy a wait for the one after a retrieve)."""
    return await agent.wait_event(
        lambda e: (
            e["event"] == "media_state"
            and e["call"] == handle
            and bool(e["media"])
            and e["media"][0]["status_name"] == status
        ),
        timeout,
        start=start,
        what=f"media {status} on {handle}",
    )


# ------------------------------------------------------------------------- sipp ---


async def test_rang_then_480_is_a_missed_no_answer(gateway: GatewayProcess) -> None:
    ws = await admin_events(gateway)
    await trunk_to_did(
        gateway,
        str(SCENARIOS / "uas_ring_then_480.xml"),
        str(SCENARIOS / "uac_expect_480.xml"),
        1,
    )
    events = await collect_all(ws, 3)
    assert list(by_call(events).values()) == [["call.offered", "call.delivered", "call.failed"]]
    failed = events[-1]
    assert failed["direction"] == "inbound" and failed["extension"] == "201"
    assert failed["state"] == "failed" and failed["prev_state"] == "delivered"
    assert failed["cause"]["normalized"] == "no_answer"
    assert failed["cause"]["sip_code"] == 480
    assert failed["cause"]["sip_reason"] == "Temporarily Unavailable"
    assert failed["missed"] is True
    assert "answered_at" not in failed and "duration_ms" not in failed
    assert failed["ended_at"] >= failed["created_at"]


async def test_302_is_diverted_then_failed(gateway: GatewayProcess) -> None:
    ws = await admin_events(gateway)
    await trunk_to_did(
        gateway, str(SCENARIOS / "uas_302.xml"), str(SCENARIOS / "uac_expect_302.xml"), 1
    )
    events = await collect_all(ws, 3)
    assert list(by_call(events).values()) == [["call.offered", "call.diverted", "call.failed"]]
    offered, diverted, failed = events
    assert "diversion" not in offered  # the INVITE itself carried no diversion
    # call.diverted: state unchanged (offered: the 302 came before any ringing).
    assert diverted["state"] == "offered" and diverted["prev_state"] == "offered"
    # Documented: reason from the 3xx's Diversion header, `to` = the 3xx Contact; the
    # diverted party is the call's called party (the DID as dialled).
    assert diverted["diversion"] == {
        "reason": DIVERSION_REASON,
        "from": offered["called"]["uri"],
        "to": REDIRECT_CONTACT,
    }
    assert offered["called"]["number_raw"] == DID
    assert failed["state"] == "failed" and failed["prev_state"] == "offered"
    assert failed["cause"]["normalized"] == "diverted"
    assert failed["cause"]["sip_code"] == 302
    assert failed["missed"] is False  # diverted is not missed
    assert failed["diversion"] == diverted["diversion"]


# ------------------------------------------------------------------------ PJSIP ---


async def test_forked_call_is_one_call(gateway: GatewayProcess) -> None:
    ws = await admin_events(gateway)
    async with (
        await phone(gateway, "alice", "203", "udp") as alice,
        await phone(gateway, "desk", "204", "udp") as desk,
        await phone(gateway, "soft", "204", "tcp") as soft,
    ):
        call = await alice.call(f"sip:204@{DOMAIN}")
        on_desk = await desk.wait_incoming(timeout=10)
        on_soft = await soft.wait_incoming(timeout=10)
        await alice.wait_call_state(call, "EARLY", timeout=10)
        await soft.answer(on_soft["call"], 200)
        await alice.wait_call_state(call, "CONFIRMED", timeout=10)
        cancelled = await desk.wait_call_state(on_desk["call"], "DISCONNECTED", timeout=10)
        assert cancelled["code"] == 487
        await alice.hangup(call)
        await soft.wait_call_state(on_soft["call"], "DISCONNECTED", timeout=10)
        await alice.wait_call_state(call, "DISCONNECTED", timeout=10)
    events = await collect_all(ws, 4)
    assert list(by_call(events).values()) == [ANSWERED]
    for event in events:
        assert event["direction"] == "internal" and event["extension"] == "204"
        assert event["calling"]["number_raw"] == "203"
        assert event["called"]["number_raw"] == "204"
    established = of_type(events, "call.established")
    # The phone that answered: soft, over TCP.
    assert established["device"]["source"].startswith("tcp:"), established["device"]
    cleared = of_type(events, "call.cleared")
    assert cleared["cause"]["normalized"] == "normal" and cleared["missed"] is False


async def test_hold_and_retrieve(gateway: GatewayProcess) -> None:
    ws = await admin_events(gateway)
    async with (
        await phone(gateway, "alice", "203", "udp") as alice,
        await phone(gateway, "bob", "204", "udp") as bob,
    ):
        call = await alice.call(f"sip:204@{DOMAIN}")
        incoming = await bob.wait_incoming(timeout=10)
        await bob.answer(incoming["call"], 200)
        await alice.wait_call_state(call, "CONFIRMED", timeout=10)
        await alice.wait_media(call, "active", timeout=10)
        mark = since(alice)
        await alice.hold(call)
        await wait_media_after(alice, call, "local_hold", mark)
        mark = since(alice)
        await alice.unhold(call)
        await wait_media_after(alice, call, "active", mark)
        await alice.hangup(call)
        await bob.wait_call_state(incoming["call"], "DISCONNECTED", timeout=10)
        await alice.wait_call_state(call, "DISCONNECTED", timeout=10)
    events = await collect_all(ws, 6)
    assert list(by_call(events).values()) == [
        [
            "call.offered",
            "call.delivered",
            "call.established",
            "call.held",
            "call.retrieved",
            "call.cleared",
        ]
    ]
    held = of_type(events, "call.held")
    assert held["state"] == "held" and held["prev_state"] == "established"
    retrieved = of_type(events, "call.retrieved")
    assert retrieved["state"] == "established" and retrieved["prev_state"] == "held"
    cleared = of_type(events, "call.cleared")
    assert cleared["prev_state"] == "established"
    assert cleared["cause"]["normalized"] == "normal"


async def test_blind_transfer_links_the_new_call(gateway: GatewayProcess) -> None:
    ws = await admin_events(gateway)
    async with (
        await phone(gateway, "alice", "203", "udp") as alice,
        await phone(gateway, "bob", "204", "udp") as bob,
        await phone(gateway, "carol", "205", "udp") as carol,
    ):
        first = await alice.call(f"sip:204@{DOMAIN}")
        at_bob = await bob.wait_incoming(timeout=10)
        await bob.answer(at_bob["call"], 200)
        await alice.wait_call_state(first, "CONFIRMED", timeout=10)
        await bob.wait_call_state(at_bob["call"], "CONFIRMED", timeout=10)

        # bob sends REFER; alice's agent accepts it and calls carol by itself.
        await bob.transfer(at_bob["call"], f"sip:205@{DOMAIN}")
        refer = await alice.wait_transfer_request(timeout=10)
        assert refer["call"] == first and "205" in refer["uri"]
        second = refer["new_call"]
        at_carol = await carol.wait_incoming(timeout=10)
        await carol.answer(at_carol["call"], 200)
        await alice.wait_call_state(second, "CONFIRMED", timeout=10)
        # alice reports the outcome to bob in a NOTIFY: 200 when carol answered.
        status = await bob.wait_transfer_status(at_bob["call"], final=True, timeout=10)
        assert status["code"] == 200, status

        # The transferred call ends: bob hangs up (BYE) unless his phone already did.
        if not any(e["state"] == "DISCONNECTED" for e in bob.call_states(at_bob["call"])):
            await bob.hangup(at_bob["call"])
        await alice.wait_call_state(first, "DISCONNECTED", timeout=10)
        await bob.wait_call_state(at_bob["call"], "DISCONNECTED", timeout=10)
        # Then alice and carol end their call.
        await alice.hangup(second)
        await carol.wait_call_state(at_carol["call"], "DISCONNECTED", timeout=10)
        await alice.wait_call_state(second, "DISCONNECTED", timeout=10)

    events = await collect_all(ws, 9)
    calls = by_call(events)
    first_id = events[0]["call_id"]
    assert calls[first_id] == [
        "call.offered",
        "call.delivered",
        "call.established",
        "call.transferred",
        "call.cleared",
    ]
    (second_id,) = set(calls) - {first_id}
    assert calls[second_id] == ANSWERED

    transferred = of_type([e for e in events if e["call_id"] == first_id], "call.transferred")
    assert transferred["transfer"]["kind"] == "blind"
    assert "205" in transferred["transfer"]["refer_to"]
    assert transferred["state"] == "established"
    first_cleared = [e for e in events if e["call_id"] == first_id][-1]
    assert first_cleared["cause"]["normalized"] == "normal"

    new_call = [e for e in events if e["call_id"] == second_id]
    for event in new_call:
        assert event["parent_call_id"] == first_id
        assert event["conversation_id"] == events[0]["conversation_id"]
        assert event["transfer"] == transferred["transfer"]
        assert event["extension"] == "205" and event["direction"] == "internal"
        assert event["calling"]["number_raw"] == "203"
