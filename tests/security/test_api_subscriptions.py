"""Event subscriptions against a real gateway and its Redis: a user that may see no
extension gets nothing (403, not the whole tenant), and a live subscription ends, with a
close code that says why, within one heartbeat (1 s here) of its token being revoked,
expiring, or its user being removed."""

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

from gateway.api.events import CLOSE_SESSION_END
from gateway.config import load_settings
from gateway.security.directory import Directory
from tests.integration.gateway import GatewayProcess

HEARTBEAT = 1.0  # events.heartbeat of the test gateways (tests/integration/gateway.py)
# A close must come within one heartbeat of the change; the slack covers a loaded machine
# (the check itself runs exactly on the heartbeat tick).
WITHIN = HEARTBEAT + 1.5
NOBODY_PW = "Nobody-pass-1!"


@asynccontextmanager
async def directory_of(gw: GatewayProcess) -> AsyncIterator[Directory]:
    """The gateway's own directory, as an operator's tool would reach it."""
    directory = Directory(gw.redis_url, load_settings(gw.config))
    await directory.start(seed=False)
    try:
        yield directory
    finally:
        await directory.stop()


async def login(gw: GatewayProcess, username: str, password: str) -> str:
    status, body = await gw.http(
        "POST", "/v1/auth/login", {"tenant": "acme", "username": username, "password": password}
    )
    assert status == 200, (status, body)
    return str(json.loads(body)["token"])


async def open_ws(gw: GatewayProcess, token: str) -> ClientConnection:
    ws = await connect(
        f"ws://127.0.0.1:{gw.ports.http}/v1/events",
        subprotocols=[websockets.Subprotocol("sipgw.json.v1")],
        additional_headers={"Authorization": f"Bearer {token}"},
        open_timeout=5,
    )
    ready = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert ready["type"] == "sipgw.ready"
    return ws


async def ended(ws: ClientConnection, timeout: float = 10) -> tuple[float, dict[str, Any], int]:
    """Read until the server closes: (when, the last control message, the close code)."""
    last: dict[str, Any] = {}
    try:
        async with asyncio.timeout(timeout):
            while True:
                last = json.loads(await ws.recv())
    except websockets.ConnectionClosed as closed:
        assert closed.rcvd is not None, "the client, not the server, closed"
        return time.monotonic(), last, closed.rcvd.code
    raise AssertionError("unreachable")


# --- a user that may see no extension --------------------------------------------------


async def test_a_user_without_extensions_subscribes_to_nothing(gateway: GatewayProcess) -> None:
    async with directory_of(gateway) as directory:
        # Made with the CLI's code path: a "user" with no extension and none watched.
        await directory.add_user("acme", "nobody", NOBODY_PW, role="user")
    token = await login(gateway, "nobody", NOBODY_PW)

    with pytest.raises(websockets.InvalidStatus) as refused:
        await connect(
            f"ws://127.0.0.1:{gateway.ports.http}/v1/events",
            additional_headers={"Authorization": f"Bearer {token}"},
            open_timeout=5,
        )
    response = refused.value.response
    assert response.status_code == 403
    assert json.loads(response.body or b"{}") == {
        "detail": "forbidden: this user has no extension of its own and watches none"
    }
    async with httpx.AsyncClient(base_url=gateway.http_url, timeout=5) as http:
        sse = await http.get("/v1/events/sse", headers={"Authorization": f"Bearer {token}"})
        assert sse.status_code == 403
        assert sse.json()["detail"].startswith("forbidden: this user has no extension")
        # Naming an extension does not help either: it is not one this user may see.
        named = await http.get(
            "/v1/events/sse?extension=201", headers={"Authorization": f"Bearer {token}"}
        )
        assert named.status_code == 403

    # No subscription was made for it: with an admin's open, the node counts one.
    admin = await open_ws(gateway, await gateway.login("203"))
    with pytest.raises(websockets.InvalidStatus):
        await connect(
            f"ws://127.0.0.1:{gateway.ports.http}/v1/events",
            additional_headers={"Authorization": f"Bearer {token}"},
            open_timeout=5,
        )
    assert "sipgw_subscribers 1.0" in await gateway.metrics()
    await admin.close()


# --- a live subscription ends with its token -------------------------------------------


async def test_logout_closes_an_open_websocket(gateway: GatewayProcess) -> None:
    token = await gateway.login("203")
    ws = await open_ws(gateway, token)
    status, _ = await gateway.http("POST", "/v1/auth/logout", token=token)
    assert status == 204
    revoked_at = time.monotonic()
    when, last, code = await ended(ws)
    assert code == CLOSE_SESSION_END["token revoked"] == 4401
    assert ws.close_reason == "token revoked"
    assert last["type"] == "sipgw.unauthorized" and last["reason"] == "token revoked"
    assert when - revoked_at <= WITHIN


async def test_an_expiring_token_closes_its_websocket(gateway: GatewayProcess) -> None:
    async with directory_of(gateway) as directory:
        token = await directory.create_token("acme", user="203", ttl=2.0)
    ws = await open_ws(gateway, token.bearer)
    _, last, code = await ended(ws)
    assert code == CLOSE_SESSION_END["token expired"] == 4402
    assert last["reason"] == "token expired"
    # time.time() is the clock of expires_at: compare on it.
    assert time.time() - token.expires_at <= WITHIN


async def test_removing_the_user_closes_its_websocket_and_sse(gateway: GatewayProcess) -> None:
    async with directory_of(gateway) as directory:
        await directory.add_user("acme", "temp", NOBODY_PW, role="user", extension="201")
        token = await login(gateway, "temp", NOBODY_PW)
        ws = await open_ws(gateway, token)
        async with (
            httpx.AsyncClient(base_url=gateway.http_url, timeout=10) as http,
            http.stream(
                "GET", "/v1/events/sse", headers={"Authorization": f"Bearer {token}"}
            ) as sse,
        ):
            assert sse.status_code == 200
            lines = sse.aiter_lines()
            assert await anext(lines) == "event: sipgw.ready"
            assert await directory.remove_user("acme", "temp", source="test")
            removed_at = time.monotonic()
            when, last, code = await ended(ws)
            assert code == CLOSE_SESSION_END["user removed"] == 4403
            assert last["reason"] == "user removed"
            assert when - removed_at <= WITHIN
            # SSE: a final event naming the reason, then the stream ends.
            async with asyncio.timeout(WITHIN + 5):
                rest = [line async for line in lines]
            assert time.monotonic() - removed_at <= WITHIN + 1
            final = rest.index("event: sipgw.unauthorized")
            data = json.loads(rest[final + 1].removeprefix("data: "))
            assert data["reason"] == "user removed"
            assert all(not line or line.startswith(":") for line in rest[final + 2 :])
    # And it cannot come back.
    status, _ = await gateway.http_get("/v1/auth/me", token=token)
    assert status == 401
