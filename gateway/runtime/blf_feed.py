"""The busy lamp field's food: each watched tenant's call events, from the bus, handed
to the notifier (gateway/blf/notifier.py) in stream order.

A process watches a tenant from its first dialog subscription of that tenant on (and
for as long as it runs: the cost is one live subscription per tenant, decoded once for
every subscription of the process). The events come from the tenant's stream and its
live channel (`replay.events_since`), not from this process's own call tracker, so a
subscription made on one worker or node sees the calls every other worker and node
handles, and each call once, as the call model made it (forked branches are never
dialogs of their own).

Catch-up: the first read starts ``catch_up`` seconds back in the stream, so calls in
progress show at once. Those events only build the state; the notifier sends nothing
for them, and once the read has reached what was the stream's end when it started,
every subscription of the tenant gets one NOTIFY with the state as it is now
(`Notifier.caught_up`). A call that started before the catch-up window shows from its
next event (its answer or its end).

Redis away: the read resumes from the last event it handed on (events_since replays
the gap), with a capped backoff; NOTIFYs simply wait for the events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from gateway.blf.notifier import Notifier, Run
from gateway.bus import keys
from gateway.bus.live import SubscriberOverflow
from gateway.bus.replay import BusReader, BusUnavailable, events_since
from gateway.redis_link import Backoff

log = logging.getLogger("sipgw.blf")

_BACKOFF_INITIAL, _BACKOFF_CAP = 0.2, 5.0


class BlfFeed:
    def __init__(self, bus: BusReader, *, catch_up: float) -> None:
        self.bus = bus
        self.catch_up = catch_up
        self.notifier: Notifier | None = None  # set once the notifier exists
        self.run: Run = lambda fn: fn()  # ProxyServer.run: re-arms the proxy's timer
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def watch(self, tenant: str) -> None:
        """Follow ``tenant``'s events from now on (once per tenant)."""
        if tenant not in self._tasks:
            self._tasks[tenant] = asyncio.get_running_loop().create_task(
                self._follow(tenant), name=f"blf-feed-{tenant}"
            )

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _follow(self, tenant: str) -> None:
        cursor = f"{max(0, int((time.time() - self.catch_up) * 1000))}-0"
        end: keys.SeqKey | None = None  # the stream's end when the catch-up started
        caught_up = False
        backoff = Backoff(_BACKOFF_INITIAL, _BACKOFF_CAP)

        async def ready() -> None:
            nonlocal end, caught_up
            if caught_up or end is not None:
                return
            last = await self.bus.last_seq(tenant)
            if last is None or keys.parse_seq(last) <= keys.parse_seq(cursor):
                caught_up = True
                self._caught_up(tenant)
            else:
                end = keys.parse_seq(last)

        while True:
            try:
                async for item in events_since(
                    self.bus, tenant, cursor, on_ready=ready, allow_gap=True
                ):
                    if item is None:
                        continue
                    seq, event = item
                    cursor = seq
                    self._deliver(tenant, event)
                    if not caught_up and end is not None and keys.parse_seq(seq) >= end:
                        caught_up = True
                        self._caught_up(tenant)
                    backoff.reset()
                return  # the hub closed: the process is stopping
            except (BusUnavailable, SubscriberOverflow) as exc:
                delay = backoff.next()
                log.warning(
                    "blf: the event feed of a tenant is interrupted; resuming",
                    extra={"tenant": tenant, "error": str(exc), "retry_in": round(delay, 2)},
                )
                await asyncio.sleep(delay)

    def _deliver(self, tenant: str, event: dict[str, Any]) -> None:
        notifier = self.notifier
        if notifier is None:
            return
        try:
            self.run(lambda: notifier.on_event(tenant, event))
        except Exception:
            # One bad event must not stop the lamps of a whole tenant.
            log.exception("blf: an event could not be applied", extra={"tenant": tenant})

    def _caught_up(self, tenant: str) -> None:
        notifier = self.notifier
        if notifier is not None:
            self.run(lambda: notifier.caught_up(tenant))
