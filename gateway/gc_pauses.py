"""The garbage collector in a running gateway: when it runs, and what it costs.

The proxy answers nothing while a collection runs, so a long one is a latency spike on
every call in flight (issue #12 sets the bar at 20 ms).

When. Each call leaves transactions alive for 32 s (Timer B, Timer K…): at 600 calls/s
about two million objects, which a full collection walks in one to two seconds. And
CPython's own trigger (allocations minus deallocations of tracked objects) misfires in
a steady state: the old transactions freed each second cancel the new ones counted, so
the young generation grows far past its threshold before a collection starts, and then
walks all of it in one pause (measured with thresholds 1 000 / 2: pauses of 20 to 95 ms at
600 calls/s). So once started (`tune_gc`) the gateway turns the automatic collector off
and collects the young and middle generations together on a clock (`collect_young`):
each collection walks only what was made since the last one and is still alive, ~50 ms
of traffic. The old generation is never collected: a call's state must be freed by
reference counting, not left in cycles (tests run calls through the proxy and the call
tracker and find no cyclic garbage). A collection on a clock has to take the middle
generation too: young-only collections would each move survivors to the middle one,
which grows until CPython's trigger walks it in one long pause.

Cost. Every collection is timed from the interpreter's own ``gc.callbacks`` (`GcPauses`)
into ``sipgw_gc_pause_seconds`` (a histogram), ``sipgw_gc_pause_max_seconds``,
``sipgw_gc_pause_cpu_max_seconds`` and ``sipgw_gc_collections{generation}``.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any, NoReturn

from gateway.stats import Counters

_GENERATIONS = ("0", "1", "2")

# Seconds between two collections of the young and middle generations.
YOUNG_INTERVAL = 0.05


def tune_gc() -> None:
    """Once the gateway is started: the heap built so far (modules, the app, settings)
    never becomes garbage, so it is frozen out of every later collection; then the
    automatic collector is turned off, `collect_young` takes over."""
    gc.collect()
    gc.freeze()
    gc.disable()


def gc_auto() -> None:
    """Back to CPython's own collector, once the gateway has stopped (its process may go
    on: a test, an embedding program)."""
    gc.enable()


async def collect_young(interval: float = YOUNG_INTERVAL) -> NoReturn:
    """Collect the young and middle generations every `interval` seconds (see above)."""
    while True:
        await asyncio.sleep(interval)
        gc.collect(1)


class GcPauses:
    """A ``gc.callbacks`` entry: "start" notes the time, "stop" counts the pause."""

    __slots__ = ("_counters", "_cpu_started", "_started")

    def __init__(self, counters: Counters) -> None:
        self._counters = counters
        self._started = 0.0
        self._cpu_started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            self._cpu_started = time.thread_time()
            return
        pause = time.perf_counter() - self._started
        # The same pause in CPU time: on a busy machine the scheduler may take the core
        # away in the middle of a collection, which the wall-clock pause includes.
        cpu = time.thread_time() - self._cpu_started
        counters = self._counters
        if cpu > counters.gc_pause_cpu_max_seconds:
            counters.gc_pause_cpu_max_seconds = cpu
        counters.gc_pause_seconds.observe(pause)
        generation = info.get("generation")
        counters.gc_collections[_GENERATIONS[generation] if generation in (0, 1, 2) else "?"] += 1
        if pause > counters.gc_pause_max_seconds:
            counters.gc_pause_max_seconds = pause

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)
