"""gateway/redis_link.py: the backoff, the reconnect loop's states and delays (on a
hand-moved clock), cancellation, and one real redis-server stopped and restarted."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import pytest

from gateway.redis_link import Backoff, RedisLink, client, dedicated_connection
from tests.integration.gateway import RedisProcess
from tests.waiting import wait_until


def test_backoff_doubles_up_to_its_cap_and_starts_again_after_a_reset() -> None:
    backoff = Backoff(0.1, 1.0, jitter=0)
    assert [backoff.next() for _ in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    backoff.reset()
    assert backoff.next() == pytest.approx(0.1)


def test_jitter_only_shortens_a_delay_by_at_most_its_share() -> None:
    draws = iter([0.0, 1.0, 0.5])
    backoff = Backoff(1.0, 8.0, jitter=0.5, draw=lambda: next(draws))
    # 1 s untouched, 2 s cut by half, 4 s by a quarter: never longer than the plain delay,
    # never under (1 - jitter) of it.
    assert [backoff.next() for _ in range(3)] == pytest.approx([1.0, 1.0, 3.0])


@pytest.mark.parametrize(("initial", "cap", "jitter"), [(0, 1, 0), (2, 1, 0), (1, 2, 1.0)])
def test_a_backoff_that_makes_no_sense_is_refused(
    initial: float, cap: float, jitter: float
) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(initial, cap, jitter=jitter)


class Script:
    """Sessions played from a list on a hand-moved clock: each step says whether the
    session comes up and how long it then serves before it fails."""

    def __init__(self, link_steps: list[tuple[bool, float]]) -> None:
        self.now = 100.0
        self.slept: list[float] = []
        self.steps = list(link_steps)
        self.changes: list[tuple[bool, str | None]] = []
        self.link = RedisLink(
            on_change=lambda up, error: self.changes.append((up, error)),
            clock=lambda: self.now,
            sleep=self.sleep,
        )

    async def sleep(self, delay: float) -> None:
        self.slept.append(delay)
        self.now += delay

    async def session(self) -> None:
        if not self.steps:
            raise asyncio.CancelledError  # the script is over: end the loop as stop() does
        comes_up, serves = self.steps.pop(0)
        if comes_up:
            self.link.came_up()
            self.now += serves
        raise ConnectionError("connection refused")


async def run_script(steps: list[tuple[bool, float]], steady: float = 10.0) -> Script:
    script = Script(steps)
    with pytest.raises(asyncio.CancelledError):
        await script.link.run(script.session, Backoff(0.1, 2.0, jitter=0), steady=steady)
    return script


async def test_failures_wait_longer_each_time_and_a_steady_session_starts_again_quick() -> None:
    script = await run_script(
        [
            (False, 0), (False, 0), (False, 0),  # Redis away: 0.1, 0.2, 0.4
            (True, 1.0),  # up for 1 s (< steady): no reset, 0.8
            (False, 0),  # 1.6
            (True, 30.0),  # served 30 s: back to the first delay, 0.1
            (False, 0), (False, 0), (False, 0), (False, 0), (False, 0), (False, 0),
        ]
    )  # fmt: skip
    assert script.slept == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.6, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    )
    # One report per change, not one per failure; the first coming up is no change.
    assert [up for up, _ in script.changes] == [False, True, False, True, False]
    assert all(
        error == "ConnectionError: connection refused" for up, error in script.changes if not up
    )
    assert script.link.errors == 12 and script.link.reconnects == 1
    assert (
        script.link.up is False and script.link.last_error == "ConnectionError: connection refused"
    )


async def test_with_no_steady_time_any_session_that_came_up_resets_the_backoff() -> None:
    script = await run_script([(False, 0), (False, 0), (True, 0.0), (False, 0)], steady=0.0)
    assert script.slept == pytest.approx([0.1, 0.2, 0.1, 0.2])
    assert script.changes[0] == (False, "ConnectionError: connection refused")
    assert script.changes[1] == (True, None)


async def test_a_link_that_starts_up_reports_its_first_failure_and_its_return() -> None:
    changes: list[bool] = []
    link = RedisLink(up=True, on_change=lambda up, _error: changes.append(up))
    assert link.connected
    link.came_up()  # already up: nothing to report
    link.went_down(OSError("reset"))
    link.went_down(OSError("refused"))
    link.came_up()
    assert changes == [False, True] and link.errors == 2 and link.reconnects == 1


async def test_a_bug_in_a_session_is_logged_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0
    slept: list[float] = []

    async def session() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyError("a bug")
        raise asyncio.CancelledError

    async def sleep(delay: float) -> None:
        slept.append(delay)

    link = RedisLink(sleep=sleep)
    with caplog.at_level(logging.ERROR), pytest.raises(asyncio.CancelledError):
        await link.run(session, Backoff(0.5, 1.0, jitter=0), failure_log="test: round failed")
    assert calls == 2 and slept == [0.5]
    assert [r.getMessage() for r in caplog.records] == ["test: round failed"]
    assert caplog.records[0].exc_info is not None and link.last_error == "KeyError: 'a bug'"


async def test_a_cancellation_the_session_swallowed_still_ends_the_loop() -> None:
    """redis-py on Python 3.11 can swallow a cancel (see raise_if_cancelled): the loop
    must end anyway, not sleep and reconnect for ever."""
    entered = asyncio.Event()
    sessions = 0
    slept: list[float] = []

    async def session() -> None:
        nonlocal sessions
        sessions += 1
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return  # swallowed, as the library does

    async def sleep(delay: float) -> None:
        slept.append(delay)

    link = RedisLink(sleep=sleep)
    task = asyncio.create_task(link.run(session, Backoff(0.1, 1.0)))
    await entered.wait()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert task in done and task.cancelled()
    assert sessions == 1 and slept == []


async def test_a_real_redis_stopped_and_restarted(tmp_path: Path) -> None:
    """A pub/sub session on a dedicated connection: it goes down when redis-server is
    stopped, is retried with the backoff, and comes back when it is started again on the
    same port."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisProcess.start(tmp_path / "redis")
    redis = client(server.url, name="test")
    changes: list[bool] = []
    link = RedisLink(on_change=lambda up, _error: changes.append(up))
    names: list[bytes] = []

    async def session() -> None:
        conn = dedicated_connection(redis)
        try:
            await conn.connect()  # type: ignore[no-untyped-call]
            await conn.send_command("CLIENT", "GETNAME")
            names.append(await conn.read_response(timeout=2))
            await conn.send_command("SUBSCRIBE", "test:link")
            reply = await conn.read_response(timeout=2)
            assert isinstance(reply, list) and reply[0] == b"subscribe"
            link.came_up()
            while True:
                await conn.read_response(timeout=None)
        finally:
            await conn.disconnect()

    task = asyncio.create_task(link.run(session, Backoff(0.02, 0.2)))
    try:
        await wait_until(lambda: link.up is True, what="the first session")
        server.stop()
        await wait_until(lambda: link.up is False, what="the link to go down")
        await wait_until(lambda: link.errors >= 3, what="a few retries while it is away")
        server = RedisProcess.start(tmp_path / "redis", port=server.port)
        await wait_until(lambda: link.up is True, what="the link to come back")
        assert changes == [False, True] and link.reconnects == 1
        assert names[0] == b"sipgw-test" and len(names) == 2
    finally:
        task.cancel()
        await asyncio.wait({task}, timeout=5)
        await redis.aclose()
        server.stop()
    assert task.cancelled()
