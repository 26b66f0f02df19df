"""Login throttling logic with a fake clock (gateway.security.throttle)."""

from __future__ import annotations

import pytest

from gateway.security.throttle import (
    Attempt,
    LoginThrottle,
    MemoryCounterStore,
    Throttled,
    ThrottlePolicy,
    source_bucket,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def throttle(clock: Clock, per_user: int = 3, per_source: int = 10) -> LoginThrottle:
    policy = ThrottlePolicy(
        max_failures=per_user, max_failures_per_source=per_source, lockout=300.0
    )
    return LoginThrottle(MemoryCounterStore(clock), policy)


async def fail(t: LoginThrottle, user: str = "alice", source: str = "192.0.2.1") -> None:
    attempt = await t.acquire("acme", user, source)
    assert isinstance(attempt, Attempt)
    await t.failed(attempt)


async def test_user_locked_after_n_failures_for_the_lockout(clock: Clock) -> None:
    t = throttle(clock)
    for _ in range(3):
        await fail(t)
        clock.now += 10
    refused = await t.acquire("acme", "alice", "192.0.2.1")
    assert isinstance(refused, Throttled) and refused.scope == "user"
    # Locked for lockout seconds from the failure that reached the limit (at +20 s).
    assert refused.retry_after == pytest.approx(290.0)
    # Another source, same user: still locked. Same source, another user: allowed.
    assert isinstance(await t.acquire("acme", "alice", "198.51.100.9"), Throttled)
    assert isinstance(await t.acquire("acme", "bob", "192.0.2.1"), Attempt)
    # Another tenant's alice is someone else.
    assert isinstance(await t.acquire("globex", "alice", "192.0.2.1"), Attempt)
    clock.now += 289.9
    assert isinstance(await t.acquire("acme", "alice", "192.0.2.1"), Throttled)
    clock.now += 0.2
    assert isinstance(await t.acquire("acme", "alice", "192.0.2.1"), Attempt)


async def test_refused_attempts_do_not_extend_the_lock(clock: Clock) -> None:
    t = throttle(clock)
    for _ in range(3):
        await fail(t)
    for _ in range(50):
        clock.now += 5
        assert isinstance(await t.acquire("acme", "alice", "192.0.2.1"), Throttled)
    clock.now += 60  # 310 s after the third failure
    assert isinstance(await t.acquire("acme", "alice", "192.0.2.1"), Attempt)


async def test_failures_outside_the_window_are_forgotten(clock: Clock) -> None:
    t = throttle(clock)
    await fail(t)
    await fail(t)
    clock.now += 301  # the window opened by the first failure has closed
    await fail(t)
    await fail(t)
    assert isinstance(await t.acquire("acme", "alice", "192.0.2.1"), Attempt)


async def test_success_resets_the_user_count(clock: Clock) -> None:
    t = throttle(clock)
    await fail(t)
    await fail(t)
    attempt = await t.acquire("acme", "alice", "192.0.2.1")
    assert isinstance(attempt, Attempt)
    await t.succeeded(attempt)
    await fail(t)
    await fail(t)  # two failures after the success: below the limit of three
    assert isinstance(await t.acquire("acme", "alice", "192.0.2.1"), Attempt)


async def test_concurrent_attempts_are_reserved(clock: Clock) -> None:
    t = throttle(clock)
    # Three attempts in flight at once fill the limit before any of them fails.
    flight = [await t.acquire("acme", "alice", "192.0.2.1") for _ in range(3)]
    assert all(isinstance(a, Attempt) for a in flight)
    assert isinstance(await t.acquire("acme", "alice", "192.0.2.1"), Throttled)


async def test_source_locked_across_usernames(clock: Clock) -> None:
    t = throttle(clock, per_user=100, per_source=5)
    for i in range(5):
        await fail(t, user=f"user{i}")
    refused = await t.acquire("acme", "someone-else", "192.0.2.1")
    assert isinstance(refused, Throttled) and refused.scope == "source"
    assert isinstance(await t.acquire("acme", "someone-else", "192.0.2.2"), Attempt)


async def test_success_gives_back_only_its_own_source_slot(clock: Clock) -> None:
    t = throttle(clock, per_user=100, per_source=3)
    await fail(t, user="x")
    await fail(t, user="y")
    for _ in range(5):  # successes do not add up to a lock, nor wash failures away
        attempt = await t.acquire("acme", "alice", "192.0.2.1")
        assert isinstance(attempt, Attempt)
        await t.succeeded(attempt)
    await fail(t, user="z")
    assert isinstance(await t.acquire("acme", "w", "192.0.2.1"), Throttled)


async def test_source_refusal_does_not_count_against_the_user(clock: Clock) -> None:
    t = throttle(clock, per_user=2, per_source=2)
    await fail(t, user="x")
    await fail(t, user="y")  # the source is now full
    for _ in range(5):
        assert isinstance(await t.acquire("acme", "alice", "192.0.2.1"), Throttled)
    # alice never had a password checked: from elsewhere she has all her attempts.
    await fail(t, user="alice", source="198.51.100.1")
    assert isinstance(await t.acquire("acme", "alice", "198.51.100.2"), Attempt)


async def test_unknown_tenant_counts_the_source_only(clock: Clock) -> None:
    t = throttle(clock, per_user=1, per_source=3)
    for _ in range(3):
        attempt = await t.acquire(None, "alice", "192.0.2.1")
        assert isinstance(attempt, Attempt) and attempt.user_key is None
    assert isinstance(await t.acquire(None, "alice", "192.0.2.1"), Throttled)


@pytest.mark.parametrize(
    ("source", "bucket"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("[2001:db8:1:2::9]", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("testclient", "testclient"),
        ("evil key\r\n*", "evil_key___"),
        ("", "unknown"),
    ],
)
def test_source_bucket(source: str, bucket: str) -> None:
    assert source_bucket(source) == bucket
