"""The busy lamp field (gateway/blf) driven through the proxy without sockets: SUBSCRIBE
in, NOTIFY out, the dialog-info bodies, the subscription's state table."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from gateway.blf.dialog_info import NAMESPACE, DialogView, Party, render
from gateway.blf.lines import Lines
from gateway.blf.notifier import Notifier
from gateway.blf.subscriptions import TRANSITIONS, Do, SubInput, SubState, advance
from gateway.config import ConfigError
from gateway.sip.digest import DigestClient
from gateway.sip.message import Request, Response

from .proxy_harness import CONFIG, PASSWORDS, Harness, Sent, request, settings_from

PHONE_202 = ("127.0.0.1", 5202)
GLOBEX = """
[[tenants]]
id = "globex"
name = "Globex"
domains = ["globex.test"]

[[tenants.users]]
username = "301"
extension = "301"
password = "Secret-301-pw!"
"""
NS = {"d": NAMESPACE}


def make(tmp_path: Path, caller: str = "name", blf: str = "") -> tuple[Harness, Notifier]:
    config = CONFIG.replace(
        '[[tenants.users]]\nusername = "201"',
        f'[tenants.blf]\ncaller = "{caller}"\n\n[[tenants.users]]\nusername = "201"',
        1,
    )
    settings = settings_from(f"{config}\n{blf}\n{GLOBEX}", tmp_path)
    h = Harness(settings)
    notifier = Notifier(h.proxy, settings.blf, Lines(settings))
    h.proxy.notifier = notifier
    return h, notifier


@pytest.fixture
def hn(tmp_path: Path) -> tuple[Harness, Notifier]:
    return make(tmp_path)


def responses(sent: list[Sent]) -> list[Response]:
    return [s.msg for s in sent if isinstance(s.msg, Response)]


def notifies(sent: list[Sent]) -> list[Sent]:
    return [s for s in sent if isinstance(s.msg, Request) and s.msg.method == "NOTIFY"]


def subscribe(
    h: Harness,
    ruri: str = "sip:201@acme.test",
    *,
    user: str = "202",
    src: tuple[str, int] = PHONE_202,
    extra: str = "Event: dialog\nExpires: 600",
    call_id: str = "sub-1",
    contact: str | None = None,
) -> tuple[Response, list[Sent]]:
    """An authenticated SUBSCRIBE: its final answer, and everything sent once the
    zero-delay timers ran (the first NOTIFY)."""
    from_ = f"<sip:{user}@acme.test>;tag=s1"
    first = request("SUBSCRIBE", ruri, src=src, from_=from_, call_id=call_id, extra=extra)
    [challenge] = responses(h.feed(first, src))
    assert challenge.status == 407
    auth = DigestClient(user, PASSWORDS[user]).authorization(
        challenge.get_all("Proxy-Authenticate")[0], "SUBSCRIBE", ruri
    )
    second = request(
        "SUBSCRIBE",
        ruri,
        src=src,
        from_=from_,
        call_id=call_id,
        cseq=2,
        extra=f"{extra}\nProxy-Authorization: {auth}",
    )
    if contact is not None:
        second = second.replace(f"Contact: <sip:peer@{src[0]}:{src[1]}>", f"Contact: {contact}")
    sent = h.feed(second, src)
    sent += h.advance(0)
    [answer] = [r for r in responses(sent) if r.status >= 200]
    return answer, sent


def answer(h: Harness, sent: Sent, status: int = 200) -> list[Sent]:
    """The subscriber's answer to one of our NOTIFYs."""
    req = sent.msg
    assert isinstance(req, Request)
    lines = [f"SIP/2.0 {status} Whatever"]
    lines += [f"Via: {v}" for v in req.get_all("Via")]
    lines += [f"{n}: {req.get(n)}" for n in ("From", "To", "Call-ID", "CSeq")]
    lines.append("Content-Length: 0")
    data = "\r\n".join(lines) + "\r\n\r\n"
    return h.feed(data, (sent.target.host, sent.target.port))


def body_of(sent: Sent) -> ET.Element:
    msg = sent.msg
    assert isinstance(msg, Request)
    assert msg.get("Content-Type") == "application/dialog-info+xml"
    return ET.fromstring(msg.body)


def states(doc: ET.Element) -> list[str]:
    return [d.findtext("d:state", namespaces=NS) or "" for d in doc.findall("d:dialog", NS)]


def call_event(state: str, kind: str, **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": kind,
        "call_id": "call-A",
        "sip_call_id": "abc@trunk",
        "from_tag": "ft",
        "direction": "inbound",
        "state": state,
        "extension": "201",
        "calling": {"number_raw": "+31612345678", "number_e164": "+31612345678"},
        "called": {"number_raw": "+31201234567"},
    }
    event.update(extra)
    return event


JAN = {"status": "hit", "contact": {"name": "Jan de Vries"}}


# ------------------------------------------------------------------ subscribing ---
def test_an_unauthenticated_subscribe_is_challenged_and_leaves_no_state(hn: Any) -> None:
    h, notifier = hn
    data = request(
        "SUBSCRIBE", "sip:201@acme.test", src=PHONE_202,
        from_="<sip:202@acme.test>;tag=s1", extra="Event: dialog",
    )  # fmt: skip
    sent = h.feed(data, PHONE_202) + h.advance(5)
    [challenge] = responses(sent)
    assert challenge.status == 407
    assert len(sent) == 1 and len(sent[0].data) <= 2 * len(data)
    assert len(notifier.table) == 0 and not h.proxy.tm.server


def test_subscribe_is_answered_200_then_a_full_state_notify_to_the_flow(hn: Any) -> None:
    h, _notifier = hn
    ok, sent = subscribe(h, contact="<sip:202@192.0.2.99:5999>")
    assert ok.status == 200 and ok.to.tag and ok.to.tag.startswith("blf")
    assert ok.get("Expires") == "600" and ok.get("Contact")
    [notify] = notifies(sent)
    msg = notify.msg
    assert isinstance(msg, Request)
    # The Contact is the Request-URI; the NOTIFY goes where the SUBSCRIBE came from.
    assert msg.uri_raw == "sip:202@192.0.2.99:5999"
    assert (notify.target.host, notify.target.port) == PHONE_202
    assert msg.get("Subscription-State") == "active;expires=600"
    assert msg.get("Event") == "dialog" and msg.from_.tag == ok.to.tag and msg.to.tag == "s1"
    doc = body_of(notify)
    assert doc.get("version") == "0" and doc.get("state") == "full"
    assert doc.get("entity") == "sip:201@acme.test" and states(doc) == []


def test_each_change_is_one_notify_with_the_next_version(hn: Any) -> None:
    h, notifier = hn
    _, sent = subscribe(h)
    answer(h, notifies(sent)[0])
    seen = []
    for state, kind in [
        ("offered", "call.offered"),
        ("delivered", "call.delivered"),
        ("established", "call.established"),
        ("cleared", "call.cleared"),
    ]:
        extra = {"to_tag": "tt"} if state in ("established", "cleared") else {}
        notifier.on_event("acme", call_event(state, kind, lookup=JAN, **extra))
        [notify] = notifies(h.advance(0) + h.transport.sent[-1:])
        doc = body_of(notify)
        seen.append((doc.get("version"), states(doc)))
        answer(h, notify)
    assert seen == [
        ("1", ["trying"]),
        ("2", ["early"]),
        ("3", ["confirmed"]),
        ("4", ["terminated"]),
    ]


def test_the_dialog_shows_the_recognized_name_and_the_tags(hn: Any) -> None:
    h, notifier = hn
    _, sent = subscribe(h)
    answer(h, notifies(sent)[0])
    notifier.on_event(
        "acme", call_event("established", "call.established", to_tag="tt", lookup=JAN)
    )
    doc = body_of(h.transport.sent[-1])
    [dialog] = doc.findall("d:dialog", NS)
    assert dialog.get("call-id") == "abc@trunk" and dialog.get("direction") == "recipient"
    assert (dialog.get("local-tag"), dialog.get("remote-tag")) == ("tt", "ft")
    identity = dialog.find("d:remote/d:identity", NS)
    assert identity is not None and identity.get("display") == "Jan de Vries"
    assert identity.text == "sip:+31612345678@acme.test"


def test_a_change_while_a_notify_is_in_flight_is_folded_into_the_next(hn: Any) -> None:
    h, notifier = hn
    _, sent = subscribe(h)
    first = notifies(sent)[0]
    before = len(h.transport.sent)
    notifier.on_event("acme", call_event("offered", "call.offered"))
    notifier.on_event("acme", call_event("delivered", "call.delivered"))
    assert not notifies(h.transport.sent[before:]), "one NOTIFY in flight at a time"
    [second] = notifies(answer(h, first))
    doc = body_of(second)
    assert (doc.get("version"), states(doc)) == ("1", ["early"])


def test_a_dialog_that_ends_while_folded_is_still_shown_terminated_once(hn: Any) -> None:
    h, notifier = hn
    _, sent = subscribe(h)
    notifier.on_event("acme", call_event("delivered", "call.delivered"))
    notifier.on_event(
        "acme", call_event("failed", "call.failed", cause={"normalized": "cancelled"})
    )
    [second] = notifies(answer(h, notifies(sent)[0]))
    doc = body_of(second)
    assert states(doc) == ["terminated"]
    state = doc.find("d:dialog/d:state", NS)
    assert state is not None and state.get("event") == "cancelled"
    answer(h, second)
    notifier.on_event("acme", call_event("offered", "call.offered", call_id="call-B"))
    [third] = notifies(h.transport.sent[-1:])
    dialogs = body_of(third).findall("d:dialog", NS)
    assert [(d.get("id"), states(body_of(third))) for d in dialogs] == [("call-B", ["trying"])]


def test_an_internal_call_lights_both_extensions(tmp_path: Path) -> None:
    _h, notifier = make(tmp_path)
    event = call_event("delivered", "call.delivered", direction="internal")
    event["calling"] = {"number_raw": "202"}
    changed = notifier.lines.apply("acme", event)
    assert sorted((ext, v.direction) for ext, v in changed) == [
        ("201", "recipient"),
        ("202", "initiator"),
    ]


def test_the_name_stays_when_later_events_carry_no_look_up(hn: Any) -> None:
    h, notifier = hn
    _, sent = subscribe(h)
    answer(h, notifies(sent)[0])
    notifier.on_event("acme", call_event("offered", "call.offered", lookup=JAN))
    answer(h, h.transport.sent[-1])
    notifier.on_event("acme", call_event("delivered", "call.delivered"))
    identity = body_of(h.transport.sent[-1]).find("d:dialog/d:remote/d:identity", NS)
    assert identity is not None and identity.get("display") == "Jan de Vries"


def test_caller_none_shows_no_remote_party(tmp_path: Path) -> None:
    h, notifier = make(tmp_path, caller="none")
    _, sent = subscribe(h)
    answer(h, notifies(sent)[0])
    notifier.on_event("acme", call_event("delivered", "call.delivered", lookup=JAN))
    body = h.transport.sent[-1].msg.body
    assert b"<remote>" not in body and b"Jan" not in body and b"31612345678" not in body


def test_caller_number_shows_the_number_not_the_name(tmp_path: Path) -> None:
    h, notifier = make(tmp_path, caller="number")
    _, sent = subscribe(h)
    answer(h, notifies(sent)[0])
    notifier.on_event("acme", call_event("delivered", "call.delivered", lookup=JAN))
    identity = body_of(h.transport.sent[-1]).find("d:dialog/d:remote/d:identity", NS)
    assert identity is not None and identity.get("display") == "+31612345678"


def test_untrusted_text_is_escaped_into_well_formed_xml() -> None:
    nasty = 'A "B" <C> & D\x00\x1b\u00e9\u4e2d\U0001f600'
    view = DialogView(
        id='x"><evil/>', state="early", direction="recipient",
        local=Party("sip:201@acme.test"), remote=Party("sip:1@acme.test", nasty),
        call_id="c<&>", remote_tag="t'\"",
    )  # fmt: skip
    doc = ET.fromstring(render("sip:201@acme.test", 7, [view]))
    [dialog] = doc.findall("d:dialog", NS)
    assert dialog.get("id") == 'x"><evil/>' and dialog.get("call-id") == "c<&>"
    identity = dialog.find("d:remote/d:identity", NS)
    assert identity is not None
    assert identity.get("display") == 'A "B" <C> & D\u00e9\u4e2d\U0001f600'


# ------------------------------------------------------------------- refusals ---
def test_another_package_to_the_gateway_itself_is_489(hn: Any) -> None:
    h, _ = hn
    ok, _ = subscribe(h, "sip:acme.test", extra="Event: presence")
    assert ok.status == 489 and ok.get("Allow-Events") == "dialog"


def test_an_unknown_extension_is_404(hn: Any) -> None:
    h, _ = hn
    ok, _ = subscribe(h, "sip:299@acme.test")
    assert ok.status == 404


def test_another_tenants_extension_is_403(hn: Any) -> None:
    h, notifier = hn
    ok, sent = subscribe(h, "sip:301@globex.test")
    assert ok.status == 403 and not notifies(sent) and len(notifier.table) == 0


def test_an_interval_too_brief_is_423_with_min_expires(hn: Any) -> None:
    h, _ = hn
    ok, _ = subscribe(h, extra="Event: dialog\nExpires: 10")
    assert ok.status == 423 and ok.get("Min-Expires") == "60"


def test_limits_per_subscriber_and_per_tenant(tmp_path: Path) -> None:
    h, _notifier = make(tmp_path, blf="[blf]\nmax_per_subscriber = 2\nmax_per_tenant = 3\n")
    contacts = [f"<sip:202@127.0.0.1:{6000 + i}>" for i in range(3)]
    codes = [subscribe(h, call_id=f"s{i}", contact=c)[0].status for i, c in enumerate(contacts)]
    assert codes == [200, 200, 403]
    ok, _ = subscribe(h, user="201", src=("127.0.0.1", 5201), ruri="sip:202@acme.test")
    assert ok.status == 200
    ok, _ = subscribe(
        h, user="201", src=("127.0.0.1", 5201), ruri="sip:202@acme.test", call_id="s9",
        contact="<sip:201@127.0.0.1:7000>",
    )  # fmt: skip
    assert ok.status == 503 and ok.get("Retry-After")


def test_subscribing_again_from_the_same_contact_replaces_the_older(hn: Any) -> None:
    h, notifier = hn
    _, first = subscribe(h, call_id="a")
    notifier.on_event("acme", call_event("offered", "call.offered"))  # folded: in flight
    subscribe(h, call_id="b")
    assert [s.call_id for s in notifier.table.watching("acme", "201")] == ["b"]
    # The replaced subscription's answer sends nothing more on its dialog.
    assert not [n for n in notifies(answer(h, notifies(first)[0])) if n.msg.call_id == "a"]


# ------------------------------------------------------------------ in dialog ---
def in_dialog(
    h: Harness, ok: Response, expires: int, cseq: int, src: tuple[str, int] = PHONE_202
) -> list[Sent]:
    data = request(
        "SUBSCRIBE", str(ok.get("Contact")).strip("<>"), src=src,
        from_="<sip:202@acme.test>;tag=s1", to=f"<sip:201@acme.test>;tag={ok.to.tag}",
        call_id=ok.call_id, cseq=cseq, extra=f"Event: dialog\nExpires: {expires}",
    )  # fmt: skip
    return h.feed(data, src) + h.advance(0)


def test_a_refresh_is_answered_and_notified(hn: Any) -> None:
    h, _notifier = hn
    ok, sent = subscribe(h)
    answer(h, notifies(sent)[0])
    h.advance(300)
    sent = in_dialog(h, ok, 600, 3)
    assert [r.status for r in responses(sent)] == [200]
    [notify] = notifies(sent)
    assert notify.msg.get("Subscription-State") == "active;expires=600"
    assert body_of(notify).get("version") == "1"


def test_an_unsubscribe_ends_with_a_terminated_notify(hn: Any) -> None:
    h, notifier = hn
    ok, sent = subscribe(h)
    answer(h, notifies(sent)[0])
    sent = in_dialog(h, ok, 0, 3)
    assert [r.status for r in responses(sent)] == [200]
    [notify] = notifies(sent)
    assert notify.msg.get("Subscription-State") == "terminated;reason=timeout"
    answer(h, notify)
    assert len(notifier.table) == 0
    assert [r.status for r in responses(in_dialog(h, ok, 600, 4))] == [481]
    assert h.counters.blf == {"notify_answered": 1, "ended_timeout": 1}  # /metrics


def test_an_in_dialog_request_from_another_host_is_481(hn: Any) -> None:
    h, notifier = hn
    ok, _ = subscribe(h)
    sent = in_dialog(h, ok, 0, 3, src=("192.0.2.66", 5060))
    assert [r.status for r in responses(sent)] == [481] and len(notifier.table) == 1


def test_expiry_sends_the_final_notify(hn: Any) -> None:
    h, _notifier = hn
    _, sent = subscribe(h)
    answer(h, notifies(sent)[0])
    final, *retransmitted = notifies(h.advance(601))
    assert final.msg.get("Subscription-State") == "terminated;reason=timeout"
    assert all(again.data == final.data for again in retransmitted)


def test_stopping_deactivates_every_subscription(hn: Any) -> None:
    h, notifier = hn
    _, sent = subscribe(h)
    answer(h, notifies(sent)[0])
    before = len(h.transport.sent)
    notifier.deactivate()
    [final] = notifies(h.transport.sent[before:])
    assert final.msg.get("Subscription-State") == "terminated;reason=deactivated"
    answer(h, final)
    assert len(notifier.table) == 0
    assert h.counters.blf["ended_deactivated"] == 1


@pytest.mark.parametrize("status", [481, 500])
def test_a_failed_notify_ends_the_subscription(hn: Any, status: int) -> None:
    h, notifier = hn
    _, sent = subscribe(h)
    answer(h, notifies(sent)[0], status)
    assert len(notifier.table) == 0
    assert h.counters.blf == {"notify_failed": 1}
    notifier.on_event("acme", call_event("offered", "call.offered"))
    assert not notifies(h.advance(1))


def test_an_unanswered_notify_times_out_and_ends_the_subscription(hn: Any) -> None:
    h, notifier = hn
    subscribe(h)
    h.advance(40)  # Timer F
    assert len(notifier.table) == 0


def test_events_are_held_back_until_the_catch_up_is_done(tmp_path: Path) -> None:
    h, notifier = make(tmp_path)
    watched: list[str] = []
    notifier.watch = watched.append
    _, sent = subscribe(h)
    assert watched == ["acme"]
    answer(h, notifies(sent)[0])
    notifier.on_event("acme", call_event("established", "call.established"))
    assert not notifies(h.advance(0)), "no NOTIFY per replayed event"
    notifier.caught_up("acme")
    [notify] = notifies(h.transport.sent[-1:])
    assert states(body_of(notify)) == ["confirmed"]


# --------------------------------------------------------------- state table ---
def test_the_state_table_folds_changes_and_ends_once() -> None:
    assert advance(SubState.IDLE, SubInput.CHANGE) == (SubState.SENDING, Do.NOTIFY)
    assert advance(SubState.SENDING, SubInput.CHANGE) == (SubState.SENDING_STALE, Do.NOTHING)
    assert advance(SubState.SENDING_STALE, SubInput.ANSWERED) == (SubState.SENDING, Do.NOTIFY)
    assert advance(SubState.ENDING, SubInput.CHANGE) == (SubState.ENDING, Do.NOTHING)
    assert advance(SubState.ENDING, SubInput.FINAL_DONE) == (SubState.ENDED, Do.FORGET)
    for state in SubState:
        assert advance(SubState.ENDED, SubInput.CHANGE)[1] is Do.NOTHING
        if state not in (SubState.ENDING, SubState.ENDED):
            assert TRANSITIONS[(state, SubInput.END)] == (SubState.ENDING, Do.FINAL_NOTIFY)


# ---------------------------------------------------------------- configuration ---
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[blf]\nmin_expires = 120\nmax_expires = 60\n", "blf.max_expires: must be at least"),
        ("[blf]\ndefault_expires = 10\n", "blf.default_expires: must be from"),
        ("[blf]\ncatch_up = -1\n", "blf.catch_up"),
    ],
)
def test_bad_blf_settings_name_their_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        settings_from(f"{CONFIG}\n{text}", tmp_path)


def test_a_tenant_caller_choice_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tenants\[0\]\.blf\.caller: must be"):
        make(tmp_path, caller="everything")
