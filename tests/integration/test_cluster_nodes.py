"""The whole gateway on a real Redis Cluster and on Sentinel (issue #14): two sipgw
processes on the 6-node cluster of tests/redis_servers.py, each answering for the other,
and a master killed while calls run.

- A call through node A reaches a WebSocket subscriber on node B; contacts synced
  through A are recognized by B (its cache told by A's write); click-to-dial placed on
  A is read and cancelled on B; a trunk A finds down is skipped by B.
- Failover under load: sipp calls through A at a steady rate while the master of the
  tenant's slot is killed. Every call completes; the replica takes over; a subscriber
  that resumes from its last seq (as a client does when the gateway says the bus is
  unavailable) gets every event the promoted master holds, once, in seq order; what the
  old master had acknowledged and not yet replicated is printed.
- Sentinel: a gateway on the master the sentinels name, failed over mid-run.

Every wait is bounded and polls the state itself (a scrape, a call log, Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis
import websockets
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection

from gateway.bus import keys as bus_keys
from tests.integration.conftest import GatewayFactory
from tests.integration.gateway import (
    GatewayPorts,
    GatewayProcess,
    cluster_table,
    sentinel_table,
)
from tests.integration.test_click_to_dial import dial, pjsip_phone
from tests.integration.test_click_to_dial_nodes import same_on_both, states_until
from tests.integration.test_events import by_call, check_stream, collect, subscribe
from tests.integration.test_prober import FAST_TIMERS, PROBING, calls_received, start_trunk
from tests.integration.test_recognition import CALLER, put_contacts
from tests.integration.test_shared_health import (
    SLOW,
    backup_trunk,
    calls_out,
    carrier_down_everywhere,
    peer,
    until,
)
from tests.integration.test_sipp_calls import trunk_to_did
from tests.peers.ports import free_port
from tests.peers.sipp import SippProcess
from tests.redis_servers import LocalCluster, LocalSentinel, RedisServer
from tests.waiting import wait_until, wait_until_true

pytestmark = [pytest.mark.peers]

FLOW = ["call.offered", "call.delivered", "call.established", "call.cleared"]
TENANT = "acme"
CONTACT = {"name": "Jane Cluster", "crm_id": "C-14"}


async def two_nodes(
    gateway_factory: GatewayFactory, redis_table: str, **options: Any
) -> tuple[GatewayProcess, GatewayProcess]:
    a = await gateway_factory(node="node-a", redis_table=redis_table, **options)
    b = await gateway_factory(node="node-b", redis_table=redis_table, **options)
    await b.login("203")  # B's directory seeded: A's tokens are good there too
    return a, b


async def test_a_call_through_a_reaches_b_and_contacts_synced_on_a_are_recognized_on_b(
    gateway_factory: GatewayFactory, redis_cluster: LocalCluster
) -> None:
    a, b = await two_nodes(gateway_factory, cluster_table(redis_cluster))
    token = await a.login("203")
    on_b = await subscribe(b, token)
    # B looks the caller up first: a miss, which B caches (negative_ttl: a minute).
    await trunk_to_did(b, "uas", "uac", 1, caller=CALLER)
    # Synced through A: the script that writes it tells every node's cache.
    status, answer = await put_contacts(a, token, [{"number": CALLER, "fields": CONTACT}])
    assert (status, answer) == (200, {"upserted": 1, "deleted": 0})
    await trunk_to_did(b, "uas", "uac", 1, caller=CALLER)
    # And a call through A, to B's subscriber.
    await trunk_to_did(a, "uas", "uac", 2, rate=10, caller=CALLER)
    events = await collect(on_b, 16)
    with pytest.raises(TimeoutError):  # nothing more: each event exactly once
        await collect(on_b, 1, timeout=1.0)
    await on_b.close()

    check_stream(events)
    assert list(by_call(events).values()) == [FLOW] * 4
    assert [e["node"] for e in events] == ["node-b"] * 8 + ["node-a"] * 8
    offered = [e for e in events if e["type"] == "call.offered"]
    assert offered[0]["lookup"]["status"] == "miss"
    assert offered[1]["lookup"]["status"] == "hit"
    assert offered[1]["lookup"]["contact"] == CONTACT
    assert all(e["lookup"]["contact"] == CONTACT for e in offered[2:])


async def test_a_click_to_dial_placed_on_a_is_read_and_cancelled_on_b(
    gateway_factory: GatewayFactory, redis_cluster: LocalCluster
) -> None:
    a, b = await two_nodes(
        gateway_factory, cluster_table(redis_cluster), extra="[dial]\nkeep_finished = 5"
    )
    await b.login("204")
    token = await a.login("204")
    async with await pjsip_phone(a, "204") as phone:
        status, accepted = await dial(a, token, to="0612345678")
        assert status == 202, accepted
        dial_id = accepted["id"]
        incoming = await phone.wait_incoming(timeout=10)
        assert (await states_until(b, token, dial_id, "phone_ringing"))[-1] == "phone_ringing"
        await same_on_both(a, b, token, dial_id)
        # Its key on the tenant's master, entered in the tenant's index (tenant
        # deletion finds it there); A listens on its relay channel, sharded.
        home = redis_cluster.node_for_key("{" + TENANT + "}")
        key = "{acme}:dial:" + dial_id
        assert home.command("EXISTS", key) == 1
        assert home.command("ZSCORE", "{acme}:keys", key) is not None
        channel = "sipgw:dials:{node-a}"
        assert redis_cluster.node_for_key(channel).command(
            "PUBSUB", "SHARDNUMSUB", channel
        ) == [channel, 1]  # fmt: skip

        status, raw = await b.http("DELETE", f"/v1/calls/{dial_id}", token=token)
        cancelled = json.loads(raw)
        assert status == 200 and cancelled["state"] == "cancelled", cancelled
        ended = await phone.wait_call_state(incoming["call"], "DISCONNECTED", timeout=10)
        assert ended["code"] == 487
        assert (await same_on_both(a, b, token, dial_id))["state"] == "cancelled"


@pytest.fixture
async def trunks() -> AsyncIterator[dict[str, SippProcess]]:
    running: dict[str, SippProcess] = {}
    yield running
    for sipp in running.values():
        await sipp.stop(grace=2)


async def test_a_trunk_seen_down_by_a_is_skipped_by_b(
    gateway_factory: GatewayFactory,
    redis_cluster: LocalCluster,
    trunks: dict[str, SippProcess],
    tmp_path: Path,
) -> None:
    carrier_port, backup_port = free_port(), free_port()
    backup_log = tmp_path / "backup.log"
    trunks["carrier"] = await start_trunk(carrier_port, name="carrier")
    trunks["backup"] = await start_trunk(backup_port, name="backup", calls_log=backup_log)
    table = cluster_table(redis_cluster)
    a = await gateway_factory(
        ports=GatewayPorts(trunk=carrier_port), node="node-a", redis_table=table,
        extra_sip=FAST_TIMERS, trunk_extra=PROBING, more_trunks=backup_trunk(backup_port, PROBING),
    )  # fmt: skip
    b = await gateway_factory(
        ports=GatewayPorts(trunk=carrier_port), node="node-b", redis_table=table,
        extra_sip=FAST_TIMERS, trunk_extra=SLOW, more_trunks=backup_trunk(backup_port, SLOW),
    )  # fmt: skip
    await trunks.pop("carrier").stop(grace=2)
    await until(a, "A's probes finding the carrier down", carrier_down_everywhere)
    found = await until(b, "B skipping the carrier A reports down", carrier_down_everywhere)
    assert peer(found, "sipgw_peer_probe_up", "carrier") == 1  # B's own probes: up
    await calls_out(b, 3)
    await wait_until(lambda: calls_received(backup_log) == 3, 5, "B's calls at the backup")


# -- failover under load -------------------------------------------------------------------
class Follower:
    """A WebSocket subscriber that resumes from its last seq whenever the gateway ends
    its subscription (sipgw.unavailable while the tenant's slot has no master) or
    refuses a new one (its token cannot be checked meanwhile), as a client does."""

    def __init__(self, gw: GatewayProcess, token: str) -> None:
        self.gw = gw
        self.token = token
        self.events: list[dict[str, Any]] = []
        self.resumed = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        first = await subscribe(self.gw, self.token)
        self._task = asyncio.create_task(self._run(first))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, ws: ClientConnection | None) -> None:
        while True:
            if ws is None:
                since = f"?since={self.events[-1]['seq']}" if self.events else ""
                try:
                    ws = await subscribe(self.gw, self.token, since)
                except (websockets.InvalidStatus, OSError, TimeoutError):
                    await asyncio.sleep(0.1)  # a client's pause before it tries again
                    continue
                self.resumed += 1
            try:
                async for raw in ws:
                    message = json.loads(raw)
                    if not str(message["type"]).startswith("sipgw."):
                        self.events.append(message)
            except websockets.ConnectionClosed:
                pass
            ws = None
            await asyncio.sleep(0.1)


def stream_of(server: RedisServer) -> list[tuple[str, str]]:
    """(seq, event_id) of every event of the tenant's stream, read on `server`."""
    with redis.Redis(
        "127.0.0.1", server.port, socket_timeout=2, single_connection_client=True
    ) as raw:
        entries = raw.xrange(bus_keys.events_key(TENANT), "-", "+")
    found = []
    for entry_id, fields in entries:
        seq = entry_id.decode()
        found.append((seq, str(bus_keys.decode_payload(seq, fields[b"e"])["event_id"])))
    return found


async def metric(gw: GatewayProcess, name: str) -> float:
    families = {f.name: f for f in text_string_to_metric_families(await gw.metrics())}
    family = families.get(name)
    if family is None:
        return 0.0
    return sum(s.value for s in family.samples if s.name in (name, name + "_total"))


def check_delivery(
    follower: Follower, stream: list[tuple[str, str]], calls: int, counted_lost: float
) -> None:
    """Every event the promoted master holds reached the subscriber, once, in seq
    order; what the subscriber saw that the master lacks was lost with the old master
    (acknowledged or sent live, not yet replicated): printed, with the events that
    reached the subscriber not at all, and compared with what the writer counted lost
    (every event was acknowledged). Each call's events came in their order, and only a
    call that lost an event is incomplete."""
    produced = len(FLOW) * calls
    got = [(e["seq"], e["event_id"]) for e in follower.events]
    seqs = [bus_keys.parse_seq(seq) for seq, _ in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), "seq not strictly increasing"
    held = set(stream)
    assert [item for item in got if item in held] == stream, "a gap: held events not received"
    seen_lost = [item for item in got if item not in held]
    kept = {event_id for _, event_id in stream}
    twice = len(stream) - len(kept)  # at least once: a batch sent again after a lost reply
    never = produced - len(kept | {event_id for _, event_id in seen_lost})
    print(
        f"failover: {produced} events produced, {len(stream)} in the promoted master's "
        f"stream ({twice} appended twice, same event_id), {len(seen_lost)} delivered live "
        f"and lost with the old master {seen_lost}, {never} lost unseen; the subscriber "
        f"resumed {follower.resumed} times; the gateway counted {counted_lost:g} lost"
    )
    assert counted_lost == produced - len(kept)
    first: dict[str, dict[str, Any]] = {}
    for event in follower.events:  # deduplicated by event_id, as a consumer does
        first.setdefault(event["event_id"], event)
    flows = by_call(list(first.values()))
    assert all(flow == [t for t in FLOW if t in flow] for flow in flows.values()), flows
    incomplete = calls - sum(flow == FLOW for flow in flows.values())
    assert incomplete <= len(seen_lost) + never, flows


CALLS = 120  # through node A at RATE a second: the failover happens while they run
SENTINEL_CALLS = 90
RATE = 30


async def test_calls_and_events_go_on_across_a_master_failover(
    gateway_factory: GatewayFactory, redis_cluster: LocalCluster
) -> None:
    a, b = await two_nodes(gateway_factory, cluster_table(redis_cluster))
    token = await a.login("203")
    follower = Follower(b, token)
    await follower.start()
    home = redis_cluster.node_for_key(bus_keys.events_key(TENANT))
    calls = asyncio.create_task(trunk_to_did(a, "uas", "uac", CALLS, rate=RATE, timeout=60))
    try:
        await wait_until(lambda: len(follower.events) >= 40 or calls.done(), 20, "calls flowing")
        assert not calls.done(), "the calls ended before the failover"
        promoted = await redis_cluster.kill_master_and_wait_for_promotion(home)
        await calls  # every call completed (sipp: no failed call)

        async def all_written() -> bool:
            published = await metric(a, "sipgw_events_published")
            return published >= len(FLOW) * CALLS and not await metric(a, "sipgw_events_buffered")

        await wait_until_true(all_written, 30, "A's events acknowledged")
        assert await metric(a, "sipgw_events_dropped") == 0
        stream = stream_of(promoted)
        await wait_until(
            lambda: set(stream) <= {(e["seq"], e["event_id"]) for e in follower.events},
            30, "the subscriber on B to have every held event",
        )  # fmt: skip
    finally:
        calls.cancel()
        await follower.stop()
    check_delivery(follower, stream, CALLS, await metric(a, "sipgw_bus_events_lost"))


async def test_a_gateway_on_sentinel_follows_a_failover(
    gateway_factory: GatewayFactory, redis_sentinel: LocalSentinel
) -> None:
    gw = await gateway_factory(node="node-s", redis_table=sentinel_table(redis_sentinel))
    token = await gw.login("203")
    follower = Follower(gw, token)
    await follower.start()
    calls = asyncio.create_task(
        trunk_to_did(gw, "uas", "uac", SENTINEL_CALLS, rate=RATE, timeout=60)
    )
    try:
        await wait_until(lambda: len(follower.events) >= 40 or calls.done(), 20, "calls flowing")
        assert not calls.done(), "the calls ended before the failover"
        promoted = await redis_sentinel.kill_master_and_wait_for_failover()
        await calls

        async def all_written() -> bool:
            published = await metric(gw, "sipgw_events_published")
            waiting = await metric(gw, "sipgw_events_buffered")
            return published >= len(FLOW) * SENTINEL_CALLS and not waiting

        await wait_until_true(all_written, 30, "the events acknowledged")
        stream = stream_of(promoted)
        await wait_until(
            lambda: set(stream) <= {(e["seq"], e["event_id"]) for e in follower.events},
            30, "the subscriber to have every held event",
        )  # fmt: skip
    finally:
        calls.cancel()
        await follower.stop()
    check_delivery(follower, stream, SENTINEL_CALLS, await metric(gw, "sipgw_bus_events_lost"))
    # Events kept arriving after the failover: the last call's flow came through.
    assert follower.events[-1]["type"] == "call.cleared"
