"""Delivery guarantees through the real API: tenant isolation, and a subscriber that
stops reading is cut off with its cursor, resumes, and loses nothing, while a prompt
subscriber beside it gets every event and the gateway keeps answering SIP."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import connect

from gateway.bus.streams import EventBus
from gateway.stats import Counters
from tests.integration.conftest import GatewayFactory
from tests.integration.gateway import GatewayProcess
from tests.integration.test_events import by_call, collect, subscribe
from tests.integration.test_sipp_calls import trunk_to_did
from tests.peers.sipp import run_sipp, scenario

pytestmark = [pytest.mark.peers]


async def test_tenants_never_see_each_other(gateway: GatewayProcess) -> None:
    globex = await gateway.login("301", tenant="globex")
    acme = await gateway.login("203")
    # A filter naming another tenant's extension is refused, exactly like a forbidden one.
    for query in ("?extension=201", "?extension=999"):
        with pytest.raises(websockets.InvalidStatus) as refused:
            await subscribe(gateway, globex, query)
        assert refused.value.response.status_code == 403
        assert b"forbidden" in refused.value.response.body
    on_globex = await subscribe(gateway, globex)
    on_acme = await subscribe(gateway, acme)
    await trunk_to_did(gateway, "uas", "uac", 1)
    assert len(by_call(await collect(on_acme, 4))) == 1
    with pytest.raises(TimeoutError):
        await collect(on_globex, 1, timeout=1.5)
    await on_globex.close()
    await on_acme.close()
    # Another tenant's login cannot be had with this tenant's name either.
    status, _ = await gateway.http(
        "POST",
        "/v1/auth/login",
        {"tenant": "globex", "username": "203", "password": "Api-203-secret!"},
    )
    assert status == 401


@dataclass
class FakeEvent:
    """What another gateway node would publish: the bus only needs tenant and to_dict."""

    tenant: str
    number: int
    seq: str | None = None
    padding: str = field(default="x" * 2000)

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": 1,
            "type": "call.offered",
            "tenant": self.tenant,
            "n": self.number,
            "extension": "201",
            "pad": self.padding,
        }


async def test_a_subscriber_that_stops_reading_is_cut_off_and_resumes_without_loss(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(subscriber_queue=50)
    token = await gw.login("203")
    url = f"ws://127.0.0.1:{gw.ports.http}/v1/events"
    headers = {"Authorization": f"Bearer {token}"}
    protocols = [websockets.Subprotocol("sipgw.json.v1")]
    # max_queue=1: the client stops reading its socket after one unread frame.
    slow = await connect(
        url, subprotocols=protocols, additional_headers=headers, max_queue=1, open_timeout=5
    )
    assert json.loads(await slow.recv())["type"] == "sipgw.ready"
    # A prompt subscriber beside it: the hub writes to both from one loop, so a full
    # buffer next door must neither hold its events back nor cut it off.
    prompt = await subscribe(gw, token)
    prompt_got = asyncio.create_task(collect(prompt, 20_000, timeout=60))

    # Another node floods the tenant's stream: 20 000 events of 2 kB.
    total = 20_000
    # Its queue holds the whole burst: the test is about the subscriber, not about the
    # publisher's own (tested) bound on events waiting for Redis.
    publisher = EventBus(gw.redis_url, counters=Counters(), max_queue=total)
    await publisher.start()
    for n in range(total):
        assert publisher.publish(FakeEvent("acme", n))
        if n % 500 == 0:
            await asyncio.sleep(0)  # let the writer drain the bounded queue
    # Meanwhile the gateway keeps answering SIP.
    probe = await run_sipp(
        ["-sf", scenario("options_uac"), f"127.0.0.1:{gw.ports.sip}", "-m", "20", "-r", "20"],
        timeout=20,
        keys={"domain": "127.0.0.1"},
    )
    probe.check(calls=20)
    assert await publisher.stop() == 0
    assert publisher.published == total

    # Now the slow client reads what it was sent: events, then the overflow notice.
    seen: list[int] = []
    last_seq = None
    async with asyncio.timeout(30):
        try:
            while True:
                message = json.loads(await slow.recv())
                if message["type"] == "sipgw.overflow":
                    last_seq = message["last_seq"]
                elif not message["type"].startswith("sipgw."):
                    seen.append(message["n"])
                    last_seq = message["seq"]
        except websockets.ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == 4008
            assert closed.rcvd.reason == f"overflow since={last_seq}"
    assert 0 < len(seen) < total, "the slow subscriber was not cut off"
    assert [e["n"] for e in await prompt_got] == list(range(total))
    await prompt.close()

    # It resumes from its cursor and gets exactly the rest, in order.
    fast = await subscribe(gw, token, f"?since={last_seq}")
    rest = await collect(fast, total - len(seen), timeout=60)
    await fast.close()
    assert seen + [e["n"] for e in rest] == list(range(total))
