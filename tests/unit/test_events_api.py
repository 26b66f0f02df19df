"""The subscription endpoints without a server: limits, filters, encoding, SSE framing,
and the hub writing pre-built frames to (fake) transports."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest
from fastapi import HTTPException

from gateway.api import events as events_api
from gateway.api.events import (
    EncodedCache,
    Frame,
    Subscribers,
    WebSocketSessions,
    WebSocketSubscriber,
    _sse,
    checked_since,
    control,
    subscription_filter,
)
from gateway.bus import LiveHub, SubscriberOverflow
from gateway.bus.keys import encode_live, encode_payload
from gateway.bus.replay import EventFilter
from gateway.config import EventsSettings
from gateway.security.principal import Principal

ADMIN = Principal("acme", "203", "admin")
USER = Principal("acme", "202", "user", frozenset({"202"}))
SYNC = Principal("acme", None, "sync")
ACME_EXTENSIONS = frozenset({"201", "202", "203"})


def test_subscriber_limit_per_tenant() -> None:
    subs = Subscribers(limit=2)
    assert subs.enter("acme") and subs.enter("acme")
    assert not subs.enter("acme")  # the third one: 429
    assert subs.enter("globex")  # other tenants are counted apart
    subs.leave("acme")
    assert subs.enter("acme")
    assert subs.total == 3


def test_an_event_is_encoded_once_per_format() -> None:
    cache = EncodedCache(size=2)
    event = {"type": "call.offered", "n": 1}
    first = cache.get("acme", "1-0", "json", event)
    assert json.loads(first) == {"type": "call.offered", "n": 1, "seq": "1-0"}
    assert cache.get("acme", "1-0", "json", {"changed": True}) is first
    assert msgpack.unpackb(cache.get("acme", "1-0", "msgpack", event)) == json.loads(first)
    cache.get("acme", "2-0", "json", event)  # evicts the oldest (size 2)
    assert cache.get("acme", "1-0", "json", {"changed": True}) != first


def test_filters_follow_the_principal() -> None:
    # A user sees its own extensions by default; an admin everything of its tenant.
    assert subscription_filter(USER, [], [], ACME_EXTENSIONS).extensions == {"202"}
    assert subscription_filter(ADMIN, [], ["call.offered"], ACME_EXTENSIONS).extensions == set()
    assert subscription_filter(ADMIN, ["201"], [], ACME_EXTENSIONS).extensions == {"201"}
    for principal, extensions in ((USER, ["201"]), (ADMIN, ["301"]), (SYNC, [])):
        with pytest.raises(HTTPException) as refused:
            subscription_filter(principal, extensions, [], ACME_EXTENSIONS)
        assert refused.value.status_code == 403


def test_since_is_checked() -> None:
    assert checked_since(None) is None and checked_since("") is None
    assert checked_since("1732270917250-3") == "1732270917250-3"
    with pytest.raises(HTTPException) as bad:
        checked_since("yesterday")
    assert bad.value.status_code == 400 and "since" in str(bad.value.detail)


def test_sse_framing() -> None:
    event = Frame("event", b'{"type":"call.offered"}', "5-0", "call.offered")
    assert _sse(event) == b'id: 5-0\nevent: call.offered\ndata: {"type":"call.offered"}\n\n'
    beat = control("json", {"type": "sipgw.heartbeat", "last_seq": "5-0"})
    assert _sse(beat) == b": heartbeat\n\n"
    overflow = control("json", {"type": "sipgw.overflow", "last_seq": "5-0"}, final=True)
    assert _sse(overflow).startswith(b"event: sipgw.overflow\ndata: ")


class FakeTransport:
    """Records what the hub writes; `buffered` plays the bytes the kernel has not taken."""

    def __init__(self, buffered: int = 0) -> None:
        self.buffered = buffered
        self.writes: list[bytes] = []
        self.high = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def set_write_buffer_limits(self, high: int) -> None:
        self.high = high

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


class FakeLink:
    """The accepted connection, and what it becomes once detached: closes recorded."""

    def __init__(self, transport: FakeTransport) -> None:
        self.transport = transport
        self.ping_interval = 20.0
        self.ping_timeout = 20.0
        self.closes: list[tuple[int, str]] = []
        self.pings: list[bytes] = []

    def detach(self, listener: Any) -> FakeLink:
        return self

    def close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))

    def ping(self, payload: bytes) -> None:
        self.pings.append(payload)


def subscriber(fmt: str, transport: FakeTransport, accept: EventFilter) -> Any:
    """A WebSocket subscriber with a write buffer limit of 4 KiB."""
    settings = EventsSettings(subscriber_queue=4)
    sessions = WebSocketSessions(lambda: None, settings, EncodedCache(), Subscribers(10))  # type: ignore[arg-type, return-value]
    return WebSocketSubscriber(sessions, FakeLink(transport), fmt, "acme", accept, None, None)  # type: ignore[arg-type]


def attached(hub: LiveHub, fmt: str, transport: FakeTransport, accept: EventFilter) -> Any:
    conn = subscriber(fmt, transport, accept)
    sub = hub.subscribe("acme", accept=accept)
    sub.attach(conn, None)
    return conn, sub


async def test_one_event_is_framed_once_and_the_same_bytes_go_to_every_transport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[str] = []
    real = events_api.encoded

    def counting(form: str, seq: str, event: dict[str, Any]) -> bytes:
        built.append(form)
        return real(form, seq, event)

    monkeypatch.setattr(events_api, "encoded", counting)
    hub = LiveHub("redis://127.0.0.1:1/0")  # never started: the test plays Redis
    offered = EventFilter(types=frozenset({"call.offered"}))
    json_subs = [attached(hub, "json", FakeTransport(), offered) for _ in range(50)]
    packed_subs = [attached(hub, "msgpack", FakeTransport(), offered) for _ in range(50)]
    hub._dispatch(b"{acme}:live", live_message("7-0", {"type": "call.offered", "n": 7}))
    hub._dispatch(b"{acme}:live", live_message("8-0", {"type": "call.ended", "n": 8}))

    # One payload and one frame per format for the 100 subscribers; call.ended passed no
    # filter, so nothing was made of it.
    assert sorted(built) == ["json", "msgpack", "ws-json", "ws-msgpack"]
    frames = {id(conn.transport.writes[0]) for conn, _ in json_subs}
    assert len(frames) == 1 and all(len(c.transport.writes) == 1 for c, _ in json_subs)
    frame = json_subs[0][0].transport.writes[0]
    # RFC 6455 §5.2: FIN + text, unmasked, 7-bit length; the payload is the event.
    assert frame[0] == 0x81 and frame[1] == len(frame) - 2
    assert json.loads(frame[2:]) == {"type": "call.offered", "n": 7, "seq": "7-0"}
    packed = {conn.transport.writes[0] for conn, _ in packed_subs}
    assert len(packed) == 1 and next(iter(packed))[0] == 0x82  # FIN + binary
    assert all(conn.last_seq == "7-0" for conn, _ in json_subs + packed_subs)


async def test_a_full_write_buffer_cuts_that_subscriber_off_and_no_other() -> None:
    hub = LiveHub("redis://127.0.0.1:1/0")
    everything = EventFilter()
    before = [attached(hub, "json", FakeTransport(), everything) for _ in range(3)]
    slow_conn, slow_sub = attached(hub, "json", FakeTransport(buffered=4097), everything)
    after = [attached(hub, "json", FakeTransport(), everything) for _ in range(3)]
    hub._dispatch(b"{acme}:live", live_message("7-0", {"type": "call.offered"}))
    hub._dispatch(b"{acme}:live", live_message("8-0", {"type": "call.answered"}))

    # Its depth is its write buffer in 1 KiB events; the others' is empty.
    assert slow_sub.depth == 5 and before[0][1].depth == 0
    # No event written: told at once why it is cut off (the hub forgets it), with the
    # close code and the cursor to resume from (its start).
    assert slow_sub.overflowed and hub.overflows == 1 and hub.subscription_count == 6
    [notice] = slow_conn.transport.writes
    assert json.loads(notice[2:])["type"] == "sipgw.overflow"
    assert slow_conn.link.closes == [(4008, "overflow since=None")]
    with pytest.raises(SubscriberOverflow) as info:
        await anext(slow_sub)
    assert info.value.last_seq is None
    # Every other subscriber, on either side of it in the loop, got both events.
    for conn, sub in before + after:
        assert len(conn.transport.writes) == 2 and not sub.overflowed


async def test_an_attached_subscription_skips_what_the_replay_delivered() -> None:
    hub = LiveHub("redis://127.0.0.1:1/0")
    conn = subscriber("json", FakeTransport(), EventFilter())
    sub = hub.subscribe("acme", accept=EventFilter())
    # The replay read the stream up to 6-0; of their live copies only 5-0 had arrived.
    hub._dispatch(b"{acme}:live", live_message("5-0", {"type": "call.offered"}))
    sub.attach(conn, "6-0")  # the replay's cursor
    for seq in ("6-0", "7-0", "8-0"):  # pub/sub keeps stream order: 6-0 is the late copy
        hub._dispatch(b"{acme}:live", live_message(seq, {"type": "call.offered"}))
    sent = [json.loads(frame[2:])["seq"] for frame in conn.transport.writes]
    assert sent == ["7-0", "8-0"] and sub.last_seq == "8-0"


def live_message(seq: str, event: dict[str, Any]) -> bytes:
    return encode_live(seq, encode_payload(event))


async def test_heartbeats_pings_and_token_checks_come_on_the_schedule_ticks() -> None:
    """No timer per connection: at each tick the subscriber says what it was due."""
    transport = FakeTransport()
    conn = subscriber("json", transport, EventFilter())
    conn.session_end = lambda: None  # a token to check (the check itself is not run here)
    conn.sessions.ping_interval = conn.sessions.ping_timeout = 20.0
    t0 = conn.busy_at
    conn.ping_at = t0 + 20.0
    assert conn.wake() == t0 + 15.0  # heartbeat 15 s (EventsSettings' default)
    assert conn.tick(t0 + 15.0) is True  # the token is due its check
    beat = json.loads(transport.writes[-1][2:])
    assert beat == {"type": "sipgw.heartbeat", "last_seq": None} and conn.link.pings == []
    # Busy since: no heartbeat at the next check, but the keep-alive ping is due.
    conn.busy_at = t0 + 29.0
    assert conn.tick(t0 + 30.0) is True and len(transport.writes) == 1
    assert conn.link.pings == [b"sipgw"]
    # Answered: the next ping 20 s later; unanswered for 20 s: closed like uvicorn did.
    conn.pong()
    conn.tick(t0 + 45.0)
    conn.tick(t0 + 60.0)
    assert len(conn.link.pings) == 2 and not transport.closed
    assert conn.tick(t0 + 80.0) is False
    assert conn.link.closes == [(1011, "keepalive ping timeout")] and transport.closed
