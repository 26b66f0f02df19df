"""Privacy attacks on the stored event stream, against a real sipgw and its real Redis.

The "attacker" here is time and forgetfulness: personal data that outlives the request
to erase it. Each test checks the stream's raw bytes in Redis, not an API answer:

- a GDPR erasure of a number that appears only in a diversion (a real 302 through the
  gateway) leaves no entry holding it in any form;
- erasure finds a number in every field that can hold one, in the forms people and
  phones write it, and leaves other people's events alone;
- unlinking a contact source scrubs that source's contact names, CRM ids and screen-pop
  URLs from the stored events at once, keeping the events, their ids and the stream's
  counters, and keeping other sources' contacts;
- an idle tenant's old events vanish on the retention timer, not only when the tenant
  next gets an event;
- a rewrite racing the bus writer loses no event appended meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from redis.asyncio import Redis

from gateway.bus import EventBus, keys
from gateway.bus.rewrite import rewrite_entries
from gateway.calls.events import (
    CallEvent,
    Device,
    Diversion,
    Lookup,
    Originate,
    Party,
    ScreenPop,
    Transfer,
    rfc3339,
    uuid7,
)
from gateway.recognition.privacy import without_source
from gateway.stats import Counters
from tests.integration.conftest import GatewayFactory
from tests.integration.gateway import GatewayProcess
from tests.integration.test_events import collect, subscribe
from tests.integration.test_sipp_calls import trunk_to_did

SCENARIOS = Path(__file__).resolve().parents[1] / "integration" / "scenarios"
CALLER = "+31612345678"
# The 302 target of uas_302.xml: it reaches the events only as diversion.to.
REDIRECTED = "+31207654321"


# -- helpers ------------------------------------------------------------------------------
async def stream_entries(gw: GatewayProcess, tenant: str = "acme") -> list[tuple[bytes, bytes]]:
    """Every entry of the tenant stream: (id, raw payload bytes as Redis holds them)."""
    client = Redis.from_url(gw.redis_url, protocol=2)
    try:
        entries = await client.xrange(keys.events_key(tenant))
    finally:
        await client.aclose()
    return [(seq, fields[keys.STREAM_FIELD]) for seq, fields in entries]


def holding(entries: list[tuple[bytes, bytes]], *needles: bytes) -> list[bytes]:
    """The ids of the entries whose raw bytes contain any of `needles`."""
    return [seq for seq, raw in entries if any(needle in raw for needle in needles)]


def decoded(entries: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
    return [keys.decode_payload(seq.decode(), raw) for seq, raw in entries]


async def stream_info(gw: GatewayProcess, tenant: str = "acme") -> dict[bytes, Any]:
    client = Redis.from_url(gw.redis_url, protocol=2)
    try:
        raw = await client.execute_command("XINFO", "STREAM", keys.events_key(tenant))
    finally:
        await client.aclose()
    info = dict(zip(raw[::2], raw[1::2], strict=True)) if isinstance(raw, list) else raw
    return {k if isinstance(k, bytes) else k.encode(): v for k, v in info.items()}


async def poll(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Bounded polling of Redis for a state no event announces (a timer's work)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def publish(redis_url: str, events: list[CallEvent]) -> None:
    """Write events through a real EventBus (the writer path the gateway uses)."""
    bus = EventBus(redis_url, counters=Counters())
    await bus.start()
    try:
        for event in events:
            assert bus.publish(event)
        deadline = time.monotonic() + 10
        while bus.published < len(events):
            assert time.monotonic() < deadline, "events not written to the stream"
            await asyncio.sleep(0.01)
    finally:
        await bus.stop()


def call_event(**parts: Any) -> CallEvent:
    now = rfc3339(time.time())
    base: dict[str, Any] = {
        "call_id": uuid7(),
        "sip_call_id": f"crafted-{uuid7()}@198.51.100.7",
        "from_tag": "f1",
        "conversation_id": uuid7(),
        "direction": "inbound",
        "state": "offered",
        "prev_state": "idle",
        "calling": Party(number_raw="+31301112233", number_e164="+31301112233"),
        "called": Party(number_raw="201", uri="sip:201@acme.test"),
        "extension": "201",
        "created_at": now,
    }
    base.update(parts)
    return CallEvent("call.offered", now, "test", "acme", **base)


# -- GDPR erasure -------------------------------------------------------------------------
@pytest.mark.peers
async def test_gdpr_erase_of_a_number_seen_only_in_diversion_leaves_no_trace(
    gateway: GatewayProcess,
) -> None:
    admin = await gateway.login("203")
    ws = await subscribe(gateway, admin)
    await trunk_to_did(
        gateway, str(SCENARIOS / "uas_302.xml"), str(SCENARIOS / "uac_expect_302.xml"), 1
    )
    events = await collect(ws, 3)
    await ws.close()
    assert [e["type"] for e in events] == ["call.offered", "call.diverted", "call.failed"]
    # Precondition: the redirect target is stored only in the diversion part.
    before = await stream_entries(gateway)
    national_digits = REDIRECTED.removeprefix("+31").encode()  # 207654321 (NSN)
    assert len(holding(before, national_digits)) == 2
    for event in decoded(before):
        for party in ("calling", "called"):
            assert REDIRECTED not in json.dumps(event[party])

    # Typed the way a person would: the national form.
    status, raw = await gateway.http("DELETE", "/v1/privacy/numbers/020%20765%204321", token=admin)
    assert (status, json.loads(raw)["events_removed"]) == (200, 2)

    after = await stream_entries(gateway)
    assert holding(after, national_digits) == []
    # Only the events naming the number went: the call's offered event stays.
    assert [e["type"] for e in decoded(after)] == ["call.offered"]
    status, raw = await gateway.http("GET", f"/v1/privacy/numbers/{REDIRECTED}", token=admin)
    assert json.loads(raw)["events"] == 0


async def test_gdpr_erase_finds_the_number_in_every_field_and_form(
    gateway: GatewayProcess,
) -> None:
    """One event per field that can carry a number, each written in another form."""
    number, other = "+31612345678", "+31698765432"
    naming = [
        call_event(calling=Party(number_raw="0612345678", uri="sip:0612345678@carrier.test")),
        call_event(called=Party(uri="sip:+31612345678@acme.test;user=phone")),
        call_event(calling=Party(number_raw="anonymous", display="Jan 06-1234 5678")),
        call_event(diversion=Diversion("unconditional", from_="sip:0031612345678@acme.test")),
        call_event(transfer=Transfer("blind", refer_to="<sip:612345678@acme.test>")),
        call_event(transfer=Transfer("attended", referred_by="<tel:+31-6-1234-5678>")),
        call_event(screen_pop=(ScreenPop("crm", "https://crm.example/p?n=06%2012345678&c=1"),)),
        call_event(
            screen_pop=(ScreenPop("crm", f"https://crm.example/p?n={quote(number, safe='')}"),)
        ),
        call_event(device=Device(contact="<sip:+31612345678@192.0.2.5:5060;ob>")),
        call_event(originate=Originate(uuid7(), requested_by="+31 (0)6 12345678")),
        call_event(lookup=Lookup("hit", source="crm", contact={"mobile": "+31 6 1234 5678"})),
    ]
    others = [
        call_event(calling=Party(number_raw=other, number_e164=other)),
        call_event(called=Party(uri="sip:201@192.0.2.9:5060", display="port 5678")),
    ]
    await publish(gateway.redis_url, naming + others)
    before = await stream_entries(gateway)
    assert len(before) == len(naming) + len(others)

    admin = await gateway.login("203")
    status, raw = await gateway.http("DELETE", f"/v1/privacy/numbers/{number}", token=admin)
    assert (status, json.loads(raw)["events_removed"]) == (200, len(naming))

    after = await stream_entries(gateway)
    assert holding(after, b"612345678", b"12345678", b"1234 5678", b"1234-5678") == []
    assert {e["call_id"] for e in decoded(after)} == {e.call_id for e in others}


# -- unlinking a source -------------------------------------------------------------------
CANARY = {"name": "Zoe Privacy-Canary", "company": "Canary & Co", "crm_id": "CANARY-4711"}


@pytest.mark.peers
async def test_source_unlink_scrubs_its_contacts_from_stored_events_at_once(
    gateway: GatewayProcess,
) -> None:
    admin = await gateway.login("203")
    body = {"source": "crm", "upserts": [{"number": CALLER, "fields": CANARY}]}
    assert (await gateway.http("POST", "/v1/contacts:batch", body, token=admin))[0] == 200
    ws = await subscribe(gateway, admin)
    await trunk_to_did(gateway, "uas", "uac", 1)
    events = await collect(ws, 4)
    await ws.close()
    offered = next(e for e in events if e["type"] == "call.offered")
    assert offered["lookup"]["source"] == "crm" and offered["lookup"]["contact"] == CANARY
    # Another source's contact, in an event of its own: it must survive the unlink.
    kept = call_event(lookup=Lookup("hit", source="erp", contact={"name": "Erp Keeper"}))
    await publish(gateway.redis_url, [kept])
    needles = (b"Privacy-Canary", b"Canary & Co", b"CANARY-4711", b"crm.example/contacts")
    before = await stream_entries(gateway)
    assert holding(before, *needles) != []
    info_before = await stream_info(gateway)

    status, raw = await gateway.http("DELETE", "/v1/sources/crm", token=admin)
    assert (status, json.loads(raw)) == (
        200,
        {"source": "crm", "deleted": 1, "events_redacted": 1},
    )

    after = await stream_entries(gateway)
    assert holding(after, *needles) == []
    # Every event is still there, under its id, in its order; only the contact went.
    assert [seq for seq, _ in after] == [seq for seq, _ in before]
    stored = {(e["call_id"], e["type"]): e for e in decoded(after)}
    call = stored[offered["call_id"], "call.offered"]
    assert call["lookup"]["status"] == "hit" and call["lookup"]["source"] == "crm"
    assert "contact" not in call["lookup"] and "screen_pop" not in call
    assert stored[kept.call_id, "call.offered"]["lookup"]["contact"] == {"name": "Erp Keeper"}
    # What replay relies on to report trimmed events is unchanged.
    info_after = await stream_info(gateway)
    for field in (b"last-generated-id", b"entries-added", b"max-deleted-entry-id", b"length"):
        assert info_after[field] == info_before[field], field
    # Nothing of the rewrite is left behind.
    client = Redis.from_url(gateway.redis_url, protocol=2)
    try:
        assert await client.exists(keys.rewrite_key("acme"), keys.edit_lock_key("acme")) == 0
    finally:
        await client.aclose()


async def test_rewrite_racing_the_writer_loses_no_event(redis_server: str) -> None:
    """Events appended while a rewrite copies the stream are all there after the swap."""
    tenant = f"race-{uuid7()[-8:]}"
    bus = EventBus(redis_server, counters=Counters())
    await bus.start()
    client = Redis.from_url(redis_server, protocol=2)
    try:

        def event(n: int, source: str = "crm") -> CallEvent:
            contact = {"name": f"Secret {n}"}
            made = call_event(lookup=Lookup("hit", source=source, contact=contact))
            return dataclasses.replace(made, tenant=tenant)

        for n in range(3000):
            assert bus.publish(event(n))
        deadline = time.monotonic() + 20
        while bus.published < 3000:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)

        async def keep_publishing() -> None:
            sent = 0
            while True:  # a few thousand events a second, until cancelled
                # Of another source: once unlinked, the source's contacts are no longer
                # found, so new events never hold them.
                assert bus.publish(event(10_000 + sent, "erp"))
                sent += 1
                await asyncio.sleep(0.001 if sent % 5 == 0 else 0)

        writer = asyncio.create_task(keep_publishing())
        await asyncio.sleep(0.05)
        redis = Redis.from_url(redis_server, protocol=2)
        try:
            changed = await rewrite_entries(redis, tenant, lambda e: without_source(e, "crm"))
        finally:
            await redis.aclose()
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        deadline = time.monotonic() + 20
        while bus.queued or bus.buffered:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)

        entries = await client.xrange(keys.events_key(tenant))
        assert len(entries) == bus.published  # nothing appended meanwhile was lost
        ids = [keys.parse_seq(seq.decode()) for seq, _ in entries]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert changed == 3000
        assert not any(b"Secret" in f[keys.STREAM_FIELD] for _, f in entries[:3000])
        assert all(b"Secret" in f[keys.STREAM_FIELD] for _, f in entries[3000:])
        assert len(entries) > 3000  # the writer did append during the rewrite
    finally:
        await bus.stop()
        await client.delete(keys.events_key(tenant))
        await client.aclose()


# -- retention on a timer -----------------------------------------------------------------
async def test_idle_tenants_old_events_vanish_on_the_retention_timer(
    gateway_factory: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIPGW_EVENTS__STREAM_MAX_AGE", "60")
    monkeypatch.setenv("SIPGW_EVENTS__TRIM_INTERVAL", "0.2")
    gw = await gateway_factory()
    # globex is idle: it never gets an event, so appending never trims its stream.
    key = keys.events_key("globex")
    payload = keys.encode_payload(call_event().to_dict())
    now_ms = int(time.time() * 1000)
    old = [f"{now_ms - 3_600_000 + n}-0" for n in range(5)]  # an hour old
    fresh = f"{now_ms}-0"
    client = Redis.from_url(gw.redis_url, protocol=2)
    try:
        for seq in [*old, fresh]:
            await client.xadd(key, {keys.STREAM_FIELD: payload}, id=seq)

        async def only_fresh_left() -> bool:
            return [s.decode() for s, _ in await client.xrange(key)] == [fresh]

        await poll(only_fresh_left, 10, "the old globex events to be trimmed")
    finally:
        await client.aclose()
