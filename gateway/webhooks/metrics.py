"""Prometheus families of this node's webhook deliveries (registered by gateway/app.py).

Labels are bounded: ``tenant`` and ``subscription`` name only webhooks that exist and
that this node delivers now (at most ``[webhooks] max_per_tenant`` per tenant), and
``outcome`` is one of three words. A webhook another node takes over leaves this
node's series (Prometheus reads the counters' restart as such).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway.stats import Histogram
from gateway.webhooks.delivery import ATTEMPT_BUCKETS, OUTCOMES
from gateway.webhooks.dispatcher import Dispatcher

_LABELS = ["tenant", "subscription"]


class WebhookCollector(Collector):
    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher

    def collect(self) -> Iterator[Metric]:
        dispatcher = self._dispatcher
        attempts = CounterMetricFamily(
            "sipgw_webhook_deliveries",
            "Delivery attempts by outcome: delivered (2xx), failed (no 2xx answer), refused "
            "(the address may not be reached)",
            labels=[*_LABELS, "outcome"],
        )
        dead = CounterMetricFamily(
            "sipgw_webhook_dead_letters",
            "Events a webhook will never get (trimmed before delivery), counted on this node",
            labels=_LABELS,
        )
        failing = GaugeMetricFamily(
            "sipgw_webhook_failing", "1 while the webhook's attempts fail", labels=_LABELS
        )
        lag = GaugeMetricFamily(
            "sipgw_webhook_lag_seconds",
            "Age of the event being delivered (0: nothing waiting)",
            labels=_LABELS,
        )
        total = Histogram(ATTEMPT_BUCKETS)
        now_ms = time.time() * 1000
        for (tenant, sub_id), stats in list(dispatcher.stats.items()):
            labels = [tenant, sub_id]
            for outcome in OUTCOMES:
                attempts.add_metric([*labels, outcome], stats.attempts[outcome])
            dead.add_metric(labels, stats.dead_letters)
            failing.add_metric(labels, 1.0 if stats.failing else 0.0)
            pending = stats.pending_since_ms
            lag.add_metric(labels, max(0.0, (now_ms - pending) / 1000) if pending else 0.0)
            hist = stats.attempt_seconds
            total.counts = [a + b for a, b in zip(total.counts, hist.counts, strict=True)]
            total.sum += hist.sum
        yield from (attempts, dead, failing, lag)
        seconds = HistogramMetricFamily(
            "sipgw_webhook_attempt_seconds", "Seconds per delivery attempt (every webhook)"
        )
        seconds.add_metric([], total.cumulative(), sum_value=total.sum)
        yield seconds
        yield GaugeMetricFamily(
            "sipgw_webhook_subscriptions_held",
            "Webhooks this node delivers now (it holds their lease)",
            value=dispatcher.held,
        )
        yield CounterMetricFamily(
            "sipgw_webhook_disabled",
            "Webhooks this node disabled after failing for disable_after",
            value=dispatcher.disabled,
        )
