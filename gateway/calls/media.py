"""Session descriptions for the gateway's own call legs, which carry no media.

Click-to-dial's first leg only has to make the user's phone answer; the audio starts on
the call the phone then places (REFER) or on the bridged destination (3PCC). So the
gateway offers and answers *parked* streams (RFC 3264): a valid codec on the discard
port 9 of its own address. The offer is `sendrecv`, an ordinary call: a phone that
sees `inactive` believes the call already paused and then cannot pause it to follow
the REFER (Linphone terminates the new call: "another call is already locking the
sound resource"). What a phone sends to port 9 for the moment before it pauses the
call is discarded by the gateway's host. An answer takes the direction the offer
allows (RFC 3264 §6.1), so a hold is answered as a hold.

In 3PCC the gateway relays the two phones' own descriptions; when one side re-offers
(hold, resume) it answers from the other side's last description, with the direction
the offer allows (RFC 3264 §6.1) — see `mirror_answer`.
"""

from __future__ import annotations

import ipaddress

__all__ = ["mirror_answer", "parked_answer", "parked_offer"]

_ANSWER_DIRECTION = {
    b"sendonly": b"recvonly",
    b"recvonly": b"sendonly",
    b"inactive": b"inactive",
    b"sendrecv": b"sendrecv",
}
_DIRECTIONS = frozenset(_ANSWER_DIRECTION)


def _address(host: str) -> str:
    try:
        family = "IP6" if ipaddress.ip_address(host.strip("[]")).version == 6 else "IP4"
    except ValueError:
        family = "IP4"
    return f"IN {family} {host.strip('[]')}"


def _session(host: str, session_id: int, version: int) -> list[str]:
    address = _address(host)
    return ["v=0", f"o=sipgw {session_id} {version} {address}", "s=sipgw", f"c={address}", "t=0 0"]


def parked_offer(host: str, session_id: int, version: int = 1) -> bytes:
    """An audio offer (PCMU, PCMA, telephone-event) to the discard port."""
    lines = [
        *_session(host, session_id, version),
        "m=audio 9 RTP/AVP 0 8 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=sendrecv",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


def parked_answer(offer: bytes, host: str, session_id: int, version: int = 1) -> bytes:
    """An answer to `offer` accepting each stream's first format on port 9, in the
    direction the offer allows; streams already refused (port 0) stay refused, with
    their formats (RFC 3264 §6)."""
    lines = _session(host, session_id, version)
    for media, attributes in _streams(offer):
        parts = media.split()
        if len(parts) < 4:
            continue
        kind, port, proto, formats = parts[0], parts[1], parts[2], parts[3:]
        if port.split(b"/")[0] == b"0":
            lines.append("m=" + b" ".join([kind, b"0", proto, *formats]).decode(errors="replace"))
            continue
        chosen = formats[0]
        lines.append("m=" + b" ".join([kind, b"9", proto, chosen]).decode(errors="replace"))
        for attribute in attributes:
            name, _, value = attribute.partition(b":")
            if name in (b"rtpmap", b"fmtp") and value.split(b" ", 1)[0] == chosen:
                lines.append("a=" + attribute.decode(errors="replace"))
        lines.append("a=" + _ANSWER_DIRECTION[_direction(attributes)].decode())
    return ("\r\n".join(lines) + "\r\n").encode()


def mirror_answer(offer: bytes, last: bytes, version: int) -> bytes:
    """An answer to a re-offer made of the other side's last description `last`: the
    same media, its `o=` version set to `version`, each stream's direction the one the
    offer allows (sendonly → recvonly, inactive → inactive, …)."""
    wanted = [_direction(attributes) for _, attributes in _streams(offer)]
    out: list[bytes] = []
    index = -1
    for raw in last.replace(b"\r\n", b"\n").split(b"\n"):
        if not raw:
            continue
        if raw.startswith(b"o="):
            parts = raw.split()
            if len(parts) >= 3:
                parts[2] = str(version).encode()
                raw = b" ".join(parts)
        elif raw.startswith(b"m="):
            index += 1
            out.append(raw)
            if index < len(wanted):
                out.append(b"a=" + _ANSWER_DIRECTION[wanted[index]])
            continue
        elif raw[2:] in _DIRECTIONS and raw.startswith(b"a=") and index >= 0:
            continue  # replaced by the direction written after the m= line
        out.append(raw)
    return b"\r\n".join(out) + b"\r\n"


def _streams(body: bytes) -> list[tuple[bytes, list[bytes]]]:
    """(m= line value, its a= values) for each media stream, in order."""
    streams: list[tuple[bytes, list[bytes]]] = []
    session_direction = b"sendrecv"
    for raw in body.replace(b"\r\n", b"\n").split(b"\n"):
        if raw.startswith(b"m="):
            streams.append((raw[2:], []))
        elif raw.startswith(b"a="):
            if streams:
                streams[-1][1].append(raw[2:])
            elif raw[2:] in _DIRECTIONS:
                session_direction = raw[2:]
    if session_direction != b"sendrecv":
        for _, attributes in streams:
            if not any(a in _DIRECTIONS for a in attributes):
                attributes.append(session_direction)
    return streams


def _direction(attributes: list[bytes]) -> bytes:
    for attribute in attributes:
        if attribute in _DIRECTIONS:
            return attribute
    return b"sendrecv"
