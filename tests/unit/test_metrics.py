"""/metrics folds plain counters into Prometheus families at scrape time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gateway.api.metrics import GatewayCollector, Gauges, dialogs_active, make_registry, render
from gateway.bus.streams import EventBus, ServerStats
from gateway.calls.events import CAUSES
from gateway.stats import CALL_OUTCOMES, Counters, Histogram
from tests.waiting import wait_until


def scrape(counters: Counters, gauges: Gauges) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = render(make_registry(GatewayCollector(counters, gauges, "node-1"))).decode()
    return {
        f.name: [(dict(s.labels), s.value) for s in f.samples]
        for f in text_string_to_metric_families(text)
    }


@dataclass
class Ev:
    tenant: str = "acme"
    seq: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "type": "call.offered"}


def gauges(**extra: object) -> Gauges:
    return Gauges(lambda: 2, lambda: 3, lambda: 4, lambda: 5, lambda: True, **extra)  # type: ignore[arg-type]


def test_hot_path_counters_appear_with_bounded_labels() -> None:
    counters = Counters()
    counters.request_in("udp", "INVITE")
    counters.request_in("udp", "FOOBAR")  # an invented method is folded into "other"
    counters.response_out("tcp", 486)
    counters.events["call.offered"] += 3
    families = scrape(counters, gauges())
    requests = {
        (lb["method"], lb["direction"]): v
        for lb, v in families["sipgw_sip_requests"]
        if "method" in lb
    }
    assert requests == {("INVITE", "in"): 1.0, ("other", "in"): 1.0}
    assert ({"direction": "out", "transport": "tcp", "status_class": "4xx"}, 1.0) in families[
        "sipgw_sip_responses"
    ]
    assert ({"type": "call.offered"}, 3.0) in families["sipgw_events_emitted"]
    assert families["sipgw_draining"] == [({}, 1.0)]
    assert ({"kind": "client"}, 3.0) in families["sipgw_sip_transactions_active"]


def test_subscriber_queue_depths_are_a_histogram_not_a_series_each() -> None:
    families = scrape(Counters(), gauges(queue_depths=lambda: [0, 3, 50, 2000]))
    buckets = {lb["le"]: v for lb, v in families["sipgw_subscriber_queue_depth"] if "le" in lb}
    assert buckets == {
        "0": 1.0,
        "1": 1.0,
        "10": 2.0,
        "100": 3.0,
        "1000": 3.0,
        "10000": 4.0,
        "+Inf": 4.0,
    }


def test_calls_ended_by_outcome_and_dialogs_from_the_events_counted() -> None:
    counters = Counters()
    for _ in range(3):
        counters.event_emitted("call.offered")
        counters.event_emitted("call.established")
    counters.event_emitted("call.cleared", "normal")
    counters.event_emitted("call.failed", "busy")
    counters.event_emitted("call.failed", "no_answer")
    counters.event_emitted("call.failed", "something-new")  # folded: bounded labels
    counters.event_emitted("call.failed", None)
    families = scrape(counters, gauges(active_calls=lambda: 5))
    ended = {lb["outcome"]: v for lb, v in families["sipgw_calls_ended"]}
    assert ended == {"normal": 1.0, "busy": 1.0, "no_answer": 1.0, "other": 1.0, "unknown": 1.0}
    assert ({"type": "call.established"}, 3.0) in families["sipgw_events_emitted"]
    # 3 established, 1 cleared: 2 dialogs up (a failed call never had one).
    assert families["sipgw_dialogs_active"] == [({}, 2.0)]


def test_dialogs_active_never_exceeds_calls_active_nor_goes_negative() -> None:
    counters = Counters()
    for _ in range(4):
        counters.event_emitted("call.established")
    # The tracker evicted calls without an event: only 1 call is left at all.
    assert dialogs_active(counters, 1) == 1
    counters.dialogs_ended = 9  # cannot happen by events; the gauge still reads sanely
    assert dialogs_active(counters, 1) == 0


def test_call_outcomes_are_the_event_schema_causes() -> None:
    # stats may not import gateway.calls (layers): the two lists must agree by test.
    assert set(CAUSES) == CALL_OUTCOMES


@dataclass
class FakeHub:
    connected: bool = True
    messages: int = 7
    overflows: int = 1
    resyncs: int = 2
    reconnects: int = 3
    live: dict[str, bool] = field(default_factory=lambda: {"10.0.0.1:7000": True})

    def servers(self) -> dict[str, bool]:
        return self.live


@dataclass
class FakeBus:
    published: int = 10
    dropped: dict[str, int] = field(default_factory=lambda: {"buffer_full": 4})
    redis_errors: int = 0
    redis_up: bool = True
    buffered: int = 5
    queued: int = 2
    lag: float = 1.5
    publish_latency: Histogram = field(default_factory=lambda: Histogram((0.01, 0.1)))
    servers: dict[str, ServerStats] = field(default_factory=dict)
    lost: int = 0
    hub: FakeHub = field(default_factory=FakeHub)


def test_each_redis_shard_has_its_up_errors_and_round_trips() -> None:
    bus = FakeBus()
    bus.servers["10.0.0.1:7000"] = ServerStats()
    bus.servers["10.0.0.2:7000"] = ServerStats(up=False, errors=2)
    bus.servers["10.0.0.1:7000"].round_trip.observe(0.0007)
    bus.hub.live["10.0.0.2:7000"] = False
    families = scrape(Counters(), gauges(bus=bus))
    up = {(lb["shard"], lb["link"]): v for lb, v in families["sipgw_redis_shard_up"]}
    assert up == {
        ("10.0.0.1:7000", "bus"): 1.0, ("10.0.0.2:7000", "bus"): 0.0,
        ("10.0.0.1:7000", "live"): 1.0, ("10.0.0.2:7000", "live"): 0.0,
    }  # fmt: skip
    errors = {lb["shard"]: v for lb, v in families["sipgw_redis_shard_errors"]}
    assert errors == {"10.0.0.1:7000": 0.0, "10.0.0.2:7000": 2.0}
    trips = {
        lb["le"]: v
        for lb, v in families["sipgw_redis_shard_round_trip_seconds"]
        if lb.get("shard") == "10.0.0.1:7000" and "le" in lb
    }
    assert trips["0.001"] == 1.0 and trips["0.0005"] == 0.0


def test_bus_families_lag_latency_and_redis_up_from_both_connections() -> None:
    bus = FakeBus()
    bus.publish_latency.observe(0.005)
    bus.publish_latency.observe(0.05)
    bus.publish_latency.observe(3.0)
    families = scrape(Counters(), gauges(bus=bus))
    assert families["sipgw_events_buffered"] == [({}, 7.0)]  # queue + writer's buffer
    assert families["sipgw_bus_lag_seconds"] == [({}, 1.5)]
    assert families["sipgw_events_dropped"] == [({"reason": "buffer_full"}, 4.0)]
    latency = {lb["le"]: v for lb, v in families["sipgw_bus_publish_latency_seconds"] if lb}
    assert latency == {"0.01": 1.0, "0.1": 2.0, "+Inf": 3.0}
    assert families["sipgw_redis_up"] == [({}, 1.0)]
    assert families["sipgw_subscriber_overflows"] == [({}, 1.0)]
    assert families["sipgw_live_reconnects"] == [({}, 3.0)]
    # The writer has not noticed (no event to write), the live connection has: down.
    bus.hub.connected = False
    assert scrape(Counters(), gauges(bus=bus))["sipgw_redis_up"] == [({}, 0.0)]
    bus.hub.connected, bus.redis_up = True, False
    assert scrape(Counters(), gauges(bus=bus))["sipgw_redis_up"] == [({}, 0.0)]


async def test_a_real_bus_without_redis_shows_lag_and_redis_down() -> None:
    bus = EventBus(
        "redis://127.0.0.1:1/0", counters=Counters(), flush_timeout=0.1, backoff_initial=0.05
    )
    await bus.start()
    try:
        assert bus.publish(Ev())
        await wait_until(lambda: bus.redis_errors > 0 and bus.buffered == 1, what="a failed try")
        await wait_until(lambda: bus.lag > 0.02, what="lag to grow")
        families = scrape(Counters(), gauges(bus=bus))
        assert families["sipgw_redis_up"] == [({}, 0.0)]
        assert families["sipgw_events_buffered"] == [({}, 1.0)]
        (lag,) = (v for _, v in families["sipgw_bus_lag_seconds"])
        assert lag > 0.02
    finally:
        assert await bus.stop() == 1
    assert bus.lag == 0.0


def test_every_family_is_named_and_documented_as_the_conventions_say() -> None:
    counters = Counters()
    counters.request_in("udp", "INVITE")
    counters.event_emitted("call.failed", "busy")
    text = render(
        make_registry(GatewayCollector(counters, gauges(bus=FakeBus()), "node-1"))
    ).decode()
    families = list(text_string_to_metric_families(text))
    assert len(families) > 30
    assert [f.name for f in families if not f.documentation.strip()] == []
    assert [f.name for f in families if not f.name.startswith("sipgw_")] == []
    counters_named = {s.name for f in families if f.type == "counter" for s in f.samples}
    assert all(name.endswith("_total") for name in counters_named)
    # Durations are histograms in seconds.
    timed = [f.name for f in families if "latency" in f.name or "rtt" in f.name]
    assert timed and all(name.endswith("_seconds") for name in timed)
