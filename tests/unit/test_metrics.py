"""/metrics folds plain counters into Prometheus families at scrape time."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from gateway.api.metrics import GatewayCollector, Gauges, make_registry, render
from gateway.stats import Counters


def scrape(counters: Counters, gauges: Gauges) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = render(make_registry(GatewayCollector(counters, gauges, "node-1"))).decode()
    return {
        f.name: [(dict(s.labels), s.value) for s in f.samples]
        for f in text_string_to_metric_families(text)
    }


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
