"""The lean Redis connection (gateway/redis_wire.py) against a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, ConnectionError, ResponseError

from gateway.redis_wire import (
    Endpoint,
    Reply,
    WireLink,
    WireProtocol,
    connect,
    endpoint_of,
    pack,
)
from tests.integration.relay import DelayRelay


@pytest.fixture
async def redis(redis_server: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server)
    yield client
    await client.aclose()


def test_commands_are_packed_as_arrays_of_bulk_strings() -> None:
    assert pack(["SET", b"k\r\n", 12]) == b"*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$2\r\n12\r\n"


def test_an_endpoint_is_read_from_the_url() -> None:
    found = endpoint_of("redis://ops:pw@10.0.0.7:7000/3")
    assert (found.host, found.port, found.db, found.username, found.password) == (
        "10.0.0.7", 7000, 3, "ops", "pw",
    )  # fmt: skip
    assert found.tls is None
    assert endpoint_of("rediss://10.0.0.7:7000/0").tls is not None
    assert endpoint_of("unix:///run/redis.sock?db=2").path == "/run/redis.sock"


async def test_pipelined_replies_come_back_in_order_and_an_error_stands_alone(
    redis_server: str, redis: Redis
) -> None:
    wire = await connect(endpoint_of(redis_server), name="wire-test")
    try:
        first = wire.call(["SET", "wire:a", "1"], ["INCR", "wire:a"])
        second = wire.call(["HSET", "wire:a", "f", "v"], ["GET", "wire:a"])
        assert await first == [b"OK", 2]
        replies = await second
        assert isinstance(replies[0], ResponseError) and "WRONGTYPE" in str(replies[0])
        assert replies[1] == b"2"
        names = [c["name"] for c in await redis.client_list()]
        assert "sipgw-wire-test" in names
    finally:
        wire.close()
        await redis.delete("wire:a")


async def test_the_database_of_the_url_is_selected(redis_server: str, redis: Redis) -> None:
    url = redis_server.rsplit("/", 1)[0] + "/5"
    wire = await connect(endpoint_of(url), name=None)
    try:
        assert await wire.call(["SET", "wire:db", "five"]) == [b"OK"]
        other = Redis.from_url(url)
        try:
            assert await other.get("wire:db") == b"five"
            await other.delete("wire:db")
        finally:
            await other.aclose()
        assert await redis.get("wire:db") is None  # not in database 0
    finally:
        wire.close()


async def test_pushes_reach_the_callback_in_order(redis_server: str, redis: Redis) -> None:
    pushed: asyncio.Queue[Reply] = asyncio.Queue()
    wire = await connect(endpoint_of(redis_server), name=None, on_push=pushed.put_nowait)
    try:
        wire.send(["SUBSCRIBE", "wire:live"])
        assert await asyncio.wait_for(pushed.get(), 5) == [b"subscribe", b"wire:live", 1]
        for n in range(3):
            await redis.publish("wire:live", f"m{n}")
        got = [await asyncio.wait_for(pushed.get(), 5) for _ in range(3)]
        assert got == [[b"message", b"wire:live", f"m{n}".encode()] for n in range(3)]
    finally:
        wire.close()


async def test_a_killed_connection_fails_what_waits_and_says_it_is_closed(
    redis_server: str, redis: Redis
) -> None:
    wire = await connect(endpoint_of(redis_server), name="wire-kill")
    [client_id] = await wire.call(["CLIENT", "ID"])
    # BLPOP holds the reply until the connection goes: the call is in flight.
    waiting = wire.call(["BLPOP", "wire:nothing", "0"])
    assert await redis.client_kill_filter(_id=str(client_id)) == 1
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(waiting, 5)
    await asyncio.wait_for(wire.closed, 5)
    assert not wire.is_open
    with pytest.raises(ConnectionError):
        await wire.call(["PING"])


async def test_a_call_not_answered_in_time_breaks_the_connection() -> None:
    # A peer that accepts and never answers: a Redis that hangs.
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    wire: WireProtocol | None = None
    try:
        wire = await connect(Endpoint(port=port), name=None, timeout=0.2)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(wire.call(["PING"]), 5)
        await asyncio.wait_for(wire.closed, 5)
        assert not wire.is_open
    finally:
        if wire is not None:
            wire.close()
        for writer in accepted:
            writer.close()
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()


async def test_a_refused_setup_is_an_error_and_no_connection_is_kept(redis_server: str) -> None:
    # This server has no password: AUTH is refused.
    endpoint = endpoint_of(redis_server.replace("redis://", "redis://someone:wrong@"))
    with pytest.raises((AuthenticationError, ConnectionError)):
        await connect(endpoint, name=None)


async def test_nothing_listening_is_a_connection_error(
    free_tcp_port: Callable[[], int],
) -> None:
    port = free_tcp_port()
    with pytest.raises(ConnectionError):
        await connect(Endpoint(port=port), name=None)


async def test_a_link_shares_one_connection_and_replaces_a_broken_one(
    redis_server: str, redis: Redis
) -> None:
    link = WireLink(endpoint_of(redis_server), name="wire-link")
    try:
        first, second = await asyncio.gather(link.get(), link.get())
        assert first is second
        names = [c["name"] for c in await redis.client_list()]
        assert names.count("sipgw-wire-link") == 1
        [client_id] = await first.call(["CLIENT", "ID"])
        assert await redis.client_kill_filter(_id=str(client_id)) == 1
        await asyncio.wait_for(first.closed, 5)
        third = await link.get()
        assert third is not first and await third.call(["PING"]) == [b"PONG"]
    finally:
        link.close()


async def test_a_link_that_failed_answers_at_once_until_its_retry_time(
    free_tcp_port: Callable[[], int],
) -> None:
    link = WireLink(Endpoint(port=free_tcp_port()), name=None, retry_after=60.0)
    with pytest.raises(ConnectionError, match="cannot connect"):
        await link.get()
    # Within retry_after no new attempt is made: the last error, at once.
    with pytest.raises(ConnectionError, match="redis unavailable: cannot connect"):
        await link.get()
    link.close()


async def test_a_slow_redis_is_not_an_unreachable_one(redis_server: str) -> None:
    # connect_timeout bounds the TCP connect; the setup's round trip (the client name)
    # waits like any call, up to `timeout`.
    port = int(redis_server.rsplit(":", 1)[1].split("/")[0])
    async with DelayRelay(port) as relay:
        relay.delay = 0.5
        wire = await connect(
            endpoint_of(relay.url), name="wire-slow", timeout=5.0, connect_timeout=0.2
        )
        try:
            assert await wire.call(["PING"]) == [b"PONG"]
        finally:
            wire.close()


async def test_a_request_hands_its_replies_to_its_callback_from_the_reader(
    redis_server: str, redis: Redis
) -> None:
    wire = await connect(endpoint_of(redis_server), name="wire-request")
    got: list[list[Reply] | Exception] = []
    try:
        wire.request((("SET", "wire:r", "1"), ("INCR", "wire:r")), got.append)
        later = wire.call(["GET", "wire:r"])  # queued behind it, on the same connection
        assert await later == [b"2"]
        assert got == [[b"OK", 2]]  # handed over before the call behind it was answered
    finally:
        wire.close()
        await redis.delete("wire:r")


async def test_a_failing_callback_does_not_stop_the_replies_behind_it(redis_server: str) -> None:
    wire = await connect(endpoint_of(redis_server), name="wire-raise")

    def broken(_outcome: list[Reply] | Exception) -> None:
        raise RuntimeError("a bug in the owner")

    try:
        wire.request((("PING",),), broken)
        assert await wire.call(["ECHO", "still here"]) == [b"still here"]
        assert wire.is_open
    finally:
        wire.close()


async def test_a_killed_connection_fails_a_request_and_a_closed_one_refuses_it(
    redis_server: str, redis: Redis
) -> None:
    wire = await connect(endpoint_of(redis_server), name="wire-request-kill")
    [client_id] = await wire.call(["CLIENT", "ID"])
    got: list[list[Reply] | Exception] = []
    wire.request((("BLPOP", "wire:nothing", "0"),), got.append)  # in flight until killed
    assert await redis.client_kill_filter(_id=str(client_id)) == 1
    await asyncio.wait_for(wire.closed, 5)
    assert len(got) == 1 and isinstance(got[0], ConnectionError)
    with pytest.raises(ConnectionError):
        wire.request((("PING",),), got.append)
    assert len(got) == 1
