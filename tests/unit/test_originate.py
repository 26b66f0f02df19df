"""Click-to-dial in the SIP core, without sockets: the user agent's messages as bytes on a
recording transport, the phone's and the trunk's answers fed back by hand, the call
tracker fed by the proxy's observer, time moved by hand."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.calls.events import CallEvent
from gateway.calls.tracker import CallTracker
from gateway.config import Settings
from gateway.dial.originate import (
    DIAL_TRANSITIONS,
    FINAL_STATES,
    PHONE_LEG_STATES,
    Destination,
    DialError,
    DialOrder,
    DialRequest,
    DialState,
    Originator,
)
from gateway.dial.user_agent import UserAgent
from gateway.proxy.location import Binding
from gateway.sip.message import Request, Response
from gateway.transport.addresses import Source
from tests.unit.proxy_harness import Harness, Sent, request, response_to, settings_from

CONFIG = """
default_tenant = "acme"

[node]
name = "unit"

[sip]
listen = ["udp:127.0.0.1:5060"]

[dial]
ring_timeout = 20
connect_timeout = 60

[[tenants]]
id = "acme"
name = "Acme"
domains = ["acme.test"]
region = "NL"

[[tenants.users]]
username = "piet"
extension = "201"
display_name = "Piet Jansen"
password = "Secret-201-pw!"
profile = "pjsua"

[[tenants.users]]
username = "door"
extension = "202"
password = "Secret-202-pw!"
profile = "no-refer-phone"

[[tenants.trunks]]
name = "carrier"
host = "127.0.0.1"
port = 5080
match = ["127.0.0.1:5080"]
"""

PHONE = ("127.0.0.1", 5091)
PHONE2 = ("127.0.0.1", 5092)
TRUNK = ("127.0.0.1", 5080)
SESSION = "v=0\r\no=peer 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
OFFER = SESSION + "m=audio 4000 RTP/AVP 8 0\r\na=rtpmap:8 PCMA/8000\r\n"
ANSWER = SESSION + "m=audio 6000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"


class World:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.h = Harness(settings)
        self.events: list[CallEvent] = []
        self.tracker = CallTracker("unit", clock=lambda: self.h.clock.now)

        def observe(msg: Request | Response, info: object) -> None:
            self.h.observed.append((msg, info))  # type: ignore[arg-type]
            self.events.extend(self.tracker.observe(msg, info))  # type: ignore[arg-type]

        self.h.proxy.observer = observe
        self.ua = UserAgent(self.h.proxy)
        self.originator = Originator(
            self.h.proxy,
            self.ua,
            self.tracker,
            self.events.extend,
            settings.dial,
            "unit",
            wall_clock=lambda: self.h.clock.now,
        )

    def register(self, extension: str, *addresses: tuple[str, int]) -> None:
        self.h.proxy.location.replace(
            "acme",
            extension,
            [
                Binding(
                    contact_uri=f"sip:{extension}@{host}:{port}",
                    q=1.0,
                    expires_at=self.h.clock.now + 3600,
                    call_id=f"reg-{port}",
                    cseq=1,
                    source=Source("udp", (host, port), ("127.0.0.1", 5060)),
                    behind_nat=False,
                )
                for host, port in addresses
            ],
        )

    def dial(self, extension: str, to: str = "+31612345678", **kw: object) -> DialRequest:
        tenant = self.settings.tenant_by_id("acme")
        assert tenant is not None
        user = tenant.user_by_extension(extension)
        assert user is not None
        order = DialOrder(
            tenant=tenant,
            user=user,
            requested_by=user.username,
            to=Destination(dial=to, raw="06 1234 5678", e164=to, name="Jane Example"),
            **kw,  # type: ignore[arg-type]
        )
        return self.originator.dial(order)

    def sent(self, start: int = 0) -> list[Sent]:
        return self.h.transport.sent[start:]

    def last_request(self, method: str, to: tuple[str, int] | None = None) -> Request:
        for sent in reversed(self.h.transport.sent):
            msg = sent.msg
            wanted = to is None or (sent.target.host, sent.target.port) == to
            if isinstance(msg, Request) and msg.method == method and wanted:
                return msg
        raise AssertionError(f"no {method} sent")

    def answer(self, req: Request, status: int, src: tuple[str, int], **kw: object) -> list[Sent]:
        return self.h.feed(response_to(req, status, **kw), src=src)  # type: ignore[arg-type]

    def in_dialog(
        self,
        method: str,
        invite: Request,
        src: tuple[str, int],
        *,
        cseq: int,
        extra: str = "",
        body: str = "",
        to_tag: str = "phone",
    ) -> list[Sent]:
        # A request the phone sends in the dialog of the gateway's INVITE: From/To swapped.
        text = request(
            method, "sip:sipgw@127.0.0.1:5060", src=src,
            from_=f"<sip:201@acme.test>;tag={to_tag}", to=invite.get("From") or "",
            call_id=invite.call_id, cseq=cseq, extra=extra, body=body,
        )  # fmt: skip
        return self.h.feed(text, src=src)

    def types(self) -> list[str]:
        return [e.type for e in self.events]


@pytest.fixture(autouse=True)
def _every_stage_follows_the_table(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    # Originator._set logs (and refuses) any move DIAL_TRANSITIONS does not allow.
    yield
    assert not [r for r in caplog.records if "no transition" in r.getMessage()]


def test_the_dial_table_reaches_every_state_and_ends_in_final_ones() -> None:
    reachable, todo = {DialState.CALLING_PHONE}, [DialState.CALLING_PHONE]
    while todo:
        for nxt in DIAL_TRANSITIONS[todo.pop()]:
            if nxt not in reachable:
                reachable.add(nxt)
                todo.append(nxt)
    assert reachable == set(DialState)
    assert {s for s, nxt in DIAL_TRANSITIONS.items() if not nxt} == FINAL_STATES
    assert all(DialState.CANCELLED in DIAL_TRANSITIONS[s] for s in PHONE_LEG_STATES)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(settings_from(CONFIG, tmp_path))


def test_refer_flow_rings_answers_refers_and_hangs_up(world: World) -> None:
    world.register("201", PHONE, PHONE2)
    dial = world.dial("201")
    invites = [s for s in world.sent() if isinstance(s.msg, Request)]
    # One INVITE per registered contact, the same call (Call-ID, From tag).
    assert [(s.target.host, s.target.port) for s in invites] == [PHONE, PHONE2]
    first, second = (s.msg for s in invites)
    assert isinstance(first, Request) and isinstance(second, Request)
    assert first.call_id == second.call_id and first.from_.tag == second.from_.tag
    assert first.get("Answer-Mode") == "Auto"  # the pjsua profile's auto-answer header
    assert first.from_.display == "Dial: Jane Example"
    assert str(first.from_.uri) == "sip:+31612345678@acme.test"
    assert b"m=audio 9 RTP/AVP" in first.body  # a parked offer: media to the discard port
    assert dial.state == "calling_phone" and dial.mode == "refer"
    assert dial.auto_answer == "answer-mode"

    world.answer(first, 180, PHONE)
    assert dial.state == "phone_ringing"
    world.answer(first, 200, PHONE, to_tag="phone", body=OFFER.replace("sendrecv", ""))
    # ACK, CANCEL of the other contact, then REFER in the dialog.
    ack = world.last_request("ACK", PHONE)
    assert ack.to.tag == "phone" and ack.cseq.number == 1
    refer = world.last_request("REFER", PHONE)
    assert refer.get("Refer-To") == "<sip:+31612345678@127.0.0.1:5060>"
    assert refer.uri_raw == "sip:callee@127.0.0.1:5090"  # the 2xx's Contact
    assert dial.state == "connecting"
    world.answer(refer, 202, PHONE, to_tag=None)

    sipfrag = "Content-Type: message/sipfrag\r\nEvent: refer\r\nSubscription-State: active"
    replies = world.in_dialog(
        "NOTIFY", first, PHONE, cseq=1, extra=sipfrag, body="SIP/2.0 180 Ringing\r\n"
    )
    assert [r.msg.status for r in replies if isinstance(r.msg, Response)] == [200]
    assert dial.state == "destination_ringing"
    done = sipfrag.replace("active", "terminated;reason=noresource")
    world.in_dialog("NOTIFY", first, PHONE, cseq=2, extra=done, body="SIP/2.0 200 OK\r\n")
    world.h.advance(0.001)
    bye = world.last_request("BYE", PHONE)
    assert bye.cseq.number == 3 and bye.to.tag == "phone"
    assert dial.state == "connected" and dial.finished
    assert dial.cause is not None and dial.cause.normalized == "normal"

    assert world.types() == [
        "call.originated", "call.offered", "call.delivered", "call.established",
        "call.transferred", "call.cleared",
    ]  # fmt: skip
    originated = world.events[0]
    assert originated.originate is not None and originated.originate.auto_answer == "answer-mode"
    assert {e.conversation_id for e in world.events} == {dial.conversation_id}
    assert {e.call_id for e in world.events} == {dial.phone_call_id}
    offered = world.events[1]
    assert offered.direction == "outbound" and offered.extension == "201"
    assert offered.calling is not None and offered.calling.number_raw == "201"
    assert offered.called is not None and offered.called.number_e164 == "+31612345678"
    assert all(e.originate == originated.originate for e in world.events)


def test_the_phones_new_call_joins_the_conversation(world: World) -> None:
    world.register("201", PHONE)
    dial = world.dial("201", request_id="crm-1")
    invite = world.last_request("INVITE", PHONE)
    world.answer(invite, 200, PHONE, to_tag="phone", body=OFFER)
    world.answer(world.last_request("REFER", PHONE), 202, PHONE, to_tag=None)
    # The phone now calls the Refer-To target through the proxy, as PJSIP does; the
    # tracker links that call to the click.
    transferee = request(
        "INVITE", "sip:+31612345678@acme.test", src=PHONE, from_="<sip:201@acme.test>;tag=new",
        extra="Referred-By: <sip:201@acme.test>",
    )  # fmt: skip
    (offered,) = world.tracker.observe(_parse(transferee), _Meta("acme", "outbound", "201"))
    assert offered.type == "call.offered"
    assert offered.conversation_id == dial.conversation_id
    assert offered.parent_call_id == dial.phone_call_id
    assert offered.originate is not None and offered.originate.request_id == "crm-1"
    assert offered.transfer is not None and offered.transfer.kind == "blind"


def test_3pcc_bridges_the_phone_and_the_destination(world: World) -> None:
    world.register("202", PHONE)
    dial = world.dial("202")
    invite = world.last_request("INVITE", PHONE)
    assert dial.mode == "3pcc" and invite.body == b""  # flow I: the phone makes the offer
    assert invite.get("Call-Info") == "<sip:127.0.0.1>;answer-after=0"
    world.answer(invite, 200, PHONE, to_tag="phone", body=OFFER)
    # No ACK yet: it waits for the destination's answer. The destination gets the offer.
    assert not any(isinstance(s.msg, Request) and s.msg.method == "ACK" for s in world.sent())
    dest = world.last_request("INVITE", TRUNK)
    assert dest.uri_raw == "sip:+31612345678@127.0.0.1:5080"
    assert dest.body == OFFER.encode()
    assert dest.from_.display is None and str(dest.from_.uri) == "sip:202@acme.test"
    world.answer(dest, 180, TRUNK, to_tag="far")
    assert dial.state == "destination_ringing"
    world.answer(dest, 200, TRUNK, to_tag="far", body=ANSWER)
    assert world.last_request("ACK", TRUNK).body == b""
    assert world.last_request("ACK", PHONE).body == ANSWER.encode()
    assert dial.state == "connected" and not dial.finished
    # The phone hangs up: the gateway hangs up the destination.
    world.in_dialog("BYE", invite, PHONE, cseq=2)
    assert world.last_request("BYE", TRUNK).to.tag == "far"
    assert dial.state == "ended" and dial.finished
    types = [(e.type, e.call_id == dial.phone_call_id) for e in world.events]
    assert types == [
        ("call.originated", True), ("call.offered", True), ("call.established", True),
        ("call.offered", False), ("call.delivered", False), ("call.established", False),
        ("call.cleared", True), ("call.cleared", False),
    ]  # fmt: skip
    dest_events = [e for e in world.events if e.call_id != dial.phone_call_id]
    assert {e.parent_call_id for e in dest_events} == {dial.phone_call_id}
    assert {e.conversation_id for e in world.events} == {dial.conversation_id}


def test_3pcc_destination_busy_fails_and_releases_the_phone(world: World) -> None:
    world.register("202", PHONE)
    dial = world.dial("202")
    invite = world.last_request("INVITE", PHONE)
    world.answer(invite, 200, PHONE, to_tag="phone", body=OFFER)
    dest = world.last_request("INVITE", TRUNK)
    world.answer(dest, 486, TRUNK, to_tag="far")
    ack = world.last_request("ACK", PHONE)
    assert b"m=audio 9 RTP/AVP 8" in ack.body  # the offer still needs an answer before BYE
    assert (
        world.last_request("BYE", PHONE).get("Reason")
        == 'SIP;cause=486;text="The destination is busy"'
    )
    assert dial.state == "failed" and dial.cause is not None
    assert (dial.cause.normalized, dial.cause.sip_code) == ("busy", 486)
    failed = [e for e in world.events if e.type == "call.failed"]
    assert len(failed) == 1 and failed[0].cause is not None and failed[0].cause.normalized == "busy"


def test_phone_rejects(world: World) -> None:
    world.register("201", PHONE)
    dial = world.dial("201")
    world.answer(world.last_request("INVITE", PHONE), 486, PHONE)
    assert dial.state == "failed" and dial.cause is not None
    assert dial.cause.message == "The phone is busy"
    assert world.types()[-1] == "call.failed"
    assert world.events[-1].cause is not None and world.events[-1].cause.normalized == "busy"


def test_phone_never_answers(world: World) -> None:
    world.register("201", PHONE)
    dial = world.dial("201")
    invite = world.last_request("INVITE", PHONE)
    world.answer(invite, 180, PHONE)
    world.h.advance(20.5)  # ring_timeout
    cancel = world.last_request("CANCEL", PHONE)
    assert cancel.get("Reason") == 'SIP;cause=480;text="Phone did not answer"'
    world.answer(invite, 487, PHONE)
    assert dial.state == "failed" and dial.cause is not None
    assert dial.cause.normalized == "no_answer"
    failed = world.events[-1]
    assert failed.type == "call.failed" and failed.cause is not None
    assert (failed.cause.normalized, failed.cause.sip_reason) == (
        "no_answer",
        "Phone did not answer",
    )


def test_cancel_while_ringing_then_cancel_again_is_409(world: World) -> None:
    world.register("201", PHONE)
    dial = world.dial("201")
    invite = world.last_request("INVITE", PHONE)
    world.answer(invite, 180, PHONE)
    world.originator.cancel("acme", dial.id)
    assert world.last_request("CANCEL", PHONE) is not None
    assert dial.state == "cancelled"
    world.answer(invite, 487, PHONE)
    assert world.events[-1].type == "call.failed"
    assert world.events[-1].cause is not None and world.events[-1].cause.normalized == "cancelled"
    with pytest.raises(DialError) as refused:
        world.originator.cancel("acme", dial.id)
    assert refused.value.status == 409
    with pytest.raises(DialError) as other:
        world.originator.cancel("globex", dial.id)
    assert other.value.status == 404


def test_answer_racing_a_cancel_is_acked_and_hung_up(world: World) -> None:
    world.register("201", PHONE)
    dial = world.dial("201")
    invite = world.last_request("INVITE", PHONE)
    world.originator.cancel("acme", dial.id)  # no 1xx yet: the CANCEL waits for one
    assert not any(isinstance(s.msg, Request) and s.msg.method == "CANCEL" for s in world.sent())
    world.answer(invite, 200, PHONE, to_tag="phone", body=OFFER)
    assert world.last_request("ACK", PHONE).to.tag == "phone"
    assert world.last_request("BYE", PHONE).to.tag == "phone"
    assert dial.state == "cancelled"


def test_unregistered_extension_is_refused(world: World) -> None:
    with pytest.raises(DialError) as refused:
        world.dial("201")
    assert refused.value.status == 409 and "no registered phone" in refused.value.message
    assert world.events == [] and world.sent() == []


def test_idempotency_key_finds_the_request(world: World) -> None:
    world.register("201", PHONE)
    dial = world.dial("201", request_id="crm-7")
    assert world.originator.existing("acme", "piet", "crm-7") is dial
    assert world.originator.existing("acme", "other", "crm-7") is None
    assert world.originator.existing("globex", "piet", "crm-7") is None


def test_refer_refused_by_the_phone(world: World) -> None:
    world.register("201", PHONE)
    dial = world.dial("201")
    invite = world.last_request("INVITE", PHONE)
    world.answer(invite, 200, PHONE, to_tag="phone", body=OFFER)
    world.answer(world.last_request("REFER", PHONE), 405, PHONE, to_tag=None)
    assert dial.state == "failed" and dial.cause is not None
    assert "refused the transfer" in dial.cause.message
    assert world.last_request("BYE", PHONE) is not None


def test_reinvite_from_the_phone_gets_a_parked_answer(world: World) -> None:
    world.register("201", PHONE)
    world.dial("201")
    invite = world.last_request("INVITE", PHONE)
    world.answer(invite, 200, PHONE, to_tag="phone", body=OFFER)
    hold = OFFER + "a=sendonly\r\n"
    replies = world.in_dialog("INVITE", invite, PHONE, cseq=5, body=hold,
                              extra="Content-Type: application/sdp")  # fmt: skip
    final = [r.msg for r in replies if isinstance(r.msg, Response) and r.msg.status == 200]
    assert final and b"m=audio 9 RTP/AVP 8" in final[0].body and b"a=recvonly" in final[0].body
    assert final[0].get("Contact") is not None
    # An older CSeq afterwards is out of order (RFC 3261 §12.2.2).
    late = world.in_dialog("INFO", invite, PHONE, cseq=4)
    assert [r.msg.status for r in late if isinstance(r.msg, Response)] == [500]


def test_unknown_dialog_gets_481(world: World) -> None:
    replies = world.h.feed(
        request("BYE", "sip:sipgw@127.0.0.1:5060", src=PHONE, to="<sip:x@acme.test>;tag=sguaffff")
    )
    assert [r.msg.status for r in replies if isinstance(r.msg, Response)] == [481]


class _Meta:
    def __init__(self, tenant: str, direction: str, extension: str) -> None:
        self.tenant, self.direction, self.extension = tenant, direction, extension
        self.local, self.source, self.user_agent = False, "", None
        self.caller_id: tuple[str, ...] = ()
        self.region: str | None = None
        self.shown = None


def _parse(text: str) -> Request:
    from gateway.sip.message import parse_message

    msg = parse_message(text.replace("\n", "\r\n").replace("\r\r\n", "\r\n").encode())
    assert isinstance(msg, Request)
    return msg
