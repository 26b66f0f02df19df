"""gateway.calls.tracker: SIP message sequences, built by hand, → exact event sequences.

Every message goes through `parse_message`, like on the wire; every event is validated
against docs/event-schema.json and round-tripped (`assert_valid`). Time is a hand-moved
clock: each step is one second later than the one before.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.calls.events import CallEvent, rfc3339
from gateway.calls.tracker import CallTracker, Meta
from gateway.sip.message import Request, Response, parse_message
from tests.unit.test_call_events import assert_valid

T0 = 1_700_000_000.0

IN = Meta("acme", "inbound", "201", source="udp:192.0.2.1:5060", user_agent="Carrier SBC")
OUT = Meta("acme", "outbound", "201", source="udp:192.0.2.20:5062", user_agent="Yealink T46U")
INTERNAL = Meta("acme", "internal", "202", source="udp:192.0.2.20:5062")
NO = Meta(None, None, None)  # in-dialog requests and responses: the tracker finds the call
LOCAL = Meta(None, None, None, local=True)  # a final answer the proxy sent the caller
PHONE = Meta(None, None, None, source="udp:192.0.2.21:5060", user_agent="PJSUA 2.15")

ALICE = '"Alice" <sip:+31612345678@trunk.example.net>'
DID = "<sip:+31201234567@gw.example.com>"
DID_URI = "sip:+31201234567@gw.example.com"


def sdp(direction: str | None = "sendrecv", address: str = "192.0.2.21") -> bytes:
    lines = [
        "v=0",
        f"o=- 1 2 IN IP4 {address}",
        "s=-",
        f"c=IN IP4 {address}",
        "t=0 0",
        "m=audio 4000 RTP/AVP 0 8 101",
        "a=rtpmap:101 telephone-event/8000",
    ]
    if direction:
        lines.append(f"a={direction}")
    return ("\r\n".join(lines) + "\r\n").encode()


def build(start: str, headers: Iterable[str], body: bytes = b"") -> Request | Response:
    lines = [start, *headers]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return parse_message(("\r\n".join(lines) + "\r\n\r\n").encode() + body)


_branches = itertools.count(1)


@dataclass
class Leg:
    """One call as the proxy sees it: the caller's INVITE, the forks' answers, the
    requests of its dialog from either side (`caller=False`: sent by the callee)."""

    call_id: str = "a84b4c76e66710@trunk.example.net"
    caller: str = ALICE
    callee: str = DID
    ruri: str = DID_URI
    from_tag: str = "1928301774"
    to_tag: str = "a6c85cf"
    callee_contact: str = "<sip:201@192.0.2.21:5060>"
    invite_cseq: int = 1
    caller_cseq: int = 1
    callee_cseq: int = 100
    last: dict[str, Request] = field(default_factory=dict)

    def _via(self) -> str:
        return f"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK{next(_branches)}"

    def invite(self, *extra: str, cseq: int | None = None, body: bytes = b"") -> Request:
        number = self.invite_cseq if cseq is None else cseq
        msg = build(
            f"INVITE {self.ruri} SIP/2.0",
            [
                self._via(),
                "Max-Forwards: 70",
                f"From: {self.caller};tag={self.from_tag}",
                f"To: {self.callee}",
                f"Call-ID: {self.call_id}",
                f"CSeq: {number} INVITE",
                "Contact: <sip:alice@192.0.2.1:5060>",
                *extra,
            ],
            body or sdp(),
        )
        assert isinstance(msg, Request)
        return msg

    def cancel(self, *extra: str) -> Request:
        msg = build(
            f"CANCEL {self.ruri} SIP/2.0",
            [
                self._via(),
                f"From: {self.caller};tag={self.from_tag}",
                f"To: {self.callee}",
                f"Call-ID: {self.call_id}",
                f"CSeq: {self.invite_cseq} CANCEL",
                *extra,
            ],
        )
        assert isinstance(msg, Request)
        return msg

    def reply(
        self,
        status: int,
        *extra: str,
        tag: str | None = "",
        cseq: int | None = None,
        method: str = "INVITE",
        body: bytes = b"",
        reason: str | None = None,
    ) -> Response:
        """A response to the initial INVITE (or `method`/`cseq`) from fork `tag`."""
        to_tag = self.to_tag if tag == "" else tag
        to = f"{self.callee};tag={to_tag}" if to_tag else self.callee
        contact = [f"Contact: {self.callee_contact}"] if 100 < status < 300 else []
        msg = build(
            f"SIP/2.0 {status} {reason or _PHRASES.get(status, 'Whatever')}",
            [
                self._via(),
                f"From: {self.caller};tag={self.from_tag}",
                f"To: {to}",
                f"Call-ID: {self.call_id}",
                f"CSeq: {self.invite_cseq if cseq is None else cseq} {method}",
                *contact,
                *extra,
            ],
            body,
        )
        assert isinstance(msg, Response)
        return msg

    def request(self, method: str, *extra: str, caller: bool = True, body: bytes = b"") -> Request:
        """A request in the confirmed dialog, from the caller or from the callee."""
        if caller:
            self.caller_cseq += 1
            number = self.caller_cseq
            from_, to = f"{self.caller};tag={self.from_tag}", f"{self.callee};tag={self.to_tag}"
            target = self.callee_contact.strip("<>")
        else:
            self.callee_cseq += 1
            number = self.callee_cseq
            from_, to = f"{self.callee};tag={self.to_tag}", f"{self.caller};tag={self.from_tag}"
            target = "sip:alice@192.0.2.1:5060"
        msg = build(
            f"{method} {target} SIP/2.0",
            [
                self._via(),
                "Max-Forwards: 70",
                f"From: {from_}",
                f"To: {to}",
                f"Call-ID: {self.call_id}",
                f"CSeq: {number if method != 'ACK' else self.invite_cseq} {method}",
                *extra,
            ],
            body,
        )
        assert isinstance(msg, Request)
        self.last[method] = msg
        return msg

    def answer(
        self, request: Request, status: int = 200, *extra: str, body: bytes = b""
    ) -> Response:
        """The response to an in-dialog request (same From/To/CSeq)."""
        msg = build(
            f"SIP/2.0 {status} {_PHRASES.get(status, 'Whatever')}",
            [
                self._via(),
                f"From: {request.get('From')}",
                f"To: {request.get('To')}",
                f"Call-ID: {self.call_id}",
                f"CSeq: {request.get('CSeq')}",
                *extra,
            ],
            body,
        )
        assert isinstance(msg, Response)
        return msg

    def ack(self) -> Request:
        return self.request("ACK")


_PHRASES = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 183: "Session Progress",
    200: "OK", 202: "Accepted", 302: "Moved Temporarily", 401: "Unauthorized",
    407: "Proxy Authentication Required", 408: "Request Timeout", 480: "Temporarily Unavailable",
    486: "Busy Here", 487: "Request Terminated", 491: "Request Pending", 503: "Service Unavailable",
    603: "Decline",
}  # fmt: skip

Step = tuple[Request | Response, Meta]


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def new_tracker(**kwargs: float) -> tuple[CallTracker, Clock]:
    clock = Clock()
    return CallTracker("gw-1", clock=clock, **kwargs), clock  # type: ignore[arg-type]


def feed(tracker: CallTracker, clock: Clock, steps: Iterable[Step]) -> list[CallEvent]:
    events: list[CallEvent] = []
    for msg, meta in steps:
        clock.t += 1.0
        for event in tracker.observe(msg, meta):
            assert_valid(event)
            events.append(event)
    return events


def run(steps: Iterable[Step], **kwargs: float) -> list[CallEvent]:
    tracker, clock = new_tracker(**kwargs)
    return feed(tracker, clock, steps)


def types(events: Sequence[CallEvent]) -> list[str]:
    return [e.type.removeprefix("call.") for e in events]


def summary(events: Sequence[CallEvent]) -> list[tuple[str, str | None, str | None, str | None]]:
    return [
        (e.type, e.prev_state, e.state, e.cause.normalized if e.cause else None) for e in events
    ]


# --- flows --------------------------------------------------------------------------------


def basic_call(leg: Leg | None = None, *, callee_hangs_up: bool = False) -> list[Step]:
    leg = leg or Leg()
    bye = leg.request("BYE", caller=not callee_hangs_up)
    return [
        (leg.invite(), IN),
        (leg.reply(100, tag=None), NO),
        (leg.reply(180), PHONE),
        (leg.reply(200, body=sdp()), PHONE),
        (leg.ack(), NO),
        (bye, NO),
        (leg.answer(bye), NO),
    ]


def busy() -> list[Step]:
    leg = Leg()
    return [(leg.invite(), IN), (leg.reply(100, tag=None), NO), (leg.reply(486), LOCAL)]


def no_answer_408() -> list[Step]:
    leg = Leg()
    return [(leg.invite(), IN), (leg.reply(180), PHONE), (leg.reply(408), LOCAL)]


def no_answer_cancel() -> list[Step]:
    leg = Leg()
    cancel = leg.cancel()
    return [
        (leg.invite(), IN),
        (leg.reply(100, tag=None), NO),
        (leg.reply(180), PHONE),
        (cancel, NO),
        (leg.reply(487), LOCAL),
    ]


def cancel_before_ringing() -> list[Step]:
    leg = Leg()
    return [
        (leg.invite(), IN),
        (leg.reply(100, tag=None), NO),
        (leg.cancel(), NO),
        (leg.reply(487, tag="proxy-tag"), LOCAL),
    ]


def forked_call() -> list[Step]:
    leg = Leg(to_tag="branch-a")  # the branch that answers: the dialog's To tag
    bye = leg.request("BYE")
    return [
        (leg.invite(), IN),
        (leg.reply(100, tag=None), NO),
        (leg.reply(180, tag="branch-a"), PHONE),
        (leg.reply(180, tag="branch-b"), PHONE),
        (leg.reply(200, tag="branch-a", body=sdp()), PHONE),
        (leg.reply(180, tag="branch-b"), PHONE),  # late, from the losing fork
        (leg.ack(), NO),
        (leg.reply(487, tag="branch-b"), NO),  # the cancelled fork (monitor mode sees it)
        (bye, NO),
        (leg.answer(bye), NO),
    ]


def hold_and_retrieve() -> list[Step]:
    leg = Leg()
    steps = basic_call(leg)[:5]
    hold = leg.request("INVITE", body=sdp("sendonly"))
    steps += [(hold, NO), (leg.answer(hold, 200, body=sdp("recvonly")), PHONE), (leg.ack(), NO)]
    back = leg.request("INVITE", body=sdp("sendrecv"))
    steps += [(back, NO), (leg.answer(back, 200, body=sdp()), PHONE), (leg.ack(), NO)]
    bye = leg.request("BYE", caller=False)
    return [*steps, (bye, PHONE), (leg.answer(bye), NO)]


def three_xx() -> list[Step]:
    leg = Leg()
    return [
        (leg.invite(), IN),
        (leg.reply(100, tag=None), NO),
        (leg.reply(302, "Contact: <sip:202@gw.example.com>"), LOCAL),
    ]


FLOWS = {
    "basic": (basic_call(), ["offered", "delivered", "established", "cleared"]),
    "basic, callee hangs up": (
        basic_call(callee_hangs_up=True),
        ["offered", "delivered", "established", "cleared"],
    ),
    "busy": (busy(), ["offered", "failed"]),
    "no answer (408)": (no_answer_408(), ["offered", "delivered", "failed"]),
    "no answer (CANCEL)": (no_answer_cancel(), ["offered", "delivered", "failed"]),
    "cancel before ringing": (cancel_before_ringing(), ["offered", "failed"]),
    "forked": (forked_call(), ["offered", "delivered", "established", "cleared"]),
    "hold and retrieve": (
        hold_and_retrieve(),
        ["offered", "delivered", "established", "held", "retrieved", "cleared"],
    ),
    "3xx": (three_xx(), ["offered", "diverted", "failed"]),
}


@pytest.mark.parametrize("name", FLOWS)
def test_flow_gives_exact_event_sequence(name: str) -> None:
    steps, expected = FLOWS[name]
    tracker, clock = new_tracker()
    events = feed(tracker, clock, steps)
    assert types(events) == expected
    assert len({e.call_id for e in events}) == 1
    assert len({e.conversation_id for e in events}) == 1
    assert len({e.created_at for e in events}) == 1
    assert tracker.tracked_calls == 1
    assert tracker.active_calls == 0


@pytest.mark.parametrize("name", FLOWS)
def test_every_message_retransmitted_changes_nothing(name: str) -> None:
    steps, expected = FLOWS[name]
    doubled = [step for step in steps for _ in range(2)]
    assert types(run(doubled)) == expected
    # … and again once the whole flow is over.
    assert types(run([*steps, *steps])) == expected


# --- the details of each flow -----------------------------------------------------------


def test_basic_call_details() -> None:
    events = run(basic_call())
    offered, delivered, established, cleared = events
    assert summary(events) == [
        ("call.offered", "idle", "offered", None),
        ("call.delivered", "offered", "delivered", None),
        ("call.established", "delivered", "established", None),
        ("call.cleared", "established", "cleared", "normal"),
    ]
    assert offered.tenant == "acme" and offered.node == "gw-1"
    assert offered.direction == "inbound" and offered.extension == "201"
    assert offered.sip_call_id == "a84b4c76e66710@trunk.example.net"
    assert offered.from_tag == "1928301774" and offered.to_tag is None
    assert offered.created_at == rfc3339(T0 + 1)
    assert offered.parent_call_id is None
    assert offered.calling is not None and offered.called is not None
    assert offered.calling.number_raw == "+31612345678"
    assert offered.calling.number_e164 == "+31612345678"
    assert offered.calling.display == "Alice"
    assert offered.called.number_raw == "+31201234567"
    assert offered.device is None  # inbound: the phone is known once it answers
    assert established.to_tag == "a6c85cf"
    assert established.answered_at == rfc3339(T0 + 4)
    assert established.device is not None
    assert established.device.user_agent == "PJSUA 2.15"
    assert established.device.contact == "sip:201@192.0.2.21:5060"
    assert established.device.source == "udp:192.0.2.21:5060"
    assert cleared.ended_at == rfc3339(T0 + 6)
    assert cleared.duration_ms == 2000
    assert cleared.missed is False
    assert cleared.occurred_at == rfc3339(T0 + 6)
    assert delivered.missed is None and delivered.cause is None
    assert [e.event_id for e in events] == sorted(e.event_id for e in events)


@pytest.mark.parametrize(
    ("flow", "cause", "code", "missed"),
    [
        (busy, "busy", 486, False),
        (no_answer_408, "no_answer", 408, True),
        (no_answer_cancel, "cancelled", 487, True),
        (cancel_before_ringing, "cancelled", 487, True),
        (three_xx, "diverted", 302, False),
    ],
)
def test_failed_calls_carry_cause_and_missed(
    flow: object, cause: str, code: int, missed: bool
) -> None:
    events = run(flow())  # type: ignore[operator]
    failed = events[-1]
    assert failed.type == "call.failed" and failed.state == "failed"
    assert failed.cause is not None
    assert (failed.cause.normalized, failed.cause.sip_code) == (cause, code)
    assert failed.missed is missed
    assert failed.answered_at is None and failed.duration_ms is None
    assert failed.ended_at == failed.occurred_at


def test_missed_only_for_inbound_and_internal_calls() -> None:
    for meta, missed in ((IN, True), (INTERNAL, True), (OUT, False)):
        leg = Leg()
        events = run([(leg.invite(), meta), (leg.reply(180), PHONE), (leg.reply(480), LOCAL)])
        assert events[-1].cause is not None and events[-1].cause.normalized == "no_answer"
        assert events[-1].missed is missed


def test_cancel_completed_elsewhere_is_not_missed() -> None:
    leg = Leg()
    events = run(
        [
            (leg.invite(), IN),
            (leg.reply(180), PHONE),
            (leg.cancel('Reason: SIP;cause=200;text="Call completed elsewhere"'), NO),
            (leg.reply(487), LOCAL),
        ]
    )
    failed = events[-1]
    assert failed.cause is not None
    assert failed.cause.normalized == "cancelled"
    assert failed.cause.sip_reason == "Call completed elsewhere"
    assert failed.missed is False


def test_reason_header_gives_sip_reason() -> None:
    leg = Leg()
    events = run(
        [
            (leg.invite(), IN),
            (leg.reply(480, 'Reason: Q.850;cause=18;text="No user responding"'), LOCAL),
        ]
    )
    assert events[-1].cause is not None
    assert events[-1].cause.sip_reason == "No user responding"
    leg = Leg()
    events = run([(leg.invite(), IN), (leg.reply(603), LOCAL)])
    assert events[-1].cause is not None
    assert (events[-1].cause.normalized, events[-1].cause.sip_reason) == ("rejected", "Decline")
    leg = Leg()
    bye_steps = basic_call(leg)[:5]
    bye = leg.request("BYE", "Reason: Q.850;cause=16")
    events = run([*bye_steps, (bye, NO)])
    assert events[-1].cause is not None
    assert events[-1].cause.sip_reason == "Q.850;cause=16"


def test_forked_call_never_shows_a_second_call() -> None:
    tracker, clock = new_tracker()
    events = feed(tracker, clock, forked_call())
    assert types(events) == ["offered", "delivered", "established", "cleared"]
    assert events[2].to_tag == "branch-a"
    assert tracker.tracked_calls == 1


def test_bye_of_a_losing_fork_that_also_answered_does_not_clear_the_call() -> None:
    leg = Leg()
    late = Leg(to_tag="branch-b")
    bye_b = late.request("BYE")  # the caller hangs up the second answer at once
    events = run(
        [
            (leg.invite(), IN),
            (leg.reply(200, tag="a6c85cf"), PHONE),
            (leg.reply(200, tag="branch-b"), PHONE),
            (bye_b, NO),
            (late.answer(bye_b), NO),
        ]
    )
    assert types(events) == ["offered", "established"]


def test_monitor_mode_branch_failure_waits_for_the_other_branch() -> None:
    # Without `local`, every branch's final is seen: one busy phone must not fail the call.
    leg = Leg()
    events = run(
        [
            (leg.invite(), IN),
            (leg.reply(180, tag="a"), PHONE),
            (leg.reply(180, tag="b"), PHONE),
            (leg.reply(486, tag="a"), NO),
            (leg.reply(200, tag="b"), PHONE),
        ]
    )
    assert types(events) == ["offered", "delivered", "established"]
    leg = Leg()
    events = run(
        [
            (leg.invite(), IN),
            (leg.reply(180, tag="a"), PHONE),
            (leg.reply(180, tag="b"), PHONE),
            (leg.cancel(), NO),
            (leg.reply(487, tag="a"), NO),
            (leg.reply(487, tag="b"), NO),
            (leg.reply(487, tag="b"), LOCAL),
        ]
    )
    assert types(events) == ["offered", "delivered", "failed"]


def test_183_counts_as_delivered_once_per_call() -> None:
    leg = Leg()
    events = run(
        [
            (leg.invite(), IN),
            (leg.reply(183, tag="a"), PHONE),
            (leg.reply(180, tag="a"), PHONE),
            (leg.reply(180, tag="b"), PHONE),
            (leg.reply(182, tag="b"), PHONE),
        ]
    )
    assert types(events) == ["offered", "delivered"]


def test_late_180_after_200_changes_nothing() -> None:
    leg = Leg()
    steps = [
        (leg.invite(), IN),
        (leg.reply(200), PHONE),
        (leg.reply(180), PHONE),
        (leg.reply(183, tag="other"), PHONE),
        (leg.reply(200), PHONE),
        (leg.reply(486, tag="other"), LOCAL),
    ]
    assert types(run(steps)) == ["offered", "established"]


# --- what is ignored --------------------------------------------------------------------


def test_no_tenant_and_unknown_dialog_is_ignored() -> None:
    leg = Leg()
    bye = leg.request("BYE")
    tracker, clock = new_tracker()
    assert feed(tracker, clock, [(leg.invite(), NO), (leg.reply(180), PHONE)]) == []
    assert feed(tracker, clock, [(bye, NO), (leg.answer(bye), NO)]) == []
    assert feed(tracker, clock, [(leg.reply(486), LOCAL)]) == []
    assert tracker.tracked_calls == 0


def test_second_bye_and_requests_after_cleared_are_ignored() -> None:
    leg = Leg()
    steps = basic_call(leg)
    later = [
        (leg.request("BYE", caller=False), NO),
        (leg.request("INVITE", body=sdp("sendonly")), NO),
        (leg.request("REFER", "Refer-To: <sip:203@gw.example.com>"), NO),
        (leg.cancel(), NO),
    ]
    assert types(run([*steps, *later])) == ["offered", "delivered", "established", "cleared"]


def test_other_methods_and_responses_are_ignored() -> None:
    leg = Leg()
    steps = basic_call(leg)[:5]
    info = leg.request("INFO")
    options = leg.request("OPTIONS")
    notify = leg.request("NOTIFY", "Event: refer", caller=False)
    steps += [(info, NO), (leg.answer(info), NO), (options, NO), (leg.answer(options), NO)]
    steps += [(notify, NO), (leg.answer(notify), NO)]
    assert types(run(steps)) == ["offered", "delivered", "established"]


def test_malformed_headers_are_counted_not_raised() -> None:
    leg = Leg()
    bad = build(
        "BYE sip:201@192.0.2.21 SIP/2.0",
        [
            "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx",
            "From: <sip:a@b>;tag=1928301774",
            "To: broken <<",
            f"Call-ID: {leg.call_id}",
            "CSeq: 2 BYE",
        ],
    )
    tracker, _ = new_tracker()
    assert tracker.observe(bad, NO) == []
    assert tracker.errors == 1


# --- parties ----------------------------------------------------------------------------


def test_inbound_prefers_p_asserted_identity_and_the_dialled_did() -> None:
    leg = Leg(
        caller='"Unknown" <sip:0612345678@trunk.example.net>',
        callee='"Sales" <sip:sales@gw.example.com>',
        ruri="sip:+31201234567;npdi@gw.example.com;user=phone",
    )
    invite = leg.invite('P-Asserted-Identity: "Jan" <sip:+31612345678@trunk.example.net>')
    (offered,) = run([(invite, IN)])
    assert offered.calling is not None and offered.called is not None
    assert offered.calling.number_raw == "+31612345678"
    assert offered.calling.number_e164 == "+31612345678"
    assert offered.calling.display == "Jan"
    assert offered.called.number_raw == "+31201234567"
    assert offered.called.number_e164 == "+31201234567"
    assert offered.called.display == "Sales"
    assert offered.called.uri == "sip:+31201234567;npdi@gw.example.com;user=phone"


def test_privacy_id_keeps_the_asserted_identity_out() -> None:
    leg = Leg(caller='"Anonymous" <sip:anonymous@anonymous.invalid>')
    invite = leg.invite("P-Asserted-Identity: <sip:+31612345678@trunk>", "Privacy: id")
    (offered,) = run([(invite, IN)])
    assert offered.calling is not None
    assert offered.calling.number_raw == "anonymous"
    assert offered.calling.number_e164 is None


def test_the_peer_profile_decides_which_header_names_the_caller() -> None:
    def offered_calling(meta: Meta, *extra: str) -> str | None:
        leg = Leg(caller='"Front" <sip:0201111111@trunk.example.net>')
        invite = leg.invite(
            "P-Preferred-Identity: <sip:+31202222222@trunk>",
            "P-Asserted-Identity: <sip:+31203333333@trunk>",
            *extra,
        )
        (offered,) = run([(invite, meta)])
        assert offered.calling is not None
        return offered.calling.number_raw

    assert offered_calling(IN) == "+31203333333"  # no profile: PAI for an inbound call
    from_only = Meta("acme", "inbound", "201", caller_id=("From",))
    assert offered_calling(from_only) == "0201111111"  # a trunk whose PAI is not trusted
    preferred = ("P-Preferred-Identity", "P-Asserted-Identity", "From")
    assert offered_calling(Meta("acme", "inbound", "201", caller_id=preferred)) == "+31202222222"
    # Privacy: id hides every asserted identity, whatever the profile trusts.
    assert offered_calling(Meta("acme", "inbound", "201", caller_id=preferred), "Privacy: id") == (
        "0201111111"
    )


def test_numbers_are_normalized_through_the_e164_callback() -> None:
    seen: list[tuple[str, str, str | None]] = []

    def e164(tenant: str, uri: object, region: str | None) -> str | None:
        seen.append((tenant, str(uri), region))
        return "+31612345678" if "0612345678" in str(uri) else None

    leg = Leg(
        caller='"Piet" <sip:201@gw.example.com>',
        callee="<sip:0612345678@gw.example.com>",
        ruri="sip:0612345678@gw.example.com",
    )
    tracker, clock = new_tracker()
    tracker.e164 = e164
    meta = Meta("acme", "outbound", "201", region="BE")
    (offered,) = feed(tracker, clock, [(leg.invite(), meta)])
    assert offered.called is not None and offered.called.number_e164 == "+31612345678"
    assert offered.calling is not None and offered.calling.number_e164 is None
    assert ("acme", "sip:0612345678@gw.example.com", "BE") in seen

    def broken(tenant: str, uri: object, region: str | None) -> str | None:
        raise RuntimeError("a bug in normalization")

    tracker, clock = new_tracker()
    tracker.e164 = broken
    leg = Leg(caller="<sip:0201111111@trunk.example.net>")
    (offered,) = feed(tracker, clock, [(leg.invite(), IN)])  # the call still has its event
    assert offered.type == "call.offered" and tracker.errors == 1
    assert offered.calling is not None and offered.calling.number_e164 is None


def test_outbound_and_internal_parties_come_from_from_and_to() -> None:
    leg = Leg(
        caller='"Piet" <sip:201@gw.example.com>',
        callee="<sip:0612345678@gw.example.com>",
        ruri="sip:0612345678@gw.example.com",
    )
    invite = leg.invite("P-Asserted-Identity: <sip:+31209999999@gw.example.com>")
    (offered,) = run([(invite, OUT)])
    assert offered.direction == "outbound" and offered.extension == "201"
    assert offered.calling is not None and offered.called is not None
    assert (offered.calling.number_raw, offered.calling.display) == ("201", "Piet")
    assert offered.calling.number_e164 is None
    assert offered.called.number_raw == "0612345678"
    assert offered.called.number_e164 is None  # left to recognition
    # the extension's phone is the caller's: known from the INVITE
    assert offered.device is not None
    assert offered.device.user_agent == "Yealink T46U"
    assert offered.device.contact == "sip:alice@192.0.2.1:5060"


def test_tel_uri_and_non_utf8_display_names() -> None:
    leg = Leg(caller="<tel:+31612345678>", callee="<tel:+31-20-123-4567>", ruri="tel:+31201234567")
    (offered,) = run([(leg.invite(), INTERNAL)])
    assert offered.calling is not None and offered.called is not None
    assert offered.calling.number_e164 == "+31612345678"
    assert offered.called.number_raw == "+31-20-123-4567"
    assert offered.called.number_e164 is None
    raw = (
        b"INVITE sip:201@gw SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
        b'From: "Z\xf6e" <sip:203@gw>;tag=x\r\nTo: <sip:201@gw>\r\nCall-ID: enc@h\r\n'
        b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    (offered,) = run([(parse_message(raw), INTERNAL)])  # type: ignore[list-item]
    assert offered.calling is not None and offered.calling.display == "Z\ufffde"


def test_unknown_direction_counts_as_internal() -> None:
    (offered,) = run([(Leg().invite(), Meta("acme", None, None))])
    assert offered.direction == "internal" and offered.extension is None


# --- diversion ----------------------------------------------------------------------------


def test_3xx_is_diverted_then_failed_and_the_follow_up_is_a_linked_call() -> None:
    leg = Leg()
    tracker, clock = new_tracker()
    events = feed(tracker, clock, three_xx())
    offered, diverted, failed = events
    assert diverted.diversion is not None
    assert diverted.diversion.reason == "unconditional"
    assert diverted.diversion.from_ == DID_URI
    assert diverted.diversion.to == "sip:202@gw.example.com"
    assert (diverted.prev_state, diverted.state) == ("offered", "offered")
    assert failed.diversion == diverted.diversion
    # the caller follows the redirection: same Call-ID and From tag, next CSeq
    follow = Leg(ruri="sip:202@gw.example.com", invite_cseq=2)
    again = feed(
        tracker, clock, [(follow.invite(), IN), (follow.reply(180), PHONE), (leg.reply(302), LOCAL)]
    )
    assert types(again) == ["offered", "delivered"]
    assert again[0].call_id != offered.call_id
    assert again[0].parent_call_id == offered.call_id
    assert again[0].conversation_id == offered.conversation_id
    assert tracker.tracked_calls == 1


def test_3xx_after_ringing_is_a_deflection_and_diversion_header_wins() -> None:
    leg = Leg()
    events = run([(leg.invite(), IN), (leg.reply(180), PHONE), (leg.reply(302), LOCAL)])
    assert events[2].diversion is not None and events[2].diversion.reason == "deflection"
    leg = Leg()
    reply = leg.reply(302, "Diversion: <sip:201@gw>;reason=user-busy")
    events = run([(leg.invite(), IN), (reply, LOCAL)])
    assert events[1].diversion is not None and events[1].diversion.reason == "user-busy"


def test_181_is_diverted_once_per_branch() -> None:
    leg = Leg()
    steps = [
        (leg.invite(), IN),
        (leg.reply(181, tag="a"), NO),
        (leg.reply(181, tag="a"), NO),
        (leg.reply(180, tag="b"), PHONE),
        (leg.reply(181, tag="b"), NO),
        (leg.reply(200, tag="b"), PHONE),
        (leg.reply(181, tag="c"), NO),
    ]
    events = run(steps)
    assert summary(events) == [
        ("call.offered", "idle", "offered", None),
        ("call.diverted", "offered", "offered", None),
        ("call.delivered", "offered", "delivered", None),
        ("call.diverted", "delivered", "delivered", None),
        ("call.established", "delivered", "established", None),
    ]
    assert events[1].diversion is not None and events[1].diversion.reason == "unknown"


@pytest.mark.parametrize(
    ("header", "reason", "from_", "to"),
    [
        (
            "Diversion: <sip:+31207777777@carrier.example>;reason=no-answer;counter=1",
            "no-answer",
            "sip:+31207777777@carrier.example",
            DID_URI,
        ),
        (
            'Diversion: "Desk" <sip:202@gw.example.com>;reason="user-busy",'
            " <sip:203@gw.example.com>;reason=unconditional",
            "user-busy",
            "sip:202@gw.example.com",
            DID_URI,
        ),
        (
            "History-Info: <sip:+31207777777@carrier.example>;index=1,"
            " <sip:+31201234567@gw.example.com;cause=486>;index=1.1",
            "user-busy",
            "sip:+31207777777@carrier.example",
            "sip:+31201234567@gw.example.com;cause=486",
        ),
        (
            "History-Info: <sip:bob@biloxi.example.com?Reason=SIP%3Bcause%3D302>;index=1,"
            " <sip:+31201234567@gw.example.com>;index=1.1;mp=1",
            "unconditional",
            "sip:bob@biloxi.example.com",
            "sip:+31201234567@gw.example.com",
        ),
    ],
)
def test_invite_with_diversion_gives_offered_then_diverted(
    header: str, reason: str, from_: str, to: str
) -> None:
    events = run([(Leg().invite(header), IN)])
    assert types(events) == ["offered", "diverted"]
    for event in events:
        assert event.diversion is not None
        assert (event.diversion.reason, event.diversion.from_, event.diversion.to) == (
            reason,
            from_,
            to,
        )


def test_history_info_without_diversion_is_not_one() -> None:
    header = "History-Info: <sip:201@gw.example.com>;index=1, <sip:201@192.0.2.21>;index=1.1;rc=1"
    assert types(run([(Leg().invite(header), IN)])) == ["offered"]


# --- hold -------------------------------------------------------------------------------


def test_hold_and_retrieve_via_re_invite() -> None:
    events = run(hold_and_retrieve())
    held, retrieved, cleared = events[3:]
    assert (held.prev_state, held.state) == ("established", "held")
    assert (retrieved.prev_state, retrieved.state) == ("held", "established")
    assert (cleared.prev_state, cleared.state) == ("established", "cleared")


@pytest.mark.parametrize(
    ("body", "held"),
    [
        (sdp("sendonly"), True),
        (sdp("inactive"), True),
        (sdp(None, address="0.0.0.0"), True),  # RFC 2543 hold
        (sdp("recvonly"), False),
        (sdp(None), False),
        (b"v=0\r\nc=IN IP4 0.0.0.0\r\nm=video 5000 RTP/AVP 96\r\n", False),  # no audio
    ],
)
def test_hold_is_decided_on_the_offer(body: bytes, held: bool) -> None:
    leg = Leg()
    steps = basic_call(leg)[:5]
    offer = leg.request("INVITE", body=body)
    steps += [(offer, NO), (leg.answer(offer, 200, body=sdp()), PHONE)]
    expected = ["offered", "delivered", "established"] + (["held"] if held else [])
    assert types(run(steps)) == expected


def test_hold_via_update_from_the_callee_and_bodiless_re_invite() -> None:
    leg = Leg()
    steps = basic_call(leg)[:5]
    update = leg.request("UPDATE", caller=False, body=sdp("inactive"))
    steps += [(update, PHONE), (leg.answer(update, 200, body=sdp("inactive")), NO)]
    # a bodiless re-INVITE from the caller: the callee's 2xx carries the offer
    probe = leg.request("INVITE")
    steps += [(probe, NO), (leg.answer(probe, 200, body=sdp("sendrecv")), PHONE)]
    assert types(run(steps)) == ["offered", "delivered", "established", "held", "retrieved"]


def test_held_while_either_side_holds() -> None:
    leg = Leg()
    steps = basic_call(leg)[:5]
    for caller, direction in ((True, "sendonly"), (False, "inactive"), (True, "sendrecv")):
        offer = leg.request("INVITE", caller=caller, body=sdp(direction))
        steps += [(offer, NO), (leg.answer(offer, 200, body=sdp()), NO)]
    events = run(steps)
    assert types(events) == ["offered", "delivered", "established", "held"]
    offer = leg.request("INVITE", caller=False, body=sdp("sendrecv"))
    events = run([*steps, (offer, NO), (leg.answer(offer, 200, body=sdp()), NO)])
    assert types(events)[-1] == "retrieved"


def test_a_refused_offer_changes_nothing() -> None:
    leg = Leg()
    steps = basic_call(leg)[:5]
    offer = leg.request("INVITE", body=sdp("sendonly"))
    steps += [(offer, NO), (leg.answer(offer, 491), PHONE), (leg.answer(offer, 200), PHONE)]
    assert types(run(steps)) == ["offered", "delivered", "established"]


def test_hold_before_the_answer_is_ignored() -> None:
    leg = Leg()
    early = leg.request("UPDATE", body=sdp("sendonly"))
    steps = [(leg.invite(), IN), (leg.reply(180), PHONE), (early, NO), (leg.answer(early), NO)]
    assert types(run(steps)) == ["offered", "delivered"]


# --- transfers ----------------------------------------------------------------------------


def test_blind_transfer_links_the_new_call() -> None:
    old = Leg()
    tracker, clock = new_tracker()
    steps = basic_call(old)[:5]
    refer = old.request(
        "REFER", "Refer-To: <sip:203@gw.example.com>", "Referred-By: <sip:201@gw.example.com>",
        caller=False,
    )  # fmt: skip
    steps += [(refer, PHONE), (old.answer(refer, 202), NO)]
    bye = old.request("BYE", caller=False)
    steps += [(bye, PHONE), (old.answer(bye), NO)]
    first = feed(tracker, clock, steps)
    assert types(first) == ["offered", "delivered", "established", "transferred", "cleared"]
    transferred = first[3]
    assert transferred.transfer is not None
    assert transferred.transfer.kind == "blind"
    assert transferred.transfer.refer_to == "sip:203@gw.example.com"
    assert transferred.transfer.referred_by == "sip:201@gw.example.com"
    assert transferred.transfer.replaces is None
    assert (transferred.prev_state, transferred.state) == ("established", "established")
    assert first[4].transfer == transferred.transfer

    # the transferee (Alice, via the trunk) calls 203 with Referred-By
    new = Leg(
        call_id="second-call@trunk.example.net",
        callee="<sip:203@gw.example.com>",
        ruri="sip:203@gw.example.com",
        from_tag="77",
    )
    second = feed(
        tracker,
        clock,
        [
            (new.invite("Referred-By: <sip:201@gw.example.com>"), IN),
            (new.reply(180), PHONE),
            (new.reply(200), PHONE),
        ],
    )
    assert types(second) == ["offered", "delivered", "established"]
    for event in second:
        assert event.call_id != transferred.call_id
        assert event.parent_call_id == transferred.call_id
        assert event.conversation_id == transferred.conversation_id
        assert event.transfer == transferred.transfer


def test_transfer_is_matched_by_target_and_transferee_without_referred_by() -> None:
    old = Leg()
    tracker, clock = new_tracker()
    steps = basic_call(old)[:5]
    refer = old.request("REFER", "Refer-To: <sip:203@gw.example.com>", caller=False)
    first = feed(tracker, clock, [*steps, (refer, PHONE), (old.answer(refer, 202), NO)])
    new = Leg(call_id="c2", callee="<sip:203@gw.example.com>", ruri="sip:203@gw", from_tag="9")
    (offered,) = feed(tracker, clock, [(new.invite(), IN)])
    assert offered.parent_call_id == first[0].call_id
    assert offered.conversation_id == first[0].conversation_id
    # a REFER links one new call only
    other = Leg(call_id="c3", callee="<sip:203@gw.example.com>", ruri="sip:203@gw", from_tag="8")
    (unrelated,) = feed(tracker, clock, [(other.invite(), IN)])
    assert unrelated.parent_call_id is None
    assert unrelated.conversation_id != first[0].conversation_id


def test_transfer_link_needs_the_same_tenant_and_expires() -> None:
    old = Leg()
    tracker, clock = new_tracker()
    refer = old.request("REFER", "Refer-To: <sip:203@gw>", caller=False)
    feed(tracker, clock, [*basic_call(old)[:5], (refer, PHONE), (old.answer(refer, 202), NO)])
    elsewhere = Leg(call_id="c2", ruri="sip:203@gw", from_tag="9")
    (offered,) = feed(
        tracker,
        clock,
        [(elsewhere.invite("Referred-By: <sip:201@gw>"), Meta("other", "inbound", "1"))],
    )
    assert offered.parent_call_id is None
    clock.t += 31
    assert tracker.expire(clock.t) == []
    late = Leg(call_id="c3", ruri="sip:203@gw", from_tag="10")
    (offered,) = feed(tracker, clock, [(late.invite("Referred-By: <sip:201@gw>"), IN)])
    assert offered.parent_call_id is None


def test_transfer_matching_picks_the_best_of_several_referrals() -> None:
    # A receptionist (201) transfers two callers within seconds; each new call joins
    # its own caller's conversation.
    tracker, clock = new_tracker()
    conversations = {}
    for number, target in (("+31611111111", "203"), ("+31622222222", "204")):
        leg = Leg(
            call_id=f"call-{number}", caller=f"<sip:{number}@trunk>", from_tag=f"t{number[-1]}"
        )
        refer = leg.request(
            "REFER", f"Refer-To: <sip:{target}@gw>", "Referred-By: <sip:201@gw>", caller=False
        )
        events = feed(
            tracker, clock, [*basic_call(leg)[:5], (refer, PHONE), (leg.answer(refer, 202), NO)]
        )
        conversations[number] = events[0].conversation_id
    for number, target in (("+31611111111", "203"), ("+31622222222", "204")):
        new = Leg(
            call_id=f"new-{number}",
            caller=f"<sip:{number}@trunk>",
            callee=f"<sip:{target}@gw>",
            ruri=f"sip:{target}@gw",
        )
        (offered,) = feed(tracker, clock, [(new.invite("Referred-By: <sip:201@gw>"), IN)])
        assert offered.conversation_id == conversations[number]


def test_refused_refer_is_not_a_transfer() -> None:
    leg = Leg()
    tracker, clock = new_tracker()
    refer = leg.request("REFER", "Refer-To: <sip:203@gw>", "Referred-By: <sip:201@gw>")
    events = feed(
        tracker, clock, [*basic_call(leg)[:5], (refer, NO), (leg.answer(refer, 603), PHONE)]
    )
    assert types(events) == ["offered", "delivered", "established"]
    new = Leg(call_id="c2", ruri="sip:203@gw", from_tag="2")
    (offered,) = feed(tracker, clock, [(new.invite("Referred-By: <sip:201@gw>"), IN)])
    assert offered.parent_call_id is None


def attended_setup() -> tuple[CallTracker, Clock, Leg, Leg, list[CallEvent], list[CallEvent]]:
    """A (trunk) ↔ 201 is on hold; 201 consults 203; then 201 REFERs A to 203."""
    tracker, clock = new_tracker()
    x = Leg()
    y = Leg(
        call_id="consult@gw",
        caller='"Piet" <sip:201@gw.example.com>',
        callee="<sip:203@gw.example.com>",
        ruri="sip:203@gw.example.com",
        from_tag="y-from",
        to_tag="y-to",
        callee_contact="<sip:203@192.0.2.23>",
    )
    hold = x.request("INVITE", caller=False, body=sdp("sendonly"))
    x_events = feed(
        tracker,
        clock,
        [*basic_call(x)[:5], (hold, PHONE), (x.answer(hold, 200, body=sdp("recvonly")), NO)],
    )
    y_events = feed(
        tracker, clock, [(y.invite(), OUT), (y.reply(180), PHONE), (y.reply(200), PHONE)]
    )
    return tracker, clock, x, y, x_events, y_events


def test_attended_transfer() -> None:
    tracker, clock, x, y, x_events, y_events = attended_setup()
    refer_to = "<sip:203@gw.example.com?Replaces=consult%40gw%3Bto-tag%3Dy-to%3Bfrom-tag%3Dy-from>"
    refer = x.request("REFER", f"Refer-To: {refer_to}", caller=False)
    (transferred,) = feed(tracker, clock, [(refer, PHONE), (x.answer(refer, 202), NO)])
    assert transferred.transfer is not None
    assert transferred.transfer.kind == "attended"
    assert transferred.transfer.refer_to == "sip:203@gw.example.com"
    assert transferred.transfer.replaces == "consult@gw;to-tag=y-to;from-tag=y-from"
    assert transferred.transfer.referred_by == DID_URI  # no Referred-By: the REFER's From
    assert (transferred.prev_state, transferred.state) == ("held", "held")
    z = Leg(call_id="z@trunk", callee="<sip:203@gw.example.com>", ruri="sip:203@gw", from_tag="z")
    new = z.invite("Replaces: consult@gw;to-tag=y-to;from-tag=y-from")
    (offered,) = feed(tracker, clock, [(new, IN)])
    assert offered.parent_call_id == x_events[0].call_id
    assert offered.conversation_id == x_events[0].conversation_id
    # the consultation call is replaced: its BYE clears it with cause "replaced"
    bye = y.request("BYE", caller=False)
    (cleared,) = feed(tracker, clock, [(bye, PHONE)])
    assert cleared.call_id == y_events[0].call_id
    assert cleared.cause is not None and cleared.cause.normalized == "replaced"
    # and the transferred call is cleared normally
    bye = x.request("BYE")
    (cleared,) = feed(tracker, clock, [(bye, NO)])
    assert cleared.cause is not None and cleared.cause.normalized == "normal"
    assert cleared.prev_state == "held"


def test_replaces_without_refer_joins_the_replaced_conversation() -> None:
    tracker, clock, _, _, _, y_events = attended_setup()
    z = Leg(call_id="z@trunk", ruri="sip:203@gw", from_tag="z")
    (offered,) = feed(
        tracker, clock, [(z.invite("Replaces: consult@gw;from-tag=y-to;to-tag=y-from"), IN)]
    )
    assert offered.parent_call_id == y_events[0].call_id
    assert offered.conversation_id == y_events[0].conversation_id


def test_call_pickup_replaces_an_early_dialog() -> None:
    # 202 picks up a call ringing at 201 (RFC 3891 early-only): not missed.
    tracker, clock = new_tracker()
    ringing = Leg()
    first = feed(tracker, clock, [(ringing.invite(), IN), (ringing.reply(180), PHONE)])
    pickup = Leg(call_id="pickup@gw", caller="<sip:202@gw>", ruri="sip:201@gw", from_tag="p")
    replaces = f"Replaces: {ringing.call_id};to-tag=a6c85cf;from-tag=1928301774;early-only"
    (offered,) = feed(tracker, clock, [(pickup.invite(replaces), INTERNAL)])
    assert offered.conversation_id == first[0].conversation_id
    (failed,) = feed(tracker, clock, [(ringing.cancel(), NO), (ringing.reply(487), LOCAL)])
    assert failed.cause is not None and failed.cause.normalized == "replaced"
    assert failed.missed is False


# --- retries after a challenge ------------------------------------------------------------


def test_challenged_invite_retried_is_the_same_call() -> None:
    leg = Leg()
    retry = Leg(invite_cseq=2)
    steps = [
        (leg.invite(), OUT),
        (leg.reply(407, tag="challenge"), LOCAL),
        (leg.invite(), OUT),  # a retransmission of the challenged one
        (retry.invite('Proxy-Authorization: Digest username="201"'), OUT),
        (retry.reply(180), PHONE),
        (retry.reply(200), PHONE),
    ]
    tracker, clock = new_tracker()
    events = feed(tracker, clock, steps)
    assert types(events) == ["offered", "delivered", "established"]
    assert tracker.tracked_calls == 1
    assert feed(tracker, clock, [(leg.reply(407, tag="challenge"), LOCAL)]) == []


def test_challenge_never_retried_fails_after_the_retry_window() -> None:
    leg = Leg()
    tracker, clock = new_tracker()
    feed(tracker, clock, [(leg.invite(), OUT), (leg.reply(401), LOCAL)])
    assert tracker.expire(clock.t + 31) == []
    (failed,) = tracker.expire(clock.t + 32)
    assert_valid(failed)
    assert failed.cause is not None
    assert (failed.cause.normalized, failed.cause.sip_code) == ("rejected", 401)
    assert failed.ended_at == rfc3339(clock.t)
    assert failed.occurred_at == rfc3339(clock.t + 32)


# --- time: linger, timeouts, memory -------------------------------------------------------


def test_ended_calls_linger_then_are_forgotten() -> None:
    tracker, clock = new_tracker(linger=32.0)
    steps = basic_call()
    feed(tracker, clock, steps)
    end = clock.t - 1  # the BYE
    assert tracker.tracked_calls == 1 and tracker.active_calls == 0
    assert tracker.next_deadline == end + 32
    assert tracker.expire(end + 31.9) == []
    assert tracker.tracked_calls == 1
    # while it lingers, retransmissions are absorbed
    assert feed(tracker, clock, steps[-2:]) == []
    assert tracker.expire(end + 32) == []
    assert tracker.tracked_calls == 0
    assert tracker.next_deadline is None
    # forgotten: a late BYE is unknown and ignored
    assert feed(tracker, clock, steps[-2:]) == []


def test_unanswered_call_times_out() -> None:
    tracker, clock = new_tracker(setup_timeout=300.0)
    feed(tracker, clock, [(Leg().invite(), IN), (Leg().reply(180), PHONE)])
    start = T0 + 1
    assert tracker.next_deadline == start + 300
    assert tracker.expire(start + 299) == []
    (failed,) = tracker.expire(start + 300)
    assert_valid(failed)
    assert failed.cause is not None and failed.cause.normalized == "timeout"
    assert failed.missed is False
    assert tracker.active_calls == 0


def test_answered_call_without_bye_clears_when_its_session_timer_runs_out() -> None:
    leg = Leg()
    tracker, clock = new_tracker()
    feed(
        tracker,
        clock,
        [(leg.invite(), IN), (leg.reply(200, "Session-Expires: 90;refresher=uac"), PHONE)],
    )
    answered = clock.t
    assert tracker.next_deadline == answered + 90 + 32
    clock.t = answered + 60  # a refresh re-arms the timer
    refresh = leg.request("UPDATE")
    assert tracker.observe(refresh, NO) == []
    assert tracker.observe(leg.answer(refresh, 200, "Session-Expires: 90"), NO) == []
    assert tracker.expire(answered + 122) == []
    (cleared,) = tracker.expire(answered + 60 + 122)
    assert_valid(cleared)
    assert cleared.cause is not None and cleared.cause.normalized == "timeout"
    assert cleared.duration_ms == 182_000


def test_answered_call_without_session_timer_clears_after_max_idle() -> None:
    leg = Leg()
    tracker, clock = new_tracker(max_idle=3600.0)
    feed(tracker, clock, [(leg.invite(), IN), (leg.reply(200), PHONE)])
    assert tracker.expire(clock.t + 3599) == []
    (cleared,) = tracker.expire(clock.t + 3600)
    assert_valid(cleared)
    assert cleared.cause is not None and cleared.cause.normalized == "timeout"
    assert cleared.type == "call.cleared" and cleared.prev_state == "established"


def test_max_calls_evicts_the_oldest_ended_then_the_oldest() -> None:
    tracker, clock = new_tracker(max_calls=3)
    legs = [Leg(call_id=f"c{i}", from_tag=f"t{i}") for i in range(5)]
    feed(tracker, clock, [(legs[0].invite(), IN), (legs[0].reply(486), LOCAL)])  # ended
    feed(tracker, clock, [(legs[1].invite(), IN), (legs[2].invite(), IN)])
    assert tracker.tracked_calls == 3 and tracker.evicted == 0
    feed(tracker, clock, [(legs[3].invite(), IN)])
    assert tracker.evicted == 1  # the ended call went first
    assert tracker.tracked_calls == 3 and tracker.active_calls == 3
    feed(tracker, clock, [(legs[4].invite(), IN)])
    assert tracker.evicted == 2  # then the oldest: c1
    assert feed(tracker, clock, [(legs[1].reply(180), PHONE)]) == []
    assert types(feed(tracker, clock, [(legs[2].reply(180), PHONE)])) == ["delivered"]


def test_observe_accepts_the_capture_time() -> None:
    tracker, _ = new_tracker()
    (offered,) = tracker.observe(Leg().invite(), IN, now=T0 - 3600)
    assert_valid(offered)
    assert offered.occurred_at == rfc3339(T0 - 3600) == offered.created_at


def test_heap_stays_bounded_under_many_refreshes() -> None:
    leg = Leg()
    tracker, clock = new_tracker()
    feed(tracker, clock, [(leg.invite(), IN), (leg.reply(200), PHONE)])
    for _ in range(500):
        update = leg.request("UPDATE")
        feed(tracker, clock, [(update, NO), (leg.answer(update), NO)])
    assert len(tracker._deadlines) <= 2 * tracker.tracked_calls + 65


# --- retransmissions and reordering, generated --------------------------------------------

# Each flow is a list of groups: groups come in order, the messages inside a group may
# arrive in any order (the protocol allows it), and any message may come again later
# (a retransmission or a duplicate), however late.


def grouped_basic() -> list[list[Step]]:
    leg = Leg()
    bye = leg.request("BYE")
    return [
        [(leg.invite(), IN)],
        [(leg.reply(100, tag=None), NO), (leg.reply(180), PHONE), (leg.reply(183), PHONE)],
        [(leg.reply(200, body=sdp()), PHONE)],
        [(leg.ack(), NO), (bye, NO)],
        [(leg.answer(bye), NO)],
    ]


def grouped_forked() -> list[list[Step]]:
    leg = Leg()
    bye = leg.request("BYE", caller=False)
    return [
        [(leg.invite(), IN)],
        [(leg.reply(180, tag="a"), PHONE), (leg.reply(180, tag="b"), PHONE)],
        [(leg.reply(200, tag="a6c85cf"), PHONE)],
        [(leg.ack(), NO), (leg.reply(487, tag="b"), NO), (leg.reply(180, tag="c"), PHONE)],
        [(bye, PHONE)],
        [(leg.answer(bye), NO)],
    ]


def grouped_hold() -> list[list[Step]]:
    leg = Leg()
    hold = leg.request("INVITE", body=sdp("sendonly"))
    back = leg.request("INVITE", body=sdp("sendrecv"))
    bye = leg.request("BYE")
    return [
        [(leg.invite(), IN)],
        [(leg.reply(200), PHONE)],
        [(leg.ack(), NO), (hold, NO)],
        [(leg.answer(hold, 100), PHONE)],
        [(leg.answer(hold, 200, body=sdp("recvonly")), PHONE)],
        [(back, NO)],
        [(leg.answer(back, 200, body=sdp()), PHONE)],
        [(bye, NO)],
    ]


def grouped_transfer() -> list[list[Step]]:
    leg = Leg()
    refer = leg.request("REFER", "Refer-To: <sip:203@gw>", caller=False)
    bye = leg.request("BYE", caller=False)
    return [
        [(leg.invite(), IN)],
        [(leg.reply(180), PHONE)],
        [(leg.reply(200), PHONE)],
        [(refer, PHONE)],
        [(leg.answer(refer, 202), NO)],
        [(bye, PHONE)],
    ]


def grouped_cancel() -> list[list[Step]]:
    leg = Leg()
    return [
        [(leg.invite(), IN)],
        [(leg.reply(100, tag=None), NO), (leg.reply(180), PHONE)],
        [(leg.cancel(), NO)],
        [(leg.reply(487), LOCAL)],
    ]


GROUPED = {
    "basic": (grouped_basic, ["offered", "delivered", "established", "cleared"]),
    "forked": (grouped_forked, ["offered", "delivered", "established", "cleared"]),
    "hold": (grouped_hold, ["offered", "established", "held", "retrieved", "cleared"]),
    "transfer": (
        grouped_transfer,
        ["offered", "delivered", "established", "transferred", "cleared"],
    ),
    "cancel": (grouped_cancel, ["offered", "delivered", "failed"]),
}


@st.composite
def shuffled(draw: st.DrawFn, groups: list[list[Step]]) -> list[Step]:
    ordered: list[Step] = []
    for group in groups:
        ordered.extend(draw(st.permutations(group)))
    keyed: list[tuple[float, int, Step]] = [(i, 0, step) for i, step in enumerate(ordered)]
    for i, step in enumerate(ordered):
        for copy in range(draw(st.integers(0, 2))):
            later = draw(st.integers(0, len(ordered)))
            keyed.append((i + later + 0.5, copy + 1, step))
    keyed.sort(key=lambda item: (item[0], item[1]))
    return [step for _, _, step in keyed]


@pytest.mark.parametrize("name", GROUPED)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_retransmissions_and_reordering_give_the_same_events(
    name: str, data: st.DataObject
) -> None:
    make, expected = GROUPED[name]
    steps = data.draw(shuffled(make()))
    reference = run([step for group in make() for step in group])
    events = run(steps)
    assert types(events) == expected == types(reference)
    assert summary(events) == summary(reference)
