"""HEPv3 (HEP/EEP, the Homer encapsulation protocol): the codec of monitor mode.

In monitor mode sipgw is not in the SIP path. A PBX or proxy (Kamailio's siptrace,
OpenSIPS' proto_hep, FreeSWITCH, Asterisk res_hep, captagent, ...) sends a HEPv3 copy of
every SIP message it handles; we decode it and hand the SIP payload to the call tracker
with the addresses and capture time the agent recorded.

Wire format (HEP3 Network Protocol Specification, sipcapture/HEP, rev. 3x):

    header   "HEP3" (0x48455033) | total length u16        (6 octets, network order)
    chunk    vendor id u16 | type id u16 | length u16 | value
             (the chunk length counts its own 6-octet header; the total length counts
             the whole packet, header included)

Generic chunk types (vendor 0x0000) we read:

    0x0001 IP protocol family  u8      2 = IPv4, 10 = IPv6
    0x0002 IP protocol id      u8      17 = UDP, 6 = TCP, 132 = SCTP (Kamailio sends
                                       22, IPPROTO_IDP, as a fake id for TLS/WS/WSS)
    0x0003 / 0x0004 IPv4 source / destination address    4 octets
    0x0005 / 0x0006 IPv6 source / destination address    16 octets
    0x0007 / 0x0008 source / destination port            u16
    0x0009 timestamp, seconds          u32 (Unix time)
    0x000a timestamp, microseconds     u32 (offset to 0x0009)
    0x000b protocol type               u8      1 = SIP, 5 = RTCP, 100 = log, ...
    0x000c capture agent id            u32
    0x000e authentication key          octets
    0x000f captured packet payload     octets
    0x0011 internal correlation id     octets

Every other chunk (keep-alive 0x000d, compressed payload 0x0010, VLAN, MOS, vendor
chunks, types added by later revisions) is skipped by its length, as the specification
asks of a receiver. Integers are in network byte order.

`decode_hep` is sans-I/O (no socket: addresses are read with `ipaddress`) and strict: a
datagram is one packet, every length field is checked against the bytes actually
present, fixed-size chunks must have their size, and any failure is a `HepError` whose
`reason` is a short fixed phrase (a closed set, see `REASONS`).
`gateway.runtime.hep_listener.HepIntake` is the thin asyncio listener, and it decides who
may feed it; `gateway.calls.monitor` turns what it accepts into the call tracker's
observations.

Who may send (`[[monitor.sources]]`): a packet is accepted only from a configured
sender address, and, when that source has an `auth_key`, only if it carries that key
(chunk 0x000e, compared in constant time). HEP is plain UDP: without a key anyone who
can send one datagram with a forged source address can inject "observed" calls into a
tenant's event stream. The loader therefore requires a key for every source when
`hep_listen` is not a loopback address; on the loopback, where no packet from the
network can arrive (Linux drops 127/8 sources on other interfaces as martians), the
address alone is enough. The key travels in clear text like the payload: it stops
blind forgers, not someone who can read the capture traffic (carry HEP over a private
network or an IPsec/WireGuard tunnel for that). Every refused packet is counted by
reason in `DROP_REASONS` (a bounded metrics label); the key given is never logged.
"""

from __future__ import annotations

import ipaddress
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DROP_REASONS",
    "FAMILY_IPV4",
    "FAMILY_IPV6",
    "PROTO_TYPE_SIP",
    "REASONS",
    "HepError",
    "HepPacket",
    "decode_hep",
    "encode_hep",
]

MAGIC: Final = b"HEP3"  # 0x48455033
HEADER_LEN: Final = 6
CHUNK_HEADER_LEN: Final = 6
# The total length is a u16, so no valid packet is longer; checking the datagram first
# keeps a giant datagram from costing anything.
MAX_PACKET_LEN: Final = 0xFFFF
# A real agent sends 10-14 chunks. The length field alone would allow ~10900 empty
# chunks; a packet made of thousands of them is an attack, not a capture.
MAX_CHUNKS: Final = 64
# Octet-string chunks other than the payload are identifiers: bound them so a bogus
# sender cannot make us keep kilobytes per message.
MAX_AUTH_KEY_LEN: Final = 256
MAX_CORRELATION_ID_LEN: Final = 1024

# Address families as HEP encodes them (the BSD AF_INET / Linux AF_INET6 values; the
# specification fixes them, so they do not depend on the host's socket constants).
FAMILY_IPV4: Final = 2
FAMILY_IPV6: Final = 10
IPPROTO_UDP: Final = 17
PROTO_TYPE_SIP: Final = 1

# Generic chunk type ids (vendor 0).
_FAMILY = 0x0001
_PROTOCOL = 0x0002
_IPV4_SRC = 0x0003
_IPV4_DST = 0x0004
_IPV6_SRC = 0x0005
_IPV6_DST = 0x0006
_SRC_PORT = 0x0007
_DST_PORT = 0x0008
_TS_SEC = 0x0009
_TS_USEC = 0x000A
_PROTO_TYPE = 0x000B
_CAPTURE_ID = 0x000C
_AUTH_KEY = 0x000E
_PAYLOAD = 0x000F
_COMPRESSED_PAYLOAD = 0x0010
_CORRELATION_ID = 0x0011

# Value size of every fixed-size chunk we read; the others are octet strings.
_FIXED_SIZE: Final[dict[int, int]] = {
    _FAMILY: 1,
    _PROTOCOL: 1,
    _IPV4_SRC: 4,
    _IPV4_DST: 4,
    _IPV6_SRC: 16,
    _IPV6_DST: 16,
    _SRC_PORT: 2,
    _DST_PORT: 2,
    _TS_SEC: 4,
    _TS_USEC: 4,
    _PROTO_TYPE: 1,
    _CAPTURE_ID: 4,
}
_KNOWN: Final = frozenset({*_FIXED_SIZE, _AUTH_KEY, _PAYLOAD, _CORRELATION_ID})

# Every reason decode_hep can give: a closed set of short phrases.
REASONS: Final = frozenset(
    {
        "too short",
        "oversized packet",
        "hep v1/v2 not supported",
        "bad magic",
        "length mismatch",
        "truncated chunk header",
        "bad chunk length",
        "bad chunk size",
        "duplicate chunk",
        "too many chunks",
        "oversized auth key",
        "oversized correlation id",
        "missing chunk",
        "bad ip family",
        "address family mismatch",
        "bad microseconds",
        "compressed payload not supported",
    }
)
# Why HepIntake (or its consumer: "bad_sip") refused a packet: the `reason` label of
# sipgw_hep_dropped_total.
DROP_REASONS: Final = ("unknown_source", "no_auth_key", "bad_auth_key", "malformed", "bad_sip")

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_CHUNK = struct.Struct("!HHH")


class HepError(ValueError):
    """A datagram that is not a valid HEPv3 packet; `reason` is one of `REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class HepPacket:
    family: int  # FAMILY_IPV4 or FAMILY_IPV6
    protocol: int  # IP protocol id of the captured packet (17 UDP, 6 TCP, ...)
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    ts_sec: int  # capture time as the agent stamped it: Unix seconds ...
    ts_usec: int  # ... and microseconds (0..999999)
    proto_type: int  # what the payload is: PROTO_TYPE_SIP (1), RTCP (5), log (100), ...
    capture_id: int  # capture agent id (Kamailio: hep_capture_id, default 1)
    payload: bytes
    auth_key: bytes | None = None
    correlation_id: bytes | None = None

    @property
    def timestamp(self) -> float:
        """Capture time in Unix seconds (float, µs resolution)."""
        return self.ts_sec + self.ts_usec / 1_000_000

    @property
    def src(self) -> tuple[str, int]:
        return self.src_ip, self.src_port

    @property
    def dst(self) -> tuple[str, int]:
        return self.dst_ip, self.dst_port

    @property
    def is_sip(self) -> bool:
        return self.proto_type == PROTO_TYPE_SIP

    def to_bytes(self) -> bytes:
        """Encode this packet again (exact: the timestamp keeps its two integers)."""
        return _encode(
            self.payload,
            family=self.family,
            protocol=self.protocol,
            src=(self.src_ip, self.src_port),
            dst=(self.dst_ip, self.dst_port),
            ts_sec=self.ts_sec,
            ts_usec=self.ts_usec,
            proto_type=self.proto_type,
            capture_id=self.capture_id,
            auth_key=self.auth_key,
            correlation_id=self.correlation_id,
            extra_chunks=(),
        )


# -- decoding ----------------------------------------------------------------------------


def decode_hep(data: bytes, *, max_chunks: int = MAX_CHUNKS) -> HepPacket:
    """Decode one HEPv3 packet (one UDP datagram). Raises `HepError` and nothing else."""
    size = len(data)
    if size > MAX_PACKET_LEN:
        raise HepError("oversized packet", f"{size} octets")
    if size < HEADER_LEN:
        # HEPv1/v2 start with the version octet and are longer than 6 octets, so a
        # short datagram is simply short, whatever its first octet.
        raise HepError("too short", f"{size} octets")
    if data[:4] != MAGIC:
        if data[0] in (1, 2):
            raise HepError("hep v1/v2 not supported")
        raise HepError("bad magic")
    (total,) = _U16.unpack_from(data, 4)
    if total != size:
        # UDP keeps datagram boundaries: the header's length must be the datagram's.
        # (A stream transport would frame by this field instead.)
        raise HepError("length mismatch", f"header says {total}, datagram has {size}")

    values: dict[int, bytes] = {}
    compressed = False
    offset = HEADER_LEN
    chunks = 0
    while offset < size:
        chunks += 1
        if chunks > max_chunks:
            raise HepError("too many chunks", f"more than {max_chunks}")
        if size - offset < CHUNK_HEADER_LEN:
            raise HepError("truncated chunk header", f"at offset {offset}")
        vendor, ctype, clen = _CHUNK.unpack_from(data, offset)
        # The chunk length includes its own header (spec: "chunk length"); shorter than
        # the header would loop forever or read backwards.
        if clen < CHUNK_HEADER_LEN or clen > size - offset:
            raise HepError("bad chunk length", f"type 0x{ctype:04x} length {clen} at {offset}")
        start, end = offset + CHUNK_HEADER_LEN, offset + clen
        offset = end
        if vendor != 0:
            continue  # vendor-specific chunk: not ours to interpret
        if ctype not in _KNOWN:
            compressed = compressed or ctype == _COMPRESSED_PAYLOAD
            continue  # keep-alive, VLAN, MOS, later additions: skipped by length
        want = _FIXED_SIZE.get(ctype)
        if want is not None and clen - CHUNK_HEADER_LEN != want:
            raise HepError(
                "bad chunk size",
                f"type 0x{ctype:04x} has {clen - CHUNK_HEADER_LEN} octets, not {want}",
            )
        if ctype in values:
            # Two payloads (or two source addresses) make the packet ambiguous; an
            # agent never sends that, a forger might.
            raise HepError("duplicate chunk", f"type 0x{ctype:04x}")
        if ctype == _AUTH_KEY and clen - CHUNK_HEADER_LEN > MAX_AUTH_KEY_LEN:
            raise HepError("oversized auth key")
        if ctype == _CORRELATION_ID and clen - CHUNK_HEADER_LEN > MAX_CORRELATION_ID_LEN:
            raise HepError("oversized correlation id")
        values[ctype] = data[start:end]

    return _build(values, compressed)


def _build(values: dict[int, bytes], compressed: bool) -> HepPacket:
    def need(ctype: int) -> bytes:
        value = values.get(ctype)
        if value is None:
            if ctype == _PAYLOAD and compressed:
                raise HepError("compressed payload not supported")
            raise HepError("missing chunk", f"type 0x{ctype:04x}")
        return value

    family = need(_FAMILY)[0]
    if family == FAMILY_IPV4:
        src_chunk, dst_chunk, other = _IPV4_SRC, _IPV4_DST, (_IPV6_SRC, _IPV6_DST)
    elif family == FAMILY_IPV6:
        src_chunk, dst_chunk, other = _IPV6_SRC, _IPV6_DST, (_IPV4_SRC, _IPV4_DST)
    else:
        raise HepError("bad ip family", str(family))
    if any(c in values for c in other):
        raise HepError("address family mismatch")
    src_ip = _address_text(need(src_chunk))
    dst_ip = _address_text(need(dst_chunk))
    (src_port,) = _U16.unpack(need(_SRC_PORT))
    (dst_port,) = _U16.unpack(need(_DST_PORT))
    (ts_sec,) = _U32.unpack(need(_TS_SEC))
    usec_chunk = values.get(_TS_USEC)
    ts_usec = _U32.unpack(usec_chunk)[0] if usec_chunk is not None else 0
    if ts_usec >= 1_000_000:
        raise HepError("bad microseconds", str(ts_usec))
    capture_chunk = values.get(_CAPTURE_ID)
    return HepPacket(
        family=family,
        protocol=need(_PROTOCOL)[0],
        src_ip=src_ip,
        src_port=src_port,
        dst_ip=dst_ip,
        dst_port=dst_port,
        ts_sec=ts_sec,
        ts_usec=ts_usec,
        proto_type=need(_PROTO_TYPE)[0],
        # Optional in practice (some agents omit it); 0 means "not given".
        capture_id=_U32.unpack(capture_chunk)[0] if capture_chunk is not None else 0,
        payload=need(_PAYLOAD),
        auth_key=values.get(_AUTH_KEY),
        correlation_id=values.get(_CORRELATION_ID),
    )


def _address_text(packed: bytes) -> str:
    """An address chunk as text, as inet_ntop writes it (the size is already checked:
    4 or 16 octets); an IPv4-mapped IPv6 address keeps its dotted tail."""
    if len(packed) == 4:
        return str(ipaddress.IPv4Address(packed))
    v6 = ipaddress.IPv6Address(packed)
    mapped = v6.ipv4_mapped
    return f"::ffff:{mapped}" if mapped is not None else str(v6)


# -- encoding ----------------------------------------------------------------------------


def _chunk(ctype: int, value: bytes, vendor: int = 0) -> bytes:
    return _CHUNK.pack(vendor, ctype, CHUNK_HEADER_LEN + len(value)) + value


def _family_of(ip: str) -> int:
    return FAMILY_IPV6 if ":" in ip else FAMILY_IPV4


def encode_hep(
    payload: bytes,
    src: tuple[str, int],
    dst: tuple[str, int],
    *,
    timestamp: float | None = None,
    protocol: int = IPPROTO_UDP,
    proto_type: int = PROTO_TYPE_SIP,
    capture_id: int = 1,
    auth_key: bytes | None = None,
    correlation_id: bytes | None = None,
    extra_chunks: Iterable[tuple[int, int, bytes]] = (),
) -> bytes:
    """Encode one HEPv3 packet with the chunks Kamailio's siptrace sends (in its order).

    `src`/`dst` are (ip, port) of one family; `timestamp` defaults to now.
    `extra_chunks` are (vendor, type, value) appended before the payload (tests use
    them for unknown and vendor chunks). Raises ValueError for values HEP cannot carry.
    """
    now = time.time() if timestamp is None else timestamp
    if now < 0:
        raise ValueError("timestamp before 1970")
    ts_sec = int(now)
    ts_usec = round((now - ts_sec) * 1_000_000)
    if ts_usec >= 1_000_000:  # 0.9999997 rounds up to the next second
        ts_sec, ts_usec = ts_sec + 1, 0
    return _encode(
        payload,
        family=_family_of(src[0]),
        protocol=protocol,
        src=src,
        dst=dst,
        ts_sec=ts_sec,
        ts_usec=ts_usec,
        proto_type=proto_type,
        capture_id=capture_id,
        auth_key=auth_key,
        correlation_id=correlation_id,
        extra_chunks=extra_chunks,
    )


def _encode(
    payload: bytes,
    *,
    family: int,
    protocol: int,
    src: tuple[str, int],
    dst: tuple[str, int],
    ts_sec: int,
    ts_usec: int,
    proto_type: int,
    capture_id: int,
    auth_key: bytes | None,
    correlation_id: bytes | None,
    extra_chunks: Iterable[tuple[int, int, bytes]],
) -> bytes:
    if family == FAMILY_IPV4:
        src_type, dst_type, version = _IPV4_SRC, _IPV4_DST, 4
    elif family == FAMILY_IPV6:
        src_type, dst_type, version = _IPV6_SRC, _IPV6_DST, 6
    else:
        raise ValueError(f"bad ip family {family}")
    if _family_of(src[0]) != family or _family_of(dst[0]) != family:
        raise ValueError("source and destination must be of the packet's address family")
    try:
        src_addr, dst_addr = _packed(src[0], version), _packed(dst[0], version)
        parts = [
            _chunk(_FAMILY, bytes([family])),
            _chunk(_PROTOCOL, bytes([protocol])),
            _chunk(src_type, src_addr),
            _chunk(dst_type, dst_addr),
            _chunk(_SRC_PORT, _U16.pack(src[1])),
            _chunk(_DST_PORT, _U16.pack(dst[1])),
            _chunk(_TS_SEC, _U32.pack(ts_sec)),
            _chunk(_TS_USEC, _U32.pack(ts_usec)),
            _chunk(_PROTO_TYPE, bytes([proto_type])),
            _chunk(_CAPTURE_ID, _U32.pack(capture_id)),
        ]
        if correlation_id is not None:
            parts.append(_chunk(_CORRELATION_ID, correlation_id))
        if auth_key is not None:
            parts.append(_chunk(_AUTH_KEY, auth_key))
        for vendor, ctype, value in extra_chunks:
            parts.append(_chunk(ctype, value, vendor))
        parts.append(_chunk(_PAYLOAD, payload))
    except (ValueError, struct.error) as exc:
        # A bad address (ValueError), or a port, id or length that does not fit its
        # field (struct.error).
        raise ValueError(f"cannot encode HEP packet: {exc}") from exc
    body = b"".join(parts)
    total = HEADER_LEN + len(body)
    if total > MAX_PACKET_LEN:
        raise ValueError(f"HEP packet of {total} octets exceeds the u16 length field")
    return MAGIC + _U16.pack(total) + body


def _packed(address: str, version: int) -> bytes:
    parsed = ipaddress.ip_address(address)
    if parsed.version != version or getattr(parsed, "scope_id", None):
        raise ValueError(f"not an IPv{version} address: {address!r}")
    return parsed.packed
