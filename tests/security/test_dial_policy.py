"""Click-to-dial's destination policy and auto-answer rule.

Against a real gateway: a premium number is refused with 403 before any SIP is sent (the
trunk is a canary that records every byte; the phone, a real PJSIP agent, never rings),
while an ordinary number rings the phone. An admin dialling from a colleague's phone gets
no auto-answer, and 403 when asking for it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.config.dial_policy import DEFAULT_DENY_PREFIXES, PREMIUM_RANGES, DialPolicy
from tests.integration.conftest import GatewayFactory
from tests.integration.gateway import GatewayPorts, GatewayProcess
from tests.integration.test_click_to_dial import pjsip_phone
from tests.peers.process import PeerError
from tests.security.canary import Canary

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("policy", "number", "allowed"),
    [
        (DialPolicy(), "+31612345678", True),
        (DialPolicy(), "+319001234567", False),
        (DialPolicy(), "+979123456789", False),
        (DialPolicy(), "+881612345678", False),
        (DialPolicy(), "+19005550123", False),
        (DialPolicy(), "112", True),  # short numbers are not E.164: "+" prefixes skip them
        # The longest prefix decides; an allow of a built-in range wins over it.
        (DialPolicy(allow_prefixes=("+319001234567",)), "+319001234567", True),
        (DialPolicy(allow_prefixes=("+319001234567",)), "+319001234568", False),
        (DialPolicy(allow_prefixes=("+31900",)), "+319001", True),
        # Only the Netherlands, and still no NL premium.
        (DialPolicy(("+31",), ("+",)), "+31201234567", True),
        (DialPolicy(("+31",), ("+",)), "+442071234567", False),
        (DialPolicy(("+31",), ("+",)), "+319001234567", False),
        (DialPolicy(deny_prefixes=("+32",)), "+3221234567", False),
        (DialPolicy(deny_prefixes=("18",)), "1888", False),
    ],
)
def test_the_longest_prefix_decides(policy: DialPolicy, number: str, allowed: bool) -> None:
    assert (policy.refusal(number) is None) is allowed


def test_the_built_in_ranges_are_documented() -> None:
    docs = (REPO / "docs" / "click-to-dial.md").read_text()
    for prefix in DEFAULT_DENY_PREFIXES:
        assert f"`{prefix}`" in docs, f"{prefix} ({PREMIUM_RANGES[prefix]}) not documented"


async def dial(gw: GatewayProcess, token: str, **body: Any) -> tuple[int, dict[str, Any]]:
    status, raw = await gw.http("POST", "/v1/calls", body, token=token)
    return status, json.loads(raw or b"{}")


async def test_a_premium_destination_is_refused_before_any_sip(
    gateway_factory: GatewayFactory,
) -> None:
    async with Canary() as trunk:
        gateway = await gateway_factory(ports=GatewayPorts(trunk=trunk.port))
        token = await gateway.login("204")
        async with await pjsip_phone(gateway, "204") as phone:
            for premium in ("0900 1234567", "+979 123456789", "0044 909 879 0710"):
                status, answer = await dial(gateway, token, to=premium)
                assert status == 403, answer
                assert answer["detail"].startswith("to: +") and "denied range" in answer["detail"]
            # Nothing rang, nothing reached the trunk: the phone would have rung first.
            with pytest.raises(PeerError):
                await phone.wait_incoming(timeout=1.5)
            assert trunk.received == []
            assert 'sipgw_dial_requests_total{outcome="denied"} 3.0' in await gateway.metrics()
            # The same set-up does send SIP for an ordinary number: the test can fail.
            status, accepted = await dial(gateway, token, to="06 1234 5678")
            assert status == 202, accepted
            await phone.wait_incoming(timeout=10)
            await gateway.http("DELETE", f"/v1/calls/{accepted['id']}", token=token)


async def test_a_tenant_policy_denies_and_allows_by_prefix(
    gateway_factory: GatewayFactory,
) -> None:
    async with Canary() as trunk:
        # Only NL numbers; one premium number of the tenant's own helpdesk is allowed.
        policy = (
            '\n[tenants.dial]\nallow_prefixes = ["+31", "+319001234567"]\ndeny_prefixes = ["+"]\n'
        )
        gateway = await gateway_factory(ports=GatewayPorts(trunk=trunk.port), recognition=policy)
        token = await gateway.login("204")
        async with await pjsip_phone(gateway, "204") as phone:
            status, answer = await dial(gateway, token, to="+44 20 7123 4567")
            assert status == 403 and "range this tenant denies (+)" in answer["detail"]
            status, answer = await dial(gateway, token, to="0900 1234568")
            assert status == 403 and "(+31900: NL premium rate" in answer["detail"]
            with pytest.raises(PeerError):
                await phone.wait_incoming(timeout=1.0)
            assert trunk.received == []
            status, accepted = await dial(gateway, token, to="0900 1234567")
            assert status == 202, accepted
            await phone.wait_incoming(timeout=10)
            await gateway.http("DELETE", f"/v1/calls/{accepted['id']}", token=token)


async def test_auto_answer_only_on_the_requesters_own_phone(gateway: GatewayProcess) -> None:
    admin = await gateway.login("203")
    async with await pjsip_phone(gateway, "204") as phone:
        # Asked for on a colleague's phone: refused, and the phone does not ring.
        asked = {"to": "0612345678", "from": "204", "auto_answer": True}
        status, answer = await dial(gateway, admin, **asked)
        assert status == 403 and answer["detail"].startswith("auto_answer: only on your own")
        with pytest.raises(PeerError):
            await phone.wait_incoming(timeout=1.0)
        # Not asked for: the colleague's phone rings, without any auto-answer header.
        status, started = await dial(gateway, admin, to="0612345678", **{"from": "204"})
        assert status == 202 and started["auto_answer"] == "off"
        incoming = await phone.wait_incoming(timeout=10)
        headers = incoming["headers"]
        assert "answer-mode" not in headers and "call-info" not in headers
        assert "alert-info" not in headers
        await gateway.http("DELETE", f"/v1/calls/{started['id']}", token=admin)
        # The phone's own user still gets auto-answer (the test can fail).
        own = await gateway.login("204")
        status, mine = await dial(gateway, own, to="0612345678")
        assert status == 202 and mine["auto_answer"] == "answer-mode"
        incoming = await phone.wait_incoming(timeout=10)
        assert incoming["headers"]["answer-mode"] == ["Auto"]
        await gateway.http("DELETE", f"/v1/calls/{mine['id']}", token=own)
