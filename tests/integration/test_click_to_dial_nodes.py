"""Click-to-dial on two nodes behind one Redis: a request placed through node A is read
and cancelled through node B (runtime/shared_dials.py). Two real sipgw processes, a
real redis-server, a PJSIP phone registered to A, sipp as the trunk's far end."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.integration.conftest import GatewayFactory
from tests.integration.gateway import GatewayProcess, RedisProcess
from tests.integration.test_click_to_dial import dial, pjsip_phone
from tests.peers.sipp import scenario, start_sipp

pytestmark = [pytest.mark.peers, pytest.mark.asyncio]

KEEP_FINISHED = 2.0  # [dial] keep_finished of both nodes: seconds
PLACED = "01937a00-0000-7000-8000-00000000a001"  # ids of requests planted in Redis


@pytest.fixture
async def shared_redis(tmp_path: Path) -> AsyncIterator[RedisProcess]:
    redis = RedisProcess.start(tmp_path / "redis")
    try:
        yield redis
    finally:
        redis.stop()


@pytest.fixture
async def nodes(
    gateway_factory: GatewayFactory, shared_redis: RedisProcess
) -> AsyncIterator[tuple[GatewayProcess, GatewayProcess]]:
    extra = f"[dial]\nkeep_finished = {KEEP_FINISHED}"
    a = await gateway_factory(node="node-a", redis_url=shared_redis.url, extra=extra)
    b = await gateway_factory(node="node-b", redis_url=shared_redis.url, extra=extra)
    yield a, b
    # Stopped before their Redis is (the factory checks their exit and their logs).
    for gw in (b, a):
        await gw.stop()


async def read(gw: GatewayProcess, token: str, dial_id: str) -> tuple[int, dict[str, Any]]:
    status, raw = await gw.http("GET", f"/v1/calls/{dial_id}", token=token)
    return status, json.loads(raw or b"{}")


async def states_until(
    gw: GatewayProcess, token: str, dial_id: str, final: str, timeout: float = 20
) -> list[str]:
    """The states `gw` shows, polled as a CRM would, until `final` (a 404 before the
    first write has reached Redis is allowed, none after it)."""
    seen: list[str] = []
    async with asyncio.timeout(timeout):
        while not seen or seen[-1] != final:
            status, body = await read(gw, token, dial_id)
            if status != 404 or seen:
                assert status == 200, body
                if not seen or seen[-1] != body["state"]:
                    seen.append(body["state"])
            await asyncio.sleep(0.05)
    return seen


async def same_on_both(
    a: GatewayProcess, b: GatewayProcess, token: str, dial_id: str
) -> dict[str, Any]:
    status_a, on_a = await read(a, token, dial_id)
    status_b, on_b = await read(b, token, dial_id)
    assert (status_a, status_b) == (200, 200), (on_a, on_b)
    assert on_b == on_a
    return on_a


async def gone(gw: GatewayProcess, token: str, dial_id: str, within: float) -> None:
    """Wait until `gw` answers 404 for the request (200 until then, nothing else)."""
    async with asyncio.timeout(within):
        while True:
            status, body = await read(gw, token, dial_id)
            if status == 404:
                return
            assert status == 200, body
            await asyncio.sleep(0.1)


async def logins(a: GatewayProcess, b: GatewayProcess, user: str) -> str:
    # B wholly up (its directory seeded) before A's token is used there.
    await b.login(user)
    return await a.login(user)


async def test_a_request_placed_on_a_is_read_and_cancelled_on_b(
    nodes: tuple[GatewayProcess, GatewayProcess], shared_redis: RedisProcess
) -> None:
    a, b = nodes
    token = await logins(a, b, "204")
    globex = await b.login("301", tenant="globex")
    async with await pjsip_phone(a, "204") as phone:
        status, accepted = await dial(a, token, to="0612345678")
        assert status == 202, accepted
        dial_id = accepted["id"]
        incoming = await phone.wait_incoming(timeout=10)
        assert await states_until(b, token, dial_id, "phone_ringing") in (
            ["calling_phone", "phone_ringing"], ["phone_ringing"],
        )  # fmt: skip
        ringing = await same_on_both(a, b, token, dial_id)
        assert ringing["state"] == "phone_ringing" and not ringing["finished"]

        # What Redis holds: the view and its owner, expiring, in the tenant's slot.
        async with Redis.from_url(shared_redis.url) as redis:
            key = "{acme}:dial:" + dial_id
            stored = await redis.get(key)
            assert isinstance(stored, bytes)
            record = json.loads(stored)
            assert record["node"] == "node-a" and record["tenant"] == "acme"
            assert record["request"] == {k: v for k, v in ringing.items() if k != "links"}
            assert 0 < await redis.pttl(key) <= KEEP_FINISHED * 1000

        # Still ringing after keep_finished: node A writes an unfinished request again.
        since = time.monotonic()
        async with asyncio.timeout(KEEP_FINISHED + 5):
            while time.monotonic() - since < KEEP_FINISHED + 1:
                assert (await read(b, token, dial_id))[0] == 200
                await asyncio.sleep(0.2)

        # Another tenant's token on B: nothing there, and nothing is cancelled.
        for method in ("GET", "DELETE"):
            status, raw = await b.http(method, f"/v1/calls/{dial_id}", token=globex)
            assert (status, json.loads(raw)) == (404, {"detail": "no such dial request"})
        assert (await read(a, token, dial_id))[1]["state"] == "phone_ringing"

        # Cancelled on B: node A cancels the phone's INVITE.
        status, raw = await b.http("DELETE", f"/v1/calls/{dial_id}", token=token)
        cancelled = json.loads(raw)
        assert status == 200, cancelled
        assert cancelled["state"] == "cancelled" and cancelled["finished"]
        assert cancelled["cause"]["message"] == "Cancelled by the requester"
        assert cancelled["links"]["self"] == f"/v1/calls/{dial_id}"
        ended = await phone.wait_call_state(incoming["call"], "DISCONNECTED", timeout=10)
        assert ended["code"] == 487
        cancelled_at = time.monotonic()
        # The answer came after the new state was stored: B reads it at once.
        after = await same_on_both(a, b, token, dial_id)
        assert {k: v for k, v in after.items() if k != "links"} == {
            k: v for k, v in cancelled.items() if k != "links"
        }
        status, raw = await b.http("DELETE", f"/v1/calls/{dial_id}", token=token)
        assert status == 409 and "already cancelled" in json.loads(raw)["detail"]

    # Retention: gone from both nodes keep_finished after it finished, not before.
    await gone(b, token, dial_id, within=KEEP_FINISHED + 5)
    gone_after = time.monotonic() - cancelled_at
    assert gone_after >= KEEP_FINISHED - 0.5, gone_after
    await gone(a, token, dial_id, within=5)


async def test_3pcc_through_its_states_on_b_then_hung_up_from_b(
    nodes: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, b = nodes
    token = await logins(a, b, "207")
    async with (
        await pjsip_phone(a, "207", honor_auto_answer_headers=True) as phone,
        await start_sipp(
            ["-sf", scenario("uas"), "-m", "1"], local_port=a.ports.trunk, name="trunk-uas"
        ) as trunk,
    ):
        status, accepted = await dial(a, token, to="+31 6 12345678")
        assert status == 202 and accepted["mode"] == "3pcc"
        seen = await states_until(b, token, accepted["id"], "connected")
        order = ["calling_phone", "phone_ringing", "connecting", "destination_ringing", "connected"]
        assert seen == [s for s in order if s in seen], seen
        incoming = await phone.wait_incoming(timeout=5)
        await phone.wait_media(incoming["call"], "active", timeout=10)
        assert (await same_on_both(a, b, token, accepted["id"]))["state"] == "connected"

        # Hung up through B: node A sends BYE to the phone and to the trunk.
        status, raw = await b.http("DELETE", f"/v1/calls/{accepted['id']}", token=token)
        ended = json.loads(raw)
        assert status == 200 and ended["state"] == "ended", ended
        await phone.wait_call_state(incoming["call"], "DISCONNECTED", timeout=10)
        (await trunk.wait(timeout=20)).check(calls=1)
        assert (await same_on_both(a, b, token, accepted["id"]))["state"] == "ended"


def planted(node: str, state: str = "phone_ringing", finished: bool = False) -> bytes:
    """A request of node `node` as its owner would have stored it."""
    view = {
        "id": PLACED, "state": state, "finished": finished, "mode": "refer", "from": "204",
        "to": {"raw": "0612345678", "dialled": "+31612345678", "e164": "+31612345678"},
        "auto_answer": "answer-mode", "requested_by": "204", "conversation_id": PLACED,
        "phone_call_id": PLACED, "created_at": "2026-01-01T00:00:00.000000Z",
        "updated_at": "2026-01-01T00:00:00.000000Z",
    }  # fmt: skip
    return json.dumps({"node": node, "tenant": "acme", "request": view}).encode()


async def test_a_delete_for_a_node_that_is_gone_or_mute_says_so(
    gateway_factory: GatewayFactory,
) -> None:
    b = await gateway_factory(node="node-b")
    token = await b.login("204")
    async with Redis.from_url(b.redis_url) as redis:
        key = "{acme}:dial:" + PLACED
        # The owner is gone (nobody listens on its channel): 503 at once.
        await redis.set(key, planted("node-gone"), px=60_000)
        status, shown = await read(b, token, PLACED)
        assert status == 200 and shown["state"] == "phone_ringing"
        status, raw = await b.http("DELETE", f"/v1/calls/{PLACED}", token=token)
        assert status == 503, raw
        detail = json.loads(raw)["detail"]
        assert "node node-gone, which placed this call, is not reachable" in detail

        # The owner listens but does not answer: 504 after the relay's bound (2 s).
        await redis.set(key, planted("node-mute"), px=60_000)
        async with redis.pubsub() as mute:
            await mute.subscribe("sipgw:dials:{node-mute}")
            started = time.monotonic()
            status, raw = await b.http("DELETE", f"/v1/calls/{PLACED}", token=token)
            took = time.monotonic() - started
            assert status == 504, raw
            assert "node node-mute, which placed this call, did not answer" in raw.decode()
            assert 1.5 < took < 4.5, took
            # What reached the owner: the tenant and the id, and where to answer.
            async with asyncio.timeout(5):
                while True:
                    message = await mute.get_message(ignore_subscribe_messages=True, timeout=1)
                    if message is not None:
                        break
            ask = json.loads(message["data"])
            assert {k: ask[k] for k in ("op", "tenant", "id", "reply_to")} == {
                "op": "cancel", "tenant": "acme", "id": PLACED, "reply_to": "node-b",
            }  # fmt: skip

        # A finished request is 409 without asking its owner; ids that cannot be: 404.
        await redis.set(key, planted("node-gone", "failed", finished=True), px=60_000)
        status, raw = await b.http("DELETE", f"/v1/calls/{PLACED}", token=token)
        assert (status, json.loads(raw)) == (409, {"detail": "the dial request is already failed"})
        for bad in ("nope", "{acme}", PLACED.upper()):
            assert (await read(b, token, bad))[0] == 404
