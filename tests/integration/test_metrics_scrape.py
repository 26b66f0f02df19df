"""/metrics read while real calls run: a sipp UAC as the trunk calls the DID, the
gateway routes to a sipp UAS registered as extension 201. Scrapes are taken during the
run and after it, parsed with Prometheus' own text parser, and checked against what
sipp did and what reached the Redis stream. Then Redis is stopped and started again:
``sipgw_redis_up`` must follow.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gateway.bus import keys
from tests.integration.gateway import DID, GatewayProcess, RedisProcess
from tests.integration.test_sipp_calls import register_sipp
from tests.peers.ports import free_port
from tests.peers.sipp import SippResult, run_sipp, scenario, start_sipp

pytestmark = [pytest.mark.peers, pytest.mark.asyncio]

CALLS = 30
RATE = 10  # calls per second: about 3 s of new calls...
HOLD_MS = 1000  # ...each up for a second, so scrapes see several calls at once
CALLER = "+31612345678"
EVENT_TYPES = ("call.offered", "call.delivered", "call.established", "call.cleared")

# A label value that looks like a phone number (6+ digits, maybe a +) or names a
# SIP Call-ID: neither may ever be a label (one series per number or per call).
NUMBER_LIKE = re.compile(r"^\+?\d{6,}$")
MAX_SERIES = 400  # every sample line of one scrape; unbounded labels would blow it


class Scrape:
    """One reading of /metrics."""

    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples: list[Sample] = [s for f in self.families.values() for s in f.samples]

    def value(self, sample: str, default: float | None = None, **labels: str) -> float:
        """The sum of the samples named `sample` whose labels include `labels`; none
        is an error unless a `default` is given (a label set not counted yet)."""
        found = [
            s.value for s in self.samples if s.name == sample and labels.items() <= s.labels.items()
        ]
        if not found and default is not None:
            return default
        assert found, f"no sample {sample}{labels}"
        return sum(found)

    def counters(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample that may only grow: counters and histograms, but not the queue
        depth histogram (one observation per subscriber *now*)."""
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in self.families.values()
            if f.type in ("counter", "histogram") and f.name != "sipgw_subscriber_queue_depth"
            for s in f.samples
        }


async def scrape(gw: GatewayProcess) -> Scrape:
    return Scrape(await gw.metrics())


async def scrape_until(gw: GatewayProcess, what: str, check: Any, timeout: float = 10.0) -> Scrape:
    """Scrape until ``check(scrape)`` holds (bounded, like tests.waiting.wait_until,
    which takes only synchronous predicates)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        reading = await scrape(gw)
        if check(reading):
            return reading
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def place_calls(gw: GatewayProcess, uas_port: int) -> tuple[SippResult, SippResult]:
    """CALLS calls trunk → DID → the UAS registered at `uas_port`; both results checked."""
    async with await start_sipp(
        ["-sf", scenario("uas"), "-m", str(CALLS), "-t", "u1"],
        local_port=uas_port,
        timeout=60,
        name="uas",
    ) as uas:
        uac = await run_sipp(
            [
                "-sf", scenario("uac"), f"127.0.0.1:{gw.ports.sip}", "-s", DID,
                "-m", str(CALLS), "-r", str(RATE), "-l", str(CALLS), "-d", str(HOLD_MS),
                "-t", "u1",
            ],
            local_port=gw.ports.trunk_src,
            timeout=60,
            keys={"domain": "127.0.0.1", "caller": CALLER},
        )  # fmt: skip
        uac.check(calls=CALLS)
        callee = await uas.wait(timeout=30)
        callee.check(calls=CALLS)
    return uac, callee


async def stream_events(gw: GatewayProcess) -> list[dict[str, Any]]:
    client = aioredis.Redis.from_url(gw.redis_url)
    try:
        entries: Any = await client.xrange(keys.events_key("acme"))
    finally:
        await client.aclose()
    return [
        keys.decode_payload(raw_id.decode(), fields[keys.STREAM_FIELD])
        for raw_id, fields in entries
    ]


async def test_metrics_during_and_after_sipp_calls(gateway: GatewayProcess) -> None:
    gw = gateway
    # Redis is up once the live connection is: nothing has been published yet.
    await scrape_until(gw, "redis up", lambda s: s.value("sipgw_redis_up") == 1)
    uas_port = free_port()
    await register_sipp(gw, "201", uas_port)
    before = await scrape(gw)
    assert before.value("sipgw_registered_contacts") == 1
    assert before.value("sipgw_registrations_total", outcome="ok") == 1
    assert before.value("sipgw_registrations_total", outcome="auth_challenge") == 1
    assert before.value("sipgw_calls_active") == 0

    # -- during the run ----------------------------------------------------------------
    calls = asyncio.create_task(place_calls(gw, uas_port))
    during: list[Scrape] = []
    while not calls.done():
        during.append(await scrape(gw))
        # Not a sleep: returns as soon as the calls are over.
        await asyncio.wait({calls}, timeout=0.1)
    uac, uas = await calls
    assert len(during) >= 5, "the run was too short to be scraped while calls were up"
    busiest = max(during, key=lambda s: s.value("sipgw_calls_active"))
    assert busiest.value("sipgw_calls_active") >= 2
    assert busiest.value("sipgw_dialogs_active") >= 1
    invites_in = [
        s.value("sipgw_sip_requests_total", 0, direction="in", method="INVITE") for s in during
    ]
    assert any(0 < n < CALLS for n in invites_in), f"no scrape in mid-run: {invites_in}"
    for reading in during:
        assert reading.value("sipgw_dialogs_active") <= reading.value("sipgw_calls_active")
        kinds = {
            s.labels["kind"] for s in reading.families["sipgw_sip_transactions_active"].samples
        }
        assert kinds == {"server", "client"}
    # Counters never go backwards from one scrape to the next.
    for earlier, later in zip([before, *during], during, strict=False):
        old, new = earlier.counters(), later.counters()
        went_back = {
            key: (value, new[key]) for key, value in old.items() if new.get(key, 0) < value
        }
        assert went_back == {}

    # -- after it: every event written, nothing in flight ----------------------------
    after = await scrape_until(
        gw,
        "the bus to drain and the calls to be forgotten as active",
        lambda s: (
            s.value("sipgw_events_buffered") == 0
            and s.value("sipgw_calls_active") == 0
            and s.value("sipgw_events_published_total")
            == sum(x.value for x in s.families["sipgw_events_emitted"].samples)
        ),
    )
    assert after.value("sipgw_dialogs_active") == 0
    assert after.value("sipgw_bus_lag_seconds") == 0

    def delta(sample: str, **labels: str) -> float:
        return after.value(sample, **labels) - before.value(sample, 0, **labels)

    # One INVITE in per call (plus any sipp had to retransmit), exactly one out: the
    # gateway's own retransmissions are the transaction's, not counted as requests.
    udp_in = {"direction": "in", "transport": "udp"}
    udp_out = {"direction": "out", "transport": "udp"}
    invites = delta("sipgw_sip_requests_total", **udp_in, method="INVITE")
    assert CALLS <= invites <= CALLS + uac.retransmissions
    assert delta("sipgw_sip_requests_total", **udp_out, method="INVITE") == CALLS
    assert delta("sipgw_sip_requests_total", **udp_out, method="BYE") == CALLS
    assert delta("sipgw_sip_requests_total", **udp_out, method="ACK") == CALLS
    # 200 to the INVITE and 200 to the BYE from the UAS, relayed to the UAC; the UAS
    # retransmits its 200 until the ACK comes, which the proxy relays as well.
    for direction in (udp_in, udp_out):
        ok = delta("sipgw_sip_responses_total", **direction, status_class="2xx")
        assert 2 * CALLS <= ok <= 2 * CALLS + uas.retransmissions, (direction, ok)
    assert delta("sipgw_sip_responses_total", **udp_in, status_class="1xx") >= CALLS  # 180s
    assert after.value("sipgw_sip_responses_total", status_class="4xx") == 1  # the challenge
    assert after.value("sipgw_sip_transactions_created_total", kind="client") >= CALLS * 2

    # The call outcomes and the events, checked against the Redis stream itself.
    assert after.value("sipgw_calls_ended_total", outcome="normal") == CALLS
    ended = after.families["sipgw_calls_ended"].samples
    assert [s.labels["outcome"] for s in ended if s.value] == ["normal"]
    emitted = {s.labels["type"]: s.value for s in after.families["sipgw_events_emitted"].samples}
    assert emitted == dict.fromkeys(EVENT_TYPES, float(CALLS))
    events = await stream_events(gw)
    in_stream: dict[str, float] = {}
    for event in events:
        in_stream[event["type"]] = in_stream.get(event["type"], 0) + 1
    assert in_stream == emitted
    assert after.value("sipgw_events_published_total") == len(events) == 4 * CALLS
    assert after.families["sipgw_events_dropped"].samples == []
    assert after.value("sipgw_bus_publish_latency_seconds_count") == 4 * CALLS
    assert after.value("sipgw_bus_publish_latency_seconds_bucket", le="+Inf") == 4 * CALLS

    # One look-up per offered call (the caller is E.164): the first asks Redis, the
    # rest are answered by the local cache (a cached "no such contact").
    assert after.value("sipgw_lookups_total") == CALLS
    assert after.value("sipgw_lookup_latency_seconds_count") == CALLS
    assert 0.5 <= after.value("sipgw_contact_cache_hit_ratio") <= 1

    # -- cardinality and documentation ------------------------------------------------
    call_ids = {e["sip_call_id"] for e in events}
    assert len(call_ids) == CALLS
    for reading in [*during, after]:
        assert len(reading.samples) <= MAX_SERIES
        values = {v for s in reading.samples for v in s.labels.values()}
        assert [v for v in values if NUMBER_LIKE.match(v) or "@" in v] == []
        assert values.isdisjoint(call_ids)
        assert not any(CALLER in v or DID in v for v in values) and "201" not in values
    undocumented = [f.name for f in after.families.values() if not f.documentation.strip()]
    assert undocumented == []
    assert all(name.startswith("sipgw_") for name in after.families)

    # -- Redis goes away and comes back ---------------------------------------------
    assert gw.redis is not None
    port = gw.redis.port
    gw.redis.stop()
    await scrape_until(gw, "redis down", lambda s: s.value("sipgw_redis_up") == 0)
    # On the same port, so the gateway reconnects; the fixture stops this one.
    gw.redis = RedisProcess.start(gw.workdir / "redis-again", port=port)
    back = await scrape_until(gw, "redis up again", lambda s: s.value("sipgw_redis_up") == 1)
    assert back.value("sipgw_live_reconnects_total") >= 1
