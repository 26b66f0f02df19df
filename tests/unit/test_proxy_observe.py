"""What the proxy hands to the call tracker, flow by flow."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.sip.message import Request

from .proxy_harness import CONFIG, Harness, request, response_to, settings_from
from .test_proxy import PHONE_201, invite_from_phone, invite_from_trunk, only, register


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(settings_from(CONFIG, tmp_path))


def test_basic_inbound_call(h: Harness) -> None:
    register(h, "201", PHONE_201)
    fwd = only(invite_from_trunk(h, call_id="obs-1"), method="INVITE").msg
    assert isinstance(fwd, Request)
    h.feed(response_to(fwd, 180, "Ringing"), PHONE_201)
    h.feed(response_to(fwd, 200, "OK"), PHONE_201)
    bye = request(
        "BYE",
        "sip:peer@127.0.0.1:5082",
        src=PHONE_201,
        call_id="obs-1",
        from_="<sip:201@acme.test>;tag=callee",
        to="<sip:+31612345678@carrier.test>;tag=f1",
        extra=h.route("obs-1"),
    )
    down = only(h.feed(bye, PHONE_201), method="BYE").msg
    assert isinstance(down, Request)
    h.feed(response_to(down, 200, "OK", to_tag=None), ("127.0.0.1", 5082))
    assert h.observations() == ["INVITE", "180", "200", "BYE", "200"]
    invite_info = h.observed[0][1]
    assert (invite_info.tenant, invite_info.direction, invite_info.extension) == (
        "acme",
        "inbound",
        "201",
    )
    assert invite_info.source == "udp:127.0.0.1:5082"
    # In-dialog messages carry no tenant: the tracker finds the call by its dialog.
    assert all(info.tenant is None for _, info in h.observed[1:])


def test_unregistered_callee_is_an_observed_call_with_a_local_480(h: Harness) -> None:
    invite_from_trunk(h, call_id="obs-2")
    assert h.observations() == ["INVITE", "480 (local)"]


def test_busy_is_observed_once_as_the_answer_the_caller_gets(h: Harness) -> None:
    register(h, "201", PHONE_201)
    fwd = only(invite_from_trunk(h, call_id="obs-3"), method="INVITE").msg
    assert isinstance(fwd, Request)
    h.feed(response_to(fwd, 486, "Busy Here"), PHONE_201)
    assert h.observations() == ["INVITE", "486 (local)"]


def test_forked_losing_branch_is_not_observed(h: Harness) -> None:
    register(h, "201", PHONE_201, call_id="a")
    register(h, "201", ("127.0.0.1", 5211), call_id="b")
    sent = invite_from_trunk(h, call_id="obs-4")
    first, second = (s.msg for s in sent if isinstance(s.msg, Request))
    assert isinstance(first, Request) and isinstance(second, Request)
    h.feed(response_to(first, 180, "Ringing", to_tag="t1"), PHONE_201)
    h.feed(response_to(second, 180, "Ringing", to_tag="t2"), ("127.0.0.1", 5211))
    h.feed(response_to(first, 200, "OK", to_tag="t1"), PHONE_201)
    h.feed(response_to(second, 487, "Request Terminated", to_tag="t2"), ("127.0.0.1", 5211))
    assert h.observations() == ["INVITE", "180", "180", "200"]


def test_auth_challenge_is_not_a_call_but_the_authenticated_invite_is(h: Harness) -> None:
    invite_from_phone(h, "202", ("127.0.0.1", 5202), "sip:0612345678@acme.test", "obs-5")
    assert h.observations() == ["INVITE"]
    info = h.observed[0][1]
    assert (info.direction, info.extension) == ("outbound", "202")


def test_cancel_is_observed(h: Harness) -> None:
    register(h, "201", PHONE_201)
    text = request("INVITE", "sip:+31201234567@127.0.0.1", call_id="obs-6", branch="z9hG4bK-o6")
    fwd = only(h.feed(text), method="INVITE").msg
    assert isinstance(fwd, Request)
    h.feed(response_to(fwd, 180, "Ringing"), PHONE_201)
    h.feed(text.replace("INVITE sip:", "CANCEL sip:").replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL"))
    h.feed(response_to(fwd, 487, "Request Terminated"), PHONE_201)
    assert h.observations() == ["INVITE", "180", "CANCEL", "487 (local)"]


def test_a_failing_observer_never_costs_the_call(tmp_path: Path) -> None:
    h = Harness(settings_from(CONFIG, tmp_path))

    def broken(*_: object) -> None:
        raise RuntimeError("tracker bug")

    h.proxy.observer = broken
    register(h, "201", PHONE_201)
    assert only(invite_from_trunk(h, call_id="obs-7"), method="INVITE")
    assert h.counters.transport["observer_error"] == 1


def test_timer_c_rings_out_as_no_answer(h: Harness) -> None:
    from gateway.calls.tracker import CallTracker

    tracker = CallTracker("unit", clock=lambda: h.clock.now)
    events = []
    h.proxy.observer = lambda msg, info: events.extend(tracker.observe(msg, info))
    register(h, "201", PHONE_201)
    fwd = only(invite_from_trunk(h, call_id="obs-tc"), method="INVITE").msg
    assert isinstance(fwd, Request)
    h.feed(response_to(fwd, 180, "Ringing"), PHONE_201)
    sent = h.advance(h.proxy.sip.fork_timeout + 0.1)
    cancel = only(sent, method="CANCEL").msg
    assert cancel.get("Reason") == 'SIP;cause=408;text="No answer"'
    up = h.feed(response_to(fwd, 487, "Request Terminated"), PHONE_201)
    final = [s.msg for s in up if not isinstance(s.msg, Request) and s.msg.status == 487]
    assert final and final[0].get("Reason") == 'SIP;cause=408;text="No answer"'
    failed = events[-1]
    assert failed.type == "call.failed" and failed.cause is not None
    assert (failed.cause.normalized, failed.cause.sip_code) == ("no_answer", 487)


def test_a_later_provisional_restarts_timer_c(h: Harness) -> None:
    # §16.7 step 2: a provisional other than 100 resets Timer C, so a callee that
    # keeps signalling progress is given the full fork timeout from its last one.
    register(h, "201", PHONE_201)
    fwd = only(invite_from_trunk(h, call_id="obs-tc2"), method="INVITE").msg
    assert isinstance(fwd, Request)
    timeout = h.proxy.sip.fork_timeout
    h.feed(response_to(fwd, 180, "Ringing"), PHONE_201)
    h.advance(timeout - 10)
    h.feed(response_to(fwd, 100, "Trying"), PHONE_201)  # a 100 does not
    h.feed(response_to(fwd, 183, "Session Progress"), PHONE_201)
    assert not [s for s in h.advance(timeout - 1) if s.msg.get("CSeq", "").endswith("CANCEL")]
    assert only(h.advance(1.2), method="CANCEL")


def test_an_answered_branch_leaves_no_timer_c_behind(h: Harness) -> None:
    # Timer C is three minutes and nearly always cancelled: a cancelled one must not
    # stay queued until its deadline (memory that grows with the call rate).
    register(h, "201", PHONE_201)
    h.advance(33)
    idle = len(h.proxy.queue)
    fwd = only(invite_from_trunk(h, call_id="obs-tc3"), method="INVITE").msg
    assert isinstance(fwd, Request)
    ringing = len(h.proxy.queue)
    h.feed(response_to(fwd, 200, "OK"), PHONE_201)
    h.advance(33)  # past every transaction timer, well short of Timer C
    assert ringing > idle
    assert len(h.proxy.queue) == idle


def test_the_call_events_come_after_the_forward(h: Harness) -> None:
    # The tracker (and the events it makes) runs once the INVITE has left: the SIP
    # path does not wait for it. A request answered here is reported before its answer.
    register(h, "201", PHONE_201)
    sent_when_observed: list[int] = []
    observer = h.proxy.observer
    assert observer is not None

    def watch(msg: object, info: object) -> None:
        sent_when_observed.append(len(h.transport.sent))
        observer(msg, info)  # type: ignore[arg-type]

    h.proxy.observer = watch
    before = len(h.transport.sent)
    sent = invite_from_trunk(h, call_id="after-fwd")
    assert [s.msg.method for s in sent if isinstance(s.msg, Request)] == ["INVITE"]
    assert sent_when_observed == [before + len(sent)]  # the 100 and the INVITE went first


def test_a_call_answered_here_is_reported_before_its_answer(tmp_path: Path) -> None:
    h = Harness(settings_from(CONFIG, tmp_path))  # 201 not registered: 480 from us
    sent = invite_from_trunk(h, call_id="nobody-home")
    assert [s.msg.status for s in sent if not isinstance(s.msg, Request)] == [480]
    assert h.observations() == ["INVITE", "480 (local)"]
