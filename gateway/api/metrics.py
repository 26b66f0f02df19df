"""Prometheus exposition: hot-path counters folded in at scrape time.

The SIP path only increments plain integers (``gateway.stats.Counters``); this
collector turns them into metric families when ``/metrics`` is read, so a scrape costs
work proportional to the number of label sets, never to the traffic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.stats import Counters

DEPTH_BUCKETS = (0, 1, 10, 100, 1000, 10000)


@dataclass
class Gauges:
    """Values read live at scrape time (callables, so nothing is cached stale)."""

    server_transactions: Callable[[], int]
    client_transactions: Callable[[], int]
    registered_contacts: Callable[[], int]
    stream_connections: Callable[[], int]
    draining: Callable[[], bool]
    active_calls: Callable[[], int] = lambda: 0
    subscribers: Callable[[], int] = lambda: 0
    # Per-subscription queue depths, as a histogram: never one series per subscriber.
    queue_depths: Callable[[], list[int]] = lambda: []
    bus: BusStats | None = None
    contact_cache: CacheStats | None = None


class CacheStats(Protocol):
    """What the contact cache exposes (gateway/recognition/cache.py ContactCache)."""

    @property
    def hits(self) -> int: ...
    @property
    def misses(self) -> int: ...
    def __len__(self) -> int: ...


class BusStats(Protocol):
    """What the event bus exposes (gateway/bus/streams.py EventBus)."""

    # Read-only properties: EventBus holds plain attributes, which satisfy them.
    @property
    def published(self) -> int: ...
    @property
    def dropped(self) -> Mapping[str, int]: ...
    @property
    def redis_errors(self) -> int: ...
    @property
    def redis_up(self) -> bool: ...
    @property
    def buffered(self) -> int: ...


class GatewayCollector(Collector):
    def __init__(self, counters: Counters, gauges: Gauges, node: str) -> None:
        self.counters = counters
        self.gauges = gauges
        self.node = node

    def collect(self) -> Iterator[Metric]:
        c = self.counters
        info = GaugeMetricFamily(
            "sipgw_build_info", "Version and node of this gateway", labels=["version", "node"]
        )
        info.add_metric([__version__, self.node], 1)
        yield info

        requests = CounterMetricFamily(
            "sipgw_sip_requests",
            "SIP requests by direction, transport and method",
            labels=["direction", "transport", "method"],
        )
        for (direction, transport, method), value in sorted(c.requests.items()):
            requests.add_metric([direction, transport, method], value)
        yield requests

        responses = CounterMetricFamily(
            "sipgw_sip_responses",
            "SIP responses by direction, transport and status class",
            labels=["direction", "transport", "status_class"],
        )
        for (direction, transport, klass), value in sorted(c.responses.items()):
            responses.add_metric([direction, transport, klass], value)
        yield responses

        yield self._simple(
            "sipgw_sip_parse_errors",
            "Messages refused by the parser, by answer code and header",
            "reason",
            c.parse_errors,
        )
        yield self._simple(
            "sipgw_sip_transactions_created", "Transactions created", "kind", c.transactions_created
        )
        yield self._simple("sipgw_registrations", "REGISTER outcomes", "outcome", c.registrations)
        yield self._simple(
            "sipgw_sip_local_replies",
            "Responses the gateway generated itself",
            "status_class",
            c.local_replies,
        )
        yield self._simple("sipgw_transport_events", "Transport-level events", "event", c.transport)

        active = GaugeMetricFamily(
            "sipgw_sip_transactions_active", "Transactions in progress", labels=["kind"]
        )
        active.add_metric(["server"], self.gauges.server_transactions())
        active.add_metric(["client"], self.gauges.client_transactions())
        yield active
        yield GaugeMetricFamily(
            "sipgw_registered_contacts",
            "Live registered contacts",
            value=self.gauges.registered_contacts(),
        )
        yield GaugeMetricFamily(
            "sipgw_stream_connections",
            "Open TCP/TLS connections",
            value=self.gauges.stream_connections(),
        )
        yield GaugeMetricFamily(
            "sipgw_draining",
            "1 while the gateway refuses new calls",
            value=1 if self.gauges.draining() else 0,
        )
        yield self._simple("sipgw_events_emitted", "Call events emitted, by type", "type", c.events)
        yield self._simple("sipgw_hep_packets", "HEP intake packets by outcome", "outcome", c.hep)
        yield GaugeMetricFamily(
            "sipgw_calls_active", "Calls the tracker follows", value=self.gauges.active_calls()
        )
        yield GaugeMetricFamily(
            "sipgw_subscribers",
            "Event subscribers connected to this node",
            value=self.gauges.subscribers(),
        )
        yield self._depth_histogram(self.gauges.queue_depths())
        yield from self._recognition()
        bus = self.gauges.bus
        if bus is not None:
            yield CounterMetricFamily(
                "sipgw_events_published", "Events written to Redis", value=bus.published
            )
            yield self._simple(
                "sipgw_events_dropped",
                "Events lost before Redis, by reason",
                "reason",
                dict(bus.dropped),
            )
            yield GaugeMetricFamily(
                "sipgw_events_buffered", "Events waiting for Redis (bus lag)", value=bus.buffered
            )
            yield CounterMetricFamily(
                "sipgw_redis_errors", "Failed Redis round trips", value=bus.redis_errors
            )
            yield GaugeMetricFamily(
                "sipgw_redis_up",
                "1 while Redis answers the event bus",
                value=1 if bus.redis_up else 0,
            )

    def _recognition(self) -> Iterator[Metric]:
        c = self.counters
        lookups = CounterMetricFamily(
            "sipgw_lookups",
            "Caller look-ups by result and local cache answer (none: not asked)",
            labels=["status", "cache"],
        )
        for (status, cache), value in sorted(c.lookups.items()):
            lookups.add_metric([status, cache], value)
        yield lookups
        latency = HistogramMetricFamily(
            "sipgw_lookup_latency_seconds", "Time from the start of a look-up to its answer"
        )
        hist = c.lookup_seconds
        latency.add_metric([], hist.cumulative(), sum_value=hist.sum)
        yield latency
        contacts = self.gauges.contact_cache
        if contacts is not None:
            yield GaugeMetricFamily(
                "sipgw_contact_cache_hit_ratio",
                "Local contact cache hits / look-ups since start",
                value=contacts.hits / max(1, contacts.hits + contacts.misses),
            )
            yield GaugeMetricFamily(
                "sipgw_contact_cache_entries",
                "Numbers in the local contact cache",
                value=len(contacts),
            )
        yield self._simple(
            "sipgw_contacts_applied",
            "Contact numbers written by the sync API, by operation",
            "operation",
            c.contacts,
        )

    @staticmethod
    def _depth_histogram(depths: list[int]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "sipgw_subscriber_queue_depth",
            "Events waiting in each subscriber's queue (one observation per subscriber)",
        )
        buckets = []
        for bound in DEPTH_BUCKETS:
            buckets.append((str(bound), sum(1 for d in depths if d <= bound)))
        buckets.append(("+Inf", len(depths)))
        family.add_metric([], buckets, sum_value=sum(depths))
        return family

    @staticmethod
    def _simple(name: str, doc: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=[label])
        for key, value in sorted(values.items()):
            family.add_metric([key], value)
        return family


def make_registry(collector: GatewayCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
