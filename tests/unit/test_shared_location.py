"""SharedLocation without Redis: values, clocks, the queue, and how received states and
snapshots are merged with this process's own changes."""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import logging
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
from redis.crc import key_slot

from gateway.config import Tenant
from gateway.proxy.core import Proxy
from gateway.proxy.location import Binding
from gateway.proxy.registrar import Registrar
from gateway.runtime.shared_location import (
    Clocks,
    SharedLocation,
    aor_key,
    decode_binding,
    decode_message,
    diff,
    encode_binding,
    encode_message,
    parse_aor_key,
)
from gateway.security import keys as security_keys
from gateway.sip.message import Request, parse_message
from gateway.stats import Counters
from gateway.transport.addresses import Source
from tests.waiting import wait_until

from .proxy_harness import CONFIG, Clock, FakeTransport, request, settings_from

ME, OTHER = "node-a/0/100", "node-a/1/101"
UDP_NAT = Source("udp", ("198.51.100.7", 40123), ("127.0.0.1", 5060), None)
TCP = Source("tcp", ("198.51.100.8", 51000), ("127.0.0.1", 5060), 7)


def binding(
    contact: str = "sip:201@192.168.1.10:5060",
    *,
    expires_at: float = 1600.0,
    source: Source = UDP_NAT,
    call_id: str = "reg-1",
    cseq: int = 2,
    origin: str | None = None,
) -> Binding:
    return Binding(
        contact_uri=contact,
        q=0.5,
        expires_at=expires_at,
        call_id=call_id,
        cseq=cseq,
        source=source,
        behind_nat=source.transport == "udp",
        user_agent="Yealink T46U",
        instance="<urn:uuid:00000000-0000-1000-8000-000000000001>",
        origin=origin,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()  # 1000.0, moved by hand


def make(clock: Clock, *, wall: float = 1_700_000_000.0, **options: int) -> SharedLocation:
    loc = SharedLocation(clock=clock, wall=lambda: wall + (clock.now - 1000.0), **options)
    loc.origin = ME
    return loc


def state_of(origin: str, seq: int, bindings: list[Binding], clocks: Clocks) -> bytes:
    """A message as the write script publishes it."""
    values = [encode_binding(b, origin, clocks) for b in bindings]
    return encode_message(origin, seq, "acme", "201", values)


# -- names --------------------------------------------------------------------------------
def test_keys_carry_the_tenant_hash_tag_and_are_removed_with_the_tenant() -> None:
    key = aor_key("acme", "201")
    assert key == "{acme}:loc:201"
    assert parse_aor_key(key.encode()) == ("acme", "201")
    # In the tenant's slot: its key index (where tenant deletion finds it) is too.
    assert security_keys.tenant_of_key(key) == "acme"
    assert key_slot(key.encode()) == key_slot(security_keys.key_index("acme").encode())
    assert fnmatch.fnmatchcase(key, security_keys.tenant_pattern("acme"))
    assert not fnmatch.fnmatchcase(key, security_keys.tenant_pattern("acm"))


@pytest.mark.parametrize(
    ("tenant", "extension"),
    [("Acme", "201"), ("acme}", "201"), ("acme", "2:1"), ("acme", "*"), ("", "201"), ("a", "")],
)
def test_names_that_could_reach_other_keys_are_refused(tenant: str, extension: str) -> None:
    with pytest.raises(ValueError):
        aor_key(tenant, extension)
    assert parse_aor_key("{" + tenant + "}:loc:" + extension) is None


def test_other_keys_are_not_taken_for_an_aor() -> None:
    assert parse_aor_key("{acme}:events") is None
    assert parse_aor_key("{acme}:contacts") is None
    assert parse_aor_key("{acme}:loc:") is None


# -- values and clocks ---------------------------------------------------------------------
def test_a_binding_survives_the_round_trip_except_its_connection() -> None:
    clocks = Clocks(mono=1000.0, wall=1_700_000_000.0)
    original = binding(source=TCP)
    decoded = decode_binding(encode_binding(original, ME, clocks), clocks)
    assert decoded is not None
    assert decoded.source == dataclasses.replace(TCP, conn_id=None)
    assert decoded.origin == ME  # a local binding is stored under this process's origin
    assert decoded.expires_at == pytest.approx(original.expires_at, abs=0.001)
    assert dataclasses.replace(decoded, source=TCP, origin=None, expires_at=1600.0) == original


def test_a_foreign_binding_keeps_its_origin_when_written_again() -> None:
    clocks = Clocks(mono=1000.0, wall=1_700_000_000.0)
    data = encode_binding(binding(origin=OTHER), ME, clocks)
    decoded = decode_binding(data, clocks)
    assert decoded is not None and decoded.origin == OTHER


def test_the_stored_value_holds_the_registration_and_nothing_else() -> None:
    clocks = Clocks(mono=1000.0, wall=1_700_000_000.0)
    value = msgpack.unpackb(encode_binding(binding(source=TCP), ME, clocks))
    assert set(value) == {
        "expires", "contact", "q", "call_id", "cseq", "transport", "remote", "local", "nat",
        "ua", "instance", "origin",
    }  # fmt: skip
    assert value["expires"] == 1_700_000_600_000  # wall-clock ms: 600 s from now
    assert 7 not in value["remote"] and "conn_id" not in value


def test_expiry_moves_between_two_processes_clocks() -> None:
    # Two processes: monotonic clocks with unrelated origins, one wall clock.
    writer = Clocks(mono=1000.0, wall=1_700_000_000.0)
    reader = Clocks(mono=52.5, wall=1_700_000_010.0)  # read 10 s later
    data = encode_binding(binding(expires_at=1060.0), OTHER, writer)  # 60 s left
    decoded = decode_binding(data, reader)
    assert decoded is not None
    assert decoded.expires_at == pytest.approx(52.5 + 50.0)
    assert decoded.remaining(52.5) == 50


def test_an_expired_binding_is_not_read() -> None:
    writer = Clocks(mono=1000.0, wall=1_700_000_000.0)
    data = encode_binding(binding(expires_at=1060.0), OTHER, writer)
    assert decode_binding(data, Clocks(mono=5.0, wall=1_700_000_060.0)) is None
    assert decode_binding(data, Clocks(mono=5.0, wall=1_700_000_059.9)) is not None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        msgpack.packb([1, 2]),
        msgpack.packb({"contact": "sip:x@y"}),
        msgpack.packb(
            {
                "expires": "soon",
                "contact": "sip:x@y",
                "q": 1.0,
                "call_id": "c",
                "cseq": 1,
                "transport": "udp",
                "remote": ["h", 1],
                "local": ["h", 2],
                "nat": False,
                "origin": "o",
            }
        ),
    ],
)
def test_malformed_bindings_are_ignored(data: bytes) -> None:
    assert decode_binding(data, Clocks(0.0, 0.0)) is None


def test_messages_are_decoded_and_garbage_refused() -> None:
    clocks = Clocks(mono=1000.0, wall=1_700_000_000.0)
    data = state_of(OTHER, 9, [binding()], clocks)
    message = decode_message(data)
    assert message is not None
    assert (message.origin, message.seq, message.tenant, message.extension) == (
        OTHER, 9, "acme", "201",
    )  # fmt: skip
    assert len(message.values) == 1
    # An empty Lua table may come packed as a map: still an empty state.
    empty = decode_message(msgpack.packb([OTHER, 3, "acme", "201", {}]))
    assert empty is not None and empty.values == []
    for bad in (b"x", msgpack.packb([OTHER, 1, "ACME", "201", []]), msgpack.packb({"a": 1})):
        assert decode_message(bad) is None
    assert decode_message(msgpack.packb([OTHER, "1", "acme", "201", []])) is None


# -- the queue -------------------------------------------------------------------------------
def test_diff_names_changed_and_removed_contacts_only() -> None:
    a, b, c = binding("sip:a@h"), binding("sip:b@h"), binding("sip:c@h")
    b2 = dataclasses.replace(b, cseq=3, expires_at=2000.0)
    assert diff([a, b, c], [a, b2]) == {"sip:b@h": b2, "sip:c@h": None}
    assert diff([a], [a]) == {}


def test_replace_answers_from_memory_and_coalesces_changes_per_aor(clock: Clock) -> None:
    loc = make(clock)
    first, second = binding(cseq=2), binding(cseq=4, expires_at=2000.0)
    other = binding("sip:201@192.168.1.11:5060")
    loc.replace("acme", "201", [first])
    assert loc.bindings("acme", "201", clock.now) == [first]  # at once, no Redis
    loc.replace("acme", "201", [second, other])
    loc.replace("acme", "201", [second])
    loc.replace("acme", "202", [binding("sip:202@h")])
    assert loc.pending == 2
    batch = loc._take_batch()
    assert [key for key, _ in batch] == [("acme", "201"), ("acme", "202")]
    # The latest state of each contact, the removal of the one that came and went.
    assert batch[0][1].changes == {"sip:201@192.168.1.10:5060": second, other.contact_uri: None}
    assert loc.pending == 0


def test_the_queue_is_bounded_and_says_so_once(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    loc = make(clock, max_pending=2)
    with caplog.at_level(logging.WARNING, logger="sipgw.location"):
        for ext in ("201", "202", "203", "204"):
            loc.replace("acme", ext, [binding(f"sip:{ext}@h")])
        loc.replace("acme", "201", [binding("sip:201@h", cseq=5)])  # coalesced: no drop
    assert loc.pending == 2 and loc.dropped == 2
    assert len([r for r in caplog.records if "queue full" in r.message]) == 1
    # Memory has everything: SIP is not affected by a full queue.
    assert len(loc) == 4
    # Drained, a new episode is logged again.
    loc._confirm(loc._take_batch())
    with caplog.at_level(logging.WARNING, logger="sipgw.location"):
        loc.replace("acme", "205", [binding("sip:205@h")])
        loc.replace("acme", "206", [binding("sip:206@h")])
        loc.replace("acme", "207", [binding("sip:207@h")])
    assert len([r for r in caplog.records if "queue full" in r.message]) == 2


def test_changes_of_one_aor_are_bounded_too(clock: Clock) -> None:
    loc = make(clock, max_changes_per_aor=3)
    for port in range(5):  # a phone that changes its contact at every REGISTER
        loc.replace("acme", "201", [binding(f"sip:201@h:{5060 + port}")])
    [(_, write)] = loc._take_batch()
    assert len(write.changes) == 3 and loc.dropped == 2
    assert write.changes["sip:201@h:5064"] is not None  # the current binding is kept
    # One REGISTER that changes more than the bound: its upserts are kept.
    many = make(clock, max_changes_per_aor=2)
    many.replace("acme", "201", [binding(f"sip:201@h:{p}") for p in range(3)])
    many._confirm(many._take_batch())
    many.replace("acme", "201", [binding("sip:201@h:9")])
    [(_, write)] = many._take_batch()
    assert write.changes["sip:201@h:9"] is not None and len(write.changes) == 2
    # Bindings that expired since are the first to go.
    aging = make(clock, max_changes_per_aor=2)
    aging.replace("acme", "201", [binding("sip:old@h", expires_at=clock.now + 5)])
    clock.now += 10  # expired, pruned from memory without a removal
    aging.bindings("acme", "201", clock.now)
    aging.replace("acme", "201", [binding("sip:new@h"), binding("sip:other@h")])
    [(_, write)] = aging._take_batch()
    assert list(write.changes) == ["sip:new@h", "sip:other@h"]


def test_bad_names_stay_local(clock: Clock) -> None:
    loc = make(clock)
    loc.replace("acme", "2:01", [binding()])
    assert loc.pending == 0 and len(loc) == 1


def test_failed_writes_go_again_under_newer_changes(clock: Clock) -> None:
    loc = make(clock)
    old, new = binding(cseq=2), binding(cseq=3)
    gone = binding("sip:201@192.168.1.11:5060")
    loc.replace("acme", "201", [old, gone])
    batch = loc._take_batch()
    loc.replace("acme", "201", [new, gone])  # while the first write is on its way
    loc._requeue(batch)
    [(_, write)] = loc._take_batch()
    assert write.changes == {gone.contact_uri: gone, old.contact_uri: new}
    assert loc._inflight.keys() == {("acme", "201")} and len(loc._inflight["acme", "201"]) == 1


def test_a_lost_connection_sends_again_what_redis_did_not_confirm(clock: Clock) -> None:
    loc = make(clock)
    loc.replace("acme", "201", [binding()])
    loc._confirm(loc._take_batch())
    loc.replace("acme", "202", [binding("sip:202@h")])
    loc._take_batch()  # sent, never answered
    loc._end_session()
    assert loc._inflight == {}
    assert list(loc._pending) == [("acme", "202")]


# -- received states ------------------------------------------------------------------------
def test_a_foreign_binding_has_no_connection_here(clock: Clock) -> None:
    loc = make(clock)
    clocks = loc._clocks()
    loc._on_message(state_of(OTHER, 1, [binding(source=TCP)], clocks))
    (held,) = loc.bindings("acme", "201", clock.now)
    assert held.origin == OTHER
    assert held.source == Source("tcp", TCP.remote, TCP.local, None)
    assert held.behind_nat is False and held.user_agent == "Yealink T46U"
    assert loc.pending == 0  # applying is not a change to publish


def test_a_udp_phone_behind_nat_is_still_reached_at_its_source(clock: Clock) -> None:
    loc = make(clock)
    loc._on_message(state_of(OTHER, 1, [binding(source=UDP_NAT)], loc._clocks()))
    (held,) = loc.bindings("acme", "201", clock.now)
    assert held.behind_nat and held.source.remote == UDP_NAT.remote


def test_own_bindings_in_a_received_state_keep_their_connection(clock: Clock) -> None:
    loc = make(clock)
    mine = binding(source=TCP)
    loc.replace("acme", "201", [mine])
    loc._confirm(loc._take_batch())
    theirs = binding("sip:201@192.168.1.11:5060", origin=OTHER)
    loc._on_message(state_of(OTHER, 5, [mine, theirs], loc._clocks()))
    held = {b.contact_uri: b for b in loc.bindings("acme", "201", clock.now)}
    assert held[mine.contact_uri].origin is None
    assert held[mine.contact_uri].source.conn_id == 7
    assert held[theirs.contact_uri].origin == OTHER


def test_an_older_state_does_not_undo_changes_redis_has_not_echoed(clock: Clock) -> None:
    loc = make(clock)
    theirs = binding("sip:201@192.168.1.11:5060", origin=OTHER)
    loc._on_message(state_of(OTHER, 1, [theirs], loc._clocks()))
    mine = binding("sip:201@192.168.1.10:5060", cseq=7)
    loc.replace("acme", "201", [theirs, mine])  # queued
    loc._on_message(state_of(OTHER, 2, [theirs], loc._clocks()))  # published before ours
    assert mine in loc.bindings("acme", "201", clock.now)
    batch = loc._take_batch()
    loc._confirm(batch)  # written, echo not read yet
    loc._on_message(state_of(OTHER, 3, [theirs], loc._clocks()))  # ran before our write
    assert mine in loc.bindings("acme", "201", clock.now)
    # Our own message: the write is in every later state; nothing is held back any more.
    seq = batch[0][1].seq
    loc._on_message(state_of(ME, seq, [theirs, mine], loc._clocks()))
    assert loc._inflight == {}
    # So another process removing our binding afterwards is obeyed.
    loc._on_message(state_of(OTHER, 4, [theirs], loc._clocks()))
    assert [b.contact_uri for b in loc.bindings("acme", "201", clock.now)] == [theirs.contact_uri]


def test_a_local_register_replaces_a_foreign_binding_cleanly(clock: Clock, tmp_path: Path) -> None:
    settings = settings_from(CONFIG, tmp_path)
    loc = make(clock)
    registrar = Registrar(loc, settings.sip)
    contact = "sip:201@192.168.1.10:5060"
    foreign = binding(contact, call_id="reg-201", cseq=2, origin=OTHER, source=TCP)
    loc._on_message(state_of(OTHER, 1, [foreign], loc._clocks()))
    loc._pending.clear()

    # The phone refreshes through this process (same Call-ID): the other process's CSeq
    # counts here too, then the refresh replaces its binding.
    here = Source("tcp", TCP.remote, ("127.0.0.1", 5060), 42)
    assert (
        register(
            registrar, settings.tenants[0], cseq=2, contact=contact, source=here, now=clock.now
        )
        == 400
    )
    assert (
        register(
            registrar, settings.tenants[0], cseq=3, contact=contact, source=here, now=clock.now
        )
        == 200
    )
    (held,) = loc.bindings("acme", "201", clock.now)
    assert held.origin is None and held.source.conn_id == 42 and held.cseq == 3
    [(_, write)] = loc._take_batch()
    assert write.changes == {contact: held}


def test_own_messages_for_a_dropped_change_are_harmless(clock: Clock) -> None:
    loc = make(clock)
    loc._on_message(state_of(ME, 99, [], loc._clocks()))
    assert len(loc) == 0 and loc.applied == 1


def test_garbage_on_the_channel_is_counted(clock: Clock) -> None:
    loc = make(clock)
    loc._on_message(b"not msgpack \xc1")
    assert loc.bad_messages == 1 and len(loc) == 0


def register(
    registrar: Registrar, tenant: Tenant, *, cseq: int, contact: str, source: Source, now: float
) -> int:
    """A REGISTER of user 201 (authenticated already) through `registrar`: the status."""
    user = tenant.user_by_extension("201")
    assert user is not None
    text = request(
        "REGISTER",
        "sip:acme.test",
        src=source.remote,
        from_="<sip:201@acme.test>;tag=r",
        to="<sip:201@acme.test>",
        call_id="reg-201",
        cseq=cseq,
        transport="TCP",
        extra="Expires: 600",
    ).replace(f"<sip:peer@{source.remote[0]}:{source.remote[1]}>", f"<{contact}>")
    req = parse_message(text.encode())
    assert isinstance(req, Request)
    return registrar.register(req, tenant, user, source, now).status


# -- snapshots (a new connection) -------------------------------------------------------------
def test_a_snapshot_replaces_foreign_bindings_and_keeps_and_rewrites_our_own(
    clock: Clock,
) -> None:
    loc = make(clock)
    clocks = loc._clocks()
    stale_foreign = binding("sip:202@192.168.1.20:5060", origin=OTHER)
    loc._on_message(
        encode_message(OTHER, 1, "acme", "202", [encode_binding(stale_foreign, OTHER, clocks)])
    )
    mine = binding(source=TCP)
    loc.replace("acme", "201", [mine])
    loc._confirm(loc._take_batch())
    loc._end_session()

    stored_foreign = binding("sip:203@192.168.1.30:5060", origin=OTHER)
    # Redis came back empty but for one AOR of another process.
    loc._merge_snapshot({("acme", "203"): [encode_binding(stored_foreign, OTHER, clocks)]})

    assert loc.bindings("acme", "202", clock.now) == []  # Redis is the authority for others
    (held,) = loc.bindings("acme", "203", clock.now)
    assert held.origin == OTHER and held.source.conn_id is None
    (kept,) = loc.bindings("acme", "201", clock.now)
    assert kept == mine  # this process is the authority for its own
    [(key, write)] = loc._take_batch()
    assert key == ("acme", "201") and write.changes == {mine.contact_uri: mine}


def test_after_a_redis_restart_foreign_bindings_wait_for_their_owners(clock: Clock) -> None:
    loc = make(clock)
    clocks = loc._clocks()
    theirs = binding("sip:202@192.168.1.20:5060", origin=OTHER)
    loc._on_message(
        encode_message(OTHER, 1, "acme", "202", [encode_binding(theirs, OTHER, clocks)])
    )
    loc._end_session()
    loc._merge_snapshot({}, redis_restarted=True)  # back empty, its owner not yet written
    assert loc.bindings("acme", "202", clock.now) == [theirs]
    assert loc.pending == 0  # not ours to write
    # The owner writes again: its state is taken as usual.
    loc._on_message(encode_message(OTHER, 2, "acme", "202", []))
    assert loc.bindings("acme", "202", clock.now) == []


def test_a_snapshot_holding_our_binding_needs_no_rewrite(clock: Clock) -> None:
    loc = make(clock)
    mine = binding(source=TCP)
    loc.replace("acme", "201", [mine])
    loc._confirm(loc._take_batch())
    loc._end_session()
    loc._merge_snapshot({("acme", "201"): [encode_binding(mine, ME, loc._clocks())]})
    assert loc.pending == 0
    (held,) = loc.bindings("acme", "201", clock.now)
    assert held.source.conn_id == 7 and held.origin is None


def test_a_snapshot_does_not_undo_queued_changes(clock: Clock) -> None:
    loc = make(clock)
    old = binding(cseq=2)
    loc.replace("acme", "201", [old])
    loc._confirm(loc._take_batch())
    loc._end_session()
    loc.replace("acme", "201", [])  # queued while Redis is away: it still holds `old`
    loc._merge_snapshot({("acme", "201"): [encode_binding(old, ME, loc._clocks())]})
    assert loc.bindings("acme", "201", clock.now) == []
    [(_, write)] = loc._take_batch()
    assert write.changes == {old.contact_uri: None}


def test_expired_bindings_are_neither_loaded_nor_rewritten(clock: Clock) -> None:
    loc = make(clock)
    mine = binding(expires_at=1010.0)
    loc.replace("acme", "201", [mine])
    loc._confirm(loc._take_batch())
    loc._end_session()
    clock.now = 1020.0
    stored = encode_binding(
        binding("sip:x@h", expires_at=1010.0, origin=OTHER), OTHER, Clocks(1000.0, 1_700_000_000.0)
    )
    loc._merge_snapshot({("acme", "202"): [stored]})
    assert loc.count(clock.now) == 0 and loc.pending == 0


def test_the_proxy_uses_an_empty_shared_location(clock: Clock, tmp_path: Path) -> None:
    loc = SharedLocation(clock=clock)
    assert len(loc) == 0 and loc  # empty, yet not replaced by a Location of its own
    proxy = Proxy(
        settings_from(CONFIG, tmp_path),
        transport=FakeTransport(),
        counters=Counters(),
        clock=clock,
        location=loc,
    )
    assert proxy.location is loc and proxy.registrar.location is loc


# -- lifecycle without Redis -------------------------------------------------------------------
async def test_stop_before_run_started_keeps_it_from_running() -> None:
    loc = SharedLocation()
    await loc.stop()
    await loc.run("redis://127.0.0.1:1/0", ME)  # returns at once
    assert not loc.connected


async def test_stop_ends_the_reconnect_loop_within_a_second(
    free_tcp_port: Callable[[], int],
) -> None:
    loc = SharedLocation(backoff_initial=0.01, backoff_max=0.05)
    task = asyncio.create_task(loc.run(f"redis://127.0.0.1:{free_tcp_port()}/0", ME))
    loc.replace("acme", "201", [binding(expires_at=asyncio.get_running_loop().time() + 60)])
    await wait_until(lambda: loc.redis_errors >= 2, 5, "connection attempts refused")
    assert not loc.connected and loc.pending == 1  # kept for when Redis comes
    started = time.monotonic()
    await loc.stop()
    assert task.done() and time.monotonic() - started < 1.0
