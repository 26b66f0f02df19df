"""HEPv3 decoder/encoder (gateway/calls/hep.py) and the HepIntake datagram protocol.

The known-good packets are written octet by octet from the HEP3 Network Protocol
Specification (sipcapture/HEP): header "HEP3" + total length, then chunks of
vendor id u16, type id u16, length u16 (counting the chunk header) and value, in the
order Kamailio's siptrace sends them (siptrace_hep.c). Everything is network byte order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.calls.hep import (
    DROP_REASONS,
    FAMILY_IPV4,
    FAMILY_IPV6,
    MAX_AUTH_KEY_LEN,
    MAX_CHUNKS,
    MAX_CORRELATION_ID_LEN,
    REASONS,
    HepError,
    HepPacket,
    decode_hep,
    encode_hep,
)
from gateway.config import MonitorSettings, MonitorSource
from gateway.runtime.hep_listener import HepIntake

FUZZ = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- hand-built packets -------------------------------------------------------------------

# IPv4, UDP, 192.0.2.1:5060 -> 198.51.100.2:5061, 1600000000.123456, SIP, agent 2001,
# payload "hello".  6 + 7 + 7 + 10 + 10 + 8 + 8 + 10 + 10 + 7 + 10 + 11 = 104 = 0x68.
HAND_V4 = bytes.fromhex(
    "48455033 0068"  # "HEP3", total length 104
    "0000 0001 0007 02"  # IP protocol family: 2 = IPv4
    "0000 0002 0007 11"  # IP protocol id: 17 = UDP
    "0000 0003 000a c0000201"  # IPv4 source 192.0.2.1
    "0000 0004 000a c6336402"  # IPv4 destination 198.51.100.2
    "0000 0007 0008 13c4"  # source port 5060
    "0000 0008 0008 13c5"  # destination port 5061
    "0000 0009 000a 5f5e1000"  # timestamp seconds 1600000000
    "0000 000a 000a 0001e240"  # timestamp microseconds 123456
    "0000 000b 0007 01"  # protocol type: 1 = SIP
    "0000 000c 000a 000007d1"  # capture agent id 2001
    "0000 000f 000b 68656c6c6f"  # payload "hello"
)

# IPv6, TCP, [2001:db8::1]:5060 -> [2001:db8::2]:5080, 1700000000.999999, SIP, agent 7,
# correlation id "abc", auth key "secret", payload "hello".
# 6 + 7 + 7 + 22 + 22 + 8 + 8 + 10 + 10 + 7 + 10 + 9 + 12 + 11 = 149 = 0x95.
HAND_V6 = bytes.fromhex(
    "48455033 0095"
    "0000 0001 0007 0a"  # IP protocol family: 10 = IPv6
    "0000 0002 0007 06"  # IP protocol id: 6 = TCP
    "0000 0005 0016 20010db8000000000000000000000001"  # IPv6 source 2001:db8::1
    "0000 0006 0016 20010db8000000000000000000000002"  # IPv6 destination 2001:db8::2
    "0000 0007 0008 13c4"  # source port 5060
    "0000 0008 0008 13d8"  # destination port 5080
    "0000 0009 000a 6553f100"  # timestamp seconds 1700000000
    "0000 000a 000a 000f423f"  # timestamp microseconds 999999
    "0000 000b 0007 01"  # protocol type: SIP
    "0000 000c 000a 00000007"  # capture agent id 7
    "0000 0011 0009 616263"  # correlation id "abc"
    "0000 000e 000c 736563726574"  # auth key "secret"
    "0000 000f 000b 68656c6c6f"  # payload "hello"
)

SIP_OPTIONS = (
    b"OPTIONS sip:ping@192.0.2.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bK-1\r\n"
    b"From: <sip:probe@192.0.2.9>;tag=1\r\nTo: <sip:ping@192.0.2.1>\r\n"
    b"Call-ID: hep-test-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def chunks_of(packet: bytes) -> list[tuple[int, int, bytes]]:
    """Split a well-formed packet into (vendor, type, value) chunks."""
    out, offset = [], 6
    while offset < len(packet):
        vendor, ctype, clen = struct.unpack_from("!HHH", packet, offset)
        out.append((vendor, ctype, packet[offset + 6 : offset + clen]))
        offset += clen
    return out


def raw_chunk(ctype: int, value: bytes, vendor: int = 0, length: int | None = None) -> bytes:
    return struct.pack("!HHH", vendor, ctype, 6 + len(value) if length is None else length) + value


def assemble(chunks: list[tuple[int, int, bytes]] | list[bytes], total: int | None = None) -> bytes:
    """Build a packet from chunks (tuples or raw bytes) with a correct total length."""
    body = b"".join(c if isinstance(c, bytes) else raw_chunk(c[1], c[2], c[0]) for c in chunks)
    return b"HEP3" + struct.pack("!H", 6 + len(body) if total is None else total) + body


def without(packet: bytes, ctype: int) -> bytes:
    return assemble([c for c in chunks_of(packet) if not (c[0] == 0 and c[1] == ctype)])


def replaced(packet: bytes, ctype: int, value: bytes) -> bytes:
    return assemble([(v, t, value if (v, t) == (0, ctype) else b) for v, t, b in chunks_of(packet)])


def reason_of(data: bytes) -> str:
    with pytest.raises(HepError) as info:
        decode_hep(data)
    assert info.value.reason in REASONS
    return info.value.reason


# --- known-good packets -------------------------------------------------------------------


def test_hand_built_ipv4_packet() -> None:
    assert len(HAND_V4) == 104
    p = decode_hep(HAND_V4)
    assert p == HepPacket(
        family=FAMILY_IPV4, protocol=17, src_ip="192.0.2.1", src_port=5060,
        dst_ip="198.51.100.2", dst_port=5061, ts_sec=1_600_000_000, ts_usec=123_456,
        proto_type=1, capture_id=2001, payload=b"hello",
    )  # fmt: skip
    assert p.timestamp == pytest.approx(1_600_000_000.123456, abs=1e-6)
    assert p.src == ("192.0.2.1", 5060) and p.dst == ("198.51.100.2", 5061)
    assert p.is_sip and p.auth_key is None and p.correlation_id is None


def test_hand_built_ipv6_packet() -> None:
    assert len(HAND_V6) == 149
    p = decode_hep(HAND_V6)
    assert (p.family, p.protocol) == (FAMILY_IPV6, 6)
    assert p.src == ("2001:db8::1", 5060) and p.dst == ("2001:db8::2", 5080)
    assert (p.ts_sec, p.ts_usec, p.capture_id) == (1_700_000_000, 999_999, 7)
    assert (p.correlation_id, p.auth_key, p.payload) == (b"abc", b"secret", b"hello")


def test_encoder_writes_the_hand_built_bytes() -> None:
    # Same chunks in the same order as Kamailio's siptrace: the encoder is byte-exact.
    assert (
        encode_hep(
            b"hello",
            ("192.0.2.1", 5060),
            ("198.51.100.2", 5061),
            timestamp=1_600_000_000.123456,
            capture_id=2001,
        )
        == HAND_V4
    )
    assert (
        encode_hep(
            b"hello",
            ("2001:db8::1", 5060),
            ("2001:db8::2", 5080),
            timestamp=1_700_000_000.999999,
            protocol=6,
            capture_id=7,
            correlation_id=b"abc",
            auth_key=b"secret",
        )
        == HAND_V6
    )
    assert decode_hep(HAND_V4).to_bytes() == HAND_V4
    assert decode_hep(HAND_V6).to_bytes() == HAND_V6


def test_chunk_order_does_not_matter() -> None:
    for packet in (HAND_V4, HAND_V6):
        assert decode_hep(assemble(chunks_of(packet)[::-1])) == decode_hep(packet)


def test_unknown_and_vendor_chunks_are_skipped() -> None:
    extra = [
        (0, 0x000D, b"\x00\x3c"),  # keep-alive timer
        (0, 0x0012, b"\x00\x64"),  # VLAN id
        (0, 0x0020, b""),  # MOS, empty: still a well-formed chunk
        (0, 0x7FFF, b"x" * 300),  # a type from a future revision
        (0x0003, 0x000F, b"not the payload"),  # vendor chunk reusing a generic type id
        (0x0003, 0x0001, b"\x63"),  # ... and a "family" of another vendor
    ]
    chunks = chunks_of(HAND_V4)
    packet = assemble(chunks[:3] + extra + chunks[3:])
    assert decode_hep(packet) == decode_hep(HAND_V4)


def test_optional_chunks_default() -> None:
    p = decode_hep(without(without(HAND_V4, 0x000A), 0x000C))
    assert (p.ts_usec, p.capture_id) == (0, 0)


def test_timestamp_rounding_carries_into_seconds() -> None:
    p = decode_hep(encode_hep(b"x", ("192.0.2.1", 1), ("192.0.2.2", 2), timestamp=9.9999997))
    assert (p.ts_sec, p.ts_usec) == (10, 0)


def test_encoder_refuses_what_hep_cannot_carry() -> None:
    with pytest.raises(ValueError):
        encode_hep(b"x", ("192.0.2.1", 1), ("2001:db8::1", 2))  # mixed families
    with pytest.raises(ValueError):
        encode_hep(b"x", ("192.0.2.1", 70000), ("192.0.2.2", 2))  # port > u16
    with pytest.raises(ValueError):
        encode_hep(b"x", ("not-an-ip", 1), ("192.0.2.2", 2))
    with pytest.raises(ValueError):
        encode_hep(b"x" * 65535, ("192.0.2.1", 1), ("192.0.2.2", 2))  # total > u16


# --- malformed packets --------------------------------------------------------------------

MALFORMED: list[tuple[str, bytes, str]] = [
    ("empty", b"", "too short"),
    ("magic only", b"HEP3", "too short"),
    ("five octets", b"HEP3\x00", "too short"),
    ("HEPv1", b"\x01\x10\x02\x11" + b"\x00" * 40, "hep v1/v2 not supported"),
    ("HEPv2", b"\x02\x10\x02\x11" + b"\x00" * 40, "hep v1/v2 not supported"),
    ("other magic", b"HEP2" + HAND_V4[4:], "bad magic"),
    ("SIP, not HEP", SIP_OPTIONS, "bad magic"),
    ("datagram cut short", HAND_V4[:-1], "length mismatch"),
    ("trailing octets", HAND_V4 + b"\x00", "length mismatch"),
    ("length field zero", b"HEP3\x00\x00" + HAND_V4[6:], "length mismatch"),
    ("oversized datagram", b"HEP3\xff\xff" + b"\x00" * 70_000, "oversized packet"),
    ("truncated chunk header", assemble([HAND_V4[6:] + b"\x00\x00\x00"]),
     "truncated chunk header"),
    ("chunk length 0", assemble([raw_chunk(0x000D, b"\x00\x00", length=0), HAND_V4[6:]]),
     "bad chunk length"),
    ("chunk length 5", assemble([raw_chunk(0x000D, b"\x00\x00", length=5), HAND_V4[6:]]),
     "bad chunk length"),
    ("chunk beyond the packet", assemble([HAND_V4[6:], raw_chunk(0x0011, b"ab", length=60)]),
     "bad chunk length"),
    ("payload length beyond the packet",
     assemble([HAND_V4[6:-11], raw_chunk(0x000F, b"hello", length=12)]), "bad chunk length"),
    ("family of 2 octets", replaced(HAND_V4, 0x0001, b"\x00\x02"), "bad chunk size"),
    ("IPv4 address of 16 octets", replaced(HAND_V4, 0x0003, b"\x00" * 16), "bad chunk size"),
    ("port of 4 octets", replaced(HAND_V4, 0x0007, b"\x00\x00\x13\xc4"), "bad chunk size"),
    ("empty timestamp", replaced(HAND_V4, 0x0009, b""), "bad chunk size"),
    ("two payloads", assemble([HAND_V4[6:], raw_chunk(0x000F, b"other")]), "duplicate chunk"),
    ("two sources", assemble([HAND_V4[6:], raw_chunk(0x0003, b"\x0a\x00\x00\x01")]),
     "duplicate chunk"),
    ("too many chunks",
     assemble([HAND_V4[6:], *[raw_chunk(0x000D, b"\x00\x01")] * MAX_CHUNKS]),
     "too many chunks"),
    ("no payload", without(HAND_V4, 0x000F), "missing chunk"),
    ("no family", without(HAND_V4, 0x0001), "missing chunk"),
    ("no source address", without(HAND_V4, 0x0003), "missing chunk"),
    ("no destination port", without(HAND_V4, 0x0008), "missing chunk"),
    ("no timestamp", without(HAND_V4, 0x0009), "missing chunk"),
    ("no protocol type", without(HAND_V4, 0x000B), "missing chunk"),
    ("header only", b"HEP3\x00\x06", "missing chunk"),
    ("compressed payload only",
     assemble([without(HAND_V4, 0x000F)[6:], raw_chunk(0x0010, b"\x78\x9c")]),
     "compressed payload not supported"),
    ("family 3", replaced(HAND_V4, 0x0001, b"\x03"), "bad ip family"),
    ("IPv6 family, IPv4 addresses", replaced(HAND_V4, 0x0001, b"\x0a"), "address family mismatch"),
    ("IPv4 family, extra IPv6 address",
     assemble([HAND_V4[6:], raw_chunk(0x0005, b"\x00" * 16)]), "address family mismatch"),
    ("a million microseconds", replaced(HAND_V4, 0x000A, struct.pack("!I", 1_000_000)),
     "bad microseconds"),
    ("oversized auth key",
     assemble([HAND_V4[6:], raw_chunk(0x000E, b"k" * (MAX_AUTH_KEY_LEN + 1))]),
     "oversized auth key"),
    ("oversized correlation id",
     assemble([HAND_V4[6:], raw_chunk(0x0011, b"c" * (MAX_CORRELATION_ID_LEN + 1))]),
     "oversized correlation id"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "reason"), [(d, r) for _, d, r in MALFORMED], ids=[name for name, _, _ in MALFORMED]
)
def test_malformed_packets_raise_hep_error_with_reason(data: bytes, reason: str) -> None:
    assert reason_of(data) == reason


def test_limits_are_inclusive() -> None:
    at_limit = assemble(
        [
            HAND_V4[6:],
            raw_chunk(0x000E, b"k" * MAX_AUTH_KEY_LEN),
            raw_chunk(0x0011, b"c" * MAX_CORRELATION_ID_LEN),
        ]
    )
    p = decode_hep(at_limit)
    assert len(p.auth_key or b"") == MAX_AUTH_KEY_LEN
    assert len(p.correlation_id or b"") == MAX_CORRELATION_ID_LEN
    # exactly MAX_CHUNKS chunks is fine (the packet has 11 of its own)
    keepalives = [raw_chunk(0x000D, b"\x00\x01")] * (MAX_CHUNKS - 11)
    assert decode_hep(assemble([HAND_V4[6:], *keepalives])).payload == b"hello"


def test_every_reason_is_a_short_fixed_label() -> None:
    assert all(len(r) <= 40 and r == r.lower() for r in REASONS)
    seen = {reason for _, _, reason in MALFORMED}
    assert seen == REASONS


# --- properties ---------------------------------------------------------------------------

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
port = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
optional_octets = st.none() | st.binary(min_size=0, max_size=64)


@st.composite
def packets(draw: st.DrawFn) -> HepPacket:
    v6 = draw(st.booleans())
    addr = ipv6 if v6 else ipv4
    return HepPacket(
        family=FAMILY_IPV6 if v6 else FAMILY_IPV4,
        protocol=draw(st.integers(0, 255)),
        src_ip=draw(addr), src_port=draw(port), dst_ip=draw(addr), dst_port=draw(port),
        ts_sec=draw(u32), ts_usec=draw(st.integers(0, 999_999)),
        proto_type=draw(st.integers(0, 255)), capture_id=draw(u32),
        payload=draw(st.binary(max_size=2000)),
        auth_key=draw(optional_octets), correlation_id=draw(optional_octets),
    )  # fmt: skip


def _canonical(ip: str) -> str:
    # inet_ntop's RFC 5952 text (IPv4-mapped as ::ffff:a.b.c.d), as the decoder gives.
    af = socket.AF_INET6 if ":" in ip else socket.AF_INET
    return socket.inet_ntop(af, socket.inet_pton(af, ip))


@given(packets())
@FUZZ
def test_round_trip(packet: HepPacket) -> None:
    data = packet.to_bytes()
    decoded = decode_hep(data)
    assert decoded.src_ip == _canonical(packet.src_ip)
    assert decoded.dst_ip == _canonical(packet.dst_ip)
    assert decoded == dataclasses.replace(packet, src_ip=decoded.src_ip, dst_ip=decoded.dst_ip)
    assert decoded.to_bytes() == data


@given(
    ip=ipv4 | ipv6,
    payload=st.binary(max_size=500),
    ts=st.floats(0, 4_000_000_000, allow_nan=False, allow_infinity=False),
)
@FUZZ
def test_encode_hep_round_trip(ip: str, payload: bytes, ts: float) -> None:
    p = decode_hep(encode_hep(payload, (ip, 5060), (ip, 5062), timestamp=ts))
    assert p.payload == payload and p.src == (_canonical(ip), 5060)
    assert p.family == (FAMILY_IPV6 if ":" in ip else FAMILY_IPV4)
    assert abs(p.timestamp - ts) <= 1e-6 + ts * 1e-15


def _decode_or_hep_error(data: bytes) -> None:
    try:
        decode_hep(data)
    except HepError as exc:
        assert exc.reason in REASONS


@given(st.binary(max_size=400))
@FUZZ
def test_random_bytes_raise_only_hep_error(data: bytes) -> None:
    _decode_or_hep_error(data)


@given(st.binary(max_size=400))
@FUZZ
def test_random_chunks_behind_a_valid_header_raise_only_hep_error(body: bytes) -> None:
    # Gets past the header checks, so the chunk walker sees every kind of garbage.
    _decode_or_hep_error(b"HEP3" + struct.pack("!H", 6 + len(body)) + body)


@given(
    st.lists(
        st.tuples(st.sampled_from([0, 0, 0, 1]), st.integers(0, 0x14), st.binary(max_size=20)),
        max_size=20,
    )
)
@FUZZ
def test_random_well_framed_chunks_raise_only_hep_error(
    chunks: list[tuple[int, int, bytes]],
) -> None:
    _decode_or_hep_error(assemble(chunks))


MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 8)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.integers(0, 255)),
)


@given(st.sampled_from([HAND_V4, HAND_V6]), st.lists(MUTATION, min_size=1, max_size=6))
@FUZZ
def test_mutated_packets_raise_only_hep_error(
    packet: bytes, mutations: list[tuple[str, int, int]]
) -> None:
    data = bytearray(packet)
    for kind, pos, arg in mutations:
        i = pos % (len(data) + 1)
        if kind == "flip" and i < len(data):
            data[i] ^= arg
        elif kind == "cut":
            del data[i:]
        elif kind == "delete":
            del data[i : i + arg]
        elif kind == "insert":
            data[i:i] = bytes([arg])
    _decode_or_hep_error(bytes(data))


# --- HepIntake ------------------------------------------------------------------------------


def _sip_packet(payload: bytes = SIP_OPTIONS, **kw: object) -> bytes:
    return encode_hep(payload, ("192.0.2.9", 5060), ("192.0.2.1", 5060), **kw)  # type: ignore[arg-type]


ADDR = ("192.0.2.50", 9060)
KEY = "hep-key-0123456789abcdef"
# The PBX at ADDR, one with a key, and nothing else.
MONITOR = MonitorSettings(
    sources=(
        MonitorSource(address="192.0.2.50", tenant="acme"),
        MonitorSource(address="192.0.2.51", tenant="acme", auth_key=KEY),
    )
)
KEYED = ("192.0.2.51", 9060)

Got = list[tuple[bytes, HepPacket, MonitorSource]]


def _intake(**kw: object) -> tuple[HepIntake, Got]:
    got: Got = []
    intake = HepIntake(
        lambda payload, packet, source: got.append((payload, packet, source)),
        MONITOR,
        **kw,  # type: ignore[arg-type]
    )
    return intake, got


def test_intake_counts_and_forwards_only_sip() -> None:
    counters: dict[str, int] = {"unrelated": 5}
    dropped: dict[str, int] = {}
    intake, got = _intake(counters=counters, dropped=dropped)
    intake.datagram_received(_sip_packet(), ADDR)
    intake.datagram_received(_sip_packet(b"rtcp report", proto_type=5), ADDR)
    intake.datagram_received(b"garbage", ADDR)
    intake.datagram_received(HAND_V4[:-3], ADDR)
    intake.datagram_received(HAND_V4[:-3], ADDR)
    intake.datagram_received(_sip_packet(), ADDR)
    assert [p for p, _, _ in got] == [SIP_OPTIONS, SIP_OPTIONS]
    assert got[0][1].src == ("192.0.2.9", 5060)
    assert got[0][2] is MONITOR.sources[0], "the consumer is told whose packet it is"
    assert intake.counters is counters  # the owner's dict, folded into metrics by it
    assert counters == {
        "unrelated": 5,
        "received": 6,
        "sip": 2,
        "other_proto": 1,
        "callback_error": 0,
        "socket_error": 0,
    }
    assert intake.dropped is dropped and dropped == {"malformed": 3}
    assert (intake.received, intake.sip) == (6, 2)
    assert intake.errors == {"bad magic": 1, "length mismatch": 2}


def test_intake_survives_a_failing_consumer(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    def boom(payload: bytes, packet: HepPacket, source: MonitorSource) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("consumer bug")

    intake = HepIntake(boom, MONITOR)
    for _ in range(5):
        intake.datagram_received(_sip_packet(), ADDR)
    assert calls == 5
    assert intake.counters["callback_error"] == 5 and intake.sip == 5
    # logged on the 1st, 2nd and 4th failure only
    assert len([r for r in caplog.records if "HEP consumer failed" in r.message]) == 3


def test_intake_refuses_unknown_senders_before_decoding() -> None:
    intake, got = _intake()
    intake.datagram_received(_sip_packet(), ("192.0.2.99", 9060))
    intake.datagram_received(b"garbage", ("192.0.2.99", 9060))
    assert got == [] and intake.dropped == {"unknown_source": 2}
    assert intake.errors == {}, "an unknown sender's datagram is not even decoded"


def test_intake_auth_key(caplog: pytest.LogCaptureFixture) -> None:
    intake, got = _intake()
    intake.datagram_received(_sip_packet(auth_key=KEY.encode()), KEYED)
    intake.datagram_received(_sip_packet(auth_key=b"wrong-key-guess-0123"), KEYED)
    intake.datagram_received(_sip_packet(auth_key=KEY.encode() + b"x"), KEYED)
    intake.datagram_received(_sip_packet(auth_key=KEY.encode()[:-1]), KEYED)
    intake.datagram_received(_sip_packet(), KEYED)
    intake.datagram_received(_sip_packet(auth_key=b"ignored: no key configured"), ADDR)
    assert [(p.auth_key, s.address) for _, p, s in got] == [
        (KEY.encode(), "192.0.2.51"),
        (b"ignored: no key configured", "192.0.2.50"),
    ]
    assert intake.dropped == {"bad_auth_key": 3, "no_auth_key": 1}
    assert set(intake.dropped) <= set(DROP_REASONS)
    refused = [r for r in caplog.records if r.message == "HEP packet refused"]
    # sparsely: the 1st and 2nd of each reason (then the 4th, 8th, ...)
    assert [r.__dict__["reason"] for r in refused] == [
        "bad_auth_key",
        "bad_auth_key",
        "no_auth_key",
    ]
    assert "wrong-key-guess" not in caplog.text, "the key given is never logged"


def test_a_source_key_is_a_secret_never_shown() -> None:
    source = MONITOR.sources[1]
    assert KEY not in repr(source) and KEY not in repr(MONITOR)
    assert "auth_key='***'" in repr(source)


def test_intake_error_received_is_counted() -> None:
    intake, _ = _intake()
    intake.error_received(ConnectionRefusedError())
    assert intake.counters["socket_error"] == 1


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_intake_on_a_socket(host: str, free_udp_port: Callable[..., int]) -> None:
    if host == "::1" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    got: asyncio.Queue[tuple[bytes, HepPacket]] = asyncio.Queue()
    monitor = MonitorSettings(sources=(MonitorSource(address=host, tenant="acme"),))
    intake = HepIntake(lambda payload, packet, _: got.put_nowait((payload, packet)), monitor)
    bound = await intake.start(host, free_udp_port(host=host))
    assert bound[0] == host and bound[1] > 0
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=bound)
    try:
        transport.sendto(b"\x00" * 3)
        transport.sendto(_sip_packet())
        payload, packet = await asyncio.wait_for(got.get(), 5)
        assert payload == SIP_OPTIONS and packet.capture_id == 1
        assert intake.errors == {"too short": 1} and intake.received == 2
    finally:
        transport.close()
        intake.close()
        intake.close()  # idempotent
