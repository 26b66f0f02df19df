"""Attacks on the browser API, against real gateways and their Redis: replayed, expired
and forged tickets, one tenant's ticket reaching for another's events, a user reaching
for another extension's history, foreign origins (CORS), credentials in the log, framing
and script injection into the client's pages (CSP), and walks out of /static."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import websockets
from websockets.asyncio.client import connect

from gateway.api.tickets import INVALID_TICKET
from gateway.security import keys
from gateway.security.tickets import parse_ticket
from tests.integration.conftest import GatewayFactory
from tests.integration.gateway import GatewayProcess
from tests.integration.test_sipp_calls import trunk_to_did
from tests.integration.test_web_api import (
    api,
    directory_of,
    history,
    last_events,
    open_with_ticket,
    ready,
    refused,
    ticket,
    ws_url,
)
from tests.waiting import wait_until_true

pytestmark = [pytest.mark.peers]

ACME_CRM = "https://crm.acme.example"
GLOBEX_CRM = "https://crm.globex.example"
PORTAL = "https://portal.example"


# --- tickets -------------------------------------------------------------------------------


async def test_a_ticket_opens_exactly_one_subscription_even_in_a_race(
    gateway: GatewayProcess,
) -> None:
    issued = await ticket(gateway, await gateway.login("203"))

    async def attempt() -> int:
        try:
            ws = await connect(ws_url(gateway, f"?ticket={issued}"), open_timeout=5)
        except websockets.InvalidStatus as err:
            assert json.loads(err.response.body or b"{}") == {"detail": INVALID_TICKET}
            return err.response.status_code
        await ready(ws)
        await ws.close()
        return 101

    async with httpx.AsyncClient(base_url=gateway.http_url, timeout=5) as http:
        # Five WebSockets and one EventSource at once: Redis's GETDEL gives it to one.
        results = await asyncio.gather(*(attempt() for _ in range(5)), _sse_status(http, issued))
    assert results.count(401) == 5, results
    assert set(results) - {401} in ({101}, {200}), results


async def _sse_status(http: httpx.AsyncClient, issued: str) -> int:
    async with http.stream("GET", f"/v1/events/sse?ticket={issued}") as answer:
        return answer.status_code  # leaving the block ends a stream that was opened


async def test_an_expired_ticket_is_refused(gateway: GatewayProcess) -> None:
    issued = await ticket(gateway, await gateway.login("203"))
    parsed = parse_ticket(issued)
    assert parsed is not None
    key = keys.ticket(*parsed)
    client = aioredis.Redis.from_url(gateway.redis_url)
    try:
        assert 0 < await client.ttl(key) <= 30
        # Thirty seconds pass, as far as Redis is concerned.
        await client.pexpire(key, 1)
        await wait_until_true(lambda: _gone(client, key), what="the ticket's expiry")
    finally:
        await client.aclose()
    assert await refused(ws_url(gateway, f"?ticket={issued}")) == (401, {"detail": INVALID_TICKET})


async def _gone(client: aioredis.Redis, key: str) -> bool:
    return not await client.exists(key)


async def test_a_ticket_is_no_token_and_a_token_is_no_ticket(gateway: GatewayProcess) -> None:
    token = await gateway.login("203")
    issued = await ticket(gateway, token)
    assert (await api(gateway, "GET", "/v1/me", issued)).status_code == 401
    offered = [websockets.Subprotocol("sipgw.v1"), websockets.Subprotocol(f"sipgw.bearer.{issued}")]
    assert (await refused(ws_url(gateway), subprotocols=offered))[0] == 401
    assert (await refused(ws_url(gateway, f"?ticket={token}")))[0] == 401
    # None of it used the ticket up, or harmed the token.
    ws = await ready(await connect(ws_url(gateway, f"?ticket={issued}"), open_timeout=5))
    await ws.close()
    assert (await api(gateway, "GET", "/v1/me", token)).status_code == 200
    # Two credentials at once are refused, not chosen between.
    both = await refused(
        ws_url(gateway, f"?ticket={await ticket(gateway, token)}"),
        additional_headers={"Authorization": f"Bearer {token}"},
    )
    assert both[0] == 400 and "one credential" in both[1]["detail"]


async def test_tickets_per_token_are_capped(gateway: GatewayProcess) -> None:
    token = await gateway.login("201")
    answers = [await api(gateway, "POST", "/v1/events/ticket", token) for _ in range(31)]
    assert [a.status_code for a in answers] == [200] * 30 + [429]
    assert answers[-1].headers["retry-after"] == "30"
    # Another token of the same user has its own allowance.
    assert (await api(gateway, "POST", "/v1/events/ticket", await gateway.login("201"))).is_success


async def test_a_sync_token_gets_no_ticket(gateway: GatewayProcess) -> None:
    async with directory_of(gateway) as directory:
        sync = await directory.create_token("acme", role="sync")
    assert (await api(gateway, "POST", "/v1/events/ticket", sync.bearer)).status_code == 403


# --- tenants and extensions ----------------------------------------------------------------


async def test_a_ticket_of_one_tenant_reads_nothing_of_another(gateway: GatewayProcess) -> None:
    acme = await open_with_ticket(gateway, await gateway.login("203"))
    globex_token = await gateway.login("301", tenant="globex")
    globex = await open_with_ticket(gateway, globex_token)
    await trunk_to_did(gateway, "uas", "uac", 1)
    assert [e["tenant"] for e in await last_events(acme, 1)] == ["acme"]
    # The acme call has ended; globex's subscription answers a ping with nothing before.
    await globex.send(json.dumps({"type": "ping"}))
    while (message := json.loads(await asyncio.wait_for(globex.recv(), 5)))["type"] != "sipgw.pong":
        assert message["type"] == "sipgw.heartbeat", message
    await acme.close()
    await globex.close()

    # A globex ticket relabelled as acme's is no ticket at all.
    issued = await ticket(gateway, globex_token)
    forged = "acme." + issued.split(".", 1)[1]
    assert (await refused(ws_url(gateway, f"?ticket={forged}")))[0] == 401
    # Asking for an acme extension with a globex ticket is refused like any foreign one.
    assert (await refused(ws_url(gateway, f"?ticket={issued}&extension=201")))[0] == 403
    assert await history(gateway, globex_token) == []
    foreign = await api(gateway, "GET", "/v1/history?extension=201", globex_token)
    assert (foreign.status_code, foreign.json()) == (403, {"detail": "forbidden"})


async def test_a_user_sees_no_other_extensions_history(gateway: GatewayProcess) -> None:
    await trunk_to_did(gateway, "uas", "uac", 1)
    admin = await gateway.login("203")
    rows = await wait_rows(gateway, admin, 1)
    assert rows[0]["extension"] == "201"
    user_202 = await gateway.login("202")
    assert await history(gateway, user_202) == []
    for query in ("extension=201", "extension=202&extension=201", "extension=999"):
        answer = await api(gateway, "GET", f"/v1/history?{query}", user_202)
        assert (answer.status_code, answer.json()) == (403, {"detail": "forbidden"}), query
    # Its own extension it may name.
    assert (await api(gateway, "GET", "/v1/history?extension=202", user_202)).json() == {
        "calls": [], "next_cursor": None
    }  # fmt: skip


async def wait_rows(gw: GatewayProcess, token: str, count: int) -> list[dict[str, Any]]:
    """The history once `count` calls are in it (the last event reaches the stream a
    moment after sipp has seen the call end)."""
    found: list[dict[str, Any]] = []

    async def enough() -> bool:
        nonlocal found
        found = await history(gw, token)
        return len(found) >= count

    await wait_until_true(enough, what=f"{count} calls in the history")
    return found


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("since=yesterday", "since: expected an RFC 3339 time"),
        ("until=2024-13-01", "until: expected an RFC 3339 time"),
        ("limit=0", "limit: an integer from 1 to 200"),
        ("limit=201", "limit: an integer from 1 to 200"),
        ("limit=%C2%B2", "limit: an integer from 1 to 200"),  # a superscript two
        ("limit=" + "9" * 5000, "limit: an integer from 1 to 200"),
        ("direction=sideways", "direction: one of inbound, outbound, internal"),
        ("missed=maybe", "missed: true or false"),
        ("q=" + "x" * 65, "q: at most 64 characters"),
        ("cursor=../../etc", "cursor: not a next_cursor of this API"),
        ("cursor=99999999999999999999999-0", "cursor: not a next_cursor of this API"),
    ],
)
async def test_malformed_history_parameters_get_a_message(
    gateway: GatewayProcess, query: str, detail: str
) -> None:
    answer = await api(gateway, "GET", f"/v1/history?{query}", await gateway.login("203"))
    assert answer.status_code == 400
    assert answer.json()["detail"].startswith(detail)


# --- CORS ------------------------------------------------------------------------------------


@pytest.fixture
async def cors_gateway(
    gateway_factory: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> GatewayProcess:
    """acme lists its CRM, globex its own; the node lets a portal frame /embed."""
    monkeypatch.setenv("SIPGW_TENANTS__0__CORS_ORIGINS", json.dumps([ACME_CRM]))
    monkeypatch.setenv("SIPGW_TENANTS__1__CORS_ORIGINS", json.dumps([GLOBEX_CRM]))
    monkeypatch.setenv("SIPGW_TENANTS__0__FRAME_ANCESTORS", json.dumps(["https://*.acme.example"]))
    monkeypatch.setenv("SIPGW_WEB__FRAME_ANCESTORS", json.dumps([PORTAL]))
    return await gateway_factory()


async def preflight(gw: GatewayProcess, origin: str, path: str = "/v1/me") -> httpx.Response:
    return await api(
        gw, "OPTIONS", path,
        headers={"Origin": origin, "Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "authorization"},
    )  # fmt: skip


async def test_cors_allows_only_the_tokens_tenants_origins(cors_gateway: GatewayProcess) -> None:
    gw = cors_gateway
    allowed = await preflight(gw, ACME_CRM)
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == ACME_CRM
    assert "Authorization" in allowed.headers["access-control-allow-headers"]
    assert "access-control-allow-credentials" not in allowed.headers  # bearer, no cookies
    stranger = await preflight(gw, "https://evil.example")
    assert stranger.status_code == 403 and "access-control-allow-origin" not in stranger.headers
    # An origin is compared whole: a trailing slash makes another one.
    assert (await preflight(gw, ACME_CRM + "/")).status_code == 403
    assert (await preflight(gw, "null")).status_code == 403

    acme = await gw.login("203")
    for origin, expected in [
        (ACME_CRM, ACME_CRM),
        (GLOBEX_CRM, None),
        ("https://evil.example", None),
    ]:
        answer = await api(gw, "GET", "/v1/me", acme, headers={"Origin": origin})
        assert answer.status_code == 200
        assert answer.headers.get("access-control-allow-origin") == expected, origin
        assert "Origin" in answer.headers["vary"]
    globex = await gw.login("301", tenant="globex")
    answer = await api(gw, "GET", "/v1/me", globex, headers={"Origin": ACME_CRM})
    assert "access-control-allow-origin" not in answer.headers

    # A login from globex's CRM with acme's credentials: the page cannot read the token.
    login = await api(
        gw, "POST", "/v1/auth/login", headers={"Origin": GLOBEX_CRM},
        json={"tenant": "acme", "username": "203", "password": "Api-203-secret!"},
    )  # fmt: skip
    assert login.status_code == 200 and "access-control-allow-origin" not in login.headers
    own = await api(
        gw, "POST", "/v1/auth/login", headers={"Origin": ACME_CRM},
        json={"tenant": "acme", "username": "203", "password": "Api-203-secret!"},
    )  # fmt: skip
    assert own.headers["access-control-allow-origin"] == ACME_CRM
    # A refusal concerns no one's data: a listed origin may read why it failed.
    wrong = await api(
        gw, "POST", "/v1/auth/login", headers={"Origin": GLOBEX_CRM},
        json={"tenant": "acme", "username": "203", "password": "Wrong-pass-1!"},
    )  # fmt: skip
    assert wrong.status_code == 401 and wrong.headers["access-control-allow-origin"] == GLOBEX_CRM


async def test_cors_is_off_unless_configured(gateway: GatewayProcess) -> None:
    answer = await preflight(gateway, ACME_CRM)
    assert answer.status_code >= 400 and "access-control-allow-origin" not in answer.headers
    me = await api(
        gateway, "GET", "/v1/me", await gateway.login("203"), headers={"Origin": ACME_CRM}
    )
    assert "access-control-allow-origin" not in me.headers


# --- credentials in the log ------------------------------------------------------------------


async def test_tokens_and_tickets_never_reach_the_log(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(log_level="DEBUG")
    token = await gw.login("203")
    used = await ticket(gw, token)
    ws = await ready(await connect(ws_url(gw, f"?ticket={used}&since=0-0")))
    await ws.close()
    await refused(ws_url(gw, f"?ticket={used}"))  # rejected: logged with its URL too
    bearer = [websockets.Subprotocol("sipgw.v1"), websockets.Subprotocol(f"sipgw.bearer.{token}")]
    ws = await ready(await connect(ws_url(gw), subprotocols=bearer))
    await ws.close()
    header = {"Authorization": f"Bearer {token}"}
    ws = await ready(await connect(ws_url(gw), additional_headers=header))
    await ws.close()
    sse_ticket = await ticket(gw, token)
    async with (
        httpx.AsyncClient(base_url=gw.http_url, timeout=5) as http,
        http.stream("GET", f"/v1/events/sse?ticket={sse_ticket}") as sse,
    ):
        assert sse.status_code == 200
    await api(gw, "GET", "/v1/history?q=x", token)
    await api(gw, "POST", "/v1/auth/logout", token)

    log = gw.log_path.read_text(errors="replace")
    # The handshake lines were written (DEBUG: every header), masked.
    assert "ticket=***" in log and "sipgw.bearer.***" in log and "authorization: ***" in log
    for secret in (token, used, sse_ticket, used.split(".", 1)[1], sse_ticket.split(".", 1)[1]):
        assert secret not in log


# --- the client's pages: CSP, framing, files -------------------------------------------------


def directives(policy: str) -> dict[str, str]:
    return {d.split()[0]: d.partition(" ")[2] for d in (p.strip() for p in policy.split(";")) if d}


async def test_pages_and_api_answers_carry_a_strict_policy(gateway: GatewayProcess) -> None:
    for path in ("/", "/embed", "/static/sipgw.js"):
        answer = await api(gateway, "GET", path)
        assert answer.status_code == 200, path
        csp = directives(answer.headers["content-security-policy"])
        assert csp["default-src"] == "'self'" and csp["script-src"] == "'self'"
        assert csp["style-src"] == "'self'" and csp["object-src"] == "'none'"
        assert csp["base-uri"] == "'none'" and csp["connect-src"] == "'self'"
        assert csp["frame-ancestors"] == "'none'"  # no frame_ancestors configured
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert "unsafe" not in answer.headers["content-security-policy"]
    for path in ("/v1/me", "/healthz", "/v1/nothing"):
        answer = await api(gateway, "GET", path)
        assert (
            answer.headers["content-security-policy"]
            == "default-src 'none'; frame-ancestors 'none'"
        )
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["x-content-type-options"] == "nosniff"


async def test_the_pages_hold_no_inline_script_or_style(gateway: GatewayProcess) -> None:
    """What the CSP would block must not be needed: every script is a file under
    /static, and no element carries a style or an event handler."""
    for path in ("/", "/embed"):
        html = (await api(gateway, "GET", path)).text
        for tag in re.findall(r"<script\b[^>]*>(.*?)</script>", html, re.S | re.I):
            assert tag.strip() == "", f"inline script in {path}"
        assert all('src="/static/' in t for t in re.findall(r"<script\b[^>]*>", html, re.I))
        assert not re.search(r"\son[a-z]+\s*=", html, re.I), f"event handler in {path}"
        assert not re.search(r"\sstyle\s*=|<style\b", html, re.I), f"inline style in {path}"


async def test_embed_may_be_framed_only_by_the_configured_pages(
    cors_gateway: GatewayProcess,
) -> None:
    async def ancestors(query: str) -> str:
        answer = await api(cors_gateway, "GET", f"/embed{query}")
        assert answer.status_code == 200
        assert "x-frame-options" not in answer.headers  # it would forbid every frame
        return directives(answer.headers["content-security-policy"])["frame-ancestors"]

    assert await ancestors("") == PORTAL
    assert await ancestors("?tenant=acme") == f"{PORTAL} https://*.acme.example"
    assert await ancestors("?tenant=globex") == PORTAL
    assert await ancestors("?tenant=nobody") == PORTAL
    injected = await ancestors("?tenant=acme%3B%20script-src%20*")
    assert injected == PORTAL
    # The full client is never framed.
    home = await api(cors_gateway, "GET", "/")
    assert directives(home.headers["content-security-policy"])["frame-ancestors"] == "'none'"
    assert home.headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize(
    "path",
    [
        "/static/../gateway/app.py",
        "/static/%2e%2e/%2e%2e/gateway/app.py",
        "/static/..%2f..%2fgateway%2fapp.py",
        "/static//etc/passwd",
        "/static/%2fetc%2fpasswd",
        "/static/.hidden",
        "/static/",
        "/static/x%00.js",
    ],
)
async def test_static_files_stay_inside_their_directory(gateway: GatewayProcess, path: str) -> None:
    # Written on the socket as it is: an HTTP client would tidy the dots away.
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.ports.http)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    status = answer.split(b"\r\n", 1)[0]
    assert status in (b"HTTP/1.1 404 Not Found", b"HTTP/1.1 400 Bad Request"), (path, answer[:300])
    assert b"import" not in answer and b"root:" not in answer
