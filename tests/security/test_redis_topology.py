"""No SIP reaches a Redis node that a cluster or Sentinel names at run time (issue #14).

What an attacker gains without this: the destination policy refused the configured Redis
endpoints (the seeds of a cluster, the sentinels), but not the nodes those name while
the gateway runs: a cluster's replicas and the masters not given as seeds, a replica
that a failover promotes, the master and replicas Sentinel names. An INVITE over TCP
whose Via names such a node's host:port, from a caller that then drops its connection,
has its final response relayed to that address: the gateway connects to the node and
writes the response into it, body and all, and the callee (the attacker's second
phone) chose the body of its 486. Redis reads inline commands line by line, so on a
Redis without a password a body line of the attacker's choosing (``FLUSHALL``,
``CONFIG SET dir …``) runs: the attack of issue #11, one hop further. A Contact or a
Route naming the node is the same aim; over UDP it sends datagrams there.

Every test runs a real gateway on a real Redis Cluster of 3 masters and 3 replicas
given ONE seed, or on Sentinel, waits until the gateway says it has read the nodes
(runtime/redis_topology.py logs it), then sends requests whose replies are to go to
nodes it was never configured with, over UDP and over TCP, and checks the outcome:
each request is dropped unanswered as aimed at one of our own services
(``sipgw_sip_refused_total{reason="reply_refused_own_service"}``; before the watcher
these were answered there), and a replica, which the gateway has no other reason to
talk to, ran no line of SIP text (its ``errorstat_ERR`` did not move: every SIP line is
an unknown command to Redis) and, on a cluster, received no connection at all. (A
master's error count is no witness: the gateway's own redis-py connections add to it,
their CLIENT SETINFO being unknown to Redis 7.0.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
from collections.abc import Iterator

import pytest

from bench.redis_servers import RedisServer
from tests.integration.conftest import GatewayFactory
from tests.integration.gateway import GatewayProcess, sentinel_table
from tests.redis_servers import LocalCluster, LocalSentinel
from tests.security.canary import Attacker
from tests.security.test_sip_edge import refused
from tests.waiting import wait_until_true

pytestmark = [pytest.mark.peers]

HOST = "127.0.0.1"
LEARNT = "redis nodes refused as sip destinations"
REFUSED = "reply_refused_own_service"


@pytest.fixture
def attacker() -> Iterator[Attacker]:
    sock = Attacker()
    yield sock
    sock.close()


def one_seed(cluster: LocalCluster) -> tuple[str, RedisServer]:
    """The ``[redis]`` keys of a gateway given one master of `cluster` as its only seed,
    and that seed."""
    seed = cluster.masters()[0]
    return f"cluster_nodes = {json.dumps([f'redis://{seed.address}'])}", seed


async def gateway_that_read(
    gateway_factory: GatewayFactory, redis_table: str, nodes: int, *, workers: int = 1
) -> GatewayProcess:
    """A gateway on `redis_table` whose every worker has read at least `nodes`
    addresses of Redis nodes."""
    gw = await gateway_factory(redis_table=redis_table, workers=workers)

    async def every_worker_read() -> bool:
        read = {
            r.get("worker")
            for r in gw.log_records()
            if r.get("msg") == LEARNT and int(str(r.get("addresses"))) >= nodes
        }
        return len(read) == workers

    await wait_until_true(every_worker_read, timeout=15, what="the gateway to read the nodes")
    return gw


def options(via: str) -> bytes:
    """An OPTIONS to the gateway whose replies are to go to `via` (no rport: to the
    sent-by, RFC 3261 §18.2.2)."""
    call_id = secrets.token_hex(8)
    return (
        f"OPTIONS sip:{HOST} SIP/2.0\r\n"
        f"Via: {via};branch=z9hG4bK{secrets.token_hex(6)}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:probe@{HOST}>;tag={call_id[:6]}\r\n"
        f"To: <sip:{HOST}>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


async def aim_replies_at(
    gw: GatewayProcess, attacker: Attacker, node: RedisServer, *, before: float
) -> None:
    """Ask the gateway to answer at `node`'s port over UDP, then over TCP on a
    connection closed at once, as the attacker does; wait until both requests are
    dropped unanswered (`before`: the refusals counted so far)."""
    attacker.send(options(f"SIP/2.0/UDP {HOST}:{node.port}"), (HOST, gw.ports.sip))
    _, writer = await asyncio.open_connection(HOST, gw.ports.sip)
    writer.write(options(f"SIP/2.0/TCP {HOST}:{node.port}"))
    await writer.drain()
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()

    async def both_refused() -> bool:
        return refused(await gw.metrics(), REFUSED) >= before + 2

    await wait_until_true(both_refused, timeout=10, what=f"replies at {node.name} refused")


def info(node: RedisServer, section: str) -> dict[str, str]:
    """``INFO section`` of `node`, on a connection that sends nothing else: a client
    library introduces itself (redis-py's CLIENT SETINFO), which Redis 7.0 answers as an
    unknown command, the very count these tests read."""
    assert node.password is None  # the tests' deployments have none
    with socket.create_connection((HOST, node.port), timeout=2) as conn:
        conn.sendall(f"INFO {section}\r\n".encode())
        reply = b""
        while not reply.endswith(b"\r\n") or reply.count(b"\r\n") < 2:
            chunk = conn.recv(65536)
            assert chunk, reply
            reply += chunk
        size, _, body = reply.partition(b"\r\n")
        while len(body) < int(size[1:]) + 2:
            chunk = conn.recv(65536)
            assert chunk, reply
            body += chunk
    lines = body.decode().splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line)


def lines_run(node: RedisServer) -> int:
    """How many commands `node` refused as unknown (every line of SIP text would be)."""
    stats = info(node, "errorstats").get("errorstat_ERR", "count=0")
    return int(stats.split(",")[0].removeprefix("count="))


def connections(node: RedisServer) -> int:
    """Connections `node` has accepted since it started (reading it opens one)."""
    return int(info(node, "stats")["total_connections_received"])


async def test_a_cluster_node_that_is_no_seed_is_never_sent_sip(
    gateway_factory: GatewayFactory, redis_cluster: LocalCluster, attacker: Attacker
) -> None:
    table, seed = one_seed(redis_cluster)
    gw = await gateway_that_read(gateway_factory, table, nodes=6)
    master = next(m for m in redis_cluster.masters() if m is not seed)
    replica = redis_cluster.replica_of(next(m for m in redis_cluster.masters() if m is not seed))
    assert seed not in (master, replica)
    ran, replica_connections = lines_run(replica), connections(replica)

    counted = refused(await gw.metrics(), REFUSED)
    for node in (replica, master):
        await aim_replies_at(gw, attacker, node, before=counted)
        counted += 2

    assert refused(await gw.metrics(), REFUSED) == counted
    assert lines_run(replica) == ran
    assert connections(replica) == replica_connections + 2  # ours: reading it twice


async def test_after_a_failover_the_promoted_replica_and_the_old_master_stay_refused(
    gateway_factory: GatewayFactory, redis_cluster: LocalCluster, attacker: Attacker
) -> None:
    table, seed = one_seed(redis_cluster)
    gw = await gateway_that_read(gateway_factory, table, nodes=6)
    old = next(m for m in redis_cluster.masters() if m is not seed)
    promoted = await redis_cluster.kill_master_and_wait_for_promotion(old)
    assert promoted.address in {m.address for m in redis_cluster.masters()}

    counted = refused(await gw.metrics(), REFUSED)
    for node in (promoted, old):  # the old one is down; when it is back, it is a replica
        await aim_replies_at(gw, attacker, node, before=counted)
        counted += 2

    assert refused(await gw.metrics(), REFUSED) == counted


async def test_every_worker_refuses_the_nodes_it_was_not_configured_with(
    gateway_factory: GatewayFactory, redis_cluster: LocalCluster
) -> None:
    """Each worker reads the nodes itself: whichever one the kernel hands a datagram
    to refuses to answer at a replica. 16 sources spread over both."""
    table, seed = one_seed(redis_cluster)
    gw = await gateway_that_read(gateway_factory, table, nodes=6, workers=2)
    replica = redis_cluster.replica_of(next(m for m in redis_cluster.masters() if m is not seed))
    counted = refused(await gw.metrics(), REFUSED)
    sources = [Attacker() for _ in range(16)]
    try:
        for source in sources:
            source.send(options(f"SIP/2.0/UDP {HOST}:{replica.port}"), (HOST, gw.ports.sip))

        async def all_refused() -> bool:  # worker 0 sums its sibling's counts every second
            return refused(await gw.metrics(), REFUSED) >= counted + len(sources)

        await wait_until_true(all_refused, timeout=10, what="every worker to refuse")
    finally:
        for source in sources:
            source.close()


async def test_a_replica_that_only_the_sentinels_name_is_never_sent_sip(
    gateway_factory: GatewayFactory, redis_sentinel: LocalSentinel, attacker: Attacker
) -> None:
    # The master, its replica and the three sentinels.
    gw = await gateway_that_read(gateway_factory, sentinel_table(redis_sentinel), nodes=5)
    master = redis_sentinel.master()
    replica = next(s for s in redis_sentinel.servers if s is not master)
    ran = lines_run(replica)

    counted = refused(await gw.metrics(), REFUSED)
    for node in (replica, master):
        await aim_replies_at(gw, attacker, node, before=counted)
        counted += 2

    assert refused(await gw.metrics(), REFUSED) == counted
    assert lines_run(replica) == ran
