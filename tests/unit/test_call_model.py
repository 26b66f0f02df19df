"""gateway.calls.model (the state table), sdp (hold detection) and causes (the cause table)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from gateway.calls import causes, sdp
from gateway.calls.events import (
    CAUSES,
    EVENT_TYPES,
    CallEvent,
    Cause,
    Diversion,
    Party,
    Transfer,
    rfc3339,
    uuid7,
)
from gateway.calls.model import ACTIVE, ENDED, TRANSITIONS, Signal, State, transition
from tests.unit.test_call_events import assert_valid

T0 = 1_700_000_000.0

# --- the state table ----------------------------------------------------------------------

EXPECTED = {
    ("idle", "invite"): ("offered", "call.offered"),
    ("offered", "ringing"): ("delivered", "call.delivered"),
    ("offered", "answer"): ("established", "call.established"),
    ("offered", "reject"): ("failed", "call.failed"),
    ("offered", "timeout"): ("failed", "call.failed"),
    ("offered", "divert"): ("offered", "call.diverted"),
    ("delivered", "answer"): ("established", "call.established"),
    ("delivered", "reject"): ("failed", "call.failed"),
    ("delivered", "timeout"): ("failed", "call.failed"),
    ("delivered", "divert"): ("delivered", "call.diverted"),
    ("established", "hold"): ("held", "call.held"),
    ("established", "transfer"): ("established", "call.transferred"),
    ("established", "bye"): ("cleared", "call.cleared"),
    ("established", "timeout"): ("cleared", "call.cleared"),
    ("held", "retrieve"): ("established", "call.retrieved"),
    ("held", "transfer"): ("held", "call.transferred"),
    ("held", "bye"): ("cleared", "call.cleared"),
    ("held", "timeout"): ("cleared", "call.cleared"),
}

RANK = {
    State.IDLE: 0,
    State.OFFERED: 1,
    State.DELIVERED: 2,
    State.ESTABLISHED: 3,
    State.HELD: 3,
    State.CLEARED: 4,
    State.FAILED: 4,
}


def test_the_table_is_exactly_the_documented_model() -> None:
    table = {(s.value, g.value): (n.value, e) for (s, g), (n, e) in TRANSITIONS.items()}
    assert table == EXPECTED


@pytest.mark.parametrize(("state", "signal"), list(itertools.product(State, Signal)))
def test_every_pair_is_either_a_transition_or_ignored(state: State, signal: Signal) -> None:
    step = transition(state, signal)
    if step is None:
        assert (state.value, signal.value) not in EXPECTED
        return
    following, event = step
    assert event in EVENT_TYPES
    # nothing moves backwards; retrieving (held → established) is the one sideways step
    assert RANK[following] >= RANK[state]


def test_ended_states_are_final_and_every_state_is_reachable() -> None:
    for state in ENDED:
        assert all(transition(state, signal) is None for signal in Signal)
    reached = {State.IDLE}
    frontier = [State.IDLE]
    while frontier:
        state = frontier.pop()
        for signal in Signal:
            step = transition(state, signal)
            if step is not None and step[0] not in reached:
                reached.add(step[0])
                frontier.append(step[0])
    assert reached == set(State)
    assert {State.ESTABLISHED, State.HELD} == ACTIVE


def test_each_event_type_repeats_at_most_on_self_loops() -> None:
    # Self-loops (diverted, transferred) emit an event without changing state; every
    # other event is emitted at most once per call because its state is left for good.
    for (state, _), (following, event) in TRANSITIONS.items():
        if following == state:
            assert event in ("call.diverted", "call.transferred")


def event_for(prev: State, state: State, event_type: str) -> CallEvent:
    fields: dict[str, Any] = dict(
        type=event_type,
        occurred_at=rfc3339(T0 + 9),
        node="gw-1",
        tenant="acme",
        call_id=uuid7(T0),
        sip_call_id="x@y",
        from_tag="f",
        conversation_id=uuid7(T0),
        direction="inbound",
        state=state.value,
        prev_state=prev.value,
        calling=Party("+31612345678", "+31612345678"),
        called=Party("201"),
        created_at=rfc3339(T0),
    )
    if state in ACTIVE or state is State.CLEARED:
        fields.update(to_tag="t", answered_at=rfc3339(T0 + 2))
    if state in ENDED:
        fields.update(ended_at=rfc3339(T0 + 9), cause=Cause("normal"), missed=False)
    if state is State.CLEARED:
        fields.update(duration_ms=7000)
    if event_type == "call.transferred":
        fields.update(transfer=Transfer("blind", "sip:203@gw"))
    if event_type == "call.diverted":
        fields.update(diversion=Diversion("unconditional"))
    return CallEvent(**fields)


@pytest.mark.parametrize(("key", "step"), list(TRANSITIONS.items()))
def test_the_schema_accepts_every_transition_of_the_table(
    key: tuple[State, Signal], step: tuple[State, str]
) -> None:
    prev, _ = key
    state, event_type = step
    assert_valid(event_for(prev, state, event_type))


# --- SDP: the direction of the first audio stream -----------------------------------------


def body(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n").encode()


SESSION = ("v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "c=IN IP4 192.0.2.1", "t=0 0")


@pytest.mark.parametrize(
    ("sdp_body", "direction"),
    [
        (body(*SESSION, "m=audio 4000 RTP/AVP 0"), "sendrecv"),
        (body(*SESSION, "m=audio 4000 RTP/AVP 0", "a=sendonly"), "sendonly"),
        (body(*SESSION, "m=audio 4000 RTP/AVP 0", "a=recvonly"), "recvonly"),
        (body(*SESSION, "m=audio 4000 RTP/AVP 0", "a=inactive"), "inactive"),
        (body(*SESSION, "a=sendonly", "m=audio 4000 RTP/AVP 0"), "sendonly"),  # session level
        (body(*SESSION, "a=sendonly", "m=audio 4000 RTP/AVP 0", "a=sendrecv"), "sendrecv"),
        # the first audio stream in use decides; a video stream's attribute does not
        (body(*SESSION, "m=video 5000 RTP/AVP 96", "a=inactive", "m=audio 4000 RTP/AVP 0"),
         "sendrecv"),
        (body(*SESSION, "m=audio 0 RTP/AVP 0", "a=inactive", "m=audio 4002 RTP/AVP 0",
              "a=sendonly"), "sendonly"),
        (body(*SESSION, "m=audio 4000 RTP/AVP 0", "m=audio 4002 RTP/AVP 0", "a=inactive"),
         "sendrecv"),
        # RFC 2543 hold: c=0.0.0.0 takes the receive half away
        (body("v=0", "c=IN IP4 0.0.0.0", "t=0 0", "m=audio 4000 RTP/AVP 0"), "sendonly"),
        (body("v=0", "c=IN IP4 0.0.0.0", "m=audio 4000 RTP/AVP 0", "a=recvonly"), "inactive"),
        (body(*SESSION, "m=audio 4000 RTP/AVP 0", "c=IN IP4 0.0.0.0"), "sendonly"),
        (body("v=0", "c=IN IP4 0.0.0.0", "m=audio 4000 RTP/AVP 0", "c=IN IP4 192.0.2.1"),
         "sendrecv"),
        (body("v=0", "c=IN IP6 ::", "m=audio 4000 RTP/AVP 0"), "sendonly"),
        (b"v=0\nc=IN IP4 192.0.2.1\nm=audio 4000 RTP/AVP 0\na=sendonly\n", "sendonly"),  # LF only
        (body(*SESSION, "m=video 5000 RTP/AVP 96"), None),
        (body(*SESSION, "m=audio 0 RTP/AVP 0"), None),
        (b"", None),
        (b"\x00\xff garbage \r\n=\r\na\r\n", None),
    ],
)  # fmt: skip
def test_audio_direction(sdp_body: bytes, direction: str | None) -> None:
    assert sdp.audio_direction(sdp_body) == direction


def test_audio_direction_in_a_multipart_body() -> None:
    multipart = (
        b"--b1\r\nContent-Type: application/sdp\r\n\r\n"
        + body(*SESSION, "m=audio 4000 RTP/AVP 0", "a=inactive")
        + b"--b1\r\nContent-Type: application/isup\r\n\r\n\x01\x02\r\n--b1--\r\n"
    )
    assert sdp.audio_direction(multipart) == "inactive"
    assert sdp.is_sdp("multipart/mixed;boundary=b1")
    assert sdp.is_sdp("Application/SDP")
    assert sdp.is_sdp(None)
    assert not sdp.is_sdp("application/dtmf-relay")


@pytest.mark.parametrize(
    ("direction", "holds"),
    [
        ("sendonly", True),
        ("inactive", True),
        ("sendrecv", False),
        ("recvonly", False),
        (None, None),
    ],
)
def test_holds(direction: str | None, holds: bool | None) -> None:
    assert sdp.holds(direction) is holds


# --- causes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "normalized"),
    [
        (486, "busy"), (600, "busy"),
        (408, "no_answer"), (480, "no_answer"),
        (487, "cancelled"),
        (403, "rejected"), (603, "rejected"), (607, "rejected"), (608, "rejected"),
        (401, "rejected"), (407, "rejected"),
        (404, "rejected"), (484, "rejected"), (604, "rejected"), (410, "rejected"),
        (488, "error"), (481, "error"), (482, "error"), (415, "error"), (499, "error"),
        (500, "error"), (503, "error"), (504, "error"), (580, "error"),
        (606, "rejected"), (699, "rejected"),
        (300, "diverted"), (301, "diverted"), (302, "diverted"), (380, "diverted"),
    ],
)  # fmt: skip
def test_cause_table(status: int, normalized: str) -> None:
    assert causes.from_status(status) == normalized
    assert normalized in CAUSES


def test_every_cause_of_the_table_is_in_the_schema_vocabulary() -> None:
    assert set(causes.STATUS_CAUSES.values()) <= set(CAUSES)
    assert {"no_answer", "cancelled"} == causes.MISSED_CAUSES


@pytest.mark.parametrize(
    ("values", "protocol", "cause", "text"),
    [
        (['SIP;cause=200;text="Call completed elsewhere"'], "SIP", 200, "Call completed elsewhere"),
        (["Q.850;cause=16"], "Q.850", 16, None),
        (['Q.850 ; cause=17 ; text="User busy", SIP;cause=486'], "Q.850", 17, "User busy"),
        (['SIP;text="a \\"quoted\\" text"'], "SIP", None, 'a "quoted" text'),
        (["SIP;cause=abc"], "SIP", None, None),
    ],
)
def test_parse_reason(
    values: list[str], protocol: str, cause: int | None, text: str | None
) -> None:
    reason = causes.parse_reason(values)
    assert reason is not None
    assert (reason.protocol, reason.cause, reason.text) == (protocol, cause, text)
    assert reason.completed_elsewhere is (protocol == "SIP" and cause == 200)


def test_reason_text() -> None:
    assert causes.reason_text([]) is None
    assert causes.reason_text(['SIP;cause=200;text="Call completed elsewhere"']) == (
        "Call completed elsewhere"
    )
    assert causes.reason_text(["Q.850;cause=16"]) == "Q.850;cause=16"
    assert causes.reason_text(['Q.850;text="' + "x" * 600 + '"']) == "x" * 256
    assert causes.parse_reason(['"unterminated']) is None  # never raises
