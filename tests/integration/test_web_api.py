"""The API of the web client against a real sipgw and its Redis: subscription tickets and
the token as a WebSocket subprotocol, /v1/me and its settings, the call history of real
sipp calls, the client's pages, and OpenAPI. Attacks on the same: tests/security/
test_web_api.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from gateway.api.tickets import INVALID_TICKET
from gateway.config import load_settings
from gateway.security.directory import Directory
from tests.integration.conftest import GatewayFactory
from tests.integration.gateway import DID, DOMAIN, PASSWORDS, GatewayProcess
from tests.integration.test_recognition import put_contacts
from tests.integration.test_sipp_calls import register_sipp, trunk_to_did
from tests.peers.ports import free_port
from tests.peers.sipp import run_sipp, scenario, start_sipp

pytestmark = [pytest.mark.peers]

CALLER = "+31612345678"
JANE = {"name": "Jane Example", "company": "Example BV", "crm_id": "C-1"}
HEARTBEAT = 1.0  # events.heartbeat of the test gateways
WITHIN = HEARTBEAT + 1.5  # a subscription ends within one heartbeat of its token


def ws_url(gw: GatewayProcess, query: str = "") -> str:
    return f"ws://127.0.0.1:{gw.ports.http}/v1/events{query}"


async def api(
    gw: GatewayProcess, method: str, path: str, token: str | None = None, **kwargs: Any
) -> httpx.Response:
    headers = dict(kwargs.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with httpx.AsyncClient(base_url=gw.http_url, timeout=10) as http:
        return await http.request(method, path, headers=headers, **kwargs)


async def ticket(gw: GatewayProcess, token: str) -> str:
    answer = await api(gw, "POST", "/v1/events/ticket", token)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["expires_in"] == 30 and answer.headers["cache-control"] == "no-store"
    return str(body["ticket"])


async def ready(ws: ClientConnection) -> ClientConnection:
    first = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert first["type"] == "sipgw.ready"
    return ws


async def open_with_ticket(gw: GatewayProcess, token: str, query: str = "") -> ClientConnection:
    url = ws_url(gw, f"?ticket={await ticket(gw, token)}{query}")
    return await ready(await connect(url, open_timeout=5))


async def refused(url: str, **options: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(websockets.InvalidStatus) as caught:
        await connect(url, open_timeout=5, **options)
    response = caught.value.response
    return response.status_code, json.loads(response.body or b"{}")


async def last_events(
    ws: ClientConnection, count: int, timeout: float = 30
) -> list[dict[str, Any]]:
    """Read events until `count` calls have ended: their call.failed / call.cleared."""
    ended: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while len(ended) < count:
            event = json.loads(await ws.recv())
            if event["type"] in ("call.failed", "call.cleared"):
                ended.append(event)
    return ended


async def call_201(gw: GatewayProcess, phone: int, uas: str, uac: str, caller: str) -> None:
    """The trunk calls the DID, which rings 201: a sipp UAS playing `uas` on `phone`, the
    port 201 registered (one binding, so no call forks to a phone that is gone)."""
    async with await start_sipp(
        ["-sf", scenario(uas), "-m", "1", "-t", "u1"], local_port=phone, timeout=30, name="uas"
    ) as phone_201:
        result = await run_sipp(
            ["-sf", scenario(uac), f"127.0.0.1:{gw.ports.sip}", "-s", DID, "-m", "1", "-t", "u1"],
            local_port=gw.ports.trunk_src, timeout=30,
            keys={"domain": "127.0.0.1", "caller": caller},
        )  # fmt: skip
        result.check(calls=1)
        (await phone_201.wait(timeout=30)).check(calls=1)


async def dial_out_from_202(gw: GatewayProcess, number: str) -> None:
    """Phone 202 (sipp, digest as 202) calls `number`; the trunk's far end answers."""
    async with await start_sipp(
        ["-sf", scenario("uas"), "-m", "1", "-t", "u1"],
        local_port=gw.ports.trunk, timeout=30, name="trunk-uas",
    ) as uas:  # fmt: skip
        result = await run_sipp(
            ["-sf", scenario("uac"), f"127.0.0.1:{gw.ports.sip}", "-s", number,
             "-au", "202", "-ap", PASSWORDS["202"], "-m", "1", "-t", "u1"],
            timeout=30, keys={"domain": DOMAIN, "caller": "202"},
        )  # fmt: skip
        result.check(calls=1)
        (await uas.wait(timeout=30)).check(calls=1)


async def history(gw: GatewayProcess, token: str, query: str = "") -> list[dict[str, Any]]:
    """Every row of /v1/history?query, page after page."""
    rows: list[dict[str, Any]] = []
    cursor = ""
    for _ in range(50):
        answer = await api(gw, "GET", f"/v1/history?{query}{cursor}", token)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        rows += page["calls"]
        if page["next_cursor"] is None:
            return rows
        cursor = f"&cursor={page['next_cursor']}"
    raise AssertionError("history paging did not end")


# --- the call history of real calls -------------------------------------------------------


async def test_history_of_real_calls_as_each_token_may_see_it(gateway: GatewayProcess) -> None:
    admin = await gateway.login("203")
    assert await put_contacts(gateway, admin, [{"number": CALLER, "fields": JANE}]) == (
        200, {"upserted": 1, "deleted": 0}
    )  # fmt: skip
    ws = await open_with_ticket(gateway, admin)
    # Read while the calls go on: an unread client stops reading its socket, pongs too.
    reading = asyncio.create_task(last_events(ws, 4, timeout=60))
    phone_201 = free_port()
    await register_sipp(gateway, "201", phone_201)
    await call_201(gateway, phone_201, "uas_busy", "uac_busy", "+31611111111")
    await call_201(gateway, phone_201, "uas_ring_no_answer", "uac_cancel", "+31622222222")
    await call_201(gateway, phone_201, "uas", "uac", CALLER)
    await dial_out_from_202(gateway, "0612345678")
    ended = await reading
    await ws.close()

    rows = await history(gateway, admin)
    # One row per call, the newest ending first, each the call its last event names.
    assert [r["call_id"] for r in rows] == [e["call_id"] for e in reversed(ended)]
    out, answered, missed, busy = rows
    assert (out["direction"], out["extension"], out["outcome"]) == ("outbound", "202", "answered")
    assert out["to"] == CALLER and out["contact"] == JANE  # the number dialled, recognized
    assert (missed["outcome"], missed["missed"], missed["cause"]) == ("missed", True, "cancelled")
    assert missed["from"] == "+31622222222" and missed["answered_at"] is None
    assert (busy["outcome"], busy["cause"], busy["duration_s"]) == ("busy", "busy", 0)
    assert answered["outcome"] == "answered" and answered["extension"] == "201"
    assert answered["from"] == CALLER and answered["contact"] == JANE
    assert answered["screen_pop"][0]["name"] == "crm"
    assert answered["started_at"] <= answered["answered_at"] <= answered["ended_at"]
    for row, event in zip(rows, reversed(ended), strict=True):
        assert row["conversation_id"] == event["conversation_id"]
        assert row["started_at"] == event["created_at"] and row["ended_at"] == event["ended_at"]

    # A user sees its own extension's calls, an admin the tenant's.
    own = await history(gateway, await gateway.login("201"))
    assert [r["call_id"] for r in own] == [answered["call_id"], missed["call_id"], busy["call_id"]]
    user_202 = await gateway.login("202")
    assert [r["call_id"] for r in await history(gateway, user_202)] == [out["call_id"]]

    # Filters and paging.
    assert [r["call_id"] for r in await history(gateway, admin, "missed=true")] == [
        missed["call_id"]
    ]
    assert [r["outcome"] for r in await history(gateway, admin, "direction=outbound")] == [
        "answered"
    ]
    assert {r["call_id"] for r in await history(gateway, admin, "q=jane")} == {
        out["call_id"], answered["call_id"]
    }  # fmt: skip
    assert [r["call_id"] for r in await history(gateway, admin, "q=06-2222")] == [missed["call_id"]]
    assert await history(gateway, admin, "limit=1") == rows
    assert await history(gateway, admin, "extension=201&limit=2") == own
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))
    assert await history(gateway, admin, f"since={soon}") == []
    assert await history(gateway, admin, f"until={soon}") == rows


# --- tickets and the subprotocol token ------------------------------------------------------


async def test_a_ticket_opens_one_websocket_and_one_sse_subscription(
    gateway: GatewayProcess,
) -> None:
    token = await gateway.login("201")
    issued = await ticket(gateway, token)
    ws = await ready(await connect(ws_url(gateway, f"?ticket={issued}"), open_timeout=5))
    assert ws.subprotocol is None  # none offered: JSON frames
    await trunk_to_did(gateway, "uas", "uac", 1)
    assert [e["extension"] for e in await last_events(ws, 1)] == ["201"]
    await ws.close()
    status, body = await refused(ws_url(gateway, f"?ticket={issued}"))
    assert (status, body) == (401, {"detail": INVALID_TICKET})

    sse_ticket = await ticket(gateway, token)
    async with httpx.AsyncClient(base_url=gateway.http_url, timeout=10) as http:
        async with http.stream("GET", f"/v1/events/sse?ticket={sse_ticket}") as sse:
            assert sse.status_code == 200
            assert sse.headers["content-type"].startswith("text/event-stream")
            lines = sse.aiter_lines()
            assert await anext(lines) == "event: sipgw.ready"
        again = await http.get(f"/v1/events/sse?ticket={sse_ticket}")
        assert again.status_code == 401 and again.json() == {"detail": INVALID_TICKET}


async def test_a_websocket_takes_the_token_as_a_subprotocol(gateway: GatewayProcess) -> None:
    token = await gateway.login("203")
    offered = [websockets.Subprotocol("sipgw.v1"), websockets.Subprotocol(f"sipgw.bearer.{token}")]
    ws = await ready(await connect(ws_url(gateway, "?types=call.offered"), subprotocols=offered))
    assert ws.subprotocol == "sipgw.v1"  # the token's own protocol is never echoed
    await trunk_to_did(gateway, "uas", "uac", 1)
    event = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert event["type"] == "call.offered"  # types=: only what was asked for
    await ws.close()

    alone = [websockets.Subprotocol(f"sipgw.bearer.{token}")]
    status, body = await refused(ws_url(gateway), subprotocols=alone)
    assert status == 400 and "sipgw.v1" in body["detail"]
    forged = [
        websockets.Subprotocol("sipgw.v1"),
        websockets.Subprotocol("sipgw.bearer." + "x" * 43),
    ]
    assert (await refused(ws_url(gateway), subprotocols=forged))[0] == 401


async def test_a_ticket_subscription_ends_with_its_token(gateway: GatewayProcess) -> None:
    token = await gateway.login("203")
    ws = await open_with_ticket(gateway, token)
    assert (await api(gateway, "POST", "/v1/auth/logout", token)).status_code == 204
    revoked_at = time.monotonic()
    last: dict[str, Any] = {}
    with pytest.raises(websockets.ConnectionClosed) as closed:
        async with asyncio.timeout(10):
            while True:
                last = json.loads(await ws.recv())
    assert time.monotonic() - revoked_at <= WITHIN
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    assert last["type"] == "sipgw.unauthorized" and last["reason"] == "token revoked"


async def test_a_ticket_from_one_node_opens_a_subscription_on_another(
    gateway_factory: GatewayFactory,
) -> None:
    node_a = await gateway_factory(node="node-a")
    node_b = await gateway_factory(node="node-b", redis_url=node_a.redis_url)
    # Logins answer once a node has copied its configuration into Redis: B is wholly up
    # before A's ticket is redeemed there. B's seed leaves A's token alone either way
    # (test_security.py: another node's start with the same configuration keeps tokens).
    await node_b.login("203")
    issued = await ticket(node_a, await node_a.login("203"))
    ws = await ready(await connect(ws_url(node_b, f"?ticket={issued}"), open_timeout=5))
    await trunk_to_did(node_a, "uas", "uac", 1)
    (cleared,) = await last_events(ws, 1)
    assert cleared["node"] == "node-a"
    await ws.close()
    # Taken on B: gone on A too.
    assert (await refused(ws_url(node_a, f"?ticket={issued}")))[0] == 401


# --- /v1/me ------------------------------------------------------------------------------


@asynccontextmanager
async def directory_of(gw: GatewayProcess) -> AsyncIterator[Directory]:
    directory = Directory(gw.redis_url, load_settings(gw.config))
    await directory.start(seed=False)
    try:
        yield directory
    finally:
        await directory.stop()


async def test_me_says_who_i_am_and_what_i_may_see(gateway: GatewayProcess) -> None:
    user = await gateway.login("201")
    me = (await api(gateway, "GET", "/v1/me", user)).json()
    shown = ("tenant", "username", "role", "extension", "extensions", "sees")
    assert {k: me[k] for k in shown} == {
        "tenant": "acme", "username": "201", "role": "user", "extension": "201",
        "extensions": ["201"], "sees": "extensions",
    }  # fmt: skip
    assert me["visible_extensions"] == ["201"] and me["extension_names"] == {"201": "Phone 201"}
    assert me["settings"] == {"auto_open_crm": False}
    assert me["contact_fields"] == ["name", "company", "crm_id"]
    assert me["screen_pop"]["crm"] == {
        "when": "hit", "url": "https://crm.example/contacts/{contact.crm_id}?call={call_id}"
    }  # fmt: skip

    admin = (await api(gateway, "GET", "/v1/me", await gateway.login("203"))).json()
    assert admin["role"] == "admin" and admin["sees"] == "tenant"
    assert admin["visible_extensions"] == ["201", "202", "203", "204", "205", "206", "207"]

    async with directory_of(gateway) as directory:
        sync = await directory.create_token("acme", role="sync")
    assert (await api(gateway, "GET", "/v1/me", sync.bearer)).status_code == 403
    assert (await api(gateway, "GET", "/v1/me")).status_code == 401


async def test_my_settings_are_kept_for_my_next_login(gateway: GatewayProcess) -> None:
    token = await gateway.login("201")
    changed = await api(gateway, "PUT", "/v1/me/settings", token, json={"auto_open_crm": True})
    assert changed.json() == {"settings": {"auto_open_crm": True}}
    again = await gateway.login("201")
    assert (await api(gateway, "GET", "/v1/me", again)).json()["settings"] == {
        "auto_open_crm": True
    }
    # Another user's are their own.
    other = await gateway.login("202")
    assert (await api(gateway, "GET", "/v1/me", other)).json()["settings"]["auto_open_crm"] is False

    for body, status, detail in [
        ({"auto_open_crm": "yes"}, 422, "auto_open_crm: must be true or false"),
        ({"theme": "dark"}, 422, '"theme": not a setting (settings: auto_open_crm)'),
        ([True], 422, "the body must be a JSON object"),
    ]:
        answer = await api(gateway, "PUT", "/v1/me/settings", token, json=body)
        assert (answer.status_code, answer.json()) == (status, {"detail": detail})
    raw = await api(
        gateway,
        "PUT",
        "/v1/me/settings",
        token,
        content=b"{",
        headers={"Content-Type": "application/json"},
    )
    assert raw.status_code == 400
    plain = await api(gateway, "PUT", "/v1/me/settings", token, content=b"{}")
    assert plain.status_code == 415
    big = await api(
        gateway, "PUT", "/v1/me/settings", token, json={"auto_open_crm": True, "x": "y" * 2000}
    )
    assert big.status_code == 413
    # Nothing of the refused bodies was stored.
    assert (await api(gateway, "GET", "/v1/me", token)).json()["settings"] == {
        "auto_open_crm": True
    }


# --- the client's pages, and OpenAPI --------------------------------------------------------


async def test_the_web_client_is_served_from_the_package(gateway: GatewayProcess) -> None:
    page = await api(gateway, "GET", "/")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert b'src="/static/' in page.content
    assert page.headers["cache-control"] == "no-cache"
    embed = await api(gateway, "GET", "/embed")
    assert embed.status_code == 200 and embed.headers["content-type"].startswith("text/html")

    script = await api(gateway, "GET", "/static/sipgw.js")
    assert script.status_code == 200
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    etag = script.headers["etag"]
    unchanged = await api(gateway, "GET", "/static/sipgw.js", headers={"If-None-Match": etag})
    assert unchanged.status_code == 304 and unchanged.content == b""
    head = await api(gateway, "HEAD", "/static/sipgw.js")
    assert head.status_code == 200 and head.headers["etag"] == etag
    assert (await api(gateway, "GET", "/static/nothing-here.js")).status_code == 404


async def test_openapi_lists_the_browser_api(gateway: GatewayProcess) -> None:
    document = (await api(gateway, "GET", "/openapi.json")).json()
    paths = document["paths"]
    for path, method in [
        ("/v1/events/ticket", "post"), ("/v1/events", "get"), ("/v1/events/sse", "get"),
        ("/v1/me", "get"), ("/v1/me/settings", "put"), ("/v1/history", "get"),
        ("/", "get"), ("/embed", "get"), ("/static/{path}", "get"),
    ]:  # fmt: skip
        assert method in paths.get(path, {}), (path, method)
    sse = {p["name"] for p in paths["/v1/events/sse"]["get"]["parameters"]}
    assert {"ticket", "since", "extension", "type", "types"} <= sse
    history_params = {p["name"] for p in paths["/v1/history"]["get"]["parameters"]}
    assert history_params == {
        "since", "until", "extension", "direction", "missed", "q", "limit", "cursor"
    }  # fmt: skip
