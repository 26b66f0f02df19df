"""How long the garbage collector stops the process: every collection, timed from the
interpreter's own ``gc.callbacks`` and kept in the process's counters.

The proxy answers nothing while a collection runs, so a long one is a latency spike on
every call in flight (issue #12 sets the bar at 20 ms). ``app.tune_gc`` makes full
collections rare; this shows what they still cost: ``sipgw_gc_pause_seconds`` (a
histogram), ``sipgw_gc_pause_max_seconds`` and ``sipgw_gc_collections{generation}``.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from gateway.stats import Counters

_GENERATIONS = ("0", "1", "2")


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
