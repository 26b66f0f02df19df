"""Real calls for the browser tests: a PJSIP phone registered as an extension, sipp as
the carrier's trunk calling the tenant's DID, contacts written through the sync API."""

from __future__ import annotations

import json
from typing import Any

from tests.integration.gateway import DID, DOMAIN, PASSWORDS, GatewayProcess
from tests.peers.pjsua import PjsuaAgent
from tests.peers.sipp import SippProcess, scenario, start_sipp

KNOWN_CALLER = "+31612345678"
UNKNOWN_CALLER = "+31201234999"


async def phone(gw: GatewayProcess, user: str, **settings: Any) -> PjsuaAgent:
    """A PJSIP phone registered as `user`; it rings on an incoming call until answered
    (unless `settings` say otherwise)."""
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


async def trunk_call(
    gw: GatewayProcess,
    caller: str = KNOWN_CALLER,
    *,
    scenario_name: str = "uac_expect_bye",
    hold_ms: int | None = None,
) -> SippProcess:
    """One call from the carrier's trunk to the DID (extension 201), in the background.
    `uac_expect_bye`: the callee hangs up; `uac_cancel`: the caller gives up after
    `hold_ms` of ringing (a missed call)."""
    args = ["-sf", scenario(scenario_name), f"127.0.0.1:{gw.ports.sip}", "-s", DID, "-m", "1"]
    if hold_ms is not None:
        args += ["-d", str(hold_ms)]
    return await start_sipp(
        args, local_port=gw.ports.trunk_src, timeout=60, name="trunk-uac",
        keys={"domain": "127.0.0.1", "caller": caller},
    )  # fmt: skip


async def put_contact(gw: GatewayProcess, number: str, **fields: str) -> None:
    admin = await gw.login("203")
    body = {"source": "crm", "upserts": [{"number": number, "fields": fields}]}
    status, raw = await gw.http("POST", "/v1/contacts:batch", body, token=admin)
    assert status == 200, raw
    assert json.loads(raw)["upserted"] == 1
