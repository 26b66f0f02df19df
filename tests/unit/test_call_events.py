"""gateway.calls.events: schema v1, UUIDv7, RFC 3339 times, JSON/msgpack, the JSON Schema.

`assert_valid()` is shared with the tracker and model tests: every event any test makes
is checked against docs/event-schema.json and through both wire formats.
"""

from __future__ import annotations

import json
import re
import uuid
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.calls.events import (
    CAUSES,
    EVENT_TYPES,
    CallEvent,
    Cause,
    Device,
    Diversion,
    Lookup,
    Originate,
    Party,
    Peer,
    ScreenPop,
    Transfer,
    UUID7Generator,
    Webhook,
    decode_msgpack,
    encode_json,
    encode_msgpack,
    parse_rfc3339,
    rfc3339,
    uuid7,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"
T0 = 1_700_000_000.0


@cache
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((DOCS / "event-schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def assert_valid_dict(data: dict[str, Any]) -> None:
    errors = sorted(validator().iter_errors(data), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def assert_valid(event: CallEvent) -> dict[str, Any]:
    """Schema-valid, and the same after to_dict → JSON/msgpack → from_dict."""
    data = event.to_dict()
    assert_valid_dict(data)
    assert CallEvent.from_dict(data) == event
    assert json.loads(encode_json(data)) == data
    assert decode_msgpack(encode_msgpack(data)) == data
    assert CallEvent.from_dict(json.loads(encode_json(data))) == event
    return data


def full_event(**changes: Any) -> CallEvent:
    fields: dict[str, Any] = dict(
        type="call.cleared",
        occurred_at=rfc3339(T0 + 65),
        node="gw-1",
        tenant="acme",
        event_id=uuid7(T0 + 65),
        call_id=uuid7(T0),
        sip_call_id="a84b4c76e66710@trunk.example.net",
        from_tag="1928301774",
        to_tag="a6c85cf",
        conversation_id=uuid7(T0),
        direction="inbound",
        state="cleared",
        prev_state="established",
        calling=Party("+31612345678", "+31612345678", "Alice", "sip:+31612345678@trunk"),
        called=Party("+31201234567", "+31201234567", None, "sip:+31201234567@gw"),
        extension="201",
        device=Device("Yealink T46U", "sip:201@192.0.2.20:5060", "udp:192.0.2.20:5060"),
        created_at=rfc3339(T0),
        answered_at=rfc3339(T0 + 5),
        ended_at=rfc3339(T0 + 65),
        duration_ms=60_000,
        cause=Cause("normal"),
        missed=False,
    )
    fields.update(changes)
    return CallEvent(**fields)


# --- UUIDv7 -----------------------------------------------------------------------------


def test_uuid7_layout_follows_rfc_9562() -> None:
    generator = UUID7Generator()
    text = generator(T0 + 0.123)
    value = uuid.UUID(text)
    assert str(value) == text
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert value.int >> 80 == int((T0 + 0.123) * 1000)  # 48-bit Unix ms


def test_uuid7_is_monotonic_within_a_millisecond_and_unique() -> None:
    generator = UUID7Generator()
    ids = [generator(T0) for _ in range(5000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert {uuid.UUID(i).int >> 80 for i in ids} == {int(T0 * 1000)}


def test_uuid7_stays_monotonic_when_the_clock_goes_back() -> None:
    generator = UUID7Generator()
    first = generator(T0 + 10)
    second = generator(T0)  # the clock went back: keep the last timestamp
    assert second > first
    assert uuid.UUID(second).int >> 80 == int((T0 + 10) * 1000)


def test_uuid7_counter_overflow_moves_the_timestamp_on() -> None:
    generator = UUID7Generator()
    generator(T0)
    generator._counter = (1 << 42) - 1  # the next one in this ms overflows
    after = generator(T0)
    assert uuid.UUID(after).int >> 80 == int(T0 * 1000) + 1


def test_uuid7_default_uses_the_wall_clock() -> None:
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", uuid7()
    )


# --- time -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (0.0, "1970-01-01T00:00:00.000000Z"),
        (T0, "2023-11-14T22:13:20.000000Z"),
        (T0 + 0.000001, "2023-11-14T22:13:20.000001Z"),
        (T0 + 0.5, "2023-11-14T22:13:20.500000Z"),
        (1_709_164_800.25, "2024-02-29T00:00:00.250000Z"),
    ],
)
def test_rfc3339_utc_with_microseconds(ts: float, text: str) -> None:
    assert rfc3339(ts) == text
    assert parse_rfc3339(text) == pytest.approx(ts, abs=1e-6)


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_rfc3339_round_trips_to_the_microsecond(ts: float) -> None:
    text = rfc3339(ts)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", text)
    assert parse_rfc3339(text) == pytest.approx(ts, abs=1e-6)
    assert rfc3339(parse_rfc3339(text)) == text


def test_parse_rfc3339_needs_a_zone() -> None:
    assert parse_rfc3339("2023-11-14T23:13:20.000000+01:00") == T0
    with pytest.raises(ValueError):
        parse_rfc3339("2023-11-14T22:13:20")


# --- to_dict / from_dict ----------------------------------------------------------------


def test_to_dict_has_a_stable_field_order_and_omits_absent_parts() -> None:
    data = full_event(parent_call_id=None, seq=None).to_dict()
    assert list(data)[:7] == ["v", "event_id", "type", "occurred_at", "node", "tenant", "call_id"]
    assert "seq" not in data and "parent_call_id" not in data and "transfer" not in data
    assert None not in data.values()
    assert data["calling"] == {
        "number_raw": "+31612345678",
        "number_e164": "+31612345678",
        "display": "Alice",
        "uri": "sip:+31612345678@trunk",
    }
    assert data["called"] == {
        "number_raw": "+31201234567",
        "number_e164": "+31201234567",
        "uri": "sip:+31201234567@gw",
    }
    assert data["cause"] == {"normalized": "normal"}
    assert_valid(full_event())


def test_with_seq_puts_the_stream_id_after_the_event_id() -> None:
    data = full_event().with_seq("1700000065000-0").to_dict()
    assert list(data)[:4] == ["v", "event_id", "seq", "type"]
    assert_valid(full_event().with_seq("1700000065000-0"))


def test_encode_json_is_compact_utf8_in_field_order() -> None:
    event = full_event(calling=Party("0612345678", None, "Zoë Ærø", None))
    raw = encode_json(event.to_dict())
    assert raw.startswith(b'{"v":1,"event_id":"')
    assert "Zoë Ærø".encode() in raw  # UTF-8, not \u escapes
    assert b": " not in raw and b", " not in raw
    assert list(json.loads(raw)) == list(event.to_dict())


def test_msgpack_keeps_types_and_order() -> None:
    data = full_event().to_dict()
    back = decode_msgpack(encode_msgpack(data))
    assert back == data and list(back) == list(data)
    assert isinstance(back["duration_ms"], int) and back["missed"] is False


@pytest.mark.parametrize("raw", [b"\xc1", b"\x93\x01\x02\x03", b""])
def test_decode_msgpack_refuses_what_is_not_an_event(raw: bytes) -> None:
    with pytest.raises(ValueError):
        decode_msgpack(raw)


def every_part_event() -> CallEvent:
    return full_event(
        type="call.recognized",
        seq="1700000065000-3",
        parent_call_id=uuid7(T0 - 60),
        transfer=Transfer("attended", "sip:203@gw", "sip:201@gw", "c2@x;to-tag=a;from-tag=b"),
        diversion=Diversion("no-answer", "sip:202@gw", "sip:201@gw"),
        originate=Originate("req-42", "alice", "call-info"),
        lookup=Lookup("hit", "miss", 3.5, 50.0, {"name": "Jan", "vip": True, "score": 7}),
        screen_pop=(ScreenPop("crm", "https://crm.example.com/c/17"),),
    )


def test_every_part_round_trips() -> None:
    data = assert_valid(every_part_event())
    assert data["lookup"]["contact"] == {"name": "Jan", "vip": True, "score": 7}
    assert data["screen_pop"] == [{"name": "crm", "url": "https://crm.example.com/c/17"}]
    assert data["diversion"] == {"reason": "no-answer", "from": "sip:202@gw", "to": "sip:201@gw"}


def test_from_dict_ignores_unknown_keys_and_checks_types() -> None:
    event = full_event()
    data = event.to_dict()
    assert CallEvent.from_dict({**data, "added_in_v1_1": 1}) == event
    for broken in (
        {**data, "v": 2},
        {**data, "v": True},
        {k: v for k, v in data.items() if k != "tenant"},
        {**data, "duration_ms": "60"},
        {**data, "duration_ms": True},
        {**data, "missed": 0},
        {**data, "calling": "Alice"},
        {**data, "cause": {"sip_code": 486}},
        {**data, "cause": {"normalized": "busy", "sip_code": "486"}},
        {**data, "type": "call.exploded"},
        {**data, "lookup": {"status": "hit", "contact": {"a": [1]}}},
        {**data, "screen_pop": {"name": "x", "url": "y"}},
    ):
        with pytest.raises(ValueError):
            CallEvent.from_dict(broken)


def test_lookup_numbers_come_back_as_floats() -> None:
    part = Lookup.from_dict({"status": "hit", "latency_ms": 3})
    assert part.latency_ms == 3.0 and isinstance(part.latency_ms, float)


def test_event_type_must_be_known() -> None:
    with pytest.raises(ValueError):
        full_event(type="call.ringing")
    assert "call.offered" in EVENT_TYPES and len(EVENT_TYPES) == 14


# --- the JSON Schema --------------------------------------------------------------------


def test_schema_is_strict_at_every_level() -> None:
    schema = json.loads((DOCS / "event-schema.json").read_text())

    def objects(node: Any) -> list[dict[str, Any]]:
        found = []
        if isinstance(node, dict):
            if node.get("type") == "object":
                found.append(node)
            for value in node.values():
                found.extend(objects(value))
        elif isinstance(node, list):
            for value in node:
                found.extend(objects(value))
        return found

    for node in objects(schema):
        if "properties" in node:
            assert node["additionalProperties"] is False, node
        else:  # lookup.contact: the tenant's configured fields, scalars only
            assert node["additionalProperties"] == {"type": ["string", "number", "boolean", "null"]}
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["type"]["enum"] == list(EVENT_TYPES)
    assert schema["$defs"]["cause"]["properties"]["normalized"]["enum"] == list(CAUSES)


@pytest.mark.parametrize(
    "change",
    [
        {"surprise": 1},
        {"calling": {"number_raw": "1", "nickname": "x"}},
        {"cause": {"normalized": "exploded"}},
        {"v": 2},
        {"event_id": "not-a-uuid"},
        {"event_id": str(uuid.uuid4())},
        {"occurred_at": "2023-11-14T22:13:20Z"},  # no microseconds
        {"direction": "sideways"},
        {"prev_state": "offered"},  # cleared comes from established or held
        {"tenant": "ACME"},
        {"calling": {"number_e164": "0612345678"}},
    ],
)
def test_schema_refuses_what_to_dict_never_makes(change: dict[str, Any]) -> None:
    data = {**full_event().to_dict(), **change}
    assert list(validator().iter_errors(data))


@pytest.mark.parametrize("missing", ["cause", "ended_at", "duration_ms", "missed", "call_id"])
def test_schema_requires_what_a_cleared_event_must_carry(missing: str) -> None:
    data = full_event().to_dict()
    del data[missing]
    assert list(validator().iter_errors(data))


def test_schema_covers_the_events_made_by_others() -> None:
    envelope: dict[str, Any] = dict(occurred_at=rfc3339(T0), node="gw-1", tenant="acme")
    assert_valid(
        CallEvent(type="call.originated", **envelope, originate=Originate("r-1", "alice", None))
    )
    assert_valid(every_part_event())
    for kind in ("peer.up", "peer.down"):
        assert_valid(CallEvent(type=kind, **envelope, peer=Peer("kpn", "udp:192.0.2.1:5060")))
    assert list(validator().iter_errors(CallEvent(type="peer.up", **envelope).to_dict()))
    hook = Webhook("wh_" + "a" * 20, "https://crm.example/hook", "HTTP 503", rfc3339(T0))
    assert_valid(CallEvent(type="webhook.disabled", **envelope, webhook=hook))
    assert list(validator().iter_errors(CallEvent(type="webhook.disabled", **envelope).to_dict()))


def test_every_example_in_events_md_is_valid_and_every_type_has_one() -> None:
    text = (DOCS / "events.md").read_text()
    blocks = re.findall(r"```json\n(.*?)\n```", text, flags=re.S)
    seen = set()
    for block in blocks:
        data = json.loads(block)
        if "type" not in data:
            continue
        assert_valid_dict(data)
        assert CallEvent.from_dict(data).to_dict() == data
        seen.add(data["type"])
    assert seen == set(EVENT_TYPES)
