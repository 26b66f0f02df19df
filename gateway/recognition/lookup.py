"""Caller look-ups: the local cache first, then Redis, with the outcome measured.

`cached()` is synchronous: a cache hit is answered inside the event path with no task
and no await, which is what most calls of a busy tenant get. `lookup()` goes to Redis;
concurrent look-ups of one number share one round trip (a caller who rings several
extensions at once, or a burst of calls from one number, costs Redis one HGET).
`ask()` is the event path's `lookup`: the HGET is written at once and its answer handed
over by the connection's reader (ContactIndex.ask), with no task and no loop iteration
in between, in which the call's own ringing and answer would be routed first.

Budgets are not enforced here: the event path (gateway/enrichment.py) decides how long
an event may wait. This module only answers, and never raises for Redis trouble: an
unreachable Redis is the status ``error``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from gateway.recognition.cache import Contact, ContactCache
from gateway.recognition.index import ContactIndex, Found, IndexUnavailable
from gateway.stats import Counters

Status = Literal["hit", "miss", "pending", "timeout", "error"]


@dataclass(frozen=True, slots=True)
class Recognition:
    status: Status
    cache: Literal["hit", "miss"] | None  # None: the cache was not asked
    latency_ms: float
    contact: Contact | None = None


Answer = Callable[[Recognition], None]


class Asked:
    """One look-up `Recognizer.ask` started. `cancel()` when its answer is no longer
    wanted: the answer is then neither counted nor handed over (a look-up given up on
    is counted by `Recognizer.gave_up`)."""

    __slots__ = ("_answer", "_task", "start")

    def __init__(self, answer: Answer, start: float) -> None:
        self._answer: Answer | None = answer
        self._task: asyncio.Task[Recognition] | None = None
        self.start = start

    @property
    def wanted(self) -> bool:
        """Neither answered nor cancelled yet."""
        return self._answer is not None

    def cancel(self) -> None:
        self._answer = None
        if self._task is not None:
            self._task.cancel()

    def _give(self, answer: Recognition) -> None:
        give, self._answer = self._answer, None
        if give is not None:
            give(answer)

    def _looked_up(self, task: asyncio.Task[Recognition]) -> None:
        if not task.cancelled():
            self._give(task.result())


class Recognizer:
    def __init__(
        self,
        index: ContactIndex,
        cache: ContactCache,
        counters: Counters,
        *,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.index = index
        self.cache = cache
        self.counters = counters
        self.clock = clock
        self._inflight: dict[tuple[str, str], asyncio.Future[Contact | None]] = {}

    def cached(self, tenant: str, number: str) -> Recognition | None:
        """The answer if the local cache has it, else None (then call `lookup`)."""
        start = self.clock()
        found, contact = self.cache.get(tenant, number)
        if not found:
            return None
        return self._done("hit" if contact else "miss", "hit", start, contact)

    async def lookup(self, tenant: str, number: str) -> Recognition:
        """Cache, then Redis. Counts the outcome and its latency."""
        start = self.clock()
        found, contact = self.cache.get(tenant, number)
        if found:
            return self._done("hit" if contact else "miss", "hit", start, contact)
        try:
            contact = await self._fetch(tenant, number)
        except IndexUnavailable:
            return self._done("error", "miss", start, None)
        return self._done("hit" if contact else "miss", "miss", start, contact)

    def ask(self, tenant: str, number: str, answer: Answer) -> Asked:
        """`lookup` for the event path: `answer` gets the outcome, counted, from the
        reply's reader when the connection is open (no task; the cache is not asked
        again: the caller asked `cached` just before), else from a task running
        `lookup` (no connection yet, or a look-up of the number already in flight).
        Never called from within `ask`; not called once the `Asked` is cancelled."""
        asked = Asked(answer, self.clock())
        key = (tenant, number)
        loop = asyncio.get_running_loop()
        if key not in self._inflight:
            shared: asyncio.Future[Contact | None] = loop.create_future()
            epoch = self.cache.epoch

            def found(result: Found) -> None:
                if self._inflight.get(key) is shared:
                    del self._inflight[key]
                status: Status = "error"
                contact: Contact | None = None
                if isinstance(result, IndexUnavailable):
                    shared.set_exception(result)
                    shared.exception()  # retrieved: no "never retrieved" warning if unshared
                else:
                    self.cache.put(tenant, number, result, epoch)
                    shared.set_result(result)
                    status, contact = ("hit" if result else "miss"), result
                if asked.wanted:
                    asked._give(self._done(status, "miss", asked.start, contact))

            if self.index.ask(tenant, number, found):
                self._inflight[key] = shared  # joiners (`_fetch`) share its reply
                return asked
        task = asked._task = loop.create_task(self.lookup(tenant, number))
        task.add_done_callback(asked._looked_up)
        return asked

    def gave_up(self, status: Status, started: float) -> Recognition:
        """Count a look-up the event path stopped waiting for (timeout) or never started
        (error: too many in flight)."""
        return self._done(status, "miss" if status == "timeout" else "none", started, None)

    async def _fetch(self, tenant: str, number: str) -> Contact | None:
        key = (tenant, number)
        shared = self._inflight.get(key)
        if shared is not None:
            try:
                return await asyncio.shield(shared)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                # The look-up we joined was cancelled (its event stopped waiting): ask
                # Redis ourselves rather than fail a look-up nobody cancelled.
                return await self.index.get(tenant, number)
        future: asyncio.Future[Contact | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        epoch = self.cache.epoch
        try:
            contact = await self.index.get(tenant, number)
        except BaseException as exc:
            if isinstance(exc, IndexUnavailable):
                future.set_exception(exc)
                future.exception()  # retrieved: no "never retrieved" warning if unshared
            else:
                future.cancel()
            raise
        finally:
            del self._inflight[key]
        self.cache.put(tenant, number, contact, epoch)
        future.set_result(contact)
        return contact

    def _done(
        self, status: Status, cache: str, start: float, contact: Contact | None
    ) -> Recognition:
        elapsed = max(0.0, self.clock() - start)
        self.counters.lookups[status, cache] += 1
        self.counters.lookup_seconds.observe(elapsed)
        return Recognition(
            status,
            "hit" if cache == "hit" else "miss" if cache == "miss" else None,
            round(elapsed * 1000, 3),
            contact,
        )
