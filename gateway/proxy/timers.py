"""Deadlines of the proxy: one heap plus fixed-delay lanes, fired by whoever owns the
clock.

Transactions report deadlines; Timer C and housekeeping add their own. The asyncio
layer keeps a single ``call_at`` armed for ``next_deadline()``; tests call ``fire(now)``
with a fake clock.

A cancelled heap entry stays in the heap until it reaches the top. That is cheap for
deadlines a few seconds out, but Timer C is three minutes and nearly always cancelled
(the branch answered): at 600 calls/s the heap would carry ~100 000 dead entries,
memory that fills for three minutes and that every full collection walks. Timers of
one fixed delay fall due in the order they were set, so a lane keeps them in an
ordered dict instead, where cancelling or restarting one is O(1) and frees it at once
(Kamailio's tm keeps its timer lists for the same reason).
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Callable
from typing import Any


class _NoArgument:
    pass


_NO_ARGUMENT: Any = _NoArgument()


class TimerHandle:
    """A pending timer. `argument`, when given, is what the callback is called with: a
    caller that sets many timers passes one bound method and the object each one is
    for, instead of making a closure per timer (objects the young collections walk)."""

    __slots__ = ("argument", "callback", "deadline", "lane")

    def __init__(
        self,
        deadline: float,
        callback: Callable[..., None],
        lane: Lane | None = None,
        argument: Any = _NO_ARGUMENT,
    ) -> None:
        self.deadline = deadline
        self.callback: Callable[..., None] | None = callback
        self.lane = lane
        self.argument = argument


class Lane:
    """The pending timers of one delay, soonest first (the order they were set)."""

    __slots__ = ("delay", "handles")

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.handles: OrderedDict[TimerHandle, None] = OrderedDict()

    def first(self) -> TimerHandle | None:
        return next(iter(self.handles)) if self.handles else None


class TimerQueue:
    """The heap holds (deadline, sequence, handle): tuples compare in C, deadline
    first, then the order of scheduling, never reaching the handle."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._lanes: dict[float, Lane] = {}

    def schedule(self, deadline: float, callback: Callable[[], None]) -> TimerHandle:
        return self._push(TimerHandle(deadline, callback))

    def schedule_call(
        self, deadline: float, callback: Callable[[Any], None], argument: object
    ) -> TimerHandle:
        """`callback(argument)` at `deadline`."""
        return self._push(TimerHandle(deadline, callback, None, argument))

    def _push(self, handle: TimerHandle) -> TimerHandle:
        heapq.heappush(self._heap, (handle.deadline, next(self._seq), handle))
        return handle

    def schedule_after(self, now: float, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """A timer `delay` seconds from `now`, in that delay's lane: for long timers
        that are usually cancelled (Timer C)."""
        lane = self._lanes.get(delay)
        if lane is None:
            lane = self._lanes[delay] = Lane(delay)
        handle = TimerHandle(self._lane_deadline(lane, now), callback, lane)
        lane.handles[handle] = None
        return handle

    def restart(self, handle: TimerHandle, now: float) -> None:
        """Move a pending lane timer to `now` plus its delay (§16.7 step 2 resets
        Timer C on a provisional response)."""
        lane = handle.lane
        if lane is None or handle not in lane.handles:
            return  # fired or cancelled: both take it out of its lane
        handle.deadline = self._lane_deadline(lane, now)
        lane.handles.move_to_end(handle)

    @staticmethod
    def _lane_deadline(lane: Lane, now: float) -> float:
        # A lane stays in deadline order only if the clock never goes back; should a
        # test's clock do so, its timer waits for the one set before it.
        deadline = now + lane.delay
        if lane.handles:
            last = next(reversed(lane.handles)).deadline
            if deadline < last:
                return last
        return deadline

    @staticmethod
    def cancel(handle: TimerHandle | None) -> None:
        if handle is not None:
            handle.callback = None  # a heap entry is removed lazily, at the top
            lane = handle.lane
            if lane is not None:
                lane.handles.pop(handle, None)

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].callback is None:
            heapq.heappop(heap)
        soonest = heap[0][0] if heap else None
        for lane in self._lanes.values():
            first = lane.first()
            if first is not None and (soonest is None or first.deadline < soonest):
                soonest = first.deadline
        return soonest

    def fire(self, now: float) -> int:
        fired = 0
        heap = self._heap
        while True:
            handle = heap[0][2] if heap and heap[0][0] <= now else None
            for lane in self._lanes.values():
                first = lane.first()
                if first is None or first.deadline > now:
                    continue
                if handle is None or first.deadline < handle.deadline:
                    handle = first
            if handle is None:
                return fired
            if handle.lane is None:
                heapq.heappop(heap)
            else:
                del handle.lane.handles[handle]
            callback, handle.callback = handle.callback, None
            if callback is not None:
                argument = handle.argument
                if argument is _NO_ARGUMENT:
                    callback()
                else:
                    callback(argument)
                fired += 1

    def __len__(self) -> int:
        return len(self._heap) + sum(len(lane.handles) for lane in self._lanes.values())
