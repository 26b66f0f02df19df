"""Property tests: whatever the bytes, the parser answers with a message or SIPParseError.

Inputs are random bytes and mutations (byte flips, truncations, deletions and
insertions of the octets that matter to a SIP parser) of valid messages: three typical
ones written here plus the valid RFC 4475 messages. Every cached view of a parsed
message is exercised; a parsed message must survive to_bytes → parse, also after an
edit. The stream framer must cut the same messages whatever the chunking.
"""

from __future__ import annotations

from itertools import pairwise

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.sip.errors import SIPParseError
from gateway.sip.framing import StreamFramer
from gateway.sip.message import Limits, Message, Request, parse_message
from tests.conformance import rfc4475_bytes, rfc4475_manifest

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Re-parsing after an edit adds a line and a few octets: do not let the limits bite.
ROOMY = Limits(max_message=1 << 20, max_headers=10_000, max_header_line=1 << 20)


def crlf(*lines: str, body: bytes = b"") -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


SDP = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\n"
    b"t=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
)

TYPICAL = [
    crlf(
        "INVITE sip:+31201234567@gw.example.com;user=phone SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport",
        "Via: SIP/2.0/TCP [2001:db8::1]:5070;branch=z9hG4bK2;received=192.0.2.1",
        "Max-Forwards: 70",
        'To: "Sales, Desk" <sip:+31201234567@gw.example.com>',
        'From: "Alice \\"A\\"" <sip:alice@trunk.example.net>;tag=1928301774',
        "Call-ID: a84b4c76e66710@pc33.example.net",
        "CSeq: 314159 INVITE",
        'Contact: <sip:alice@192.0.2.10:5060;transport=udp>;+sip.instance="<urn:uuid:1>"',
        "Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>",
        "Record-Route: <sip:rr.example.com;lr>",
        "Supported: replaces, timer",
        "Require: 100rel",
        "Content-Type: application/sdp",
        f"Content-Length: {len(SDP)}",
        body=SDP,
    ),
    crlf(
        "REGISTER sip:example.com SIP/2.0",
        "v: SIP/2.0/TCP phone.example.com:5060;branch=z9hG4bKreg",
        "Max-Forwards: 70",
        "t: <sip:201@example.com>",
        "f: <sip:201@example.com>;tag=r1",
        "i: reg-1@phone",
        "CSeq: 2 REGISTER",
        "m: <sip:201@192.0.2.30:5060;ob>;expires=3600;q=0.5, sip:201@192.0.2.31",
        'Authorization: Digest username="201", realm="example.com", nonce="abc"',
        "l: 0",
    ),
    crlf(
        "SIP/2.0 200 OK",
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;received=192.0.2.99;rport=5060",
        "To: <sip:bob@example.com>;tag=a6c85cf",
        "From: <sip:alice@example.com>;tag=1928301774",
        "Call-ID: a84b4c76e66710",
        "CSeq: 1 INVITE",
        "Contact: <sip:bob@192.0.2.4>",
        "Content-Length: 0",
    ),
]


def corpus_messages() -> list[bytes]:
    """The RFC 4475 messages a parser must accept (tests/conformance: never silently none)."""
    return [
        rfc4475_bytes(row["file"])
        for row in rfc4475_manifest()
        if row["class"] in ("valid", "backward-compat")
    ]


BASES = TYPICAL + corpus_messages()
# Messages a stream can carry (Content-Length present), and keep-alives between them.
STREAM_PIECES = [data for data in BASES if parse_message(data).content_length is not None]
STREAM_PIECES += [b"\r\n", b"\r\n\r\n"]

SPECIAL = [
    b"\r",
    b"\n",
    b"\r\n",
    b"\r\n ",
    b"\x00",
    b'"',
    b"<",
    b">",
    b"%",
    b";",
    b",",
    b":",
    b" ",
    b"\\",
    b"@",
    b"\xff",
    b"\xc3",
    b"-",
    b"9",
]

VIEWS = [
    "call_id",
    "cseq",
    "vias",
    "top_via",
    "from_",
    "to",
    "max_forwards",
    "contacts",
    "routes",
    "record_routes",
    "content_length",
    "content_type",
    "require",
    "proxy_require",
    "supported",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 4))):
        operation = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "replace"]))
        position = draw(st.integers(0, len(data)))
        if operation == "flip" and position < len(data):
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif operation == "insert":
            data[position:position] = draw(st.sampled_from(SPECIAL))
        elif operation == "delete":
            del data[position : position + draw(st.integers(1, 8))]
        elif operation == "truncate":
            del data[position:]
        elif position < len(data):
            data[position] = draw(st.sampled_from(SPECIAL))[0]
    return bytes(data)


def assert_clean(err: SIPParseError) -> None:
    text = str(err)
    assert text and text.isascii() and text.isprintable() and len(text) <= 120
    assert err.status == 0 or 400 <= err.status <= 699


def structure(message: Message) -> tuple[str, list[tuple[str, str]], bytes]:
    return message.start_line, message.headers, message.body


def exercise(data: bytes, *, stream: bool = False) -> None:
    """parse → validate → every view; only SIPParseError may come out."""
    try:
        message = parse_message(data, stream=stream)
    except SIPParseError as err:
        assert_clean(err)
        return
    try:
        message.validate()
    except SIPParseError as err:
        assert_clean(err)
    views = [*VIEWS, "uri"] if isinstance(message, Request) else VIEWS
    for name in views:
        try:
            getattr(message, name)
        except SIPParseError as err:
            assert_clean(err)
    for name in ("Via", "Contact", "Accept", "X-Nothing"):
        try:
            message.values(name)
        except SIPParseError as err:
            assert_clean(err)

    # Serialization: unchanged bytes re-parse to the same structure...
    again = parse_message(message.to_bytes(), ROOMY, stream=stream)
    assert structure(again) == structure(message)
    # ...and so does an edited copy, with the original untouched.
    edited = message.copy()
    edited.prepend("Via", "SIP/2.0/UDP fuzz.example.com;branch=z9hG4bKfuzz")
    edited.set("X-Fuzz", "1")
    reparsed = parse_message(edited.to_bytes(), ROOMY, stream=stream)
    assert structure(reparsed) == structure(edited)
    assert reparsed.top_via.host == "fuzz.example.com"
    assert message.to_bytes() == again.to_bytes()


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes(data: bytes) -> None:
    exercise(data)


@FUZZ
@given(
    st.sampled_from([b"INVITE sip:a@example.com SIP/2.0\r\n", b"SIP/2.0 200 OK\r\n"]),
    st.binary(max_size=1000),
)
def test_random_bytes_after_a_start_line(start: bytes, rest: bytes) -> None:
    exercise(start + rest)
    exercise(start + rest.replace(b"\n", b"\r\n"))


@FUZZ
@given(mutated())
def test_mutated_messages(data: bytes) -> None:
    exercise(data)
    exercise(data, stream=True)


def frame(chunks: list[bytes]) -> tuple[list[bytes], int | None, int]:
    """(messages, error status or None, pings) of a framer fed these chunks."""
    framer = StreamFramer()
    messages: list[bytes] = []
    try:
        for chunk in chunks:
            messages += framer.feed(chunk)
        framer.feed(b"")  # surfaces an error deferred behind complete messages
    except SIPParseError as err:
        assert_clean(err)
        return messages, err.status, framer.total_pings
    return messages, None, framer.total_pings


@st.composite
def stream_and_cuts(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    pieces = draw(st.lists(st.sampled_from(STREAM_PIECES), min_size=1, max_size=5))
    data = b"".join(pieces)
    if draw(st.booleans()):
        position = draw(st.integers(0, len(data)))
        data = data[:position] + draw(st.sampled_from(SPECIAL)) + data[position:]
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    return data, cuts


@FUZZ
@given(stream_and_cuts())
def test_stream_chunking_does_not_change_framing(case: tuple[bytes, list[int]]) -> None:
    data, cuts = case
    bounds = [0, *cuts, len(data)]
    chunks = [data[a:b] for a, b in pairwise(bounds)]
    whole = frame([data])
    assert frame(chunks) == whole
    assert frame([bytes([octet]) for octet in data]) == whole
    for message in whole[0]:
        exercise(message, stream=True)


@FUZZ
@given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=8))
def test_stream_random_bytes(data: bytes, cuts: list[int]) -> None:
    bounds = [0, *sorted(c for c in cuts if c <= len(data)), len(data)]
    chunks = [data[a:b] for a, b in pairwise(bounds)]
    assert frame(chunks) == frame([data])


_PARAM_TEXT = st.text(alphabet=';= \t"abcAB1-.[]:!~%,<>\\', max_size=30)


@given(_PARAM_TEXT)
@settings(max_examples=600, deadline=None)
def test_the_parameter_fast_path_agrees_with_the_checked_one(text: str) -> None:
    # parse_params answers plain parameters from one regex; whatever it accepts, the
    # checked parser (one parameter at a time) accepts the same way.
    from gateway.sip.headers import _checked_params, parse_params

    stripped = text.strip(" \t")
    body = stripped[1:] if stripped.startswith(";") else stripped
    try:
        fast: dict[str, str | None] | SIPParseError = parse_params(text, header="Via")
    except SIPParseError as err:
        fast = err
    try:
        slow: dict[str, str | None] | SIPParseError = (
            _checked_params(body, "Via") if stripped else {}
        )
    except SIPParseError as err:
        slow = err
    if isinstance(fast, SIPParseError) or isinstance(slow, SIPParseError):
        assert type(fast) is type(slow) and str(fast) == str(slow)
    else:
        assert fast == slow
