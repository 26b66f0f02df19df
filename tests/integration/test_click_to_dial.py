"""Click-to-dial end to end: `POST /v1/calls` (and `sipgw dial`) against a real sipgw,
real phones (PJSIP in a subprocess, linphonec) registered to it, sipp as the trunk's far
end, the call events read by a WebSocket subscriber."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.integration.conftest import GatewayFactory
from tests.integration.gateway import DOMAIN, PASSWORDS, REPO, GatewayProcess
from tests.integration.test_events import check_stream, collect, subscribe
from tests.peers.linphone import Linphone
from tests.peers.pjsua import PjsuaAgent
from tests.peers.sipp import scenario, start_sipp

pytestmark = [pytest.mark.peers, pytest.mark.asyncio]

DESTINATION = "+31612345678"


async def pjsip_phone(gw: GatewayProcess, user: str, **settings: Any) -> PjsuaAgent:
    agent = await PjsuaAgent.start(f"pjsua-{user}", transport="udp")
    try:
        status = await agent.register(
            f"sip:127.0.0.1:{gw.ports.sip}", user, DOMAIN, PASSWORDS[user]
        )
        assert status == 200, agent.describe()
        if settings:
            await agent.configure(**settings)
    except BaseException:
        await agent.stop()
        raise
    return agent


async def dial(gw: GatewayProcess, token: str, **body: Any) -> tuple[int, dict[str, Any]]:
    status, raw = await gw.http("POST", "/v1/calls", body, token=token)
    return status, json.loads(raw or b"{}")


async def state_of(gw: GatewayProcess, token: str, dial_id: str) -> dict[str, Any]:
    status, raw = await gw.http("GET", f"/v1/calls/{dial_id}", token=token)
    assert status == 200, raw
    answer: dict[str, Any] = json.loads(raw)
    return answer


async def wait_state(
    gw: GatewayProcess, token: str, dial_id: str, *states: str, timeout: float = 20
) -> dict[str, Any]:
    # Polled: the API is what a CRM would poll too (the events are checked separately).
    async with asyncio.timeout(timeout):
        while True:
            last = await state_of(gw, token, dial_id)
            if last["state"] in states:
                return last
            await asyncio.sleep(0.05)


async def events_until(ws: Any, done: Any, timeout: float = 30) -> list[dict[str, Any]]:
    """Events until `done(events)` is true."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while not done(events):
            events += await collect(ws, 1, timeout=timeout)
    return events


def flows(events: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for event in events:
        out.setdefault(event["call_id"], []).append(event["type"])
    return out


def cleared(count: int) -> Any:
    return lambda events: sum(e["type"] in ("call.cleared", "call.failed") for e in events) >= count


async def test_pjsip_phone_answers_is_referred_and_reaches_the_destination(
    gateway: GatewayProcess,
) -> None:
    token = await gateway.login("204")
    ws = await subscribe(gateway, token)
    async with (
        await pjsip_phone(gateway, "204", honor_auto_answer_headers=True) as phone,
        await start_sipp(
            ["-sf", scenario("uas"), "-m", "1"], local_port=gateway.ports.trunk, name="trunk-uas"
        ) as trunk,
    ):
        status, accepted = await dial(gateway, token, to="06 1234 5678", request_id="crm-1")
        assert status == 202, accepted
        assert accepted["state"] == "calling_phone" and accepted["mode"] == "refer"
        assert accepted["auto_answer"] == "answer-mode"
        assert accepted["to"] == {
            "raw": "06 1234 5678",
            "dialled": DESTINATION,
            "e164": DESTINATION,
        }
        assert accepted["links"]["self"] == f"/v1/calls/{accepted['id']}"
        incoming = await phone.wait_incoming(timeout=10)
        assert incoming["headers"]["answer-mode"] == ["Auto"]
        assert incoming["from"].startswith('"Dial: 06 1234 5678"')
        refer = await phone.wait_transfer_request(timeout=10)
        assert refer["uri"] == f"<sip:{DESTINATION}@127.0.0.1:{gateway.ports.sip}>"
        # The phone's own call to the destination went through sipgw to the trunk.
        await phone.wait_call_state(refer["new_call"], "CONFIRMED", timeout=10)
        done = await wait_state(gateway, token, accepted["id"], "connected")
        assert done["finished"] and done["cause"]["normalized"] == "normal"
        await phone.wait_call_state(incoming["call"], "DISCONNECTED", timeout=10)
        await phone.hangup(refer["new_call"])
        (await trunk.wait(timeout=20)).check(calls=1)
        events = await events_until(ws, cleared(2))
    await ws.close()
    metrics = await gateway.metrics()
    assert 'sipgw_dial_requests_total{outcome="accepted"} 1.0' in metrics
    assert 'sipgw_dial_requests_total{outcome="connected"} 1.0' in metrics
    assert "sipgw_dial_requests_active 0.0" in metrics
    check_stream(events)
    assert events[0]["type"] == "call.originated"
    assert events[0]["originate"] == {
        "request_id": "crm-1", "requested_by": "204", "auto_answer": "answer-mode",
    }  # fmt: skip
    assert {e["conversation_id"] for e in events} == {accepted["conversation_id"]}
    assert {e["originate"]["request_id"] for e in events} == {"crm-1"}
    legs = flows(events)
    phone_leg = legs.pop(accepted["phone_call_id"])
    assert phone_leg[0] == "call.originated" and phone_leg[-1] == "call.cleared"
    assert "call.established" in phone_leg and "call.transferred" in phone_leg
    ((dest_id, dest_leg),) = legs.items()
    assert dest_leg == ["call.offered", "call.delivered", "call.established", "call.cleared"]
    dest_offered = next(e for e in events if e["call_id"] == dest_id)
    assert dest_offered["parent_call_id"] == accepted["phone_call_id"]
    assert dest_offered["called"]["number_e164"] == DESTINATION
    assert dest_offered["extension"] == "204" and dest_offered["direction"] == "outbound"
    # The destination's call starts after the phone answered the gateway.
    order = [e["type"] for e in events]
    first_dest = next(i for i, e in enumerate(events) if e["call_id"] == dest_id)
    assert order.index("call.established") < first_dest


async def test_linphone_answers_by_its_own_setting_and_follows_the_refer(
    gateway: GatewayProcess,
) -> None:
    token = await gateway.login("205")
    ws = await subscribe(gateway, token)
    phone = await Linphone.start("linphone-205", auto_answer=True)
    async with phone:
        registered = await phone.register(
            f"sip:127.0.0.1:{gateway.ports.sip}", "205", DOMAIN, PASSWORDS["205"]
        )
        assert registered == 200
        async with await start_sipp(
            ["-sf", scenario("uas"), "-m", "1"], local_port=gateway.ports.trunk, name="trunk-uas"
        ) as trunk:
            # Through the CLI this time, as a user at a terminal would.
            env = {**os.environ, "SIPGW_TOKEN": token}
            command = [
                sys.executable, "-m", "gateway.cli", "dial", "205", "0612345678",
                "--url", gateway.http_url, "--request-id", "cli-1", "--timeout", "30",
            ]  # fmt: skip
            done = await asyncio.to_thread(
                subprocess.run, command, env=env, cwd=REPO, capture_output=True, text=True,
                timeout=60, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr
            lines = done.stdout.splitlines()
            assert "calling_phone (refer, auto-answer none)" in lines[0]
            assert lines[-1].endswith("connected: Connected")
            # linphone now has the call to the destination; hang it up there.
            first = await phone.wait_incoming(timeout=5)
            new = await phone._wait(
                lambda e: e.state == "CONFIRMED" and e.call != first["call"], 10, start=0,
                what="linphone's call to the destination",
            )  # fmt: skip
            await phone.terminate(new.call)
            (await trunk.wait(timeout=20)).check(calls=1)
        events = await events_until(ws, cleared(2))
    await ws.close()
    check_stream(events)
    assert events[0]["type"] == "call.originated"
    assert events[0]["originate"]["auto_answer"] == "none"
    assert {e["conversation_id"] for e in events} == {events[0]["conversation_id"]}
    assert {e["originate"]["request_id"] for e in events} == {"cli-1"}
    legs = flows(events)
    assert len(legs) == 2
    dest_leg = next(flow for call, flow in legs.items() if call != events[0]["call_id"])
    assert dest_leg == ["call.offered", "call.delivered", "call.established", "call.cleared"]


async def test_3pcc_bridges_a_phone_that_must_not_get_refer(gateway: GatewayProcess) -> None:
    token = await gateway.login("207")
    ws = await subscribe(gateway, token)
    async with (
        await pjsip_phone(gateway, "207", honor_auto_answer_headers=True) as phone,
        await start_sipp(
            ["-sf", scenario("uas"), "-m", "1"], local_port=gateway.ports.trunk, name="trunk-uas"
        ) as trunk,
    ):
        status, accepted = await dial(gateway, token, to="+31 6 12345678")
        assert status == 202 and accepted["mode"] == "3pcc"
        assert accepted["auto_answer"] == "call-info"
        incoming = await phone.wait_incoming(timeout=10)
        assert incoming["headers"]["call-info"][0].endswith(";answer-after=0")
        await wait_state(gateway, token, accepted["id"], "connected")
        # The phone's media now flows to the destination: the ACK carried sipp's answer.
        await phone.wait_media(incoming["call"], "active", timeout=10)
        await phone.hangup(incoming["call"])
        (await trunk.wait(timeout=20)).check(calls=1)
        ended = await wait_state(gateway, token, accepted["id"], "ended")
        assert ended["cause"]["message"] == "The phone hung up"
        assert not [e for e in phone.events if e["event"] == "transfer_request"]
        assert not [
            e for e in phone.events if e["event"] == "rx_request" and e["method"] == "REFER"
        ]
        events = await events_until(ws, cleared(2))
    await ws.close()
    check_stream(events)
    legs = flows(events)
    phone_leg = legs.pop(accepted["phone_call_id"])
    assert phone_leg == ["call.originated", "call.offered", "call.established", "call.cleared"]
    ((dest_id, dest_leg),) = legs.items()
    assert dest_leg == ["call.offered", "call.delivered", "call.established", "call.cleared"]
    assert {e["conversation_id"] for e in events} == {accepted["conversation_id"]}
    dest_offered = next(e for e in events if e["call_id"] == dest_id)
    assert dest_offered["parent_call_id"] == accepted["phone_call_id"]


async def test_phone_rejects(gateway: GatewayProcess) -> None:
    token = await gateway.login("204")
    ws = await subscribe(gateway, token)
    async with await pjsip_phone(gateway, "204", auto_answer=486):
        status, accepted = await dial(gateway, token, to="0612345678")
        assert status == 202
        failed = await wait_state(gateway, token, accepted["id"], "failed")
        events = await events_until(ws, cleared(1))
    await ws.close()
    assert failed["cause"] == {
        "normalized": "busy",
        "message": "The phone is busy",
        "sip_code": 486,
    }
    assert [e["type"] for e in events] == ["call.originated", "call.offered", "call.failed"]
    assert events[-1]["cause"]["normalized"] == "busy"


async def test_phone_never_answers(gateway_factory: GatewayFactory) -> None:
    gateway = await gateway_factory(extra="[dial]\nring_timeout = 2")
    token = await gateway.login("204")
    ws = await subscribe(gateway, token)
    async with await pjsip_phone(gateway, "204") as phone:
        status, accepted = await dial(gateway, token, to="0612345678")
        assert status == 202
        incoming = await phone.wait_incoming(timeout=10)
        failed = await wait_state(gateway, token, accepted["id"], "failed", timeout=15)
        await phone.wait_call_state(incoming["call"], "DISCONNECTED", timeout=10)
        events = await events_until(ws, cleared(1))
    await ws.close()
    assert failed["cause"]["normalized"] == "no_answer"
    assert failed["cause"]["message"] == "The phone did not answer"
    last = events[-1]
    assert last["type"] == "call.failed" and last["cause"]["normalized"] == "no_answer"
    assert last["cause"]["sip_reason"] == "Phone did not answer"


async def test_destination_busy(gateway: GatewayProcess) -> None:
    token = await gateway.login("204")
    ws = await subscribe(gateway, token)
    async with (
        await pjsip_phone(gateway, "204", honor_auto_answer_headers=True),
        await start_sipp(
            ["-sf", scenario("uas_busy"), "-m", "1"], local_port=gateway.ports.trunk, name="busy"
        ),
    ):
        status, accepted = await dial(gateway, token, to="0612345678")
        assert status == 202
        failed = await wait_state(gateway, token, accepted["id"], "failed")
        events = await events_until(ws, cleared(2))
    await ws.close()
    assert failed["cause"] == {
        "normalized": "busy", "message": "The destination is busy", "sip_code": 486,
    }  # fmt: skip
    dest_failed = [e for e in events if e["type"] == "call.failed"]
    assert len(dest_failed) == 1 and dest_failed[0]["cause"]["normalized"] == "busy"
    assert dest_failed[0]["call_id"] != accepted["phone_call_id"]
    assert {e["conversation_id"] for e in events} == {accepted["conversation_id"]}


async def test_cancel_while_ringing(gateway: GatewayProcess) -> None:
    token = await gateway.login("204")
    async with await pjsip_phone(gateway, "204") as phone:
        status, accepted = await dial(gateway, token, to="0612345678")
        incoming = await phone.wait_incoming(timeout=10)
        await wait_state(gateway, token, accepted["id"], "phone_ringing")
        status, raw = await gateway.http("DELETE", f"/v1/calls/{accepted['id']}", token=token)
        assert status == 200 and json.loads(raw)["state"] == "cancelled"
        ended = await phone.wait_call_state(incoming["call"], "DISCONNECTED", timeout=10)
        assert ended["code"] == 487
        status, raw = await gateway.http("DELETE", f"/v1/calls/{accepted['id']}", token=token)
        assert status == 409 and "already cancelled" in json.loads(raw)["detail"]


async def test_duplicate_request_id_starts_one_call(gateway: GatewayProcess) -> None:
    token = await gateway.login("204")
    async with await pjsip_phone(gateway, "204") as phone:
        first = await dial(gateway, token, to="0612345678", request_id="same-key")
        second = await dial(gateway, token, to="0612345678", request_id="same-key")
        assert first[0] == second[0] == 202 and first[1]["id"] == second[1]["id"]
        other = await dial(gateway, token, to="0612345679", request_id="same-key")
        assert other[0] == 409 and other[1]["detail"].startswith("request_id:")
        await phone.wait_incoming(timeout=10)
        await wait_state(gateway, token, first[1]["id"], "phone_ringing")
        incoming = [e for e in phone.events if e["event"] == "incoming"]
        assert len(incoming) == 1
        await gateway.http("DELETE", f"/v1/calls/{first[1]['id']}", token=token)


async def test_refusals(gateway_factory: GatewayFactory) -> None:
    gateway = await gateway_factory(extra="[dial]\nburst = 2\nrate_per_minute = 1")
    token = await gateway.login("204")
    admin = await gateway.login("203")
    globex = await gateway.login("301", tenant="globex")
    # Not registered: 409 with a message.
    status, answer = await dial(gateway, token, to="0612345678")
    assert status == 409 and "no registered phone" in answer["detail"]
    async with await pjsip_phone(gateway, "204"):
        # Numbers that cannot be dialled name the field.
        for bad in ("not a number", "+999", "anonymous"):
            status, answer = await dial(gateway, admin, to=bad, **{"from": "204"})
            assert status == 422 and answer["detail"].startswith("to:"), (bad, answer)
        status, answer = await dial(gateway, token, to="0612345678", auto_answer="yes")
        assert status == 422 and answer["detail"].startswith("auto_answer:")
        # Another user's extension: 403. An admin may.
        status, answer = await dial(
            gateway, await gateway.login("205"), to="0612345678", **{"from": "204"}
        )
        assert status == 403 and "own extension" in answer["detail"]
        status, started = await dial(gateway, admin, to="0612345678", **{"from": "204"})
        assert status == 202 and started["requested_by"] == "203"
        # Another tenant sees nothing of it.
        for method in ("GET", "DELETE"):
            status, raw = await gateway.http(method, f"/v1/calls/{started['id']}", token=globex)
            assert status == 404 and json.loads(raw)["detail"] == "no such dial request"
        # Globex has no 204: the answer speaks of its own tenant only.
        status, answer = await dial(gateway, globex, to="0612345678", **{"from": "204"})
        assert (status, answer) == (422, {"detail": "from: no extension 204 in this tenant"})
        status, raw = await gateway.http("POST", "/v1/calls", {"to": "0612345678"})
        assert status == 401
        # The rate limit: burst 2 per user, then 429 with Retry-After.
        await gateway.http("DELETE", f"/v1/calls/{started['id']}", token=admin)
        codes = [(await dial(gateway, token, to="0612345678"))[0] for _ in range(3)]
        assert codes == [202, 202, 429], codes
    # The contract for CRM integrators: documented, with examples.
    status, raw = await gateway.http("GET", "/openapi.json")
    paths = json.loads(raw)["paths"]
    post = paths["/v1/calls"]["post"]
    assert post["requestBody"]["content"]["application/json"]["example"]["to"]
    assert {"202", "403", "409", "422", "429"} <= set(post["responses"])
    assert set(paths["/v1/calls/{dial_id}"]) == {"get", "delete"}
