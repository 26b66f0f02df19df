"""Deadlines of the proxy: one heap, fired by whoever owns the clock.

Transactions report deadlines; Timer C and housekeeping add their own. The asyncio
layer keeps a single ``call_at`` armed for ``next_deadline()``; tests call ``fire(now)``
with a fake clock.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable


class TimerHandle:
    __slots__ = ("callback", "deadline")

    def __init__(self, deadline: float, callback: Callable[[], None]) -> None:
        self.deadline = deadline
        self.callback: Callable[[], None] | None = callback


class TimerQueue:
    """The heap holds (deadline, sequence, handle): tuples compare in C, deadline
    first, then the order of scheduling, never reaching the handle."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()

    def schedule(self, deadline: float, callback: Callable[[], None]) -> TimerHandle:
        handle = TimerHandle(deadline, callback)
        heapq.heappush(self._heap, (deadline, next(self._seq), handle))
        return handle

    @staticmethod
    def cancel(handle: TimerHandle | None) -> None:
        if handle is not None:
            handle.callback = None  # removed lazily when it reaches the top

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].callback is None:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def fire(self, now: float) -> int:
        fired = 0
        heap = self._heap
        while heap and heap[0][0] <= now:
            handle = heapq.heappop(heap)[2]
            callback, handle.callback = handle.callback, None
            if callback is not None:
                callback()
                fired += 1
        return fired

    def __len__(self) -> int:
        return len(self._heap)
