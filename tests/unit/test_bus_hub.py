"""LiveHub's subscription bookkeeping without Redis: a recording connection stands in
for the pub/sub connection and the test plays Redis' replies."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.bus import LiveHub, SubscriberOverflow, SubscriberResync
from gateway.bus.keys import encode_live, encode_payload
from gateway.bus.live import _Link, _Shard
from gateway.redis_link import RedisLink


class RecordingConn:
    """Stands in for the hub's redis_wire connection: keeps what is sent."""

    is_open = True

    def __init__(self) -> None:
        self.sent: list[tuple[str, ...]] = []

    def send(self, *commands: list[str]) -> None:
        self.sent.extend(tuple(command) for command in commands)


def link_for(hub: LiveHub, *, sharded: bool = False) -> tuple[_Link, RecordingConn]:
    """A connected link of the hub's one server (its shard), on a recording connection."""
    conn = RecordingConn()
    link = _Link(sharded=sharded, wire=conn)  # type: ignore[arg-type]
    shard = _Shard(("", 0), RedisLink())
    shard.link = link
    hub._shards[shard.address] = shard
    return link, conn


def reconcile(hub: LiveHub, link: _Link) -> bool:
    """What the hub's router and the shard's loop do: every subscribed tenant's channel
    is this server's to deliver."""
    link.want = {f"{{{tenant}}}:live" for tenant in hub._subs}
    return hub._reconcile(link)


def message(tenant: str, n: int) -> list[Any]:
    seq = f"{n}-0"
    return [b"message", f"{{{tenant}}}:live".encode(), encode_live(seq, encode_payload({"n": n}))]


def confirm(kind: str, tenant: str) -> list[Any]:
    return [kind.encode(), f"{{{tenant}}}:live".encode(), 1]


@pytest.fixture
def hub() -> LiveHub:
    return LiveHub("redis://127.0.0.1:1/0")  # never started: nothing connects


async def test_subscribe_once_per_channel_and_ready_on_confirmation(hub: LiveHub) -> None:
    link, conn = link_for(hub)
    a1, a2, b = hub.subscribe("acme"), hub.subscribe("acme"), hub.subscribe("beta")
    reconcile(hub, link)
    assert conn.sent == [("SUBSCRIBE", "{acme}:live", "{beta}:live")]
    assert not a1.ready
    hub._handle(link, confirm("subscribe", "acme"))
    assert a1.ready and a2.ready and not b.ready
    assert hub.subscribe("acme").ready  # a channel already live: ready at once

    hub._handle(link, message("acme", 7))
    hub._handle(link, message("other", 8))  # not ours: ignored
    assert (await anext(a1))[0] == "7-0" and (await anext(a2))[0] == "7-0"
    assert hub.messages == 1 and b.depth == 0


async def test_leave_and_rejoin_before_confirmations_waits_for_the_last_one(
    hub: LiveHub,
) -> None:
    link, conn = link_for(hub)
    first = hub.subscribe("acme")
    reconcile(hub, link)
    first.close()
    reconcile(hub, link)
    second = hub.subscribe("acme")
    reconcile(hub, link)
    assert conn.sent == [
        ("SUBSCRIBE", "{acme}:live"),
        ("UNSUBSCRIBE", "{acme}:live"),
        ("SUBSCRIBE", "{acme}:live"),
    ]
    # Redis answers in order: the first SUBSCRIBE's confirmation must not make the new
    # subscription ready, an UNSUBSCRIBE is still to take effect before the second.
    hub._handle(link, confirm("subscribe", "acme"))
    assert not second.ready
    hub._handle(link, confirm("unsubscribe", "acme"))
    assert not second.ready
    hub._handle(link, confirm("subscribe", "acme"))
    assert second.ready


async def test_no_churn_when_a_subscription_is_replaced_before_the_commander_runs(
    hub: LiveHub,
) -> None:
    link, conn = link_for(hub)
    old = hub.subscribe("acme")
    reconcile(hub, link)
    hub._handle(link, confirm("subscribe", "acme"))
    new = hub.subscribe("acme")
    old.close()
    assert not reconcile(hub, link)
    assert conn.sent == [("SUBSCRIBE", "{acme}:live")] and new.ready


async def test_lost_connection_resyncs_live_subscriptions_only(hub: LiveHub) -> None:
    link, _ = link_for(hub)
    live = hub.subscribe("acme")
    reconcile(hub, link)
    hub._handle(link, confirm("subscribe", "acme"))
    hub._handle(link, message("acme", 1))
    assert (await anext(live))[0] == "1-0"

    hub._lost(link)
    del hub._shards["", 0]
    assert not live.ready
    during = hub.subscribe("acme")  # made during the outage: missed nothing

    link2, conn2 = link_for(hub)
    reconcile(hub, link2)
    assert conn2.sent == [("SUBSCRIBE", "{acme}:live")]
    hub._handle(link2, confirm("subscribe", "acme"))
    with pytest.raises(SubscriberResync) as info:
        await asyncio.wait_for(anext(live), 1)
    assert info.value.last_seq == "1-0"
    assert during.ready and hub.resyncs == 1
    assert hub.subscription_count == 1


async def test_overflow_is_counted_and_the_hub_moves_on(hub: LiveHub) -> None:
    link, _ = link_for(hub)
    slow, fast = hub.subscribe("acme", maxsize=1), hub.subscribe("acme", maxsize=10)
    reconcile(hub, link)
    hub._handle(link, confirm("subscribe", "acme"))
    for n in range(3):
        hub._handle(link, message("acme", n))
    assert hub.overflows == 1 and hub.subscription_count == 1
    assert hub.queue_depths() == [3]
    assert (await anext(slow))[0] == "0-0"
    with pytest.raises(SubscriberOverflow) as info:
        await anext(slow)
    assert info.value.last_seq == "0-0"
    assert [(await anext(fast))[0] for _ in range(3)] == ["0-0", "1-0", "2-0"]


async def test_undecodable_messages_are_counted_not_delivered(hub: LiveHub) -> None:
    link, _ = link_for(hub)
    sub = hub.subscribe("acme")
    reconcile(hub, link)
    hub._handle(link, confirm("subscribe", "acme"))
    hub._handle(link, [b"message", b"{acme}:live", b"no newline"])
    hub._handle(link, [b"message", b"{acme}:live", b"1-0\n\xc1"])
    hub._handle(link, [b"pong", b"", b""])
    hub._handle(link, b"PONG")
    assert hub.bad_messages == 2 and hub.messages == 0 and sub.depth == 0


async def test_closed_hub_hands_out_ended_subscriptions(hub: LiveHub) -> None:
    sub = hub.subscribe("acme")
    await hub.close()
    assert sub.closed
    late = hub.subscribe("acme")
    assert [x async for x in late] == []
    with pytest.raises(ValueError):
        hub.subscribe("Not-A-Tenant")


async def _live_acme(hub: LiveHub) -> tuple[_Link, Any]:
    link, _ = link_for(hub)
    sub = hub.subscribe("acme", maxsize=100)
    reconcile(hub, link)
    hub._handle(link, confirm("subscribe", "acme"))
    return link, sub


def _taken(sub: Any) -> list[str]:
    seqs = []
    while sub.depth:
        seqs.append(sub._items.popleft().seq)
    return seqs


async def test_this_nodes_event_is_delivered_at_once_and_its_pubsub_copy_skipped(
    hub: LiveHub,
) -> None:
    link, sub = await _live_acme(hub)
    hub._handle(link, message("acme", 1))
    assert hub.offer_local("acme", "1-0", "2-0", {"n": 2, "seq": "2-0"})
    hub._handle(link, message("acme", 2))  # the pub/sub copy: already delivered
    hub._handle(link, message("acme", 3))
    assert _taken(sub) == ["1-0", "2-0", "3-0"]
    assert hub.local_deliveries == 1 and hub.messages == 2


async def test_an_event_after_one_not_read_yet_waits_for_its_turn(hub: LiveHub) -> None:
    link, sub = await _live_acme(hub)
    hub._handle(link, message("acme", 1))
    # Another writer's 2-0 is on its way through pub/sub: 3-0 must not overtake it.
    assert not hub.offer_local("acme", "2-0", "3-0", {"n": 3, "seq": "3-0"})
    hub._handle(link, message("acme", 2))
    hub._handle(link, message("acme", 3))
    assert _taken(sub) == ["1-0", "2-0", "3-0"] and hub.local_deliveries == 0


async def test_no_hand_over_before_the_channel_delivered_or_after_the_link_broke(
    hub: LiveHub,
) -> None:
    link, sub = await _live_acme(hub)
    # Nothing seen on the channel yet: where the stream stands is not known here.
    assert not hub.offer_local("acme", "1-0", "2-0", {"n": 2})
    assert not hub.offer_local("acme", "", "1-0", {"n": 1})
    hub._handle(link, message("acme", 1))
    hub._lost(link)
    assert not hub.offer_local("acme", "1-0", "2-0", {"n": 2})
    assert not hub.offer_local("beta", "1-0", "2-0", {"n": 2})  # no subscriber at all
    assert _taken(sub) == ["1-0"]


async def test_a_cluster_gets_one_ssubscribe_a_channel_and_a_moved_channel_is_routed_again(
    hub: LiveHub,
) -> None:
    from redis.exceptions import ResponseError

    link, conn = link_for(hub, sharded=True)
    acme, beta = hub.subscribe("acme"), hub.subscribe("beta")
    reconcile(hub, link)
    # A cluster refuses one SSUBSCRIBE for channels of two slots: one a channel.
    assert conn.sent == [("SSUBSCRIBE", "{acme}:live"), ("SSUBSCRIBE", "{beta}:live")]
    hub._dirty.clear()
    hub._handle(link, [b"ssubscribe", b"{acme}:live", 1])
    # The second is refused: its slot is served elsewhere (a failover, a resharding).
    hub._handle(link, ResponseError("MOVED 4243 127.0.0.1:7002"))
    assert acme.ready and not beta.ready
    assert link.requested == {"{acme}:live"} and not link.awaiting
    assert hub._dirty.is_set() and hub._routes._stale  # the router looks again
    hub._handle(link, [b"smessage", b"{acme}:live", encode_live("5-0", encode_payload({}))])
    assert (await anext(acme))[0] == "5-0"


async def test_a_channel_the_cluster_moved_away_resyncs_its_subscribers(hub: LiveHub) -> None:
    link, _ = link_for(hub, sharded=True)
    sub = hub.subscribe("acme")
    reconcile(hub, link)
    hub._handle(link, [b"ssubscribe", b"{acme}:live", 1])
    hub._handle(link, [b"smessage", b"{acme}:live", encode_live("1-0", encode_payload({}))])
    assert (await anext(sub))[0] == "1-0"
    hub._dirty.clear()
    # Redis ends the subscription itself when the slot moves to another master.
    hub._handle(link, [b"sunsubscribe", b"{acme}:live", 0])
    assert not sub.ready and hub._dirty.is_set()
    assert "{acme}:live" not in link.requested
    # Subscribed again where it lives now: the subscriber replays the gap.
    moved, _ = link_for(hub, sharded=True)
    reconcile(hub, moved)
    hub._handle(moved, [b"ssubscribe", b"{acme}:live", 1])
    with pytest.raises(SubscriberResync) as info:
        await asyncio.wait_for(anext(sub), 1)
    assert info.value.last_seq == "1-0"


async def test_our_own_unsubscribe_is_not_a_move(hub: LiveHub) -> None:
    link, conn = link_for(hub, sharded=True)
    sub = hub.subscribe("acme")
    reconcile(hub, link)
    hub._handle(link, [b"ssubscribe", b"{acme}:live", 1])
    sub.close()
    reconcile(hub, link)
    assert conn.sent[-1] == ("SUNSUBSCRIBE", "{acme}:live")
    hub._dirty.clear()
    hub._handle(link, [b"sunsubscribe", b"{acme}:live", 0])
    assert not hub._dirty.is_set()
