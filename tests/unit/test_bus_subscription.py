"""LiveSubscription on its own: bounded queue, overflow, resync, close, readiness."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from gateway.bus import LiveSubscription, SubscriberOverflow, SubscriberResync


def ev(n: int) -> tuple[str, dict[str, object]]:
    return f"{n}-0", {"n": n}


async def take(sub: LiveSubscription, count: int) -> list[str]:
    out = []
    async with asyncio.timeout(2):
        for _ in range(count):
            seq, _event = await anext(sub)
            out.append(seq)
    return out


async def test_delivers_in_order_and_reports_depth() -> None:
    sub = LiveSubscription(5)
    for n in range(1, 4):
        assert sub.offer(*ev(n))
    assert sub.depth == 3
    assert await take(sub, 3) == ["1-0", "2-0", "3-0"]
    assert sub.depth == 0
    assert sub.last_seq == "3-0"


async def test_waiting_consumer_is_woken() -> None:
    sub = LiveSubscription(5)
    task = asyncio.create_task(take(sub, 1))
    await asyncio.sleep(0)
    assert not task.done()
    sub.offer(*ev(7))
    assert await task == ["7-0"]


async def test_overflow_yields_what_was_queued_then_raises_with_last_seq() -> None:
    sub = LiveSubscription(3)
    assert await take(sub, 0) == []
    for n in range(1, 4):
        assert sub.offer(*ev(n))
    assert not sub.offer(*ev(4))  # does not fit: overflow
    assert sub.overflowed
    assert not sub.offer(*ev(5))  # over: nothing more is taken
    assert await take(sub, 3) == ["1-0", "2-0", "3-0"]
    with pytest.raises(SubscriberOverflow) as info:
        await anext(sub)
    assert info.value.last_seq == "3-0"
    # It stays over: asking again says the same.
    with pytest.raises(SubscriberOverflow):
        await anext(sub)


async def test_overflow_before_anything_was_delivered_keeps_the_start_seq() -> None:
    sub = LiveSubscription(1, last_seq="41-0")
    sub.offer(*ev(42))
    sub.offer(*ev(43))
    assert await take(sub, 1) == ["42-0"]
    with pytest.raises(SubscriberOverflow) as info:
        await anext(sub)
    assert info.value.last_seq == "42-0"


async def test_overflow_wakes_a_waiting_consumer() -> None:
    sub = LiveSubscription(1, last_seq="9-0")
    task = asyncio.create_task(anext(sub))
    await asyncio.sleep(0)
    sub.offer(*ev(10))
    sub.offer(*ev(11))
    assert (await task)[0] == "10-0"
    with pytest.raises(SubscriberOverflow):
        await anext(sub)


async def test_resync_after_queued_events() -> None:
    sub = LiveSubscription(5)
    sub.offer(*ev(1))
    sub.resync()
    assert not sub.offer(*ev(2))
    assert await take(sub, 1) == ["1-0"]
    with pytest.raises(SubscriberResync) as info:
        await anext(sub)
    assert info.value.last_seq == "1-0"


async def test_close_ends_iteration_and_detaches_once() -> None:
    detached: list[LiveSubscription] = []
    sub = LiveSubscription(5, on_end=detached.append)
    sub.offer(*ev(1))
    task = asyncio.create_task(take(sub, 2))
    await asyncio.sleep(0)
    sub.close()
    sub.close()
    with pytest.raises(StopAsyncIteration):
        await task
    assert detached == [sub]
    assert [x async for x in sub] == []


async def test_ready_is_signalled_and_an_ended_subscription_does_not_hang() -> None:
    sub = LiveSubscription(5)
    assert not sub.ready
    sub.mark_ready()
    await asyncio.wait_for(sub.wait_ready(), 1)
    other = LiveSubscription(5)
    other.close()
    await asyncio.wait_for(other.wait_ready(), 1)


def test_maxsize_must_be_positive() -> None:
    with pytest.raises(ValueError):
        LiveSubscription(0)


async def test_a_swallowed_cancellation_is_raised_again() -> None:
    from gateway.redis_link import raise_if_cancelled

    async def body() -> str:
        raise_if_cancelled()  # nothing pending: a no-op
        asyncio.current_task().cancel()  # type: ignore[union-attr]
        # Swallowed, as asyncio.wait_for does on 3.11 when the inner call just finished.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0)
        raise_if_cancelled()
        return "ran on"

    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(body())


async def test_unwanted_events_take_no_place_in_the_queue() -> None:
    # A subscriber of call.offered only, behind a tenant busy with other event types:
    # its queue of 2 holds what it wants, and it is never cut off for the rest.
    sub = LiveSubscription(2, accept=lambda event: event["type"] == "call.offered")
    for n in range(100):
        assert sub.offer(f"{n}-0", {"type": "call.cleared"})
    assert sub.offer("100-0", {"type": "call.offered"})
    assert sub.offer("101-0", {"type": "call.offered"})
    assert not sub.overflowed and sub.depth == 2
    assert not sub.offer("102-0", {"type": "call.offered"})  # a third wanted one: full
    assert sub.overflowed
