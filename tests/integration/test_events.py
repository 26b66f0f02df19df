"""Call events end to end: real sipp calls through a real sipgw process with its own
Redis, delivered to WebSocket and SSE subscribers that logged in over the API."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect

from tests.integration.conftest import GatewayFactory
from tests.integration.gateway import GatewayProcess, RedisProcess
from tests.integration.test_sipp_calls import trunk_to_did

pytestmark = [pytest.mark.peers]

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "docs" / "event-schema.json").read_text()
)


async def subscribe(gw: GatewayProcess, token: str, query: str = "") -> ClientConnection:
    url = f"ws://127.0.0.1:{gw.ports.http}/v1/events{query}"
    ws = await connect(
        url,
        subprotocols=[websockets.Subprotocol("sipgw.json.v1")],
        additional_headers={"Authorization": f"Bearer {token}"},
        open_timeout=5,
    )
    ready = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert ready["type"] == "sipgw.ready"
    return ws


async def collect(ws: ClientConnection, count: int, timeout: float = 20) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while len(events) < count:
            message = json.loads(await ws.recv())
            if not str(message.get("type", "")).startswith("sipgw."):
                events.append(message)
    return events


def by_call(events: list[dict[str, Any]]) -> dict[str, list[str]]:
    calls: dict[str, list[str]] = defaultdict(list)
    for event in events:
        calls[event["call_id"]].append(event["type"])
    return dict(calls)


def check_stream(events: list[dict[str, Any]]) -> None:
    """Every event valid against the published schema; seq strictly increasing."""
    for event in events:
        jsonschema.validate(event, SCHEMA)
    keys = [tuple(int(p) for p in e["seq"].split("-")) for e in events]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


async def test_calls_produce_events_for_a_websocket_subscriber(gateway: GatewayProcess) -> None:
    ws = await subscribe(gateway, await gateway.login("203"))
    await trunk_to_did(gateway, "uas", "uac", 3, rate=10)
    events = await collect(ws, 12)
    await ws.close()
    check_stream(events)
    flow = ["call.offered", "call.delivered", "call.established", "call.cleared"]
    assert list(by_call(events).values()) == [flow, flow, flow]
    offered = events[0]
    assert offered["direction"] == "inbound" and offered["extension"] == "201"
    assert offered["tenant"] == "acme"
    assert offered["calling"]["number_raw"] == "+31612345678"
    cleared = [e for e in events if e["type"] == "call.cleared"]
    assert all(e["cause"]["normalized"] == "normal" and e["duration_ms"] >= 0 for e in cleared)


async def test_busy_and_cancelled_calls(gateway: GatewayProcess) -> None:
    ws = await subscribe(gateway, await gateway.login("203"))
    await trunk_to_did(gateway, "uas_busy", "uac_busy", 1)
    await trunk_to_did(gateway, "uas_ring_no_answer", "uac_cancel", 1)
    events = await collect(ws, 5)
    await ws.close()
    check_stream(events)
    busy, cancelled = by_call(events).values()
    assert busy == ["call.offered", "call.failed"]
    assert cancelled == ["call.offered", "call.delivered", "call.failed"]
    failed = [e for e in events if e["type"] == "call.failed"]
    assert failed[0]["cause"]["normalized"] == "busy" and failed[0]["cause"]["sip_code"] == 486
    assert failed[1]["cause"]["normalized"] == "cancelled" and failed[1]["missed"] is True


async def test_resume_replays_exactly_the_gap(gateway: GatewayProcess) -> None:
    token = await gateway.login("203")
    ws = await subscribe(gateway, token)
    await trunk_to_did(gateway, "uas", "uac", 2, rate=10)
    first = await collect(ws, 8)
    await ws.close()
    # A client that saw only the first three resumes from the third one's seq.
    resumed = await subscribe(gateway, token, f"?since={first[2]['seq']}")
    rest = await collect(resumed, 5)
    await resumed.close()
    assert [e["seq"] for e in rest] == [e["seq"] for e in first[3:]]
    assert [e["event_id"] for e in rest] == [e["event_id"] for e in first[3:]]


async def test_sse_resumes_with_last_event_id(gateway: GatewayProcess) -> None:
    token = await gateway.login("203")
    ws = await subscribe(gateway, token)
    await trunk_to_did(gateway, "uas", "uac", 1)
    events = await collect(ws, 4)
    await ws.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.ports.http)
    writer.write(
        f"GET /v1/events/sse HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Last-Event-ID: {events[0]['seq']}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    ids: list[str] = []
    async with asyncio.timeout(10):
        status = await reader.readline()
        assert b" 200 " in status
        while len(ids) < 3:
            line = (await reader.readline()).decode().strip()
            if line.startswith("id: "):
                ids.append(line[4:])
    writer.close()
    assert ids == [e["seq"] for e in events[1:]]


async def test_a_user_sees_only_its_own_extension(gateway: GatewayProcess) -> None:
    user_202 = await gateway.login("202")
    # Asking for someone else's extension is refused at the handshake.
    with pytest.raises(websockets.InvalidStatus) as refused:
        await subscribe(gateway, user_202, "?extension=201")
    assert refused.value.response.status_code == 403
    mine = await subscribe(gateway, user_202)
    admin = await subscribe(gateway, await gateway.login("203"))
    await trunk_to_did(gateway, "uas", "uac", 1)  # a call to 201
    assert len(await collect(admin, 4)) == 4
    with pytest.raises(TimeoutError):
        await collect(mine, 1, timeout=1.5)
    await mine.close()
    await admin.close()


async def test_bad_tokens_and_cursors_are_refused(gateway: GatewayProcess) -> None:
    with pytest.raises(websockets.InvalidStatus) as no_token:
        await subscribe(gateway, "not-a-token")
    assert no_token.value.response.status_code == 401
    token = await gateway.login("203")
    with pytest.raises(websockets.InvalidStatus) as bad_since:
        await subscribe(gateway, token, "?since=yesterday")
    assert bad_since.value.response.status_code == 400
    status, body = await gateway.http_get("/v1/events/sse?since=nope", token=token)
    assert status == 400 and b"since" in body
    status, _ = await gateway.http_get("/v1/events/sse", token="forged")
    assert status == 401


async def test_a_call_through_node_a_reaches_a_subscriber_on_node_b(
    gateway_factory: GatewayFactory,
) -> None:
    node_a = await gateway_factory(node="node-a")
    node_b = await gateway_factory(node="node-b", redis_url=node_a.redis_url)
    on_b = await subscribe(node_b, await node_b.login("203"))
    await trunk_to_did(node_a, "uas", "uac", 2, rate=10)
    events = await collect(on_b, 8)
    # Nothing more arrives: each event exactly once.
    with pytest.raises(TimeoutError):
        await collect(on_b, 1, timeout=1.5)
    await on_b.close()
    check_stream(events)
    assert {e["node"] for e in events} == {"node-a"}
    flow = ["call.offered", "call.delivered", "call.established", "call.cleared"]
    assert list(by_call(events).values()) == [flow, flow]


async def test_redis_stopped_mid_call_calls_complete_and_events_follow(
    gateway: GatewayProcess,
) -> None:
    ws = await subscribe(gateway, await gateway.login("203"))
    assert gateway.redis is not None
    port = gateway.redis.port
    # Two calls held 2 s each; Redis goes away once the first is offered.
    calls = asyncio.create_task(
        trunk_to_did(gateway, "uas", "uac", 2, rate=2, hold_ms=2000, timeout=60)
    )
    first = await collect(ws, 1, timeout=15)
    assert first[0]["type"] == "call.offered"
    gateway.redis.stop()
    await calls  # calls do not depend on Redis: both complete while it is down
    gateway.redis = RedisProcess.start(gateway.workdir / "redis-again", port=port)
    rest = await collect(ws, 7, timeout=30)
    await ws.close()
    events = first + rest
    check_stream(events)
    flow = ["call.offered", "call.delivered", "call.established", "call.cleared"]
    assert list(by_call(events).values()) == [flow, flow]
    families = {f.name: f for f in text_string_to_metric_families(await gateway.metrics())}
    assert [s.value for s in families["sipgw_redis_up"].samples] == [1.0]
    assert families["sipgw_events_dropped"].samples == []  # buffered, none lost
    assert [s.value for s in families["sipgw_events_published"].samples] == [8.0]


async def test_garbage_frames_close_the_subscription_with_a_reason(
    gateway: GatewayProcess,
) -> None:
    token = await gateway.login("203")
    ws = await subscribe(gateway, token)
    # Idle: a heartbeat comes within the configured second.
    beat = json.loads(await asyncio.wait_for(ws.recv(), 3))
    assert beat["type"] == "sipgw.heartbeat"
    await ws.send(json.dumps({"type": "ping"}))
    assert json.loads(await asyncio.wait_for(ws.recv(), 3))["type"] in (
        "sipgw.pong",
        "sipgw.heartbeat",
    )
    await ws.send(b"\x00\xffgarbage")
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1003
    assert "ping" in closed.value.rcvd.reason

    big = await subscribe(gateway, token)
    await big.send("x" * 100_000)  # above the 64 kB frame limit
    with pytest.raises(websockets.ConnectionClosed) as too_big:
        while True:
            await asyncio.wait_for(big.recv(), 5)
    assert too_big.value.rcvd is not None and too_big.value.rcvd.code == 1009
