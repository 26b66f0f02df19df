"""OPTIONS addressed to the gateway itself: what we are and whether we take calls.

Health probes (trunks, load balancers, `sipp`) send these; the answer is cheap and
never needs authentication. While draining the answer is 503 with Retry-After so a
balancer moves new calls elsewhere (handled by the caller of ``options_headers``).

``quick_options`` answers the common probe from a template without building a
message: a byte scan of the request line and the header lines a response copies
(RFC 3261 §8.2.6.2: Via, From, To, Call-ID, CSeq). Anything it does not recognize as
plainly well-formed (folded or compact headers, a body, Require, Route, a To tag, an
unusual Via) goes the full way through the parser, so malformed input is answered
exactly as before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.sip.random_ids import random_hex

ALLOW = (
    "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, PRACK, UPDATE, INFO, REFER, NOTIFY, "
    "SUBSCRIBE, MESSAGE"
)
ACCEPT = "application/sdp"
# Option tags we implement as the UAS answering OPTIONS: none yet. An empty Supported
# header is valid (RFC 3261 §20.37) and tells the prober so explicitly.
SUPPORTED = ""


def options_headers() -> tuple[tuple[str, str], ...]:
    return (
        ("Allow", ALLOW),
        ("Accept", ACCEPT),
        ("Accept-Encoding", "identity"),
        ("Accept-Language", "en"),
        ("Supported", SUPPORTED),
    )


_HEADERS = "".join(f"{name}: {value}\r\n" for name, value in options_headers()).encode()
_TAIL = _HEADERS + b"Content-Length: 0\r\n\r\n"
# Header lines the template copies (to their slot), and the other lines it accepts;
# any other line sends the request the full way. Names as most clients spell them, and
# lower-cased for the rest ("name: value" with exactly one space: anything else, such
# as a value with leading tabs or a space before the colon, also goes the full way).
_COPIED_NAMES = {b"via": 0, b"from": 1, b"to": 2, b"call-id": 3, b"cseq": 4}
_COPIED = {
    **_COPIED_NAMES,
    **{b"Via": 0, b"From": 1, b"To": 2, b"Call-ID": 3, b"Call-Id": 3, b"CSeq": 4},
}
_PLAIN_NAMES = (
    b"Max-Forwards", b"Contact", b"Accept", b"User-Agent", b"Content-Length", b"Allow",
    b"Supported", b"Date", b"Timestamp", b"Subject", b"Organization",
    b"Accept-Encoding", b"Accept-Language", b"Content-Type",
)  # fmt: skip
_PLAIN = frozenset(_PLAIN_NAMES) | frozenset(name.lower() for name in _PLAIN_NAMES)
# "\r\nName: value" with a token name, exactly one space, and a value not starting
# with more white space.
_LINE = re.compile(rb"\r\n([!-9;-~]+): (?![ \t])([^\r]*)")
# The top Via as nearly every client writes it: "SIP/2.0/UDP host:port;params".
_VIA = re.compile(
    rb"SIP/2\.0/UDP ([0-9A-Za-z.\-]+|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?((?:;[!-~]+)*)"
)
_TOKENISH = re.compile(rb"[!-~]+")
_CSEQ = re.compile(rb"[0-9]{1,10} OPTIONS")


@dataclass(slots=True)  # not frozen: made for every probe, and frozen __init__ is slow
class QuickOptions:
    """What the answer needs of a plainly well-formed OPTIONS to the gateway."""

    sent_by: bytes  # "SIP/2.0/UDP host:port" of the top Via
    params: list[bytes]  # its parameters, without the leading ";"
    host: bytes  # the top Via's sent-by host and port
    port: int | None
    before_to: bytes  # the copied lines up to To (further Vias, From), formatted
    to: bytes  # the To value, which gets our tag
    after_to: bytes  # Call-ID and CSeq, formatted


def quick_options(data: bytes, for_us: bytes) -> QuickOptions | None:
    """Scan an OPTIONS datagram whose Request-URI should be ``for_us``; None: anything
    else, which takes the full way through the parser."""
    head_end = data.find(b"\r\n\r\n")
    first = 8 + len(for_us) + 8  # "OPTIONS " uri " SIP/2.0", then the first "\r\n"
    if head_end + 4 != len(data) or not data.startswith(b" SIP/2.0\r\n", first - 8):
        return None  # no end of headers, a body, bytes after it, or another start line
    if data[8 : first - 8] != for_us:
        return None
    # Every header line must be "Name: value" with a name we accept: as many lines
    # as well-formed names (a folded line or a stray one has none).
    lines = _LINE.findall(data, first, head_end)
    if len(lines) != data.count(b"\r\n", first, head_end):
        return None
    vias: list[bytes] = []
    single: dict[int, bytes] = {}
    for name, value in lines:
        slot = _COPIED.get(name)
        if slot is None:
            if name not in _PLAIN:
                return None
        elif slot == 0:
            if b"," in value:
                return None  # several Vias on one line: let the parser split them
            vias.append(value)
        elif slot in single:
            return None  # a second From, To, Call-ID or CSeq
        else:
            single[slot] = value
    if not vias or len(single) != 4:
        return None
    from_, to, call_id, cseq = single[1], single[2], single[3], single[4]
    if b";tag=" in to or b";tag=" not in from_:
        return None
    if not _TOKENISH.fullmatch(call_id) or not _CSEQ.fullmatch(cseq):
        return None
    top = _VIA.fullmatch(vias[0])
    if top is None:
        return None
    sent_by, host, port_text, params = vias[0][: top.start(3)], *top.group(1, 2, 3)
    if b";branch=z9hG4bK" not in params or b";received" in params or b";rport=" in params:
        return None
    port = int(port_text) if port_text else None
    if port is not None and not 0 < port < 65536:
        return None
    before_to = b"From: " + from_ + b"\r\n"
    if len(vias) > 1:
        before_to = b"".join(b"Via: %s\r\n" % via for via in vias[1:]) + before_to
    return QuickOptions(
        sent_by, params[1:].split(b";"), host, port, before_to, to,
        b"Call-ID: " + call_id + b"\r\nCSeq: " + cseq + b"\r\n",
    )  # fmt: skip


def quick_reply(options: QuickOptions, received: bytes | None, rport: int | None) -> bytes:
    """The 200 OK: the top Via stamped as §18.2.1 and RFC 3581 say (``received`` when
    the sender's address differs from its sent-by, ``rport`` filled in where it was
    asked for), the other copied lines, our tag on To, then the capabilities."""
    params = [b"rport=%d" % rport if p == b"rport" and rport is not None else p
              for p in options.params]  # fmt: skip
    if received is not None:
        params.append(b"received=" + received)
    return b"".join(
        (
            b"SIP/2.0 200 OK\r\nVia: ", options.sent_by, b";", b";".join(params), b"\r\n",
            options.before_to,
            b"To: ", options.to, b";tag=", random_hex(6).encode(), b"\r\n",
            options.after_to,
            _TAIL,
        )
    )  # fmt: skip
