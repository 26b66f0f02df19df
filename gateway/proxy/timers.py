"""Deadlines of the proxy: one heap, fired by whoever owns the clock.

Transactions report deadlines; Timer C and housekeeping add their own. The asyncio
layer keeps a single ``call_at`` armed for ``next_deadline()``; tests call ``fire(now)``
with a fake clock.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(order=True)
class TimerHandle:
    deadline: float
    seq: int
    callback: Callable[[], None] | None = field(compare=False)


class TimerQueue:
    def __init__(self) -> None:
        self._heap: list[TimerHandle] = []
        self._seq = itertools.count()

    def schedule(self, deadline: float, callback: Callable[[], None]) -> TimerHandle:
        handle = TimerHandle(deadline, next(self._seq), callback)
        heapq.heappush(self._heap, handle)
        return handle

    @staticmethod
    def cancel(handle: TimerHandle | None) -> None:
        if handle is not None:
            handle.callback = None  # removed lazily when it reaches the top

    def next_deadline(self) -> float | None:
        while self._heap and self._heap[0].callback is None:
            heapq.heappop(self._heap)
        return self._heap[0].deadline if self._heap else None

    def fire(self, now: float) -> int:
        fired = 0
        while self._heap and self._heap[0].deadline <= now:
            handle = heapq.heappop(self._heap)
            callback, handle.callback = handle.callback, None
            if callback is not None:
                callback()
                fired += 1
        return fired

    def __len__(self) -> int:
        return len(self._heap)
