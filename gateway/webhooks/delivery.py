"""One webhook's delivery loop: the tenant's stream, from the stored position, one
event at a time, each sent until it is answered 2xx.

Why one at a time: the order per subscription is the stream's, and a receiver that
answers 2xx to an event must have had every event before it. The position (the seq of
the last event answered 2xx) is written after each success, fenced by the lease
(store.py): a node that lost the webhook cannot move the position of the one that took
it over. Events come through `events_since` (gateway/bus/replay.py): the stored
position replayed from the stream, then live; a receiver slower than the live queue
makes it overflow, and the loop simply resumes from the stored position.

Failures are retried with exponential backoff and jitter (`retry_delay`). A run of
failures starts a clock in Redis (``failing_since``, kept across nodes and restarts);
a success clears it. When it has run ``disable_after`` seconds the webhook is disabled
and a ``webhook.disabled`` event says so.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gateway.bus import keys as bus_keys
from gateway.bus.live import SubscriberOverflow
from gateway.bus.replay import BusReader, BusUnavailable, events_since
from gateway.bus.streams import EventsLost
from gateway.calls.events import encode_json
from gateway.config import WebhookSettings
from gateway.redis_link import Backoff
from gateway.stats import Histogram
from gateway.webhooks import signing
from gateway.webhooks.client import DeliveryError, DestinationRefused, Poster
from gateway.webhooks.store import StoreUnavailable, WebhookStore
from gateway.webhooks.subscriptions import Subscription

log = logging.getLogger("sipgw.webhooks")

ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
OUTCOMES = ("delivered", "failed", "refused")


class Disabled(Exception):
    """The webhook failed for ``disable_after`` and was disabled."""


class LeaseLost(Exception):
    """Another node holds the webhook now: this loop stops."""


def retry_delay(failures: int, initial: float, maximum: float, draw: float) -> float:
    """Seconds before the next attempt after ``failures`` in a row: ``initial`` doubled
    per failure up to ``maximum``, less a random part of up to half (``draw`` in [0, 1))
    so that many senders do not retry in step."""
    full = min(maximum, initial * 2.0 ** min(failures - 1, 60))
    return full * (1.0 - 0.5 * draw)


@dataclass
class DeliveryStats:
    """One webhook's figures on this node (/metrics, webhooks/metrics.py)."""

    attempts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    dead_letters: int = 0
    failing: bool = False
    # Stream time (ms) of the event in hand: its lag is now minus this (0: idle).
    pending_since_ms: int = 0
    attempt_seconds: Histogram = field(default_factory=lambda: Histogram(ATTEMPT_BUCKETS))


class Courier:
    """Delivers one webhook while this node holds its lease (dispatcher.py)."""

    def __init__(
        self,
        sub: Subscription,
        *,
        bus: BusReader,
        store: WebhookStore,
        poster: Poster,
        settings: WebhookSettings,
        owner: str,
        stats: DeliveryStats,
        disable: Callable[[Subscription, str, float], Awaitable[None]],
        queue_size: int = 1000,
        clock: Callable[[], float] = time.time,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.sub = sub
        self._bus = bus
        self._store = store
        self._poster = poster
        self._settings = settings
        self._owner = owner
        self.stats = stats
        self._disable = disable
        self._queue_size = queue_size
        self._clock = clock
        self._draw = draw

    async def run(self) -> None:
        """Until cancelled, disabled (`Disabled`) or the lease is lost (`LeaseLost`)."""
        sub = self.sub
        outage = Backoff(0.5, 10.0)
        allow_gap = False
        try:
            while True:
                try:
                    cursor = await self._store.cursor(sub.tenant, sub.id)
                    async for item in events_since(
                        self._bus, sub.tenant, cursor, sub.event_filter,
                        maxsize=self._queue_size, allow_gap=allow_gap or cursor == "0-0",
                    ):  # fmt: skip
                        assert item is not None  # no `wake`: never None
                        seq, event = item
                        await self._deliver(seq, event)
                        if not await self._store.advance(sub.tenant, sub.id, self._owner, seq):
                            raise LeaseLost(sub.id)
                        outage.reset()
                        allow_gap = False
                    return  # the hub closed: the gateway is stopping
                except SubscriberOverflow:
                    continue  # slower than the live queue: resume from the position
                except EventsLost as lost:
                    await self._lost(lost)
                    allow_gap = True
                except (BusUnavailable, StoreUnavailable) as exc:
                    log.warning(
                        "webhook: redis unavailable, delivery paused",
                        extra={"tenant": sub.tenant, "webhook": sub.id, "error": str(exc)},
                    )
                    await asyncio.sleep(outage.next())
        finally:
            self._poster.close()
            self.stats.pending_since_ms = 0

    async def _lost(self, lost: EventsLost) -> None:
        """Retention trimmed events before this webhook got them: dead letters (at least
        one: Redis does not say how many it trimmed)."""
        sub = self.sub
        self.stats.dead_letters += 1
        await self._store.add_dead_letters(sub.tenant, sub.id, 1)
        log.warning(
            "webhook: events were trimmed from the stream before delivery",
            extra={"tenant": sub.tenant, "webhook": sub.id, "after": lost.after,
                   "oldest_held": lost.oldest},
        )  # fmt: skip

    async def _deliver(self, seq: str, event: dict[str, object]) -> None:
        """Send one event until it is answered 2xx; `Disabled` when the failures have
        lasted ``disable_after``."""
        sub, stats, settings = self.sub, self.stats, self._settings
        body = encode_json(event)
        msg_id = str(event.get("event_id") or seq)
        stats.pending_since_ms = bus_keys.parse_seq(seq)[0]
        failures = 0
        while True:
            started = time.perf_counter()
            try:
                status = await self._poster.post(
                    body, signing.headers(sub.secret, msg_id, int(self._clock()), body)
                )
                outcome, reason = (
                    ("delivered" if 200 <= status < 300 else "failed"),
                    f"HTTP {status}",
                )
            except DestinationRefused as refused:
                outcome, reason = "refused", str(refused)
            except DeliveryError as error:
                outcome, reason = "failed", str(error)
            stats.attempts[outcome] += 1
            stats.attempt_seconds.observe(time.perf_counter() - started)
            if outcome == "delivered":
                if stats.failing:
                    log.info("webhook: delivering again",
                             extra={"tenant": sub.tenant, "webhook": sub.id})  # fmt: skip
                stats.failing = False
                stats.pending_since_ms = 0
                return
            failures += 1
            since = await self._store.failing_since(sub.tenant, sub.id, self._clock())
            if not stats.failing:
                stats.failing = True
                log.warning(
                    "webhook: delivery failing, retrying",
                    extra={"tenant": sub.tenant, "webhook": sub.id, "reason": reason},
                )
            if self._clock() - since >= settings.disable_after:
                await self._disable(sub, reason, since)
                raise Disabled(sub.id)
            await asyncio.sleep(
                retry_delay(failures, settings.retry_initial, settings.retry_max, self._draw())
            )
