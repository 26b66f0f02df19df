"""RFC 4475 torture tests, read byte-exact from tests/conformance/rfc4475 (checked
against its SHA256SUMS first; missing or altered vectors fail, never skip).

One case per MANIFEST.tsv row. Every file has an exact expectation below: either the
message is accepted and the facts the RFC discusses are checked, or it is rejected at
a named stage (parse_message / validate) with an exact status and reason. Where the
manifest names a status, the expectation must agree with it.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from gateway.sip.errors import SIPParseError
from gateway.sip.framing import StreamFramer
from gateway.sip.headers import CSeq, NameAddr
from gateway.sip.message import Message, Request, Response, parse_message
from gateway.sip.uri import AbsoluteURI, SipURI
from tests import conformance
from tests.conformance import RFC4475, rfc4475_bytes, rfc4475_manifest


@dataclass(frozen=True)
class Row:
    file: str
    section: str
    title: str
    klass: str
    expected: str


def load_rows() -> list[Row]:
    return [
        Row(r["file"], r["rfc_section"], r["title"], r["class"], r["expected"])
        for r in rfc4475_manifest()
    ]


# Read at collection: missing or altered vectors are a collection error (a failure).
ROWS = [pytest.param(row, id=row.file.removesuffix(".dat")) for row in load_rows()]


def read(file: str) -> bytes:
    return rfc4475_bytes(file)


def body_of(data: bytes) -> bytes:
    return data[data.index(b"\r\n\r\n") + 4 :]


def sip(uri: object) -> SipURI:
    assert isinstance(uri, SipURI)
    return uri


def absolute(uri: object) -> AbsoluteURI:
    assert isinstance(uri, AbsoluteURI)
    return uri


def contact_list(message: Message) -> list[NameAddr]:
    contacts = message.contacts
    assert contacts != "*"
    return contacts


def req(message: Message) -> Request:
    assert isinstance(message, Request)
    return message


def resp(message: Message) -> Response:
    assert isinstance(message, Response)
    return message


# --- accepted messages: the facts each test message is about --------------------------


def check_wsinv(m: Message, data: bytes) -> None:
    r = req(m)
    assert r.method == "INVITE"
    assert sip(r.uri).params == {"unknownparam": None}
    assert sip(r.to.uri).host == "chair-dnrc.example.com"
    assert r.to.tag == "1918181833n"
    assert r.from_.display == 'J Rosenberg \\"'
    assert r.from_.tag == "98asjd8"
    assert r.max_forwards == 68  # "0068": leading zeros
    assert r.cseq == CSeq(9, "INVITE")
    assert r.call_id == "wsinv.ndaksdj@192.0.2.1"
    assert [(v.transport, v.host, v.branch) for v in r.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert r.get("Subject") == ""  # "s :" with an empty value
    # A proxy forwards unknown headers unchanged (after unfolding).
    assert r.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert r.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    (route,) = r.routes
    assert sip(route.uri).params == {"lr": None, "unknownwith": "value", "unknown-no-value": None}
    (contact,) = contact_list(r)
    assert contact.display == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert r.content_type == "application/sdp"
    assert r.content_length == len(r.body) == 150


def check_intmeth(m: Message, data: bytes) -> None:
    r = req(m)
    method = "!interesting-Method0123456789_*+`.%indeed'~"
    assert r.method == method
    assert r.cseq == CSeq(139122385, method)
    uri = sip(r.uri)
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert uri.host == "example.com"
    assert r.top_via.branch == "z9hG4bK-.!%66*_+`'~"
    assert r.to.display == "BEL:\x07 NUL:\x00 DEL:\x7f"  # quoted-pairs undone
    assert sip(r.to.uri).user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert r.from_.display == "token1~` token2'+_ token3*%!.-"
    russian = b'"\xd1\x80\xd0\xb0\xd0\xb1\xd0\xbe\xd1\x82\xd0\xb0\xd1\x8e\xd1\x89\xd0\xb8\xd0\xb9"'
    assert r.from_.params == {
        "fromparam''~+*_!.-%": russian.decode("utf-8"),
        "tag": "_token~1'+`*%!-.",
    }
    assert r.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert r.max_forwards == 255
    assert r.get("extensionHeader-!.%*+_`'~") == "\ufeff\u5927\u505c\u96fb"


def check_esc01(m: Message, data: bytes) -> None:
    r = req(m)
    uri = sip(r.uri)
    assert (uri.user, uri.host) == ("sips:user@example.com", "example.net")
    assert sip(r.to.uri).user == "user"
    assert sip(r.from_.uri).user == "I have spaces"
    (contact,) = contact_list(r)
    curi = sip(contact.uri)
    assert curi.user == "caller"
    assert curi.params == {"lr": None, "name": "value%41"}  # unescaped exactly once
    assert r.content_type == "application/sdp"  # compact "C"
    assert len(r.body) == 150


def check_escnull(m: Message, data: bytes) -> None:
    r = req(m)
    assert sip(r.to.uri).user == "null-\x00-null"
    assert sip(r.from_.uri).user == "null-\x00-null"
    first, second = contact_list(r)
    assert sip(first.uri).user == "\x00"
    assert sip(second.uri).user == "\x00\x00"
    assert not first.uri.equivalent(second.uri)  # two distinct bindings
    assert r.content_length == 0  # "L:0"


def check_esc02(m: Message, data: bytes) -> None:
    r = req(m)
    assert r.method == "RE%47IST%45R"  # an unknown method, not REGISTER
    assert r.cseq.method == "RE%47IST%45R"
    assert r.to.display == "%Z%45"
    assert r.top_via.branch == "z9hG4bK209%fzsnel234"
    assert r.top_via.transport == "TCP"
    hosts = [sip(c.uri).host for c in contact_list(r)]
    assert hosts == ["host1.example.com", "host3.example.com"]  # C%6Fntact is not Contact
    assert r.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def check_lwsdisp(m: Message, data: bytes) -> None:
    assert req(m).from_.display == "caller"
    assert req(m).from_.tag == "323"


def check_longreq(m: Message, data: bytes) -> None:
    r = req(m)
    extreme = "extreme" * 10
    assert r.to.display == f"I have a user name of {extreme} proportion"
    to_uri = sip(r.to.uri)
    assert to_uri.port == 6000
    assert to_uri.params == {
        "unknownparam1": "very" + "long" * 20 + "value",
        "longparam" + "name" * 25: "shortvalue",
        "very" + "long" * 25 + "parameternamewithnovalue": None,
    }
    caller = "amazinglylongcallername" * 5
    assert sip(r.from_.uri).user == caller
    assert r.from_.tag == "12" + "982" * 50 + "424"
    assert r.from_.params["unknownheaderparamname" + "name" * 19] == (
        "unknowheaderparamvalue" + "value" * 14
    )
    assert r.from_.params["unknownvaluelessparamname" + "paramname" * 9] is None
    assert r.call_id == "longreq.one" + "really" * 20 + "longcallid"
    vias = r.vias
    assert len(vias) == 34
    assert [v.host for v in vias[:33]] == [f"sip{n}.example.com" for n in range(33, 0, -1)]
    assert vias[-1].received == "192.0.2.5"
    assert vias[-1].branch == "very" + "long" * 50 + "branchvalue"
    long = "long" * 20
    assert r.get(f"Unknown-{'Long' * 20}-Name") == (
        f"unknown-{long}-value; unknown-{long}-parameter-name = unknown-{long}-parameter-value"
    )
    assert sip(contact_list(r)[0].uri).user == caller
    assert r.max_forwards == 70
    assert r.content_length == len(r.body) == 150


def check_dblreq(m: Message, data: bytes) -> None:
    r = req(m)
    assert r.method == "REGISTER"
    assert r.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"  # compact "I"
    assert r.body == b""
    head_end = data.index(b"\r\n\r\n") + 4
    # The trailing INVITE-like octets are not part of the message, nor forwarded.
    assert r.to_bytes() == data[:head_end]
    assert len(data) - head_end == 450


def check_semiuri(m: Message, data: bytes) -> None:
    r = req(m)
    uri = sip(r.uri)
    assert (uri.user, uri.host, uri.params) == ("user;par=u@example.net", "example.com", {})
    assert r.values("Accept") == [
        "application/sdp",
        "application/pkcs7-mime",
        "multipart/mixed",
        "multipart/signed",
        "message/sip",
        "message/sipfrag",
    ]


def check_transports(m: Message, data: bytes) -> None:
    r = req(m)
    assert [v.transport for v in r.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    assert r.call_id == "transports.kijh4akdnaqjkwendsasfdj"


def check_mpart01(m: Message, data: bytes) -> None:
    r = req(m)
    assert r.content_length == len(r.body) == 553
    assert r.body == body_of(data)
    assert b"\x00" in r.body
    assert r.body.endswith(b"--7a9cbec02ceef655--\r\n")
    assert (r.content_type or "").startswith("multipart/mixed;boundary=7a9cbec02ceef655")
    assert r.top_via.rport == ""


def check_unreason(m: Message, data: bytes) -> None:
    r = resp(m)
    assert r.status == 200
    phrase = data.split(b"\r\n", 1)[0].split(b" ", 2)[2].decode("utf-8")
    assert phrase.startswith("= 2**3 * 5**2 ")
    assert r.reason == phrase
    assert len(r.body) == 154


def check_noreason(m: Message, data: bytes) -> None:
    assert (resp(m).status, resp(m).reason) == (100, "")


def check_baddate(m: Message, data: bytes) -> None:
    # Date does not matter to a proxy; it is kept verbatim and forwarded as is.
    assert req(m).get("Date") == "Fri, 01 Jan 2010 16:00:00 EST"


def check_badbranch(m: Message, data: bytes) -> None:
    # Parsed: whether a bare "z9hG4bK" is RFC 3261 matching is the transaction layer's call.
    assert req(m).top_via.branch == "z9hG4bK"


def check_unkscm(m: Message, data: bytes) -> None:
    uri = absolute(req(m).uri)
    assert (uri.scheme, uri.raw) == (
        "nobodyknowsthisscheme",
        "nobodyKnowsThisScheme:totallyopaquecontent",
    )
    assert sip(req(m).to.uri).user == "user"  # present, but never used for routing


def check_novelsc(m: Message, data: bytes) -> None:
    uri = absolute(req(m).uri)
    assert (uri.scheme, uri.raw) == ("soap.beep", "soap.beep://192.0.2.103:3002")


def check_unksm2(m: Message, data: bytes) -> None:
    r = req(m)
    assert absolute(r.to.uri).raw == "isbn:2983792873"
    assert absolute(r.from_.uri).scheme == "http"
    assert r.from_.tag == "3234233"
    (contact,) = contact_list(r)
    assert (absolute(contact.uri).scheme, absolute(contact.uri).raw) == ("name", "name:John_Smith")


def check_bext01(m: Message, data: bytes) -> None:
    r = req(m)
    assert r.require == ["nothingSupportsThis", "nothingSupportsThisEither"]
    assert r.proxy_require == ["noProxiesSupportThis", "norDoAnyProxiesSupportThis"]
    assert r.top_via.transport == "TLS"


def check_invut(m: Message, data: bytes) -> None:
    r = req(m)
    assert r.content_type == "application/unknownformat"
    assert r.body == b'<audio>\r\n <pcmu port="443"/>\r\n</audio>\r\n'


def check_regaut01(m: Message, data: bytes) -> None:
    r = req(m)
    assert r.get("Authorization") == "NoOneKnowsThisScheme opaque-data=here"
    assert r.content_length == 0  # "Content-Length:0", no space


def check_bcast(m: Message, data: bytes) -> None:
    r = resp(m)
    assert r.status == 200
    assert [v.host for v in r.vias] == ["192.0.2.198", "255.255.255.255"]


def check_zeromf(m: Message, data: bytes) -> None:
    assert req(m).max_forwards == 0


def check_cparam01(m: Message, data: bytes) -> None:
    (contact,) = contact_list(m)
    assert contact.params == {"unknownparam": None}  # a header parameter...
    assert sip(contact.uri).params == {}  # ...never a URI parameter of the binding
    assert str(contact.uri) == "sip:+19725552222@gw1.example.net"


def check_cparam02(m: Message, data: bytes) -> None:
    (contact,) = contact_list(m)
    assert contact.params == {}
    assert sip(contact.uri).params == {"unknownparam": None}
    assert str(contact.uri) == "sip:+19725552222@gw1.example.net;unknownparam"


def check_regescrt(m: Message, data: bytes) -> None:
    (contact,) = contact_list(m)
    uri = sip(contact.uri)
    assert uri.headers == {"Route": "<sip:sip.example.com>"}
    assert str(uri) == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"  # kept, escaped
    assert m.get("Contact") == "<sip:user@example.com?Route=%3Csip:sip.example.com%3E>"
    assert "Route" not in m


def check_sdp01(m: Message, data: bytes) -> None:
    assert m.get("Accept") == "text/nobodyKnowsThis"
    assert m.content_type == "application/sdp"


def check_inv2543(m: Message, data: bytes) -> None:
    r = req(m)
    assert r.content_length is None
    assert r.body == body_of(data)  # to the end of the datagram
    assert r.top_via.branch is None
    assert r.from_.tag is None
    assert r.max_forwards is None
    # addr-spec form: ";user=phone" is a To *header* parameter (RFC 3261 §20.10), which
    # is how RFC 3261 reads this RFC 2543 message.
    assert sip(r.to.uri).params == {}
    assert r.to.params == {"user": "phone"}
    assert sip(r.from_.uri).params == {"user": "phone"}
    assert sip(r.record_routes[0].uri).maddr == "ss1.example.com"


# --- rejected messages -------------------------------------------------------------------


@dataclass(frozen=True)
class Rejected:
    stage: Literal["parse", "validate"]
    status: int
    reason: str
    extra: Callable[[bytes], None] | None = None


@dataclass(frozen=True)
class Accepted:
    check: Callable[[Message, bytes], None]


def _badinv01_contact_too(data: bytes) -> None:
    with pytest.raises(SIPParseError, match=r"^Bad Contact header: empty parameter$"):
        _ = parse_message(data).contacts


def _scalar02_max_forwards_too(data: bytes) -> None:
    with pytest.raises(SIPParseError, match=r"^Bad Max-Forwards header: value out of range$"):
        _ = parse_message(data).max_forwards


def _baddn_to_too(data: bytes) -> None:
    with pytest.raises(
        SIPParseError, match=r"^Bad To header: display name must be tokens or quoted$"
    ):
        _ = parse_message(data).to


def _multi01_counts(data: bytes) -> None:
    m = parse_message(data)
    assert [len(m.get_all(n)) for n in ("Call-ID", "To", "From", "CSeq", "Max-Forwards")] == [2] * 5


def _stream_waits(data: bytes) -> None:
    framer = StreamFramer()
    assert framer.feed(data) == []  # over a stream: wait for the rest (clerr)
    assert framer.error is None


def _stream_fails(data: bytes) -> None:
    with pytest.raises(SIPParseError):
        StreamFramer().feed(data)  # over a stream: close the connection


EXPECTATIONS: dict[str, Accepted | Rejected] = {
    # 3.1.1 valid
    "wsinv.dat": Accepted(check_wsinv),
    "intmeth.dat": Accepted(check_intmeth),
    "esc01.dat": Accepted(check_esc01),
    "escnull.dat": Accepted(check_escnull),
    "esc02.dat": Accepted(check_esc02),
    "lwsdisp.dat": Accepted(check_lwsdisp),
    "longreq.dat": Accepted(check_longreq),
    "dblreq.dat": Accepted(check_dblreq),
    "semiuri.dat": Accepted(check_semiuri),
    "transports.dat": Accepted(check_transports),
    "mpart01.dat": Accepted(check_mpart01),
    "unreason.dat": Accepted(check_unreason),
    "noreason.dat": Accepted(check_noreason),
    # 3.1.2 invalid
    "badinv01.dat": Rejected(
        "validate", 400, "Bad Via header: empty parameter", _badinv01_contact_too
    ),
    "clerr.dat": Rejected(
        "parse", 400, "Bad Content-Length header: larger than the message body", _stream_waits
    ),
    "ncl.dat": Rejected("parse", 400, "Bad Content-Length header: negative value", _stream_fails),
    "scalar02.dat": Rejected(
        "validate", 400, "Bad CSeq header: value out of range", _scalar02_max_forwards_too
    ),
    "scalarlg.dat": Rejected("validate", 0, "Bad CSeq header: value out of range"),
    "quotbal.dat": Rejected("validate", 400, "Bad To header: unterminated quoted string"),
    "ltgtruri.dat": Rejected("parse", 400, "Bad Request-Line: Request-URI enclosed in <>"),
    "lwsruri.dat": Rejected("parse", 400, "Bad Request-Line: whitespace in Request-URI"),
    "lwsstart.dat": Rejected("parse", 400, "Bad Request-Line: extra whitespace"),
    "trws.dat": Rejected("parse", 400, "Bad Request-Line: extra whitespace"),
    "escruri.dat": Rejected("validate", 400, "Bad Request-URI: headers not allowed"),
    "baddate.dat": Accepted(check_baddate),  # "may reject ... but should not"
    "regbadct.dat": Rejected(
        "validate", 400, "Bad Contact header: URI with '?' or ',' must be enclosed in <>"
    ),
    "badaspec.dat": Rejected("validate", 400, "Bad To header: URI contains whitespace"),
    "baddn.dat": Rejected(
        "validate", 400, "Bad From header: display name must be tokens or quoted", _baddn_to_too
    ),
    "badvers.dat": Rejected("parse", 505, "SIP version not supported"),
    "mismatch01.dat": Rejected("validate", 400, "CSeq method does not match the request method"),
    "mismatch02.dat": Rejected("validate", 501, "CSeq method does not match the request method"),
    "bigcode.dat": Rejected("parse", 0, "Bad Status-Line: invalid status code"),
    # 3.2 / 3.3 semantic and application layer
    "badbranch.dat": Accepted(check_badbranch),
    "insuf.dat": Rejected("validate", 400, "Missing To, From, Call-ID headers"),
    "unkscm.dat": Accepted(check_unkscm),
    "novelsc.dat": Accepted(check_novelsc),
    "unksm2.dat": Accepted(check_unksm2),
    "bext01.dat": Accepted(check_bext01),
    "invut.dat": Accepted(check_invut),
    "regaut01.dat": Accepted(check_regaut01),
    "multi01.dat": Rejected("validate", 400, "Multiple Call-ID headers", _multi01_counts),
    "mcl01.dat": Rejected(
        "parse", 400, "Bad Content-Length header: conflicting values", _stream_fails
    ),
    "bcast.dat": Accepted(check_bcast),
    "zeromf.dat": Accepted(check_zeromf),
    "cparam01.dat": Accepted(check_cparam01),
    "cparam02.dat": Accepted(check_cparam02),
    "regescrt.dat": Accepted(check_regescrt),
    "sdp01.dat": Accepted(check_sdp01),
    # 3.4 backward compatibility
    "inv2543.dat": Accepted(check_inv2543),
}

# Rows of class "invalid" that the manifest itself says should be accepted by a proxy.
ACCEPTED_INVALID = {"baddate.dat"}


def manifest_status(expected: str) -> int | None:
    """The status a manifest row names for a rejection (0 for discard/drop), if any."""
    if re.search(r"\b(discard|drop) the response\b", expected):
        return 0
    match = re.search(r"\b([45][0-9][0-9])\b", expected)
    return int(match.group(1)) if match else None


def assert_round_trips(message: Message) -> None:
    """parse → to_bytes → parse is the identity; an edited copy re-parses as edited."""
    again = parse_message(message.to_bytes())
    assert (again.start_line, again.headers, again.body) == (
        message.start_line,
        message.headers,
        message.body,
    )
    edited = message.copy()
    edited.prepend("Via", "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKrt")
    reparsed = parse_message(edited.to_bytes())
    reparsed.validate()
    assert reparsed.top_via.host == "proxy.example.com"
    assert reparsed.headers == edited.headers
    assert [
        h for h in reparsed.headers if h[1] != "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKrt"
    ] == (message.headers)
    assert reparsed.body == message.body


@pytest.mark.parametrize("row", ROWS)
def test_rfc4475(row: Row) -> None:
    assert row.file in EXPECTATIONS, f"no exact expectation written for {row.file}"
    expectation = EXPECTATIONS[row.file]
    data = read(row.file)

    if isinstance(expectation, Accepted):
        if row.klass == "invalid":
            assert row.file in ACCEPTED_INVALID
            assert "should not" in row.expected
        message = parse_message(data)
        message.validate()
        expectation.check(message, data)
        assert_round_trips(message)
        return

    assert row.klass in ("invalid", "semantic-error/app-layer"), row.klass
    named = manifest_status(row.expected)
    if named is not None:
        assert expectation.status == named, f"manifest says {named}: {row.expected}"
    if expectation.stage == "parse":
        with pytest.raises(SIPParseError) as info:
            parse_message(data)
    else:
        message = parse_message(data)
        with pytest.raises(SIPParseError) as info:
            message.validate()
    assert (info.value.status, str(info.value)) == (expectation.status, expectation.reason)
    if expectation.extra is not None:
        expectation.extra(data)


def test_every_manifest_row_has_an_expectation() -> None:
    rows = load_rows()
    assert len(rows) == 49
    assert {row.file for row in rows} == set(EXPECTATIONS)


@pytest.mark.parametrize("row", ROWS)
def test_stream_framing_agrees_with_datagram_parsing(row: Row) -> None:
    """Fed to a StreamFramer, each file frames to the same message or fails cleanly."""
    data = read(row.file)
    framer = StreamFramer()
    try:
        framed = framer.feed(data)
    except SIPParseError:
        return
    try:
        message = parse_message(data)
    except SIPParseError:
        return
    if message.content_length is not None and framed:
        assert framed[0] == message.to_bytes()
        assert parse_message(framed[0], stream=True).headers == message.headers


def test_vectors_are_in_the_repository_and_match_their_checksums() -> None:
    """The corpus is part of every checkout (no folder beside it needed), byte-exact."""
    rows = rfc4475_manifest()
    assert len(rows) == 49
    assert RFC4475.is_relative_to(Path(__file__).resolve().parents[1])


def test_missing_or_altered_vectors_fail_never_skip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "rfc4475"
    shutil.copytree(RFC4475, copy)
    monkeypatch.setattr(conformance, "RFC4475", copy)
    conformance.rfc4475_manifest.cache_clear()
    try:
        (copy / "trws.dat").write_bytes((copy / "trws.dat").read_bytes().replace(b"\r\n", b"\n"))
        with pytest.raises(conformance.MissingVectors, match=r"trws\.dat"):
            conformance.rfc4475_manifest()
        (copy / "trws.dat").unlink()
        with pytest.raises(conformance.MissingVectors, match="missing"):
            conformance.rfc4475_manifest()
    finally:
        conformance.rfc4475_manifest.cache_clear()
