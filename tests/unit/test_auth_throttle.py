"""Digest guessing slowed down (gateway/proxy/auth_throttle.py), on a hand-moved clock."""

from __future__ import annotations

import pytest

from gateway.proxy.auth_throttle import MAX_ENTRIES, AuthThrottle


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def throttle(clock: Clock) -> AuthThrottle:
    return AuthThrottle(
        max_failures=3,
        max_failures_per_source=5,
        max_failures_per_user=2,
        backoff=1.0,
        backoff_max=8.0,
        window=60.0,
        clock=clock,
    )


def test_a_pair_waits_after_its_limit_and_the_wait_doubles(clock: Clock) -> None:
    t = throttle(clock)
    for _ in range(2):
        t.failed("201", "203.0.113.7")
        assert t.wait("201", "203.0.113.7") == 0
    waits = []
    for _ in range(5):
        t.failed("201", "203.0.113.7")
        waits.append(t.wait("201", "203.0.113.7"))
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0]  # capped at backoff_max
    clock.now += 8.0
    assert t.wait("201", "203.0.113.7") == 0


def test_success_clears_the_pair_and_makes_the_source_known(clock: Clock) -> None:
    t = throttle(clock)
    t.succeeded("201", "198.51.100.1")  # the real phone, registered before
    for source in ("203.0.113.7", "203.0.113.8", "203.0.113.9"):
        t.failed("201", source)  # three sources fail for 201: the user is slowed
    assert t.wait("201", "203.0.113.10") > 0  # from anywhere new
    assert t.wait("201", "198.51.100.1") == 0  # but never from its own phone


def test_one_source_guessing_never_blocks_the_user(clock: Clock) -> None:
    t = throttle(clock)
    for _ in range(50):
        t.failed("201", "203.0.113.7")
    assert t.wait("201", "203.0.113.7") > 0
    assert t.wait("201", "198.51.100.1") == 0  # a phone registering for the first time


def test_a_spraying_source_is_slowed_for_every_user(clock: Clock) -> None:
    t = throttle(clock)
    for user in ("201", "202", "203", "204", "205"):
        t.failed(user, "203.0.113.7")
    assert t.wait("206", "203.0.113.7") > 0
    assert t.wait(None, "203.0.113.7") > 0  # unknown names too


def test_failures_are_forgotten_after_the_window(clock: Clock) -> None:
    t = throttle(clock)
    for _ in range(2):
        t.failed("201", "203.0.113.7")
    clock.now += 61
    t.failed("201", "203.0.113.7")
    assert t.wait("201", "203.0.113.7") == 0  # a new run: one failure


def test_memory_is_bounded(clock: Clock) -> None:
    t = throttle(clock)
    for n in range(MAX_ENTRIES + 100):
        t.failed(None, f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
    assert len(t._pairs.runs) == MAX_ENTRIES
    assert len(t._sources.runs) == MAX_ENTRIES
