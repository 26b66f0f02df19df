"""The relay of click-to-dial cancellations between nodes (runtime/shared_dials.py).

Against a real gateway and its redis-server: a relayed cancellation is carried out only
for the tenant and id it names together, so a message (forged, or from a node with a
bug) that pairs another tenant with a request's id cancels nothing; malformed
messages are ignored. The phone, a real PJSIP agent, keeps ringing throughout."""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from tests.integration.gateway import GatewayProcess
from tests.integration.test_click_to_dial import dial, pjsip_phone, wait_state

pytestmark = [pytest.mark.peers, pytest.mark.asyncio]

OWNER_CHANNEL = "sipgw:dials:{node-a}"


async def next_message(pubsub: PubSub, timeout: float = 5) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is not None:
                answer: dict[str, Any] = json.loads(message["data"])
                return answer


async def test_a_relayed_cancel_naming_another_tenant_cancels_nothing(
    gateway_factory: Any,
) -> None:
    gw: GatewayProcess = await gateway_factory(node="node-a")
    token = await gw.login("204")
    async with (
        await pjsip_phone(gw, "204") as phone,
        Redis.from_url(gw.redis_url) as redis,
        redis.pubsub() as replies,
    ):
        status, accepted = await dial(gw, token, to="0612345678")
        assert status == 202, accepted
        incoming = await phone.wait_incoming(timeout=10)
        await wait_state(gw, token, accepted["id"], "phone_ringing")
        await replies.subscribe("sipgw:dials:{intruder}")

        # Garbage and half-formed messages first: ignored, no answer, no harm.
        for junk in (b"\xff\x00", b"[]", b'{"op": "cancel"}', json.dumps({
            "op": "cancel", "token": "x" * 32, "tenant": "acme", "id": accepted["id"],
            "reply_to": "intruder",
        }).encode()):  # fmt: skip
            assert await redis.publish(OWNER_CHANNEL, junk) == 1
        # The request's id with another tenant: the owner looks in that tenant only.
        forged = {
            "op": "cancel", "token": secrets.token_hex(16), "tenant": "globex",
            "id": accepted["id"], "reply_to": "intruder",
        }  # fmt: skip
        assert await redis.publish(OWNER_CHANNEL, json.dumps(forged)) == 1
        reply = await next_message(replies)
        assert (reply["token"], reply["status"]) == (forged["token"], 404)
        assert reply["view"] is None
        status, raw = await gw.http("GET", f"/v1/calls/{accepted['id']}", token=token)
        assert status == 200 and json.loads(raw)["state"] == "phone_ringing"
        assert not [e for e in phone.events if e.get("state") == "DISCONNECTED"]

        # The phone was still ringing: the requester's own DELETE is what cancels it.
        status, _ = await gw.http("DELETE", f"/v1/calls/{accepted['id']}", token=token)
        assert status == 200
        ended = await phone.wait_call_state(incoming["call"], "DISCONNECTED", timeout=10)
        assert ended["code"] == 487
