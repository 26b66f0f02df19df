"""The recognized caller's name on the callee's own phone (issue #15 part 2), end to end:
a contact written through the sync API, a sipp carrier calling a DID, a real PJSIP phone
and a real linphonec ringing, the name on what each phone reports as the caller, and the
call.offered event saying what was shown. Redis is real."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.proxy.caller_display import quoted_display
from tests.integration.conftest import GatewayFactory
from tests.integration.gateway import DOMAIN, PASSWORDS, RECOGNITION, GatewayProcess
from tests.integration.test_events import check_stream, collect, subscribe
from tests.integration.test_recognition import put_contacts
from tests.peers.linphone import Linphone
from tests.peers.pjsua import PjsuaAgent
from tests.peers.sipp import run_sipp, scenario

pytestmark = [pytest.mark.peers, pytest.mark.asyncio]

CALLER = "+31612345678"
STRANGER = "+31698765432"
# What a CRM may hold: quotes, a backslash, letters beyond ASCII.
NAME = 'Zoë "Z" O\\Brien-Ångström'
PJSIP_DID, LINPHONE_DID = "+31201234503", "+31201234505"

SHOWN = f"""{RECOGNITION}
[tenants.caller_display]
enabled = true
headers = ["From"]
wait_ms = 150

[[tenants.dids]]
number = "{PJSIP_DID}"
extension = "203"

[[tenants.dids]]
number = "{LINPHONE_DID}"
extension = "205"
"""


@pytest.fixture
async def gw(gateway_factory: GatewayFactory) -> GatewayProcess:
    return await gateway_factory(recognition=SHOWN)


async def carrier_calls(gw: GatewayProcess, did: str, caller: str) -> None:
    """One call from the trunk's address to ``did``, answered by the phone, 300 ms long."""
    result = await run_sipp(
        ["-sf", scenario("uac"), f"127.0.0.1:{gw.ports.sip}", "-s", did, "-m", "1",
         "-d", "300", "-t", "u1"],
        local_port=gw.ports.trunk_src,
        timeout=30,
        keys={"domain": "127.0.0.1", "caller": caller},
    )  # fmt: skip
    result.check(calls=1)


def display_of(name_addr: str) -> str | None:
    """The display-name a phone reports ("Name" <sip:…>), quoted-pairs undone."""
    text = name_addr.strip()
    if not text.startswith('"'):
        return None
    out, i = [], 1
    while i < len(text) and text[i] != '"':
        if text[i] == "\\" and i + 1 < len(text):
            i += 1
        out.append(text[i])
        i += 1
    return "".join(out)


async def offered(ws: Any, count: int) -> list[dict[str, Any]]:
    """The first ``count`` call.offered events (every event before them checked)."""
    events: list[dict[str, Any]] = []
    while sum(e["type"] == "call.offered" for e in events) < count:
        events += await collect(ws, 1)
    check_stream(events)
    return [e for e in events if e["type"] == "call.offered"]


async def test_a_pjsip_phone_shows_the_recognized_name(gw: GatewayProcess) -> None:
    admin = await gw.login("203")
    status, _ = await put_contacts(gw, admin, [{"number": CALLER, "fields": {"name": NAME}}])
    assert status == 200
    ws = await subscribe(gw, admin)
    agent = await PjsuaAgent.start("pjsua-203", transport="udp")
    try:
        assert await agent.register(
            f"sip:127.0.0.1:{gw.ports.sip}", "203", DOMAIN, PASSWORDS["203"]
        ) == 200, agent.describe()  # fmt: skip
        agent.auto_answer = 200
        # First call: the node's cache does not know the caller; Redis answers within
        # the tenant's 150 ms. Second call: the cache answers at once.
        await carrier_calls(gw, PJSIP_DID, CALLER)
        first = await agent.wait_incoming()
        await carrier_calls(gw, PJSIP_DID, CALLER)
        second = await agent.wait_incoming()
        # A caller who is no contact: the phone sees what the carrier sent.
        await carrier_calls(gw, PJSIP_DID, STRANGER)
        third = await agent.wait_incoming()
    finally:
        await agent.stop()
    for call in (first, second):
        assert display_of(call["from"]) == NAME, call["from"]
        written = f"{quoted_display(NAME)} <sip:{CALLER}@127.0.0.1>;tag="
        assert call["headers"]["from"][0].startswith(written), call["headers"]["from"]
    assert third["headers"]["from"][0].startswith(f'"{STRANGER}" <sip:{STRANGER}@127.0.0.1>')
    events = await offered(ws, 3)
    await ws.close()
    shown = [e.get("caller_display") for e in events]
    assert shown == [
        {"name": NAME, "answered_by": "redis", "headers": ["From"], "source": "crm"},
        {"name": NAME, "answered_by": "cache", "headers": ["From"], "source": "crm"},
        None,
    ]


async def test_linphone_shows_the_recognized_name(gw: GatewayProcess) -> None:
    admin = await gw.login("203")
    status, _ = await put_contacts(gw, admin, [{"number": CALLER, "fields": {"name": NAME}}])
    assert status == 200
    async with await Linphone.start("linphone-205", auto_answer=True) as phone:
        assert await phone.register(
            f"sip:127.0.0.1:{gw.ports.sip}", "205", DOMAIN, PASSWORDS["205"]
        ) == 200  # fmt: skip
        await carrier_calls(gw, LINPHONE_DID, CALLER)
        incoming = await phone.wait_incoming()
    assert display_of(incoming["from"]) == NAME, incoming["from"]
