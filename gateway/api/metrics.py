"""Prometheus exposition: hot-path counters folded in at scrape time.

The SIP path only increments plain integers (``gateway.stats.Counters``); this
collector turns them into metric families when ``/metrics`` is read, so a scrape costs
work proportional to the number of label sets, never to the traffic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.stats import Counters, Histogram

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
    # The trunks the OPTIONS prober watches (gateway/proxy/prober.py Peer).
    peers: Callable[[], Iterable[PeerStats]] = lambda: ()
    # Every node's probes merged (gateway/proxy/trunk_health.py): what routing skips.
    trunk_health: TrunkHealthStats | None = None
    peers_down: Callable[[], int] = lambda: 0  # trunks this worker's routing skips
    dial_active: Callable[[], int] = lambda: 0  # click-to-dial requests not finished
    blf_subscriptions: Callable[[], int] = lambda: 0  # dialog-event subscriptions (gateway/blf)


class PeerStats(Protocol):
    """One probed trunk (gateway/proxy/prober.py Peer): plain numbers kept by the prober."""

    @property
    def tenant(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def up(self) -> bool: ...
    @property
    def sent(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def rtt(self) -> Histogram: ...


class TrunkHealthStats(Protocol):
    """The merged view of every node's probes (gateway/proxy/trunk_health.py HealthView)."""

    def is_down(self, tenant: str, trunk: str) -> bool: ...
    def down_by(self, tenant: str, trunk: str) -> tuple[str, ...]: ...


class CacheStats(Protocol):
    """What the contact cache exposes (gateway/recognition/cache.py ContactCache)."""

    @property
    def hits(self) -> int: ...
    @property
    def misses(self) -> int: ...
    def __len__(self) -> int: ...


class HubStats(Protocol):
    """What the live side of the bus exposes (gateway/bus/live.py LiveHub)."""

    @property
    def connected(self) -> bool: ...
    @property
    def messages(self) -> int: ...
    @property
    def overflows(self) -> int: ...
    @property
    def resyncs(self) -> int: ...
    @property
    def reconnects(self) -> int: ...
    def servers(self) -> Mapping[str, bool]: ...


class ServerStats(Protocol):
    """The bus writer's figures of one Redis server (gateway/bus/streams.py)."""

    @property
    def up(self) -> bool: ...
    @property
    def errors(self) -> int: ...
    @property
    def round_trip(self) -> Histogram: ...


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
    @property
    def queued(self) -> int: ...
    @property
    def lag(self) -> float: ...
    @property
    def publish_latency(self) -> Histogram: ...
    @property
    def servers(self) -> Mapping[str, ServerStats]: ...
    @property
    def lost(self) -> int: ...
    @property
    def hub(self) -> HubStats: ...


class GatewayCollector(Collector):
    def __init__(
        self,
        counters: Counters,
        gauges: Gauges,
        node: str,
        workers: Callable[[], dict[int, dict[str, Any]]] | None = None,
    ) -> None:
        self.counters = counters
        self.gauges = gauges
        self.node = node
        # Worker processes: the latest counters of each sibling, summed into this
        # scrape (every worker's counters, one set of series; docs/workers.md).
        self.workers = workers

    def collect(self) -> Iterator[Metric]:
        c = self.counters
        if self.workers is not None:
            siblings = self.workers()
            yield from self._workers(siblings)
            c = merged(c, siblings)
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
        yield self._simple(
            "sipgw_sip_refused",
            "SIP messages the edge refused or dropped, by reason",
            "reason",
            c.security,
        )
        yield self._simple(
            "sipgw_sip_auth_failures",
            "Failed SIP digest authentications by reason (throttled: refused unchecked)",
            "reason",
            c.auth_failures,
        )
        yield self._simple(
            "sipgw_hep_dropped", "HEP packets dropped, by reason", "reason", c.hep_dropped
        )
        yield self._simple(
            "sipgw_dial_requests",
            "Click-to-dial requests: accepted, and how they finished",
            "outcome",
            c.dial_requests,
        )
        yield GaugeMetricFamily(
            "sipgw_dial_requests_active",
            "Click-to-dial requests not finished yet",
            value=self.gauges.dial_active(),
        )
        yield self._simple(
            "sipgw_blf_events",
            "Busy lamp field: NOTIFYs answered or failed, subscriptions the notifier ended",
            "event",
            c.blf,
        )
        yield GaugeMetricFamily(
            "sipgw_blf_subscriptions",
            "Busy lamp field (dialog event) subscriptions held by this node's workers",
            value=self.gauges.blf_subscriptions(),
        )
        active_calls = self.gauges.active_calls()
        yield GaugeMetricFamily(
            "sipgw_calls_active",
            "Calls not ended yet (offered, ringing, established or held)",
            value=active_calls,
        )
        yield GaugeMetricFamily(
            "sipgw_dialogs_active",
            "Calls in a confirmed dialog (established or held)",
            value=dialogs_active(c, active_calls),
        )
        yield self._simple(
            "sipgw_calls_ended",
            "Calls ended (call.cleared or call.failed), by normalized cause",
            "outcome",
            c.calls_ended,
        )
        yield GaugeMetricFamily(
            "sipgw_subscribers",
            "Event subscribers connected to this node",
            value=self.gauges.subscribers(),
        )
        yield self._depth_histogram(self.gauges.queue_depths())
        yield from self._recognition()
        yield from self._gc(c)
        yield from self._peers()
        bus = self.gauges.bus
        if bus is not None:
            yield from self._bus(bus)

    @staticmethod
    def _bus(bus: BusStats) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "sipgw_events_published", "Events written to Redis", value=bus.published
        )
        yield GatewayCollector._simple(
            "sipgw_events_dropped",
            "Events lost before Redis, by reason",
            "reason",
            dict(bus.dropped),
        )
        yield GaugeMetricFamily(
            "sipgw_events_buffered",
            "Events published but not yet written to Redis (queue and writer's buffer)",
            value=bus.buffered + bus.queued,
        )
        yield folded_histogram(
            "sipgw_bus_publish_latency_seconds",
            "Time from an event's publish to Redis confirming it is in the stream",
            bus.publish_latency,
        )
        yield GaugeMetricFamily(
            "sipgw_bus_lag_seconds",
            "Age of the oldest event waiting for Redis (0: none waiting)",
            value=bus.lag,
        )
        yield CounterMetricFamily(
            "sipgw_redis_errors", "Failed Redis round trips", value=bus.redis_errors
        )
        yield CounterMetricFamily(
            "sipgw_bus_events_lost",
            "Events Redis acknowledged that later were no longer in the stream (a failover "
            "with asynchronous replication)",
            value=bus.lost,
        )
        hub = bus.hub
        # Both connections must be fine: the writer learns of an outage only when it
        # has an event to write, the live connection (pinged) as soon as it happens.
        yield GaugeMetricFamily(
            "sipgw_redis_up",
            "1 while Redis takes the bus's writes and its live (pub/sub) connection is up",
            value=1 if bus.redis_up and hub.connected else 0,
        )
        yield CounterMetricFamily(
            "sipgw_live_messages",
            "Live events received from Redis pub/sub for local subscribers",
            value=hub.messages,
        )
        yield CounterMetricFamily(
            "sipgw_live_reconnects",
            "Live (pub/sub) connections to Redis re-established after a loss",
            value=hub.reconnects,
        )
        yield CounterMetricFamily(
            "sipgw_subscriber_overflows",
            "Subscriptions cut off because their queue was full (the client resumes by replay)",
            value=hub.overflows,
        )
        yield CounterMetricFamily(
            "sipgw_subscriber_resyncs",
            "Subscriptions told to replay a gap after the live connection came back",
            value=hub.resyncs,
        )
        yield from GatewayCollector._redis_shards(bus)

    @staticmethod
    def _redis_shards(bus: BusStats) -> Iterator[Metric]:
        # One label value per Redis server the bus talks to: the one server, or each
        # cluster master (a bounded set: the writer keeps at most bus.MAX_SERVERS).
        up = GaugeMetricFamily(
            "sipgw_redis_shard_up",
            "1 while the bus's connection to this Redis server works (link: bus = the "
            "event writer, live = the pub/sub reader)",
            labels=["shard", "link"],
        )
        errors = CounterMetricFamily(
            "sipgw_redis_shard_errors",
            "Failed append round trips to this Redis server",
            labels=["shard"],
        )
        latency = HistogramMetricFamily(
            "sipgw_redis_shard_round_trip_seconds",
            "Time of one append round trip (a batch of events) to this Redis server",
            labels=["shard"],
        )
        for shard, stats in sorted(bus.servers.items()):
            up.add_metric([shard, "bus"], 1 if stats.up else 0)
            errors.add_metric([shard], stats.errors)
            latency.add_metric(
                [shard], stats.round_trip.cumulative(), sum_value=stats.round_trip.sum
            )
        for shard, live in sorted(bus.hub.servers().items()):
            up.add_metric([shard, "live"], 1 if live else 0)
        yield from (up, errors, latency)

    def _peers(self) -> Iterator[Metric]:
        # Labelled by the trunk's configured name (and its tenant: names are unique per
        # tenant only), so the label set is as bounded as the configuration.
        labels = ["tenant", "peer"]
        up = GaugeMetricFamily(
            "sipgw_peer_up",
            "1 while routing takes the trunk, 0 while a node's probes find it down",
            labels=labels,
        )
        probe_up = GaugeMetricFamily(
            "sipgw_peer_probe_up", "1 while this node's own probes find the trunk up", labels=labels
        )
        reports = GaugeMetricFamily(
            "sipgw_peer_down_reports",
            "Nodes (this one included) whose fresh reports list the trunk down",
            labels=labels,
        )
        health = self.gauges.trunk_health
        sent = CounterMetricFamily("sipgw_peer_options_sent", "OPTIONS probes sent", labels=labels)
        failed = CounterMetricFamily(
            "sipgw_peer_options_failed",
            "OPTIONS probes that failed (timeout, transport error, a failure code)",
            labels=labels,
        )
        rtt = HistogramMetricFamily(
            "sipgw_peer_options_rtt_seconds",
            "Time from sending an OPTIONS probe to its final response",
            labels=labels,
        )
        for peer in self.gauges.peers():
            key = [peer.tenant, peer.name]
            down_by = health.down_by(peer.tenant, peer.name) if health else ()
            shared_up = not down_by if health else peer.up
            up.add_metric(key, 1 if shared_up else 0)
            probe_up.add_metric(key, 1 if peer.up else 0)
            reports.add_metric(key, len(down_by) if health else 0 if peer.up else 1)
            sent.add_metric(key, peer.sent)
            failed.add_metric(key, peer.failed)
            rtt.add_metric(key, peer.rtt.cumulative(), sum_value=peer.rtt.sum)
        yield from (up, probe_up, reports, sent, failed, rtt)

    def _gc(self, c: Counters) -> Iterator[Metric]:
        # Every worker's pauses together (the maximum is the longest of any worker).
        yield folded_histogram(
            "sipgw_gc_pause_seconds",
            "Garbage-collector pauses: how long each collection stopped the process",
            c.gc_pause_seconds,
        )
        yield GaugeMetricFamily(
            "sipgw_gc_pause_max_seconds",
            "The longest garbage-collector pause since start",
            value=c.gc_pause_max_seconds,
        )
        yield GaugeMetricFamily(
            "sipgw_gc_pause_cpu_max_seconds",
            "The longest garbage-collector pause since start, in CPU time (the wall-clock "
            "one also counts time the scheduler gave the core to another process)",
            value=c.gc_pause_cpu_max_seconds,
        )
        yield self._simple(
            "sipgw_gc_collections", "Garbage collections by generation", "generation",
            c.gc_collections,
        )  # fmt: skip

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
        yield folded_histogram(
            "sipgw_lookup_latency_seconds",
            "Time from the start of a look-up to its answer",
            c.lookup_seconds,
        )
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

    def _workers(self, siblings: dict[int, dict[str, Any]]) -> Iterator[Metric]:
        """Which worker processes report, and how much SIP each one takes in."""
        up = GaugeMetricFamily(
            "sipgw_worker_up", "1 for each worker process whose counters are in", labels=["worker"]
        )
        taken = CounterMetricFamily(
            "sipgw_worker_requests",
            "SIP requests received, by worker process (how the kernel spreads them)",
            labels=["worker"],
        )
        skipped = GaugeMetricFamily(
            "sipgw_worker_peers_down",
            "Trunks each worker process's routing skips (the same on every worker once "
            "the reports have reached it)",
            labels=["worker"],
        )
        own = sum(n for (d, _, _), n in self.counters.requests.items() if d == "in")
        up.add_metric(["0"], 1)
        taken.add_metric(["0"], own)
        skipped.add_metric(["0"], self.gauges.peers_down())
        for index, stats in sorted(siblings.items()):
            up.add_metric([str(index)], 1)
            requests = stats.get("counters", {}).get("requests", [])
            taken.add_metric([str(index)], sum(n for key, n in requests if key[0] == "in"))
            gauges = stats.get("gauges", {})
            down = gauges.get("peers_down", 0) if isinstance(gauges, dict) else 0
            skipped.add_metric([str(index)], down if isinstance(down, int) else 0)
        yield up
        yield taken
        yield skipped

    @staticmethod
    def _simple(name: str, doc: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=[label])
        for key, value in sorted(values.items()):
            family.add_metric([key], value)
        return family


def merged(own: Counters, workers: dict[int, dict[str, Any]]) -> Counters:
    """This process's counters plus every sibling worker's latest snapshot."""
    total = Counters()
    total.merge(own.snapshot())
    for stats in workers.values():
        total.merge(stats.get("counters", {}))
    return total


def dialogs_active(counters: Counters, active_calls: int) -> int:
    """Confirmed dialogs up: established minus cleared, from the events counted. A call
    the tracker evicts (``max_calls``) ends without an event, so the difference is kept
    within [0, calls active]: it can never claim more dialogs than calls."""
    return max(0, min(counters.dialogs_started - counters.dialogs_ended, active_calls))


def folded_histogram(name: str, doc: str, hist: Histogram) -> HistogramMetricFamily:
    """A plain-int `gateway.stats.Histogram` as a Prometheus histogram family."""
    family = HistogramMetricFamily(name, doc)
    family.add_metric([], hist.cumulative(), sum_value=hist.sum)
    return family


def make_registry(collector: GatewayCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
