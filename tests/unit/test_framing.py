"""gateway.sip.framing: Content-Length framing of stream transports."""

from __future__ import annotations

import pytest

from gateway.sip.errors import SIPParseError
from gateway.sip.framing import StreamFramer
from gateway.sip.message import Limits, Request, parse_message


def message(body: bytes = b"", *, cl: str | None = None, name: str = "Content-Length") -> bytes:
    length = str(len(body)) if cl is None else cl
    return (
        "MESSAGE sip:bob@example.com SIP/2.0\r\n"
        "Via: SIP/2.0/TCP client.example.com;branch=z9hG4bK1\r\n"
        "To: <sip:bob@example.com>\r\nFrom: <sip:alice@example.com>;tag=1\r\n"
        "Call-ID: framing-1\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n"
        f"{name}: {length}\r\n\r\n"
    ).encode() + body


M1 = message(b"first body")
M2 = message(b"\r\n\r\nsecond: body holds CRLFCRLF\r\n")
M3 = message()


def feed_error(framer: StreamFramer, data: bytes) -> SIPParseError:
    with pytest.raises(SIPParseError) as info:
        framer.feed(data)
    return info.value


class TestFraming:
    def test_messages_in_one_feed(self) -> None:
        framer = StreamFramer()
        assert framer.feed(M1 + M2 + M3) == [M1, M2, M3]
        assert framer.buffered == 0

    def test_byte_by_byte(self) -> None:
        framer = StreamFramer()
        out: list[bytes] = []
        for octet in M1 + M2:
            out += framer.feed(bytes([octet]))
        assert out == [M1, M2]

    def test_partial_message_waits(self) -> None:
        framer = StreamFramer()
        assert framer.feed(M1[:-3]) == []
        assert framer.buffered == len(M1) - 3
        assert framer.feed(M1[-3:] + M2[:10]) == [M1]
        assert framer.feed(M2[10:]) == [M2]

    def test_content_length_larger_than_received_waits(self) -> None:
        # RFC 4475 clerr over a stream: wait for more data (the transport times out).
        framer = StreamFramer()
        assert framer.feed(message(b"short", cl="9999")) == []
        assert framer.error is None

    def test_compact_and_folded_content_length(self) -> None:
        compact = message(b"abc", name="l")
        folded = message(b"abcd", cl="\r\n 4")
        spaced = message(b"xy", name="CONTENT-length  ")
        assert StreamFramer().feed(compact + folded + spaced) == [compact, folded, spaced]

    def test_framed_messages_parse_in_stream_mode(self) -> None:
        framer = StreamFramer()
        for data in framer.feed(M1 + M2):
            parsed = parse_message(data, stream=True)
            assert isinstance(parsed, Request)
            parsed.validate()
        assert parse_message(M2, stream=True).body == b"\r\n\r\nsecond: body holds CRLFCRLF\r\n"


class TestKeepAlive:
    def test_double_crlf_is_a_ping(self) -> None:
        framer = StreamFramer()
        assert framer.feed(b"\r\n\r\n") == []
        assert framer.pings == 1
        assert framer.feed(M1) == [M1]
        assert framer.pings == 0  # per feed() call
        assert framer.total_pings == 1

    def test_single_crlf_is_swallowed_without_a_ping(self) -> None:
        framer = StreamFramer()
        assert framer.feed(b"\r\n" + M1) == [M1]
        assert (framer.pings, framer.total_pings) == (0, 0)

    def test_pings_between_messages_and_split_across_feeds(self) -> None:
        framer = StreamFramer()
        assert framer.feed(M1 + b"\r\n\r") == [M1]
        assert framer.pings == 0
        assert framer.feed(b"\n\r\n\r\n\r\n" + M2) == [M2]
        assert framer.pings == 2
        assert framer.total_pings == 2

    def test_crlf_run_resets_at_a_message(self) -> None:
        framer = StreamFramer()
        framer.feed(b"\r\n" + M1 + b"\r\n")
        assert framer.total_pings == 0


class TestErrors:
    @pytest.mark.parametrize(
        ("data", "reason"),
        [
            (message(b"x", cl="-1"), "Bad Content-Length header: negative value"),  # ncl
            (message(b"x", cl="x"), "Bad Content-Length header: not a number"),
            (
                message(b"x", cl="1\r\nContent-Length: 2"),  # mcl01
                "Bad Content-Length header: conflicting values",
            ),
            (
                message(b"x", name="X-Length"),
                "Bad Content-Length header: missing (mandatory on stream transports)",
            ),
        ],
    )
    def test_framing_errors(self, data: bytes, reason: str) -> None:
        err = feed_error(StreamFramer(), data)
        assert (err.status, str(err)) == (400, reason)

    def test_oversized(self) -> None:
        limits = Limits(max_message=len(M1) - 1)
        err = feed_error(StreamFramer(limits), M1)
        assert (err.status, str(err)) == (513, f"Message too large (limit {len(M1) - 1} octets)")
        # Without the end of the header section in sight, the bound applies too.
        err = feed_error(StreamFramer(Limits(max_message=100)), b"INVITE " + b"a" * 200)
        assert err.status == 513
        # A declared body that would cross the limit is refused before it arrives.
        err = feed_error(StreamFramer(Limits(max_message=1000)), message(cl="5000"))
        assert err.status == 513

    def test_response_errors_have_status_zero(self) -> None:
        data = b"SIP/2.0 200 OK\r\nContent-Length: -5\r\n\r\n"
        assert feed_error(StreamFramer(), data).status == 0

    def test_error_after_good_messages_is_deferred(self) -> None:
        framer = StreamFramer()
        bad = message(b"x", cl="-1")
        assert framer.feed(M1 + bad) == [M1]
        assert framer.error is not None
        assert str(framer.error) == "Bad Content-Length header: negative value"
        err = feed_error(framer, b"")
        assert err is framer.error

    def test_failed_framer_stays_failed(self) -> None:
        framer = StreamFramer()
        first = feed_error(framer, message(b"x", cl="-1"))
        assert feed_error(framer, M1) is first
        assert framer.buffered == 0
