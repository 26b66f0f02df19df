"""gateway/redis_link.py's clients on real deployments (tests/redis_servers.py): a Redis
Cluster of 3 masters and 3 replicas, and a master watched by 3 sentinels.

Each command is checked where it landed, on the server process that should hold the
key (not through the client under test), and the failovers are real: a master killed
with SIGKILL, its replica promoted by the cluster or the sentinels.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import AuthenticationError, CrossSlotTransactionError, NoScriptError

from gateway.config.model import RedisSettings
from gateway.redis_link import LINK_ERRORS, client, dedicated_connection, shard_connection
from tests.peers import ports
from tests.peers.tls import CertPair, make_self_signed
from tests.redis_servers import SENTINEL_SERVICE, LocalCluster, LocalSentinel, RedisServer

T = TypeVar("T")
RECOVERY_TIMEOUT = 10.0  # seconds for a client to reach the new master after a failover
COUNT_SCRIPT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


def cluster_settings(cluster: LocalCluster) -> RedisSettings:
    # Two seeds only: the client learns the other four nodes from them.
    seeds = tuple(("127.0.0.1", node.port) for node in cluster.nodes[:2])
    return RedisSettings(cluster_nodes=seeds)


def sentinel_settings(deployment: LocalSentinel) -> RedisSettings:
    return RedisSettings(
        sentinel_service=SENTINEL_SERVICE,
        sentinels=tuple(("127.0.0.1", s.port) for s in deployment.sentinels),
    )


def key_on_each_master(cluster: LocalCluster) -> dict[str, RedisServer]:
    """One key per master: key -> the node that serves its slot."""
    found: dict[str, RedisServer] = {}
    for n in range(1000):
        key = f"key-{n}"
        node = cluster.node_for_key(key)
        if node not in found.values():
            found[key] = node
        if len(found) == 3:
            return found
    raise AssertionError("1000 keys did not cover 3 masters")


def names_connected(server: RedisServer) -> list[str]:
    """The client names in CLIENT LIST (one "id=… addr=… name=… …" line a client)."""
    lines = str(server.command("CLIENT", "LIST")).splitlines()
    fields = (dict(f.partition("=")[::2] for f in line.split()) for line in lines)
    return [f["name"] for f in fields if f.get("name")]


async def until_it_works(attempt: Callable[[], Awaitable[T]], timeout: float) -> T:
    """Try `attempt` until it stops failing with a link error (a client made by
    `client()` does not retry by itself), for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await attempt()
        except LINK_ERRORS:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)  # the failover runs in other processes: bounded polling


@pytest.fixture
async def on_cluster(redis_cluster: LocalCluster) -> AsyncIterator[RedisCluster]:
    redis = client(cluster_settings(redis_cluster), name="link-test")
    assert isinstance(redis, RedisCluster)
    yield redis
    await redis.aclose()


# -- Redis Cluster -----------------------------------------------------------------------


async def test_each_key_is_written_on_the_master_that_serves_its_slot(
    redis_cluster: LocalCluster, on_cluster: RedisCluster
) -> None:
    keys = key_on_each_master(redis_cluster)
    for key in keys:
        await on_cluster.set(key, f"value of {key}")

    for key, node in keys.items():
        assert node.command("GET", key) == f"value of {key}"
        assert await on_cluster.get(key) == f"value of {key}".encode()
        assert "sipgw-link-test" in names_connected(node)


async def test_evalsha_runs_on_the_node_of_its_key(
    redis_cluster: LocalCluster, on_cluster: RedisCluster
) -> None:
    sha = await on_cluster.script_load(COUNT_SCRIPT)  # every master caches it
    keys = key_on_each_master(redis_cluster)

    for key in keys:
        assert await on_cluster.evalsha(sha, 1, key, 5) == 5
        assert await on_cluster.evalsha(sha, 1, key, 2) == 7
    assert [node.command("GET", key) for key, node in keys.items()] == ["7", "7", "7"]


async def test_a_transaction_within_one_slot_is_atomic_on_its_node(
    redis_cluster: LocalCluster, on_cluster: RedisCluster
) -> None:
    node = redis_cluster.node_for_key("{acme}")
    pipe = on_cluster.pipeline(transaction=True)
    for command, *args in (
        ("SET", "{acme}:a", "1"), ("INCR", "{acme}:a"), ("SET", "{acme}:b", "x"),
        ("GET", "{acme}:a"),
    ):  # fmt: skip
        pipe.execute_command(command, *args)
    assert await pipe.execute() == [True, 2, True, b"2"]
    assert (node.command("GET", "{acme}:a"), node.command("GET", "{acme}:b")) == ("2", "x")

    # Keys of two slots cannot be one transaction: refused before anything is sent.
    cross = on_cluster.pipeline(transaction=True)
    cross.execute_command("SET", "{acme}:c", "1")
    cross.execute_command("SET", "{other}:c", "1")
    with pytest.raises(CrossSlotTransactionError):
        await cross.execute()
    assert node.command("EXISTS", "{acme}:c") == 0


async def test_a_shard_connection_receives_what_is_spublished_to_its_channel(
    redis_cluster: LocalCluster, on_cluster: RedisCluster
) -> None:
    channel = "{acme}:live"
    conn = await shard_connection(on_cluster, channel)
    try:
        await conn.connect()
        assert conn.port == redis_cluster.node_for_key(channel).port
        await conn.send_command("SSUBSCRIBE", channel)
        assert await conn.read_response(timeout=5) == [b"ssubscribe", channel.encode(), 1]

        # SPUBLISH from a script too: the channel is in the slot of the script's key.
        assert await on_cluster.spublish(channel, "direct") == 1
        script = "return redis.call('SPUBLISH', ARGV[1], ARGV[2])"
        assert await on_cluster.eval(script, 1, "{acme}:events", channel, "from lua") == 1

        assert await conn.read_response(timeout=5) == [b"smessage", channel.encode(), b"direct"]
        assert await conn.read_response(timeout=5) == [
            b"smessage", channel.encode(), b"from lua",
        ]  # fmt: skip
    finally:
        await conn.disconnect()


async def test_after_a_master_fails_the_client_reaches_its_promoted_replica(
    redis_cluster: LocalCluster, on_cluster: RedisCluster
) -> None:
    sha = await on_cluster.script_load(COUNT_SCRIPT)
    assert await on_cluster.evalsha(sha, 1, "{acme}:n", 1) == 1
    old = redis_cluster.node_for_key("{acme}")

    new = await redis_cluster.kill_master_and_wait_for_promotion(old)

    # The first command may still go to the dead master, fail, and ask for a new slot
    # map; one of the next ones lands on the replica that took over.
    await until_it_works(lambda: on_cluster.set("{acme}:after", "yes"), RECOVERY_TIMEOUT)
    assert new.command("GET", "{acme}:after") == "yes"
    # Redis does not replicate its script cache: the new master has not seen the script.
    with pytest.raises(NoScriptError):
        await on_cluster.evalsha(sha, 1, "{acme}:n", 1)

    # A pub/sub user asks for its shard connection again after the old one failed.
    conn = await shard_connection(on_cluster, "{acme}:live", refresh=True)
    assert conn.port == new.port


# -- Sentinel ----------------------------------------------------------------------------


async def test_sentinel_client_follows_the_master_through_a_failover(
    redis_sentinel: LocalSentinel,
) -> None:
    redis = client(sentinel_settings(redis_sentinel), name="link-test")
    assert isinstance(redis, Redis)
    old = redis_sentinel.master()
    try:
        await redis.set("before", "1")
        assert old.command("GET", "before") == "1"
        assert "sipgw-link-test" in names_connected(old)
        listener = dedicated_connection(redis)
        await listener.connect()
        assert listener.port == old.port
        await listener.disconnect()

        new = await redis_sentinel.kill_master_and_wait_for_failover()

        await until_it_works(lambda: redis.set("after", "2"), RECOVERY_TIMEOUT)
        assert new.command("GET", "after") == "2"
        listener = dedicated_connection(redis)
        await listener.connect()
        assert listener.port == new.port
        await listener.disconnect()
    finally:
        await redis.aclose()

    # Closing the client closed its connections to the sentinels too.
    sentinel = redis_sentinel.sentinels[0]
    deadline = time.monotonic() + 5
    while "sipgw-link-test" in names_connected(sentinel):
        assert time.monotonic() < deadline, "the client's sentinel connections stayed open"
        await asyncio.sleep(0.02)  # the server notices the close on its own: bounded polling


# -- one server ----------------------------------------------------------------------------


async def test_a_standalone_server_gets_the_password_of_the_settings(tmp_path: Path) -> None:
    server = RedisServer.start_new("redis-auth", tmp_path / "auth", password="pw-42")
    try:
        with_password = client(RedisSettings(url=server.url, password="pw-42"), name="link-test")
        without = client(RedisSettings(url=server.url), name=None)
        try:
            assert isinstance(with_password, Redis)
            assert await with_password.set("k", "v")
            assert server.command("GET", "k") == "v"
            with pytest.raises(AuthenticationError):
                await without.get("k")
        finally:
            await with_password.aclose()
            await without.aclose()
    finally:
        server.stop()


# -- TLS ---------------------------------------------------------------------------------


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[RedisServer, int, CertPair]]:
    """A server that speaks TLS on a port of its own (its plain port is for the fixture)
    and wants a client certificate signed by its CA (the self-signed `CertPair`)."""
    pair = make_self_signed(tmp_path / "certs", name="redis")
    tls_port = ports.free_tcp_port()
    server = RedisServer.start_new("redis-tls", tmp_path / "tls", [
        "--tls-port", str(tls_port), "--tls-cert-file", str(pair.cert),
        "--tls-key-file", str(pair.key), "--tls-ca-cert-file", str(pair.ca),
        "--tls-auth-clients", "yes",
    ])  # fmt: skip
    try:
        yield server, tls_port, pair
    finally:
        server.stop()


async def test_tls_settings_verify_the_server_and_present_the_client_certificate(
    tmp_path: Path, tls_server: tuple[RedisServer, int, CertPair]
) -> None:
    server, tls_port, pair = tls_server
    stranger = make_self_signed(tmp_path / "other", name="other")
    url = f"rediss://127.0.0.1:{tls_port}/0"
    mine = {"tls": True, "tls_cert": pair.cert, "tls_key": pair.key}

    async def works(**settings: Any) -> bool:
        redis = client(RedisSettings(url=url, **settings), name="link-test")
        try:
            return bool(await redis.set("k", "over tls"))
        except LINK_ERRORS:
            return False
        finally:
            await redis.aclose()

    assert await works(tls_ca=pair.ca, **mine)
    assert server.command("GET", "k") == "over tls"
    assert not await works(tls_ca=stranger.ca, **mine)  # not the server's CA
    assert await works(tls_ca=stranger.ca, tls_verify=False, **mine)
    assert not await works(tls=True, tls_ca=pair.ca)  # no client certificate


async def test_a_tls_cluster_and_sentinel_connect_with_the_same_tls_settings(
    tmp_path: Path,
) -> None:
    # Their handshake is the one proven above; here: each mode hands the TLS settings to
    # the connections it makes (redis-py ignores the ssl_* keys of a cluster or a
    # Sentinel client made without ssl=True).
    pair = make_self_signed(tmp_path, name="redis")
    tls: dict[str, Any] = {
        "tls": True, "tls_ca": pair.ca, "tls_cert": pair.cert, "tls_key": pair.key,
    }  # fmt: skip
    cluster = client(RedisSettings(cluster_nodes=(("127.0.0.1", 7000),), **tls), name=None)
    sentinel = client(
        RedisSettings(sentinel_service="m", sentinels=(("127.0.0.1", 26379),), **tls), name=None
    )
    assert isinstance(cluster, RedisCluster) and isinstance(sentinel, Redis)
    expected = {"ssl_ca_certs": str(pair.ca), "ssl_certfile": str(pair.cert),
                "ssl_keyfile": str(pair.key), "ssl_cert_reqs": "required"}  # fmt: skip
    seed = cluster.startup_nodes[0]
    master_pool = sentinel.connection_pool
    assert isinstance(master_pool, SentinelConnectionPool)
    sentinel_pool = master_pool.sentinel_manager.sentinels[0].connection_pool
    for connection_class, settings in (
        (seed.connection_class, seed.connection_kwargs),
        (master_pool.connection_class, master_pool.connection_kwargs),
        (sentinel_pool.connection_class, sentinel_pool.connection_kwargs),
    ):
        assert issubclass(connection_class, SSLConnection)
        assert expected.items() <= settings.items()
    await cluster.aclose()
    await sentinel.aclose()
