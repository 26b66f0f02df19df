"""Caller recognition end to end: contacts written through the sync API, real sipp calls
through a real sipgw, events read by a WebSocket subscriber. Redis is real; one test
slows it down through a delaying relay, another stops it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import redis.asyncio as aioredis

from gateway.security.keys import WEBHOOK_TENANTS
from tests.integration.conftest import GatewayFactory
from tests.integration.gateway import DOMAIN, PASSWORDS, REPO, GatewayProcess, RedisProcess
from tests.integration.relay import DelayRelay
from tests.integration.test_events import by_call, check_stream, collect, subscribe
from tests.integration.test_sipp_calls import trunk_to_did
from tests.peers.sipp import run_sipp, scenario, start_sipp

pytestmark = [pytest.mark.peers]

CALLER = "+31612345678"
HOSTILE = {"name": "Zoë <script>alert(1)</script> & Co", "company": "A?B#C", "crm_id": "C-1/2&x=1"}


async def put_contacts(
    gw: GatewayProcess, token: str, upserts: list[dict[str, Any]], **extra: Any
) -> tuple[int, dict[str, Any]]:
    body = {"source": "crm", "upserts": upserts, **extra}
    status, raw = await gw.http("POST", "/v1/contacts:batch", body, token=token)
    return status, json.loads(raw or b"{}")


async def test_inbound_call_is_recognized_with_an_escaped_screen_pop(
    gateway: GatewayProcess,
) -> None:
    admin = await gateway.login("203")
    status, answer = await put_contacts(gateway, admin, [{"number": CALLER, "fields": HOSTILE}])
    assert (status, answer) == (200, {"upserted": 1, "deleted": 0})
    ws = await subscribe(gateway, admin)
    await trunk_to_did(gateway, "uas", "uac", 2, rate=1)
    events = await collect(ws, 8)
    await ws.close()
    check_stream(events)
    offered = [e for e in events if e["type"] == "call.offered"]
    assert len(offered) == 2 and not any(e["type"] == "call.recognized" for e in events)
    first, second = offered
    assert first["calling"]["number_e164"] == CALLER
    assert first["lookup"]["status"] == "hit" and first["lookup"]["contact"] == HOSTILE
    assert first["lookup"]["budget_ms"] == 1000
    # The second call from the same number is answered from the node's cache.
    assert (second["lookup"]["status"], second["lookup"]["cache"]) == ("hit", "hit")
    (pop,) = first["screen_pop"]
    assert pop["name"] == "crm"
    url = urlsplit(pop["url"])
    assert (url.scheme, url.netloc) == ("https", "crm.example")
    assert url.path == "/contacts/C-1%2F2%26x%3D1"
    assert parse_qs(url.query) == {"call": [first["call_id"]]}


async def test_unknown_caller_is_a_miss_with_a_new_contact_pop(gateway: GatewayProcess) -> None:
    admin = await gateway.login("203")
    ws = await subscribe(gateway, admin)
    await trunk_to_did(gateway, "uas", "uac", 1, caller="0201234999")
    events = await collect(ws, 4)
    await ws.close()
    offered = events[0]
    # A national number from the trunk, read with the tenant's region (NL).
    assert offered["calling"]["number_raw"] == "0201234999"
    assert offered["calling"]["number_e164"] == "+31201234999"
    assert offered["lookup"]["status"] == "miss" and "contact" not in offered["lookup"]
    (pop,) = offered["screen_pop"]
    assert pop["name"] == "new-contact"
    assert parse_qs(urlsplit(pop["url"]).query)["phone"] == ["+31201234999"]


async def test_slow_redis_gives_pending_then_call_recognized(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    redis = RedisProcess.start(tmp_path / "redis")
    try:
        async with DelayRelay(redis.port) as relay:
            budget = '[tenants.recognition]\nfields = ["name"]\nbudget_ms = 20\ntimeout_ms = 5000'

            gw = await gateway_factory(redis_url=relay.url, recognition=budget)
            admin = await gw.login("203")
            await put_contacts(gw, admin, [{"number": CALLER, "fields": {"name": "Late Larry"}}])
            ws = await subscribe(gw, admin)
            relay.delay = 0.3  # every answer from Redis now takes 300 ms: over the budget
            await trunk_to_did(gw, "uas", "uac", 1)
            events: list[dict[str, Any]] = []
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30):
                    while len(events) < 5:
                        events += await collect(ws, 1)
            relay.delay = 0.0
            assert len(events) == 5, [(e["type"], e.get("lookup")) for e in events]
            await ws.close()
    finally:
        redis.stop()
    check_stream(events)
    (flow,) = by_call(events).values()
    assert flow[0] == "call.offered" and "call.recognized" in flow
    offered = events[0]
    assert offered["lookup"]["status"] == "pending" and offered["lookup"]["budget_ms"] == 20
    assert "screen_pop" not in offered
    recognized = next(e for e in events if e["type"] == "call.recognized")
    assert recognized["lookup"]["status"] == "hit"
    assert recognized["lookup"]["contact"] == {"name": "Late Larry"}
    assert recognized["lookup"]["latency_ms"] > 20
    assert recognized["conversation_id"] == offered["conversation_id"]


async def test_redis_stopped_lookup_error_and_the_call_completes(gateway: GatewayProcess) -> None:
    admin = await gateway.login("203")
    await put_contacts(gateway, admin, [{"number": CALLER, "fields": {"name": "Jan"}}])
    ws = await subscribe(gateway, admin)
    assert gateway.redis is not None
    port = gateway.redis.port
    gateway.redis.stop()
    await trunk_to_did(gateway, "uas", "uac", 1)  # completes: sipp checks every message
    gateway.redis = RedisProcess.start(gateway.workdir / "redis-again", port=port)
    events = await collect(ws, 4, timeout=30)
    await ws.close()
    offered = events[0]
    assert offered["type"] == "call.offered" and offered["lookup"]["status"] == "error"
    assert [e["type"] for e in events] == [
        "call.offered", "call.delivered", "call.established", "call.cleared",
    ]  # fmt: skip


async def test_sync_api_refusals_write_nothing(gateway: GatewayProcess) -> None:
    admin, user = await gateway.login("203"), await gateway.login("201")
    globex = await gateway.login("301", tenant="globex")
    good = [{"number": CALLER, "fields": {"name": "Jan"}}]
    cases = [
        (None, {}, 401),
        ("not-a-token", {}, 401),
        (user, {}, 403),  # a phone user may not write contacts
        (globex, {"tenant": "acme"}, 403),  # another tenant's token
        (admin, {"tenant": "globex"}, 403),
    ]
    for token, extra, want in cases:
        status, _ = await put_contacts(gateway, token, good, **extra)  # type: ignore[arg-type]
        assert status == want, (token, extra)
    status, answer = await put_contacts(
        gateway, admin, [*good, {"number": "+31687654321", "fields": {"ssn": "123"}}]
    )
    assert status == 422
    assert answer["detail"].startswith("upserts[1].fields.ssn: not a configured contact field")
    status, answer = await put_contacts(gateway, admin, [{"number": "0612", "fields": {}}])
    assert status == 422 and "upserts[0].number" in answer["detail"]
    too_many = [{"number": f"+3161{n:07d}"} for n in range(5001)]
    assert (await put_contacts(gateway, admin, too_many))[0] == 413
    status, raw = await gateway.http("GET", "/v1/sources", token=admin)
    assert (status, json.loads(raw)) == (200, {"sources": []})
    # Globex's own write lands in globex only.
    status, _ = await put_contacts(gateway, globex, good)
    assert status == 200
    status, raw = await gateway.http("GET", "/v1/sources", token=admin)
    assert json.loads(raw) == {"sources": []}


async def test_source_removal_deletes_its_records_at_once(gateway: GatewayProcess) -> None:
    admin = await gateway.login("203")
    upserts = [{"number": f"+3161{n:07d}", "fields": {"name": f"n{n}"}} for n in range(3000)]
    for start in range(0, 3000, 1000):
        status, _ = await put_contacts(gateway, admin, upserts[start : start + 1000])
        assert status == 200
    status, raw = await gateway.http("GET", "/v1/sources", token=admin)
    (source,) = json.loads(raw)["sources"]
    assert (source["id"], source["numbers"]) == ("crm", 3000)
    status, raw = await gateway.http("DELETE", "/v1/sources/crm", token=admin)
    assert (status, json.loads(raw)) == (
        200,
        {"source": "crm", "deleted": 3000, "events_redacted": 0},
    )
    assert (await gateway.http("DELETE", "/v1/sources/crm", token=admin))[0] == 404
    client = aioredis.Redis.from_url(gateway.redis_url)
    try:
        found = [k async for k in client.scan_iter(match="{acme}:*")]
        contacts = await client.hlen("{acme}:contacts")
    finally:
        await client.aclose()
    assert contacts == 0
    assert not [k for k in found if b"source" in k or b"contacts" in k or b"gen" in k], found


async def test_gdpr_inspect_export_and_erase_one_number(gateway: GatewayProcess) -> None:
    admin, user = await gateway.login("203"), await gateway.login("201")
    await put_contacts(gateway, admin, [{"number": CALLER, "fields": {"name": "Jan"}}])
    ws = await subscribe(gateway, admin)
    await trunk_to_did(gateway, "uas", "uac", 1)
    await trunk_to_did(gateway, "uas", "uac", 1, caller="+31201111111")
    await collect(ws, 8)
    await ws.close()
    path = "/v1/privacy/numbers/0612345678"  # any format a person types
    assert (await gateway.http("GET", path, token=user))[0] == 403
    status, raw = await gateway.http("GET", path, token=admin)
    assert status == 200
    assert json.loads(raw) == {
        "number": CALLER,
        "contacts": [{"source": "crm", "shown": True, "fields": {"name": "Jan"}}],
        "events": 4,
    }
    status, raw = await gateway.http("GET", path + "/export", token=admin)
    exported = json.loads(raw)
    assert status == 200 and len(exported["events"]) == 4
    assert {e["calling"]["number_e164"] for e in exported["events"]} == {CALLER}
    status, raw = await gateway.http("DELETE", path, token=admin)
    assert (status, json.loads(raw)) == (
        200,
        {"number": CALLER, "contacts_removed": 1, "events_removed": 4},
    )
    status, raw = await gateway.http("GET", path, token=admin)
    assert json.loads(raw) == {"number": CALLER, "contacts": [], "events": 0}
    # The other caller's events are untouched.
    status, raw = await gateway.http("GET", "/v1/privacy/numbers/+31201111111", token=admin)
    assert json.loads(raw)["events"] == 4
    assert (await gateway.http("GET", "/v1/privacy/numbers/12ab", token=admin))[0] == 422
    # The audit log says what was done, never which number.
    status, raw = await gateway.http("GET", "/v1/auth/audit", token=admin)
    erase = next(e for e in json.loads(raw)["entries"] if e["event"] == "privacy.erase")
    assert erase["detail"] == "contacts=1 events=4" and "612345678" not in raw.decode()


async def test_sync_token_from_the_cli_writes_contacts(gateway: GatewayProcess) -> None:
    made = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway.cli", "token", "create", "--tenant", "acme", "--sync",
         "--config", str(gateway.config)],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    status, answer = await put_contacts(gateway, token, [{"number": CALLER}], tenant="acme")
    assert (status, answer) == (200, {"upserted": 1, "deleted": 0})
    # A sync token sees no calls and reads no personal data.
    assert (await gateway.http("GET", f"/v1/privacy/numbers/{CALLER}", token=token))[0] == 403


@pytest.mark.parametrize("caller", ["anonymous", "201"])
async def test_callers_without_a_number_are_not_looked_up(
    gateway: GatewayProcess, caller: str
) -> None:
    admin = await gateway.login("203")
    ws = await subscribe(gateway, admin)
    await trunk_to_did(gateway, "uas", "uac", 1, caller=caller)
    events = await asyncio.wait_for(collect(ws, 4), 30)
    await ws.close()
    assert "lookup" not in events[0] and events[0]["calling"].get("number_e164") is None


async def _cli(gw: GatewayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway.cli", *args, "--config", str(gw.config)],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
    )  # fmt: skip


async def test_deleting_a_tenant_deletes_all_its_data(gateway: GatewayProcess) -> None:
    assert (await _cli(gateway, "tenant", "create", "initech", "--name", "Initech")).returncode == 0
    made = await _cli(gateway, "token", "create", "--tenant", "initech", "--sync")
    token = made.stdout.strip()
    # An API-only tenant has no contact fields configured: a bare number is all it stores.
    status, answer = await put_contacts(gateway, token, [{"number": CALLER, "fields": {"a": 1}}])
    assert status == 422 and "configured: none" in answer["detail"]
    status, _ = await put_contacts(gateway, token, [{"number": CALLER}])
    assert status == 200
    client = aioredis.Redis.from_url(gateway.redis_url)
    try:  # as if it had had a webhook: the node-wide list of such tenants names it
        await client.sadd(WEBHOOK_TENANTS, "initech", "acme")
    finally:
        await client.aclose()
    refused = await _cli(gateway, "tenant", "delete", "initech")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert (await _cli(gateway, "tenant", "delete", "acme", "--yes")).returncode == 1
    done = await _cli(gateway, "tenant", "delete", "initech", "--yes")
    assert done.returncode == 0, done.stderr
    client = aioredis.Redis.from_url(gateway.redis_url)
    try:
        left = [k async for k in client.scan_iter(match="{initech}:*")]
        acme = [k async for k in client.scan_iter(match="{acme}:*")]
        webhook_tenants = await client.smembers(WEBHOOK_TENANTS)
    finally:
        await client.aclose()
    assert left == [] and acme != []
    assert webhook_tenants == {b"acme"}
    assert (await put_contacts(gateway, token, [{"number": CALLER}]))[0] == 401


async def test_outbound_call_recognizes_the_number_dialled(gateway: GatewayProcess) -> None:
    """The demo's first call: a phone dials a national number out through the trunk."""
    admin = await gateway.login("203")
    await put_contacts(
        gateway, admin, [{"number": CALLER, "fields": {"name": "Jane", "crm_id": "C-1001"}}]
    )
    ws = await subscribe(gateway, admin)
    async with await start_sipp(
        ["-sf", scenario("uas"), "-m", "1"], local_port=gateway.ports.trunk, name="trunk-uas"
    ) as uas:
        result = await run_sipp(
            ["-sf", scenario("uac"), f"127.0.0.1:{gateway.ports.sip}", "-s", "0612345678",
             "-au", "202", "-ap", PASSWORDS["202"], "-m", "1"],
            keys={"domain": DOMAIN, "caller": "202"},
        )  # fmt: skip
        result.check(calls=1)
        (await uas.wait(timeout=30)).check(calls=1)
    events = await collect(ws, 4)
    await ws.close()
    offered = events[0]
    assert offered["direction"] == "outbound" and offered["extension"] == "202"
    assert offered["called"]["number_raw"] == "0612345678"
    assert offered["called"]["number_e164"] == CALLER
    assert offered["lookup"]["status"] == "hit"
    assert offered["lookup"]["contact"] == {"name": "Jane", "crm_id": "C-1001"}
    assert [p["url"] for p in offered["screen_pop"]] == [
        f"https://crm.example/contacts/C-1001?call={offered['call_id']}"
    ]


async def test_sipgw_sync_against_the_gateway_sends_only_the_changed_rows(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    """The real client and the real API: an initial sync, 1 % changed, a delta sync."""
    made = await _cli(gateway, "token", "create", "--tenant", "acme", "--sync")
    env = {"SIPGW_SYNC_TOKEN": made.stdout.strip()}
    rows = {n: (f"+3161{n:07d}", f"Contact {n}", f"C-{n}") for n in range(2000)}

    def write_csv() -> None:
        lines = ["id,name,phone"] + [f"{cid},{name},{phone}" for phone, name, cid in rows.values()]
        (tmp_path / "contacts.csv").write_text("\n".join(lines) + "\n")

    (tmp_path / "crm.toml").write_text(
        f'tenant = "acme"\nsource = "crm"\nregion = "NL"\n'
        f'[gateway]\nurl = "{gateway.http_url}"\n'
        '[input]\nkind = "csv"\npath = "contacts.csv"\n'
        '[numbers]\ncolumns = ["phone"]\n'
        '[fields]\nname = "name"\ncrm_id = "id"\n'
    )

    async def sync(*args: str) -> dict[str, Any]:
        report = tmp_path / "report.json"
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gateway.cli", "sync", str(tmp_path / "crm.toml"),
             "--report", str(report), *args],
            capture_output=True, text=True, timeout=120, cwd=REPO, check=False,
            env={**os.environ, **env},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return dict(json.loads(report.read_text()))

    write_csv()
    first = await sync()
    assert (first["upserts_sent"], first["deletes_sent"]) == (2000, 0)
    for n in range(10):  # 1 %: 10 edited, 5 added, 5 removed
        rows[n] = (rows[n][0], f"Renamed {n}", rows[n][2])
    for n in range(2000, 2005):
        rows[n] = (f"+3161{n:07d}", f"New {n}", f"C-{n}")
    for n in range(1990, 1995):
        del rows[n]
    write_csv()
    second = await sync()
    assert (second["upserts_sent"], second["deletes_sent"]) == (15, 5)
    admin = await gateway.login("203")
    status, raw = await gateway.http("GET", "/v1/privacy/numbers/+31610000003", token=admin)
    assert status == 200
    assert json.loads(raw)["contacts"][0]["fields"] == {"name": "Renamed 3", "crm_id": "C-3"}
    status, raw = await gateway.http("GET", "/v1/sources", token=admin)
    assert (status, json.loads(raw)["sources"][0]["numbers"]) == (200, 2000)


async def test_sync_over_https_verifies_the_gateway_certificate(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    """The API over TLS ([http] tls_cert/tls_key); the client trusts only its CA file."""
    gw = await gateway_factory(http_tls=True)
    made = await _cli(gw, "token", "create", "--tenant", "acme", "--sync")
    (tmp_path / "contacts.csv").write_text("id,name,phone\nC-1,Jan,0612345678\n")
    token = tmp_path / "sync.token"
    token.write_text(made.stdout.strip())
    token.chmod(0o600)

    def mapping(cafile: str) -> Path:
        path = tmp_path / "crm.toml"
        path.write_text(
            f'tenant = "acme"\nsource = "crm"\nregion = "NL"\n'
            f'[gateway]\nurl = "{gw.http_url}"\n{cafile}token_file = "{token}"\n'
            '[input]\nkind = "csv"\npath = "contacts.csv"\n'
            '[numbers]\ncolumns = ["phone"]\n[fields]\nname = "name"\n'
        )
        return path

    async def sync(path: Path) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gateway.cli", "sync", str(path), "--state",
             str(tmp_path / "state.db")],
            capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
        )  # fmt: skip

    assert gw.http_url.startswith("https://")
    untrusted = await sync(mapping(""))  # the system CAs do not know this certificate
    assert untrusted.returncode == 1 and "certificate" in untrusted.stderr.lower()
    trusted = await sync(mapping(f'cafile = "{gw.ca_file}"\n'))
    assert trusted.returncode == 0, trusted.stderr
    admin = await gw.login("203")
    status, raw = await gw.http("GET", "/v1/privacy/numbers/0612345678", token=admin)
    assert (status, json.loads(raw)["contacts"][0]["fields"]) == (200, {"name": "Jan"})
