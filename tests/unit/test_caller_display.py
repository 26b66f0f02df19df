"""The recognized caller's name on the callee's phone (issue #15 part 2), without I/O:
the quoting of untrusted names, the header rewrite, the proxy's wait, the config.

The proxy's `caller_names` hook is the runtime's CallerNames (tested with a real
gateway, Redis and real phones in tests/integration/test_caller_display.py); here a
scripted stand-in answers it, since the proxy only sees its answers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.calls.events import CallerDisplay, CallEvent
from gateway.config import ConfigError
from gateway.proxy.caller_display import (
    MAX_DISPLAY_CHARS,
    Shown,
    Wait,
    clean_display,
    quoted_display,
    with_display,
    with_display_all,
)
from gateway.proxy.context import ServerContext
from gateway.recognition.privacy import without_source
from gateway.sip.headers import parse_name_addr
from gateway.sip.message import Request

from .proxy_harness import CONFIG, Harness, Sent, request, settings_from
from .test_call_events import assert_valid, full_event
from .test_proxy import PHONE_201, invite_from_trunk, only, register, response_to, statuses

NAME = 'Zoë "Z" O\\Brien'


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(settings_from(CONFIG, tmp_path))


class Names:
    """A scripted CallerNames: `now` answers `answer`; `ask` keeps its callback."""

    def __init__(self, answer: Shown | Wait | None) -> None:
        self.answer = answer
        self.asked: list[Callable[[Shown | None], None]] = []

    def now(self, ctx: object) -> Shown | Wait | None:
        assert isinstance(ctx, ServerContext)
        return self.answer

    def ask(self, wait: Wait, done: Callable[[Shown | None], None]) -> None:
        self.asked.append(done)


def shown(headers: tuple[str, ...] = ("From",), answered_by: str = "cache") -> Shown:
    return Shown(NAME, answered_by, headers, "sip:+31612345678@carrier.test", "crm")


# --- untrusted names ---------------------------------------------------------------------


def test_a_name_is_quoted_and_escaped_and_parses_back_intact() -> None:
    value = with_display("<sip:+31612345678@carrier.test>;tag=f1", NAME)
    assert value == '"Zoë \\"Z\\" O\\\\Brien" <sip:+31612345678@carrier.test>;tag=f1'
    parsed = parse_name_addr(value, header="From")
    assert parsed.display == NAME
    assert parsed.tag == "f1"


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Ann\r\nVia: SIP/2.0/UDP evil", "Ann Via: SIP/2.0/UDP evil"),  # no header injection
        ("Ann\x00\x07\x1b[2J", "Ann[2J"),  # controls dropped
        ("\u202eevil.exe", "evil.exe"),  # a bidi override would reverse the display
        ("A\ud800B", "AB"),  # a lone surrogate (JSON allows it) cannot be encoded
        ("  many   spaces\there ", "many spaces here"),
        ("Zoe\u0308", "Zoë"),  # NFC
        ("\u200b\u2028", ""),  # nothing visible: nothing shown
        ("x" * 500, "x" * MAX_DISPLAY_CHARS),
    ],
)
def test_clean_display(raw: str, clean: str) -> None:
    assert clean_display(raw) == clean


def test_a_quoted_name_cannot_end_the_quoted_string() -> None:
    for name in ['"', "\\", '\\"', 'a"; tag=x', '"<sip:evil@x>"']:
        value = with_display("<sip:1@x>;tag=t", clean_display(name))
        parsed = parse_name_addr(value, header="From")
        assert parsed.display == name and str(parsed.uri) == "sip:1@x" and parsed.tag == "t"


def test_an_addr_spec_becomes_a_name_addr_keeping_its_header_parameters() -> None:
    value = with_display("sip:+31612345678@carrier.test;tag=f1", "Ann")
    assert value == '"Ann" <sip:+31612345678@carrier.test>;tag=f1'
    replaced = with_display('"Old, \\"name\\" <x>" <sip:1@x>;tag=t', "Ann")
    assert replaced == '"Ann" <sip:1@x>;tag=t'


def test_every_asserted_identity_gets_the_name() -> None:
    value = with_display_all("<sip:+31612345678@carrier.test>, <tel:+31612345678>", "Ann")
    assert value == '"Ann" <sip:+31612345678@carrier.test>, "Ann" <tel:+31612345678>'


# --- the proxy ---------------------------------------------------------------------------


def forwarded(sent: list[Sent]) -> Request:
    msg = only(sent, method="INVITE").msg
    assert isinstance(msg, Request)
    return msg


def test_a_cached_name_goes_into_from_at_once_and_the_caller_gets_its_from_back(
    h: Harness,
) -> None:
    register(h, "201", PHONE_201)
    h.proxy.caller_names = Names(shown())
    fwd = forwarded(invite_from_trunk(h))
    assert fwd.from_.display == NAME
    assert fwd.from_.tag == "f1" and str(fwd.from_.uri) == "sip:+31612345678@carrier.test"
    assert "P-Asserted-Identity" not in fwd
    ringing = only(h.feed(response_to(fwd, 180, "Ringing"), PHONE_201), status=180).msg
    assert ringing.get("From") == "<sip:+31612345678@carrier.test>;tag=f1"
    invite, info = h.observed[0]
    assert isinstance(invite, Request) and info.shown == shown()


def test_the_asserted_identity_is_added_or_renamed(h: Harness) -> None:
    register(h, "201", PHONE_201)
    h.proxy.caller_names = Names(shown(("P-Asserted-Identity",)))
    fwd = forwarded(invite_from_trunk(h, call_id="pai-added"))
    assert fwd.get("P-Asserted-Identity") == f"{quoted_display(NAME)} <{shown().uri}>"
    assert fwd.from_.display is None  # From untouched
    sent = h.feed(
        invite_from_trunk_text("pai-renamed", extra="P-Asserted-Identity: <tel:+31612345678>")
    )
    assert (
        forwarded(sent).get("P-Asserted-Identity") == f"{quoted_display(NAME)} <tel:+31612345678>"
    )


def invite_from_trunk_text(call_id: str, extra: str = "") -> str:
    lines = "Content-Type: application/sdp\n" + extra
    return request("INVITE", "sip:+31201234567@127.0.0.1", call_id=call_id, body="v=0\r\n",
                   extra=lines)  # fmt: skip


def test_no_name_leaves_the_invite_byte_identical(h: Harness, tmp_path: Path) -> None:
    plain = Harness(settings_from(CONFIG, tmp_path))
    for harness, names in ((plain, None), (h, Names(None))):
        register(harness, "201", PHONE_201)
        harness.proxy.caller_names = names
    ours = forwarded(h.feed(invite_from_trunk_text("same")))
    theirs = forwarded(plain.feed(invite_from_trunk_text("same")))
    assert _without_branch(ours.to_bytes()) == _without_branch(theirs.to_bytes())
    assert h.observed[0][1].shown is None


def _without_branch(data: bytes) -> bytes:
    # The branch and the Record-Route signature carry randomness of their own.
    return b"\r\n".join(
        line for line in data.split(b"\r\n") if not line.startswith((b"Via:", b"Record-Route:"))
    )


def test_a_wait_ends_with_the_answer(h: Harness) -> None:
    register(h, "201", PHONE_201)
    names = Names(Wait(0.05))
    h.proxy.caller_names = names
    sent = invite_from_trunk(h)
    assert statuses(sent) == [100]  # the caller stops retransmitting; nothing forwarded yet
    assert not [s for s in sent if isinstance(s.msg, Request)] and not h.observed
    before = len(h.transport.sent)
    names.asked[0](shown(answered_by="redis"))
    fwd = forwarded(h.transport.sent[before:])
    assert fwd.from_.display == NAME
    assert h.observed[0][1].shown == shown(answered_by="redis")
    assert h.advance(0.1) == []  # the wait's timer is cancelled: no second forward
    names.asked[0](None)  # a late second call changes nothing
    assert len(h.transport.sent) == before + 1


def test_a_wait_that_runs_out_forwards_unchanged(h: Harness) -> None:
    register(h, "201", PHONE_201)
    names = Names(Wait(0.05))
    h.proxy.caller_names = names
    invite_from_trunk(h)
    fwd = forwarded(h.advance(0.06))
    assert fwd.from_.display is None
    assert h.observed[0][1].shown is None
    before = len(h.transport.sent)
    names.asked[0](shown(answered_by="redis"))  # too late: nothing happens
    assert len(h.transport.sent) == before


def test_a_cancel_while_waiting_ends_the_call_and_nothing_is_forwarded(h: Harness) -> None:
    register(h, "201", PHONE_201)
    names = Names(Wait(0.05))
    h.proxy.caller_names = names
    invite = invite_from_trunk_text("cancelled")
    h.feed(invite)
    cancel = invite.replace("INVITE sip:", "CANCEL sip:", 1).replace(
        "CSeq: 1 INVITE", "CSeq: 1 CANCEL"
    )
    cancel = cancel.replace("Content-Type: application/sdp\r\n", "").replace(
        "Content-Length: 5\r\n\r\nv=0\r\n", "Content-Length: 0\r\n\r\n"
    )
    assert sorted(statuses(h.feed(cancel))) == [200, 487]
    names.asked[0](shown())
    assert not [s for s in h.advance(1) if isinstance(s.msg, Request) and s.msg.method == "INVITE"]
    assert [msg.method if isinstance(msg, Request) else msg.status for msg, _ in h.observed][
        :1
    ] == ["INVITE"]


def test_the_hook_sees_the_inbound_call(h: Harness) -> None:
    register(h, "201", PHONE_201)
    names = Names(shown())
    h.proxy.caller_names = names
    asked: list[object] = []
    names.now = lambda ctx: asked.append(ctx) or shown()  # type: ignore[method-assign]
    invite_from_trunk(h)
    assert len(asked) == 1 and isinstance(asked[0], ServerContext)
    assert asked[0].direction == "inbound"


# --- the event and privacy -----------------------------------------------------------------


def test_the_event_part_round_trips_and_unlinking_its_source_removes_it() -> None:
    part = CallerDisplay("Ann", "cache", ("From", "P-Asserted-Identity"), "crm")
    event = full_event(
        type="call.offered", state="offered", prev_state="idle", caller_display=part
    )
    stored = event.to_dict()
    assert stored["caller_display"] == {
        "name": "Ann", "answered_by": "cache", "source": "crm",
        "headers": ["From", "P-Asserted-Identity"],
    }  # fmt: skip
    assert CallEvent.from_dict(stored).caller_display == part
    assert_valid(event)  # the published schema, both wire formats
    redacted = without_source(stored, "crm")
    assert redacted is not None and "caller_display" not in redacted
    assert without_source(stored, "other-source") is None


# --- configuration -------------------------------------------------------------------------


def _config(table: str) -> str:
    return CONFIG.replace(
        "[[tenants.dids]]", f"[tenants.caller_display]\n{table}\n\n[[tenants.dids]]", 1
    )


def test_the_tenant_policy_is_read_and_checked(tmp_path: Path) -> None:
    settings = settings_from(
        _config('enabled = true\nheaders = ["p-asserted-identity", "From"]\nwait_ms = 5'),
        tmp_path,
    )
    policy = settings.tenants[0].caller_display
    assert policy.enabled and policy.wait_ms == 5 and policy.field == "name"
    assert policy.headers == ("From", "P-Asserted-Identity")
    assert not settings_from(CONFIG, tmp_path).tenants[0].caller_display.enabled  # default off


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ('field = "email"', "tenants[0].caller_display.field"),
        ('headers = ["Contact"]', "tenants[0].caller_display.headers[0]"),
        ("wait_ms = 5000", "tenants[0].caller_display.wait_ms"),
        ("enabled = true\nheaders = []", "tenants[0].caller_display.headers"),
        ("shown = true", "tenants[0].caller_display.shown"),
    ],
)
def test_a_bad_policy_names_its_key(tmp_path: Path, table: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings_from(_config(table), tmp_path)
    assert err.value.key == key
