"""Requests and responses the proxy builds itself.

ACK for a non-2xx final response (RFC 3261 §17.1.1.3) and CANCEL (§9.1) are built from
the request the branch sent, so they carry exactly its Via, Route set and CSeq number.
"""

from __future__ import annotations

import re

from gateway.sip.errors import SIPParseError
from gateway.sip.message import Request, parse_message

_CRLF = b"\r\n"

# Header names (long and compact) whose lines a last-resort error response copies.
_ECHO_HEADERS = {
    b"via": b"Via",
    b"v": b"Via",
    b"from": b"From",
    b"f": b"From",
    b"to": b"To",
    b"t": b"To",
    b"call-id": b"Call-ID",
    b"i": b"Call-ID",
    b"cseq": b"CSeq",
}
_SAFE_REASON = re.compile(rb"[^\x20-\x7e]")


def _hop_request(
    branch_request: bytes, method: str, to_value: str | None, reason: str | None = None
) -> bytes:
    req = parse_message(branch_request)
    assert isinstance(req, Request)
    lines = [f"{method} {req.uri_raw} SIP/2.0"]
    lines.append(f"Via: {req.get_all('Via')[0].split(',')[0].strip()}")
    for route in req.get_all("Route"):
        lines.append(f"Route: {route}")
    lines.append("Max-Forwards: 70")
    lines.append(f"From: {req.get('From')}")
    lines.append(f"To: {to_value if to_value is not None else req.get('To')}")
    lines.append(f"Call-ID: {req.call_id}")
    lines.append(f"CSeq: {req.cseq.number} {method}")
    if reason:
        lines.append(f"Reason: {reason}")
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def build_ack(branch_request: bytes, response: bytes) -> bytes:
    """The hop-by-hop ACK for a non-2xx final response to ``branch_request``."""
    to_value: str | None
    try:
        to_value = parse_message(response).get("To")
    except SIPParseError:
        to_value = None
    return _hop_request(branch_request, "ACK", to_value)


def build_cancel(branch_request: bytes, reason: str | None = None) -> bytes:
    """CANCEL for ``branch_request``; ``reason`` is a Reason header value (RFC 3326)."""
    return _hop_request(branch_request, "CANCEL", None, reason)


def last_resort_response(data: bytes, status: int, reason: str) -> bytes | None:
    """A response to a request too broken for the parser, or ``None`` if none is due.

    RFC 4475 asks for a 400 even to requests whose start line or headers are malformed;
    as long as the Via, From, To, Call-ID and CSeq lines can be found they are echoed.
    Responses and ACKs are never answered.
    """
    head = data.split(b"\r\n\r\n", 1)[0]
    lines = head.split(_CRLF)
    if not lines or lines[0].startswith(b"SIP/"):
        return None
    echoed: list[bytes] = []
    seen: set[bytes] = set()
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        canonical = _ECHO_HEADERS.get(name.strip().lower())
        if canonical is None:
            continue
        if canonical == b"CSeq" and value.strip().upper().endswith(b"ACK"):
            return None
        if canonical != b"Via" and canonical in seen:
            continue
        seen.add(canonical)
        echoed.append(canonical + b": " + value.strip())
    if b"Via" not in seen or b"CSeq" not in seen:
        return None
    phrase = _SAFE_REASON.sub(b"?", reason.encode("ascii", "replace"))[:120]
    start = b"SIP/2.0 %d %s" % (status, phrase)
    return _CRLF.join([start, *echoed, b"Content-Length: 0", b"", b""])
