"""Small asyncio helpers shared by the layers that talk to Redis."""

from __future__ import annotations

import asyncio


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that a library swallowed.

    On Python 3.11, ``asyncio.wait_for`` (redis-py sends through it when a socket
    timeout is set) returns normally if the task is cancelled just as the inner
    operation completes: the request stays counted in ``Task.cancelling()`` but no
    CancelledError is ever raised, so a loop around redis calls would run on and
    stop()/asyncio.run() would wait for it forever. Loops around redis
    calls (the bus, the contact index) call this after each one."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
