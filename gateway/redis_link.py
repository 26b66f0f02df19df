"""Redis links: the one place that makes a Redis client, and the one reconnect loop.

Every part of the gateway that talks to Redis (the event writer and the live hub of the
bus, the contact index and its invalidations, the shared location, the security
directory) gets its client from `client()` and, when it holds a connection open
(pub/sub), a connection of its own from `dedicated_connection()`. Issue #14 (Redis
Cluster, Sentinel) changes these two functions and nothing else.

The SIP path never waits on Redis (DESIGN.md), so each user decides what to do while
Redis is away (buffer events, serve registrations from memory, turn a cache off) and
retries by itself: a client made here does not retry inside the library unless asked,
because a retry hidden in redis-py would stall the caller's loop and blur its counts.

`RedisLink` is the state of one link (up, down, or not known yet), its error counts and
its reconnect loop (`run`): a session that connects and serves until the connection
fails, again and again, with a `Backoff` between two sessions. Its ``on_change``
callback sees each change of state once (one log line per outage, not one per retry)
and is what ``sipgw_redis_up`` follows.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger("sipgw.redis")

# What a lost or refused connection raises: redis-py's own errors, the socket's, and a
# read that timed out (ours, or the library's).
LINK_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class LinkOptions:
    """How a client connects. The defaults suit a request/response user that owns its
    retries; a user states what differs, and why, where it makes its client."""

    # Seconds a command may wait for its reply. None: no limit, for a connection held
    # open for pub/sub, whose reads pass their own timeout.
    socket_timeout: float | None = 5.0
    connect_timeout: float = 2.0
    decode_responses: bool = False
    # PING before a command on a connection idle this long (0: never). Never on a pub/sub
    # connection: the PING's reply would be read as a message, or a message as its reply.
    health_check_interval: float = 0.0
    # False: one try, the caller retries (see the module docstring). True: redis-py's own
    # retry policy (a few tries with jittered backoff), for a user with no loop of its own.
    library_retries: bool = False
    # RESP2: pub/sub replies come back from ``read_response`` (RESP3 diverts them to a
    # push handler). None: the library's default (RESP3 if the server speaks it).
    protocol: Literal[2, 3] | None = 2


def client(url: str, *, name: str | None, options: LinkOptions = LinkOptions()) -> Redis:
    """A client of the Redis at `url` (``redis://``, ``rediss://``, ``unix://``), named
    ``sipgw-<name>`` in CLIENT LIST so an operator sees which part of the gateway holds
    each connection (None: unnamed, one round trip less per connection)."""
    extra: dict[str, Any] = {}  # no ``retry`` at all: redis-py's default policy
    if not options.library_retries:
        extra["retry"] = Retry(NoBackoff(), 0)
    return Redis.from_url(
        url,
        protocol=options.protocol,
        client_name=None if name is None else f"sipgw-{name}",
        socket_timeout=options.socket_timeout,
        socket_connect_timeout=options.connect_timeout,
        socket_keepalive=True,
        decode_responses=options.decode_responses,
        health_check_interval=options.health_check_interval,
        **extra,
    )


def dedicated_connection(redis: Redis) -> Connection:
    """A connection of `redis`'s settings that no pool hands out: for SUBSCRIBE, which
    holds a connection for as long as it listens. The caller connects and disconnects it."""
    return redis.connection_pool.make_connection()  # type: ignore[no-untyped-call,no-any-return]


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that a library swallowed.

    On Python 3.11, ``asyncio.wait_for`` (redis-py sends through it when a socket
    timeout is set) returns normally if the task is cancelled just as the inner
    operation completes: the request stays counted in ``Task.cancelling()`` but no
    CancelledError is ever raised, so a loop around redis calls would run on and
    stop()/asyncio.run() would wait for it forever. Loops around redis calls call this
    after each one."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Backoff:
    """Capped exponential backoff with jitter: `initial`, twice that, four times … up to
    `cap`, each delay shortened by up to ``jitter`` of itself at random, so that the
    workers and nodes that lost one Redis together do not all come back in the same
    instant. `reset()` after a success starts again from `initial`."""

    def __init__(
        self,
        initial: float,
        cap: float,
        *,
        jitter: float = 0.2,
        draw: Callable[[], float] = random.random,
    ) -> None:
        if not 0 < initial <= cap:
            raise ValueError("backoff needs 0 < initial <= cap")
        if not 0 <= jitter < 1:
            raise ValueError("backoff jitter must be in [0, 1)")
        self.initial = initial
        self.cap = cap
        self.jitter = jitter
        self._draw = draw
        self._next = initial

    def next(self) -> float:
        """The delay to wait now; the one after it is twice as long (up to the cap)."""
        delay = self._next
        self._next = min(delay * 2, self.cap)
        return delay * (1 - self.jitter * self._draw())

    def reset(self) -> None:
        self._next = self.initial


class RedisLink:
    """One link's state and reconnect loop; see the module docstring.

    `up` is True while the link works, False once it failed, None before either
    happened. ``on_change(up, error)`` is called when it goes down (``error`` is the
    reason) and when it comes back after being down; coming up the first time is no
    change worth a log line. ``errors`` counts failures, ``last_error`` the latest,
    ``reconnects`` the times it came up again after having been up once.
    """

    def __init__(
        self,
        *,
        up: bool | None = None,
        on_change: Callable[[bool, str | None], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.up = up
        self.errors = 0
        self.last_error: str | None = None
        self.reconnects = 0
        self._on_change = on_change
        self._clock = clock
        self._sleep = sleep
        self._ever_up = bool(up)
        self._up_at: float | None = None

    @property
    def connected(self) -> bool:
        return self.up is True

    def came_up(self) -> None:
        """The link works (connected, subscribed, a round trip answered)."""
        was = self.up
        self.up = True
        self._up_at = self._clock()
        if self._ever_up and was is not True:
            self.reconnects += 1
        self._ever_up = True
        if was is False and self._on_change is not None:
            self._on_change(True, None)

    def went_down(self, exc: BaseException) -> None:
        """The link failed: counted every time, reported once per outage."""
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        was = self.up
        self.up = False
        if was is not False and self._on_change is not None:
            self._on_change(False, self.last_error)

    async def run(
        self,
        session: Callable[[], Awaitable[None]],
        backoff: Backoff,
        *,
        steady: float = 0.0,
        failure_log: str = "redis link failed; reconnecting",
        logger: logging.Logger = log,
    ) -> NoReturn:
        """Run `session` again and again until cancelled, waiting `backoff` between two.

        `session` connects, calls `came_up()` once the link serves, and serves until the
        connection fails (it raises; returning counts as a lost connection too). A
        session that served at least `steady` seconds starts the backoff again from its
        first delay: a link that worked and broke is retried soon, one that keeps failing
        (or fails as soon as it is up) waits longer each time. An exception that is not
        a connection error is a bug: logged with its traceback (`failure_log` on
        `logger`) and retried like a lost connection, so one bug does not end the link
        for the life of the process."""
        while True:
            self._up_at = None
            try:
                await session()
                raise ConnectionError("the session ended")
            except LINK_ERRORS as exc:
                self.went_down(exc)
            except Exception as exc:
                logger.exception(failure_log)
                self.went_down(exc)
            # After the session's state was taken into account: stopping here loses
            # nothing, and a cancellation a library swallowed ends the loop.
            raise_if_cancelled()
            up_at = self._up_at
            if up_at is not None and self._clock() - up_at >= steady:
                backoff.reset()
            await self._sleep(backoff.next())
