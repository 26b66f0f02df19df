"""OPTIONS to the gateway answered from a template (proxy/options.py) must say exactly
what the full path says, and anything unusual must take the full path."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.sip.message import Response
from gateway.transport.addresses import Source

from .proxy_harness import CONFIG, Harness, settings_from

PROBE = ("127.0.0.1", 7000)


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(settings_from(CONFIG, tmp_path))


def options(
    ruri: str = "sip:ping@127.0.0.1:5060",
    via: str = "SIP/2.0/UDP 127.0.0.1:7000;branch=z9hG4bK-1;rport",
    extra: str = "",
    to: str = "<sip:ping@127.0.0.1:5060>",
) -> bytes:
    return (
        f"OPTIONS {ruri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n"
        f"From: <sip:probe@example.net>;tag=p1\r\nTo: {to}\r\nCall-ID: abc-1@probe\r\n"
        f"CSeq: 7 OPTIONS\r\nContact: <sip:probe@127.0.0.1:7000>\r\n{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def answer(h: Harness, data: bytes, *, quick: bool, src: tuple[str, int] = PROBE) -> Response:
    proxy = h.proxy
    if not quick:
        proxy._quick_options = lambda data, source: False  # type: ignore[method-assign]
    sent = h.feed(data, src)
    assert len(sent) == 1
    msg = sent[0].msg
    assert isinstance(msg, Response)
    return msg


def comparable(resp: Response) -> list[tuple[str, str]]:
    """Every header but the To tag (random) and Server (only the full path sends it to
    trusted peers), in order."""
    lines = []
    for name, value in resp.headers:
        if name == "To":
            value = value.split(";tag=")[0]
        if name != "Server":
            lines.append((name, value))
    return lines


@pytest.mark.parametrize(
    ("ruri", "via", "src"),
    [
        ("sip:ping@127.0.0.1:5060", "SIP/2.0/UDP 127.0.0.1:7000;branch=z9hG4bK-1;rport", PROBE),
        ("sip:127.0.0.1:5060", "SIP/2.0/UDP 127.0.0.1:7000;branch=z9hG4bK-1", PROBE),
        # NAT: the sent-by is not where it came from, so received and rport are stamped.
        ("sip:127.0.0.1", "SIP/2.0/UDP 10.1.2.3:5060;branch=z9hG4bK-9;rport", PROBE),
        ("sip:ping@127.0.0.1:5060", "SIP/2.0/UDP 10.1.2.3;rport;branch=z9hG4bK-2", PROBE),
    ],
)
def test_the_template_says_what_the_full_path_says(
    tmp_path: Path, ruri: str, via: str, src: tuple[str, int]
) -> None:
    data = options(ruri, via)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    quick = answer(Harness(settings_from(CONFIG, tmp_path / "a")), data, quick=True, src=src)
    full = answer(Harness(settings_from(CONFIG, tmp_path / "b")), data, quick=False, src=src)
    assert (quick.status, quick.reason) == (full.status, full.reason) == (200, "OK")
    assert comparable(quick) == comparable(full)
    assert quick.to.tag and len(quick.to.tag) == len(full.to.tag or "")


@pytest.mark.parametrize(
    "data",
    [
        options(extra="Require: foo\r\n"),  # 420 is the full path's business
        options(extra="Route: <sip:127.0.0.1:5060;lr>\r\n"),
        options(to="<sip:ping@127.0.0.1:5060>;tag=dialog"),  # in a dialog
        options(via="SIP/2.0/TCP 127.0.0.1:7000;branch=z9hG4bK-1"),
        options(via="SIP/2.0/UDP 127.0.0.1:7000;branch=old-style"),
        options(via="SIP/2.0/UDP 127.0.0.1:7000;branch=z9hG4bK-1, SIP/2.0/UDP 10.0.0.1"),
        options(ruri="sip:201@127.0.0.1"),  # a user of ours: proxied to the phone
        options(ruri="sip:ping@elsewhere.example"),
        options().replace(b"Call-ID: abc-1@probe", b"i: abc-1@probe"),  # compact form
        options().replace(b"CSeq: 7 OPTIONS", b"CSeq: 7 INVITE"),
        options().replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\n continued\r\n"),
        options().replace(b"Content-Length: 0\r\n\r\n", b"Content-Length: 2\r\n\r\nhi"),
        options().replace(b"To: <", b"To:  <"),  # more than one space after the colon
        options().replace(b"To: <", b"To:<"),
        options().replace(b"To: <", b"To : <"),
    ],
)
def test_anything_unusual_takes_the_full_path(h: Harness, data: bytes) -> None:
    src = Source("udp", PROBE, ("127.0.0.1", 5060), None)
    assert h.proxy._quick_options(data, src) is False


def test_draining_is_answered_by_the_full_path(h: Harness) -> None:
    h.proxy.start_draining()
    assert answer(h, options(), quick=True).status == 503


def test_a_small_probe_from_an_unknown_source_gets_no_larger_answer(h: Harness) -> None:
    tiny = (
        b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:7000;branch=z9hG4bKa\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n"
    )
    assert h.feed(tiny, PROBE) == []  # neither path amplifies
    assert h.counters.security["reply_too_large"] == 1


def test_counted_like_the_full_path(h: Harness) -> None:
    answer(h, options(), quick=True)
    assert h.counters.requests["in", "udp", "OPTIONS"] == 1
    assert h.counters.responses["out", "udp", "2xx"] == 1
    assert h.counters.local_replies["2xx"] == 1
