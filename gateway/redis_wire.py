"""A lean Redis connection for the two paths every call goes through: the bus writer's
appends and the live hub's pub/sub reads.

redis-py costs 60 to 90 µs of CPU per round trip (its pipeline object, a command parser
per reply, an ``asyncio.timeout`` per read); a bare protocol class costs ~13 µs for the
same EVALSHA (measured on this project's 2-core machine, uvloop). At four events a
call, that difference is a tenth of the gateway's CPU per call (issue #12). So these two
users speak RESP through `WireProtocol`: a thin asyncio protocol (the uvicorn shape)
that writes packed commands and feeds what arrives to hiredis' reader, the C parser
redis-py uses too. Everything else (replay, sync, the directory, admin) stays on
redis-py, whose breadth those need and whose cost they can afford.

Two ways to use a connection:

- request/response (`call`): commands are pipelined; each call's replies come back in
  order as one list, through a future. An error reply is a `redis.exceptions`
  ``ResponseError`` in that list, not raised: a batch's other replies stand.
  `request` is the same with a callback instead of the future, called by the reader
  as the last reply is parsed: no task wakes, no loop iteration passes, so no other
  work (the SIP messages that came in meanwhile) runs between the reply and what the
  owner does with it. The event path uses it (a caller's look-up, then its event).
- push (`on_push`): every reply goes to one callback, in order. This is pub/sub, where
  Redis sends messages, subscribe confirmations and PONGs on its own schedule.

A connection never reconnects by itself: when it breaks, every call waiting fails with
``ConnectionError`` and ``closed`` resolves; the owner decides when to try again (the
bus buffers events, the hub resyncs its subscribers). A call not answered within
``timeout`` seconds breaks the connection the same way: a reply that late would arrive
with the next call's, and a Redis that slow is better treated as gone.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import hiredis
from redis.exceptions import AuthenticationError, ConnectionError, InvalidResponse, ResponseError

Arg = bytes | str | int
Reply = object  # bytes, int, list, None, or a ResponseError
# What `request` calls: the replies, or the exception that failed them all.
OnReplies = Callable[[list[Reply] | Exception], None]
# Who waits for a call's replies: the future of `call` or the callback of `request`.
Owner = asyncio.Future[list[Reply]] | OnReplies

log = logging.getLogger("sipgw.redis")


def pack(args: Sequence[Arg]) -> bytes:
    """One command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a connection goes and how it introduces itself (from a ``redis://``,
    ``rediss://`` or ``unix://`` URL: `endpoint_of`)."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None  # a unix socket instead of host:port
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = None

    @property
    def label(self) -> str:
        """The server as an operator names it (a metric label): host:port, or the socket."""
        return self.path if self.path is not None else f"{self.host}:{self.port}"


def endpoint_of(url: str, *, tls: ssl.SSLContext | None = None) -> Endpoint:
    """The endpoint of a Redis URL; ``rediss://`` verifies the server against the
    system's CAs unless `tls` says otherwise."""
    from redis.asyncio.connection import SSLConnection, parse_url

    parts = parse_url(url)
    if parts.get("connection_class") is SSLConnection and tls is None:
        tls = ssl.create_default_context()
    return Endpoint(
        host=str(parts.get("host", "127.0.0.1")),
        port=int(parts.get("port", 6379)),
        path=parts.get("path"),
        db=int(parts.get("db", 0) or 0),
        username=parts.get("username"),
        password=parts.get("password"),
        tls=tls,
    )


class WireProtocol(asyncio.Protocol):
    """One Redis connection; see the module docstring."""

    def __init__(self, timeout: float | None, on_push: Callable[[Reply], None] | None) -> None:
        self._timeout = timeout
        self._on_push = on_push
        self._reader = hiredis.Reader(protocolError=InvalidResponse, replyError=ResponseError)
        self._transport: asyncio.Transport | None = None
        # Calls in flight, oldest first: (replies expected, replies so far, their owner).
        self._waiting: deque[tuple[int, list[Reply], Owner]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self._loop.create_future()

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport instances, but have its methods.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not False:
                self._reply(reply)
        except InvalidResponse as exc:
            self._break(ConnectionError(f"redis sent what is not RESP: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail(ConnectionError(f"connection to redis lost: {exc or 'closed'}"))

    # -- use ----------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def call(self, *commands: Sequence[Arg]) -> asyncio.Future[list[Reply]]:
        """Send `commands` in one write; the future gets their replies, in order."""
        future: asyncio.Future[list[Reply]] = self._loop.create_future()
        transport = self._transport
        if transport is None or transport.is_closing():
            future.set_exception(ConnectionError("connection to redis is closed"))
            return future
        self._write(transport, commands, future)
        return future

    def request(self, commands: Sequence[Sequence[Arg]], on_replies: OnReplies) -> None:
        """Send `commands` in one write; `on_replies` gets their replies in order (or
        the exception that failed them: a broken connection, no reply in time), called
        once, from the reader. It must not raise and must not wait. ``ConnectionError``
        at once, and no call, when the connection is closed."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionError("connection to redis is closed")
        self._write(transport, commands, on_replies)

    def _write(
        self,
        transport: asyncio.Transport,
        commands: Sequence[Sequence[Arg]],
        owner: Owner,
    ) -> None:
        self._waiting.append((len(commands), [], owner))
        transport.write(b"".join([pack(command) for command in commands]))
        if self._timer is None and self._timeout is not None:
            self._timer = self._loop.call_later(self._timeout, self._timed_out)

    def send(self, *commands: Sequence[Arg]) -> None:
        """Send `commands` whose replies go to the push callback (pub/sub)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionError("connection to redis is closed")
        transport.write(b"".join([pack(command) for command in commands]))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # -- replies --------------------------------------------------------------------------
    def _reply(self, reply: Reply) -> None:
        if not self._waiting:
            if self._on_push is not None:
                self._on_push(reply)
            return
        expected, replies, owner = self._waiting[0]
        replies.append(reply)
        if len(replies) < expected:
            return
        self._waiting.popleft()
        _settle(owner, replies)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = (
                self._loop.call_later(self._timeout, self._timed_out)
                if self._waiting and self._timeout is not None
                else None
            )

    def _timed_out(self) -> None:
        self._timer = None
        if self._waiting:
            self._break(TimeoutError(f"no reply from redis in {self._timeout} s"))

    def _break(self, exc: Exception) -> None:
        self._fail(exc)
        if self._transport is not None:
            self._transport.abort()

    def _fail(self, exc: Exception) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting:
            _, _, owner = self._waiting.popleft()
            _settle(owner, exc)
        if not self.closed.done():
            self.closed.set_result(None)


def _settle(owner: Owner, outcome: list[Reply] | Exception) -> None:
    """Hand a call's replies (or its failure) to whoever waits for them."""
    if isinstance(owner, asyncio.Future):
        if owner.done():
            return  # the owner stopped waiting (cancelled)
        if isinstance(outcome, Exception):
            owner.set_exception(outcome)
            owner.exception()  # retrieved: the owner may have stopped waiting
        else:
            owner.set_result(outcome)
        return
    try:
        owner(outcome)
    except Exception:  # the reader must go on for the calls behind this one
        log.exception("redis: a reply's callback failed")


async def connect(
    endpoint: Endpoint,
    *,
    name: str | None,
    timeout: float | None = 5.0,
    connect_timeout: float = 2.0,
    on_push: Callable[[Reply], None] | None = None,
) -> WireProtocol:
    """A connection to `endpoint`, authenticated, on its database and named
    ``sipgw-<name>`` in CLIENT LIST. Raises ``ConnectionError``, ``TimeoutError`` or
    ``AuthenticationError``; the caller retries."""
    loop = asyncio.get_running_loop()

    def factory() -> WireProtocol:
        return WireProtocol(timeout, on_push)

    # The connect itself is bounded by `connect_timeout`; the setup's round trip, like
    # any call, by `timeout` (a slow Redis is not an unreachable one).
    try:
        async with asyncio.timeout(connect_timeout):
            if endpoint.path is not None:
                _, protocol = await loop.create_unix_connection(factory, endpoint.path)
            else:
                _, protocol = await loop.create_connection(
                    factory, endpoint.host, endpoint.port, ssl=endpoint.tls
                )
    except OSError as exc:
        raise ConnectionError(f"cannot connect to redis: {exc}") from exc
    hello: list[list[Arg]] = []
    if endpoint.password is not None:
        user = [endpoint.username] if endpoint.username else []
        hello.append(["AUTH", *user, endpoint.password])
    if endpoint.db:
        hello.append(["SELECT", endpoint.db])
    if name is not None:
        hello.append(["CLIENT", "SETNAME", f"sipgw-{name}"])
    if hello:
        try:
            replies = await protocol.call(*hello)
        except BaseException:
            protocol.close()
            raise
        for reply in replies:
            if isinstance(reply, ResponseError):
                protocol.close()
                if "AUTH" in str(reply) or "WRONGPASS" in str(reply):
                    raise AuthenticationError(str(reply))
                raise ConnectionError(f"redis refused the connection's setup: {reply}")
    return protocol


class WireLink:
    """A connection made when first needed and shared by whoever calls meanwhile (the
    look-ups of concurrent calls pipeline on it); after it breaks, the next `get` makes
    another, but no sooner than `retry_after` seconds after a failed attempt: while
    Redis is away, a caller on a budget of milliseconds gets ``ConnectionError`` at once
    instead of a connect per call."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        name: str | None,
        timeout: float | None = 5.0,
        connect_timeout: float = 2.0,
        retry_after: float = 1.0,
    ) -> None:
        self._endpoint = endpoint
        self._name = name
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._retry_after = retry_after
        self._wire: WireProtocol | None = None
        self._connecting: asyncio.Future[WireProtocol] | None = None
        self._failed_at: float | None = None
        self._last_error = ""

    @property
    def endpoint(self) -> Endpoint:
        return self._endpoint

    def ready(self) -> WireProtocol | None:
        """The connection if it is open now (None: `get` would have to wait)."""
        wire = self._wire
        return wire if wire is not None and wire.is_open else None

    async def get(self) -> WireProtocol:
        wire = self._wire
        if wire is not None and wire.is_open:
            return wire
        if self._connecting is None:
            loop = asyncio.get_running_loop()
            failed_at = self._failed_at
            if failed_at is not None and loop.time() - failed_at < self._retry_after:
                raise ConnectionError(f"redis unavailable: {self._last_error}")
            self._connecting = loop.create_task(self._connect())
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> WireProtocol:
        try:
            self._wire = await connect(
                self._endpoint, name=self._name, timeout=self._timeout,
                connect_timeout=self._connect_timeout,
            )  # fmt: skip
        except (ConnectionError, OSError) as exc:
            self._failed_at = asyncio.get_running_loop().time()
            self._last_error = str(exc) or type(exc).__name__
            raise
        finally:
            self._connecting = None
        self._failed_at = None
        return self._wire

    def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        if self._wire is not None:
            self._wire.close()
            self._wire = None
