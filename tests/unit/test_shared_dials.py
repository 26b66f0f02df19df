"""The pure parts of click-to-dial on every node (runtime/shared_dials.py): the Redis
names, the stored view and the relay messages, the bounded write queue; and the
Originator's side of it (told of every change, the retention of `get`). The Redis
side is tested with real nodes in tests/integration/test_click_to_dial_nodes.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.dial.originate import DialRequest, DialState
from gateway.runtime.shared_dials import (
    CancelAsk,
    CancelReply,
    SharedDials,
    decode_message,
    decode_record,
    dial_key,
    encode_message,
    encode_record,
    is_dial_id,
    node_channel,
)
from tests.unit.proxy_harness import settings_from
from tests.unit.test_originate import CONFIG, PHONE, World

DIAL_ID = "01937a00-0000-7000-8000-00000000a001"


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(settings_from(CONFIG, tmp_path))


def test_keys_stay_in_the_tenants_slot_and_refuse_what_is_not_an_id() -> None:
    assert dial_key("acme", DIAL_ID) == "{acme}:dial:" + DIAL_ID
    assert node_channel("gw-1.example") == "sipgw:dials:{gw-1.example}"
    for tenant, dial_id in [
        ("acme}", DIAL_ID), ("ACME", DIAL_ID), ("acme", "*"), ("acme", DIAL_ID + "}x"),
        ("acme", DIAL_ID.upper()), ("", DIAL_ID),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match="invalid dial request"):
            dial_key(tenant, dial_id)
    with pytest.raises(ValueError, match="invalid node name"):
        node_channel("a}b")
    assert is_dial_id(DIAL_ID) and not is_dial_id("../" + DIAL_ID)


def test_the_stored_view_is_what_get_answers_and_names_its_owner(world: World) -> None:
    world.register("201", PHONE)
    request = world.dial("201", request_id="crm-1")
    stored = decode_record("acme", request.id, encode_record(request, "node-a"))
    assert stored is not None
    assert stored.view == json.loads(json.dumps(request.to_dict()))
    assert (stored.node, stored.tenant, stored.id) == ("node-a", "acme", request.id)
    assert (stored.requested_by, stored.extension) == ("piet", "201")
    assert (stored.state, stored.finished) == ("calling_phone", False)


def test_a_stored_value_is_believed_only_for_the_tenant_and_id_it_names(world: World) -> None:
    world.register("201", PHONE)
    request = world.dial("201")
    data = encode_record(request, "node-a")
    assert decode_record("globex", request.id, data) is None
    assert decode_record("acme", DIAL_ID, data) is None
    record = json.loads(data)
    for broken in [
        b"not json", b"[]", json.dumps({**record, "node": 7}).encode(),
        json.dumps({**record, "request": {**record["request"], "finished": "no"}}).encode(),
        json.dumps({**record, "request": {**record["request"], "from": None}}).encode(),
    ]:  # fmt: skip
        assert decode_record("acme", request.id, broken) is None


def test_relay_messages_round_trip_and_anything_else_is_dropped() -> None:
    ask = CancelAsk("ab" * 16, "acme", DIAL_ID, "node-b")
    reply = CancelReply("cd" * 16, 200, view={"id": DIAL_ID, "state": "cancelled"})
    refused = CancelReply("cd" * 16, 409, detail="the dial request is already failed")
    for message in (ask, reply, refused):
        assert decode_message(encode_message(message)) == message
    good = json.loads(encode_message(ask))
    for bad in [
        {**good, "tenant": "Acme"}, {**good, "tenant": "{acme}"}, {**good, "id": "x"},
        {**good, "reply_to": "a b"}, {**good, "token": "short"}, {**good, "op": "hangup"},
        {"op": "reply", "token": "cd" * 16, "status": True},
        {"op": "reply", "token": "cd" * 16, "status": 200, "view": []},
        {"op": "reply", "token": "cd" * 16, "status": 99},
    ]:  # fmt: skip
        assert decode_message(json.dumps(bad).encode()) is None, bad
    assert decode_message(b"\xff") is None and decode_message(b"[1]") is None
    assert decode_message(b" " * 70_000) is None


def test_the_originator_reports_every_change_and_the_queue_keeps_the_latest(
    world: World,
) -> None:
    shared = SharedDials("node-a", keep_finished=3600)
    seen: list[DialState] = []

    def changed(request: DialRequest) -> None:
        seen.append(request.state)
        shared.changed(request)

    world.originator.on_change = changed
    world.register("201", PHONE)
    request = world.dial("201")
    world.answer(world.last_request("INVITE", PHONE), 180, PHONE)
    assert seen == ["calling_phone", "phone_ringing"]
    # One entry per request, whatever the number of changes: the writer serializes it.
    assert shared.pending == 1 and shared._live == {request.id: request}
    world.originator.cancel("acme", request.id)
    assert seen[-1] == "cancelled"
    assert shared.pending == 1 and shared._live == {}  # finished: not written again


def test_a_full_queue_drops_new_requests_only(world: World) -> None:
    shared = SharedDials("node-a", keep_finished=3600, max_pending=1)
    world.originator.on_change = shared.changed
    world.register("201", PHONE)
    first = world.dial("201")
    world.dial("201")
    assert (shared.pending, shared.dropped) == (1, 1)
    world.originator.cancel("acme", first.id)  # already queued: its change is kept
    assert (shared.pending, shared.dropped) == (1, 1)


def test_expiry_and_refresh_follow_keep_finished() -> None:
    assert SharedDials("n", keep_finished=3600).ttl_ms == 3_600_000
    assert SharedDials("n", keep_finished=3600).refresh == 300.0
    assert SharedDials("n", keep_finished=6).refresh == 2.0
    assert SharedDials("n", keep_finished=0.1).ttl_ms == 1000  # Redis needs a real expiry


def test_get_forgets_a_finished_request_after_keep_finished(world: World) -> None:
    world.register("201", PHONE)
    request = world.dial("201")
    world.originator.cancel("acme", request.id)
    keep = world.settings.dial.keep_finished
    world.h.clock.now += keep - 1
    assert world.originator.get("acme", request.id) is request
    world.h.clock.now += 2
    assert world.originator.get("acme", request.id) is None
