"""The gateway's own session descriptions: parked offers and answers (RFC 3264)."""

from __future__ import annotations

from gateway.calls import media, sdp

OFFER = (
    b"v=0\r\no=phone 5 5 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n"
    b"m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
)


def lines(body: bytes) -> list[str]:
    return body.decode().split("\r\n")


def test_parked_offer_is_an_ordinary_call_to_the_discard_port() -> None:
    body = media.parked_offer("2001:db8::1", 42)
    assert "c=IN IP6 2001:db8::1" in lines(body)
    assert "o=sipgw 42 1 IN IP6 2001:db8::1" in lines(body)
    assert "m=audio 9 RTP/AVP 0 8 101" in lines(body)
    assert sdp.audio_direction(body) == "sendrecv"


def test_parked_answer_takes_the_first_format_and_keeps_refused_streams() -> None:
    body = media.parked_answer(OFFER, "192.0.2.1", 7, version=3)
    got = lines(body)
    assert "o=sipgw 7 3 IN IP4 192.0.2.1" in got
    assert "m=audio 9 RTP/AVP 8" in got and "a=rtpmap:8 PCMA/8000" in got
    assert "a=rtpmap:0 PCMU/8000" not in got
    # RFC 3264 §6: as many m= lines as offered; a refused one stays port 0.
    assert "m=video 0 RTP/AVP 96" in got
    assert sdp.audio_direction(body) == "sendrecv"


def test_parked_answer_to_a_hold_is_a_hold() -> None:
    held = OFFER.replace(b"a=fmtp:101 0-15\r\n", b"a=fmtp:101 0-15\r\na=sendonly\r\n")
    assert sdp.audio_direction(media.parked_answer(held, "192.0.2.1", 7)) == "recvonly"
    inactive = OFFER.replace(b"t=0 0\r\n", b"t=0 0\r\na=inactive\r\n")
    assert sdp.audio_direction(media.parked_answer(inactive, "192.0.2.1", 7)) == "inactive"


def test_mirror_answer_reuses_the_other_side_with_the_allowed_direction() -> None:
    other = (
        b"v=0\r\no=far 9 9 IN IP4 198.51.100.9\r\ns=-\r\nc=IN IP4 198.51.100.9\r\nt=0 0\r\n"
        b"m=audio 6000 RTP/AVP 8\r\na=sendrecv\r\n"
    )
    hold = OFFER.replace(b"a=fmtp:101 0-15\r\n", b"a=fmtp:101 0-15\r\na=sendonly\r\n")
    body = media.mirror_answer(hold, other, version=10)
    got = lines(body)
    assert "o=far 9 10 IN IP4 198.51.100.9" in got
    assert "m=audio 6000 RTP/AVP 8" in got
    assert got.count("a=recvonly") == 1 and "a=sendrecv" not in got
    resume = media.mirror_answer(OFFER, other, version=11)
    assert sdp.audio_direction(resume) == "sendrecv"
