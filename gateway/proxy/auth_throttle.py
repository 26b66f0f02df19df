"""Slowing down digest password guessing over SIP. Sans I/O, in memory, per process.

Without it an off-the-shelf SIP cracker found a phone's password in 1.3 s (issue #11):
every wrong guess got a fresh challenge at once. Here each failed digest is remembered
under three keys, each with its own limit:

- the (user, source) pair: one phone guessing one account (``max_failures``);
- the source: one address spraying many accounts (``max_failures_per_source``);
- the user: many addresses guessing one account (``max_failures_per_user`` sources
  that failed for it).

Past a limit the key is *blocked* for a back-off that doubles with every further failure
(``backoff`` … ``backoff_max``); while blocked, an attempt gets no credential check at
all, so guessing faster buys nothing. Failures are forgotten ``window`` seconds after the
first one of a run.

A user's **known sources** (where it authenticated successfully lately) are exempt from
the user's and the source's limits, never from their own pair's: an attacker failing
from elsewhere, or a colleague's misconfigured phone behind the same NAT, never locks out
the real phone registering with the right password from its own address (OWASP's
advice on account lockout: lock the attacker, not the account).

Per process on purpose: the SIP path never waits on Redis. With N workers an attacker
gets at most N times the attempts (a UDP source always lands on the same worker, as
SO_REUSEPORT hashes its address), still a handful per back-off period.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

MAX_ENTRIES = 65_536  # per table: bounded memory under a flood of sources or names
MAX_KNOWN_SOURCES = 8  # per user: its phones and the networks they move between
KNOWN_SOURCE_TTL = 30 * 24 * 3600.0


@dataclass(slots=True)
class _Run:
    failures: int
    first_at: float
    blocked_until: float = 0.0


class _Table:
    """Failure runs by key, least recently touched first, at most ``MAX_ENTRIES``."""

    def __init__(self, limit: int, throttle: AuthThrottle) -> None:
        self.limit = limit
        self.throttle = throttle
        self.runs: OrderedDict[object, _Run] = OrderedDict()

    def blocked_for(self, key: object, now: float) -> float:
        run = self.runs.get(key)
        if run is None or run.blocked_until <= now:
            return 0.0
        return run.blocked_until - now

    def fail(self, key: object, now: float) -> _Run:
        run = self.runs.get(key)
        if run is None or now - run.first_at > self.throttle.window:
            run = _Run(0, now)
        run.failures += 1
        over = run.failures - self.limit
        if over >= 0:
            delay = min(self.throttle.backoff * 2.0 ** min(over, 32), self.throttle.backoff_max)
            run.blocked_until = now + delay
        self.runs[key] = run
        self.runs.move_to_end(key)
        while len(self.runs) > MAX_ENTRIES:
            self.runs.popitem(last=False)
        return run

    def clear(self, key: object) -> None:
        self.runs.pop(key, None)


class AuthThrottle:
    def __init__(
        self,
        *,
        max_failures: int,
        max_failures_per_source: int,
        max_failures_per_user: int,
        backoff: float,
        backoff_max: float,
        window: float,
        clock: Callable[[], float],
    ) -> None:
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.window = window
        self.clock = clock
        self._pairs = _Table(max_failures, self)
        self._sources = _Table(max_failures_per_source, self)
        self._users = _Table(max_failures_per_user, self)
        self._known: OrderedDict[str, dict[str, float]] = OrderedDict()

    def wait(self, user: str | None, source: str) -> float:
        """Seconds before ``user`` may try again from ``source``; 0: check the digest.

        ``user`` is None when the claimed name is no user of ours (only the source's
        limit applies, and unknown names cost no memory).
        """
        now = self.clock()
        wait = self._pairs.blocked_for((user, source), now)
        if wait or (user is not None and self._is_known(user, source, now)):
            return wait
        wait = self._sources.blocked_for(source, now)
        if user is not None:
            wait = max(wait, self._users.blocked_for(user, now))
        return wait

    def failed(self, user: str | None, source: str) -> None:
        now = self.clock()
        pair = self._pairs.fail((user, source), now)
        if user is not None and self._is_known(user, source, now):
            return  # a known phone with a wrong password is its own pair's business
        self._sources.fail(source, now)
        if user is not None and pair.failures == 1:
            # The user's limit counts the sources failing for it, not their guesses: one
            # source is held back by its pair, many sources by this.
            self._users.fail(user, now)

    def succeeded(self, user: str, source: str) -> None:
        now = self.clock()
        self._pairs.clear((user, source))
        known = self._known.pop(user, {})
        known[source] = now
        if len(known) > MAX_KNOWN_SOURCES:
            del known[min(known, key=known.__getitem__)]
        self._known[user] = known
        while len(self._known) > MAX_ENTRIES:
            self._known.popitem(last=False)

    def _is_known(self, user: str, source: str, now: float) -> bool:
        seen = self._known.get(user, {}).get(source)
        return seen is not None and now - seen < KNOWN_SOURCE_TTL
