"""A contact's name is untrusted text that the gateway writes into an INVITE (issue #15
part 2: the caller's name on the callee's phone).

What an attacker gains: whoever can write contacts (a CRM sync token, a compromised
CRM, a caller who got their name into the CRM) chooses text that the gateway puts into
a SIP header towards a phone. With CR/LF they could end the header and add their own
(an Alert-Info that auto-answers, a Call-Info that opens a URL, a second Contact), or
make the phone parse a different message; with bidi overrides or control sequences
they could make the display read something else. So the name is cleaned and quoted
(gateway/proxy/caller_display.py), and the INVITE grows by at most one quoted name.

Checked here on a real gateway, a real Redis and a real PJSIP phone: the phone gets
exactly one From, none of the injected headers, and a display-name without the
dangerous characters.
"""

from __future__ import annotations

import pytest

from gateway.proxy.caller_display import MAX_DISPLAY_CHARS, clean_display
from tests.integration.conftest import GatewayFactory
from tests.integration.gateway import DOMAIN, PASSWORDS, GatewayProcess
from tests.integration.test_caller_display import (
    CALLER,
    PJSIP_DID,
    SHOWN,
    carrier_calls,
    display_of,
)
from tests.integration.test_recognition import put_contacts
from tests.peers.pjsua import PjsuaAgent

pytestmark = [pytest.mark.peers, pytest.mark.asyncio]

HOSTILE = (
    "Eve\r\nAlert-Info: <http://127.0.0.1/>;info=alert-autoanswer\r\n"
    'Contact: <sip:evil@127.0.0.1>\r\n\r\nINVITE sip:x SIP/2.0\x00\x1b[2J\u202e"\\' + "x" * 300
)


@pytest.fixture
async def gw(gateway_factory: GatewayFactory) -> GatewayProcess:
    return await gateway_factory(recognition=SHOWN)


async def test_a_hostile_contact_name_reaches_the_phone_as_one_clean_display_name(
    gw: GatewayProcess,
) -> None:
    admin = await gw.login("203")
    status, _ = await put_contacts(gw, admin, [{"number": CALLER, "fields": {"name": HOSTILE}}])
    assert status == 200
    agent = await PjsuaAgent.start("pjsua-203", transport="udp")
    try:
        assert await agent.register(
            f"sip:127.0.0.1:{gw.ports.sip}", "203", DOMAIN, PASSWORDS["203"]
        ) == 200, agent.describe()  # fmt: skip
        agent.auto_answer = 200
        await carrier_calls(gw, PJSIP_DID, CALLER)
        call = await agent.wait_incoming()
    finally:
        await agent.stop()
    headers = call["headers"]
    assert "alert-info" not in headers and len(headers["from"]) == 1
    assert all("evil" not in value for value in headers.get("contact", []))
    shown = display_of(call["from"])
    assert shown == clean_display(HOSTILE) and len(shown) == MAX_DISPLAY_CHARS
    assert not any(ch in shown for ch in "\r\n\x00\x1b\u202e")
