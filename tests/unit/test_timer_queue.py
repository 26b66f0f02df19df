"""The proxy's timer queue: heap deadlines and fixed-delay lanes fire as one clock."""

from __future__ import annotations

from gateway.proxy.timers import TimerQueue


def test_heap_and_lane_timers_fire_in_deadline_order() -> None:
    queue = TimerQueue()
    fired: list[str] = []
    queue.schedule(5.0, lambda: fired.append("heap@5"))
    queue.schedule_after(0.0, 3.0, lambda: fired.append("lane@3"))
    queue.schedule_after(1.0, 3.0, lambda: fired.append("lane@4"))
    queue.schedule_after(0.0, 10.0, lambda: fired.append("long@10"))
    queue.schedule(3.5, lambda: fired.append("heap@3.5"))
    assert queue.next_deadline() == 3.0
    assert queue.fire(4.0) == 3
    assert fired == ["lane@3", "heap@3.5", "lane@4"]
    assert queue.next_deadline() == 5.0
    assert queue.fire(100.0) == 2
    assert fired[3:] == ["heap@5", "long@10"]
    assert queue.next_deadline() is None and len(queue) == 0


def test_cancelling_a_lane_timer_frees_it_at_once() -> None:
    queue = TimerQueue()
    handles = [queue.schedule_after(float(n), 180.0, lambda: None) for n in range(1000)]
    for handle in handles[:-1]:
        queue.cancel(handle)
    assert len(queue) == 1
    assert queue.next_deadline() == 999.0 + 180.0
    queue.cancel(handles[-1])
    queue.cancel(handles[-1])  # twice is harmless
    assert len(queue) == 0 and queue.next_deadline() is None
    assert queue.fire(10_000.0) == 0


def test_restart_moves_a_lane_timer_behind_the_others() -> None:
    queue = TimerQueue()
    fired: list[str] = []
    first = queue.schedule_after(0.0, 10.0, lambda: fired.append("first"))
    queue.schedule_after(1.0, 10.0, lambda: fired.append("second"))
    queue.restart(first, 2.0)
    assert queue.next_deadline() == 11.0
    queue.fire(11.0)
    assert fired == ["second"]
    queue.fire(12.0)
    assert fired == ["second", "first"]
    queue.restart(first, 20.0)  # a fired timer is not brought back
    queue.cancel(first)
    assert len(queue) == 0 and queue.fire(100.0) == 0


def test_a_clock_going_back_keeps_a_lane_in_order() -> None:
    queue = TimerQueue()
    fired: list[int] = []
    queue.schedule_after(10.0, 5.0, lambda: fired.append(1))
    queue.schedule_after(8.0, 5.0, lambda: fired.append(2))  # would be due first
    assert queue.next_deadline() == 15.0
    assert queue.fire(15.0) == 2 and fired == [1, 2]


def test_a_callback_may_schedule_and_cancel_while_firing() -> None:
    queue = TimerQueue()
    fired: list[str] = []
    later = queue.schedule_after(0.0, 2.0, lambda: fired.append("cancelled"))

    def first() -> None:
        fired.append("first")
        queue.cancel(later)
        queue.schedule_after(1.0, 1.0, lambda: fired.append("chained"))

    queue.schedule_after(0.0, 1.0, first)
    assert queue.fire(2.0) == 2
    assert fired == ["first", "chained"]


def test_schedule_call_passes_its_argument() -> None:
    queue = TimerQueue()
    fired: list[object] = []
    queue.schedule_call(2.0, fired.append, "second")
    queue.schedule_call(1.0, fired.append, None)  # None is an argument like any other
    cancelled = queue.schedule_call(1.5, fired.append, "cancelled")
    queue.cancel(cancelled)
    assert queue.fire(5.0) == 2
    assert fired == [None, "second"]
