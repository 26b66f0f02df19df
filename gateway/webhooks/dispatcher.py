"""The node's side of webhooks: which subscriptions it delivers, and their tasks.

One dispatcher runs per node, on the worker that serves HTTP (docs/workers.md): every
``refresh_interval`` it reads the subscriptions of every tenant that has some
(`keys.WEBHOOK_TENANTS`), renews the leases it holds, tries to take the ones nobody
holds, and runs one `Courier` per subscription it holds. A lease lapses
``lease_ttl`` after its holder stopped renewing it (a node that died or lost Redis),
and the next node to look takes the subscription over, from the stored position.
A change made through this node's API wakes the dispatcher at once (`poke`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.bus.replay import BusReader
from gateway.calls.events import CallEvent, Webhook, rfc3339
from gateway.config import WebhookSettings
from gateway.webhooks.client import Poster, client_context
from gateway.webhooks.delivery import Courier, DeliveryStats, Disabled, LeaseLost
from gateway.webhooks.destinations import WebhookDestinations
from gateway.webhooks.store import StoreUnavailable, WebhookStore
from gateway.webhooks.subscriptions import Subscription

log = logging.getLogger("sipgw.webhooks")

Key = tuple[str, str]  # (tenant, subscription id)


@dataclass
class _Running:
    sub: Subscription
    task: asyncio.Task[None]


class Dispatcher:
    def __init__(
        self,
        store: WebhookStore,
        bus: BusReader,
        settings: WebhookSettings,
        destinations: WebhookDestinations,
        *,
        node: str,
        publish: Callable[[CallEvent], None],
        queue_size: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._bus = bus
        self.settings = settings
        self._destinations = destinations
        self._node = node
        self._publish = publish
        self._queue_size = queue_size
        self._clock = clock
        self.owner = f"{node}/{os.getpid()}/{secrets.token_hex(4)}"
        self._tls = client_context(settings.tls_ca)
        self._running: dict[Key, _Running] = {}
        # The figures of the webhooks this node delivers (bounded by what exists:
        # max_per_tenant per tenant); dropped when the node stops delivering one.
        self.stats: dict[Key, DeliveryStats] = {}
        self.disabled = 0  # webhooks this node disabled
        self._wake = asyncio.Event()
        self._redis_down = False

    @property
    def held(self) -> int:
        return len(self._running)

    def poke(self) -> None:
        """Look again now (a webhook was made, deleted or enabled through the API)."""
        self._wake.set()

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self._round()
                    if self._redis_down:
                        log.info("webhooks: redis reachable again")
                    self._redis_down = False
                except StoreUnavailable as exc:
                    if not self._redis_down:
                        log.warning("webhooks: redis unavailable", extra={"error": str(exc)})
                    self._redis_down = True
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.refresh_interval):
                        await self._wake.wait()
        finally:
            await self._stop_all()

    async def _round(self) -> None:
        wanted: dict[Key, Subscription] = {}
        for tenant in await self.store.tenants():
            for sub in await self.store.all(tenant):
                if sub.enabled:
                    wanted[(tenant, sub.id)] = sub
        for key, running in list(self._running.items()):
            found = wanted.get(key)
            if found is None or found != running.sub or running.task.done():
                await self._stop(key)
        ttl = self.settings.lease_ttl
        for key, sub in wanted.items():
            held = await self.store.lease(sub.tenant, sub.id, self.owner, ttl)
            if key in self._running:
                if not held:  # lapsed while Redis was away, and taken by another node
                    await self._stop(key, release=False)
            elif held:
                self._start(key, sub)

    def _start(self, key: Key, sub: Subscription) -> None:
        hooks = self.settings
        poster = Poster(
            sub.url,
            refusal=self._destinations.refusal,
            tls=self._tls,
            connect_timeout=hooks.connect_timeout,
            timeout=hooks.timeout,
            max_response=hooks.max_response_bytes,
        )
        stats = self.stats.setdefault(key, DeliveryStats())
        courier = Courier(
            sub, bus=self._bus, store=self.store, poster=poster, settings=hooks,
            owner=self.owner, stats=stats, disable=self._disable,
            queue_size=self._queue_size, clock=self._clock,
        )  # fmt: skip
        task = asyncio.create_task(self._guarded(courier), name=f"webhook-{sub.id}")
        self._running[key] = _Running(sub, task)
        log.info("webhook: delivering from this node",
                 extra={"tenant": sub.tenant, "webhook": sub.id})  # fmt: skip

    async def _guarded(self, courier: Courier) -> None:
        sub = courier.sub
        try:
            await courier.run()
        except Disabled:
            self.poke()
        except LeaseLost:
            log.info("webhook: taken over by another node",
                     extra={"tenant": sub.tenant, "webhook": sub.id})  # fmt: skip
        except Exception:
            # The next round starts it again; say why it stopped.
            log.exception("webhook delivery stopped", extra={"webhook": sub.id})

    async def _stop(self, key: Key, *, release: bool = True) -> None:
        running = self._running.pop(key)
        running.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running.task
        self.stats.pop(key, None)
        if release:
            with contextlib.suppress(StoreUnavailable):
                await self.store.release(key[0], key[1], self.owner)

    async def _stop_all(self) -> None:
        for key in list(self._running):
            await asyncio.shield(self._stop(key))

    async def _disable(self, sub: Subscription, reason: str, failing_since: float) -> None:
        """Mark the webhook disabled and say so in the tenant's stream."""
        now = self._clock()
        await self.store.save(sub.disabled(now, reason))
        self.disabled += 1
        hook = Webhook(sub.id, sub.url, reason[:512], rfc3339(failing_since))
        self._publish(
            CallEvent("webhook.disabled", rfc3339(now), self._node, sub.tenant, webhook=hook)
        )
        log.warning(
            "webhook disabled: failing too long",
            extra={"tenant": sub.tenant, "webhook": sub.id, "reason": reason,
                   "failing_since": rfc3339(failing_since)},
        )  # fmt: skip
