"""Just enough SDP (RFC 4566, RFC 3264 §8.4) to see a call put on hold.

`audio_direction(body)` is the direction of the first audio stream that is in use
(`m=audio` with a port other than 0): its own `a=sendrecv|sendonly|recvonly|inactive`,
else the session-level one, else `sendrecv` (RFC 4566 §6 default). A connection address
of 0.0.0.0 (RFC 2543 hold, still sent by old phones; `::` likewise) for that stream —
its own `c=` line, else the session's — means "do not send to me", so the receive half
is taken away: sendrecv → sendonly, recvonly → inactive.

`holds(direction)`: an offer in `sendonly` or `inactive` puts the other party on hold
(RFC 6337 §5). No audio stream (or no SDP at all) → `None`: "no opinion".

Lines are scanned as bytes, nothing else is parsed; a multipart body (SDP next to ISUP)
works too, since only `m=`, `a=` and `c=` lines are looked at.
"""

from __future__ import annotations

__all__ = ["DIRECTIONS", "audio_direction", "holds", "is_sdp"]

DIRECTIONS = frozenset({"sendrecv", "sendonly", "recvonly", "inactive"})
_BYTE_DIRECTIONS = {d.encode(): d for d in DIRECTIONS}
_NO_RECEIVE = {"sendrecv": "sendonly", "recvonly": "inactive"}
_NULL_ADDRESSES = frozenset({b"0.0.0.0", b"::"})


def is_sdp(content_type: str | None) -> bool:
    """A body worth scanning: SDP, multipart (may hold SDP) or untyped."""
    if content_type is None:
        return True
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/sdp" or kind.startswith("multipart/")


def audio_direction(body: bytes) -> str | None:
    """The effective direction of the first audio stream in use, or None without one."""
    session_direction: str | None = None
    session_null = False
    media_direction: str | None = None
    media_null: bool | None = None
    section = 0  # 0: session level, 1: the audio stream we want, 2: some other stream
    found = False
    for raw in body.split(b"\n"):
        if len(raw) < 2 or raw[1:2] != b"=":
            continue
        kind = raw[:1]
        if kind == b"m":
            if found:
                break  # the end of the first audio stream in use
            parts = raw[2:].split()
            if len(parts) >= 2 and parts[0] == b"audio" and parts[1].split(b"/")[0] != b"0":
                section, found = 1, True
            else:
                section = 2
        elif kind == b"a":
            direction = _BYTE_DIRECTIONS.get(raw[2:].strip())
            if direction is None:
                continue
            if section == 0:
                session_direction = direction
            elif section == 1:
                media_direction = direction
        elif kind == b"c" and section != 2:
            parts = raw[2:].split()
            null = len(parts) >= 3 and parts[2].split(b"/")[0] in _NULL_ADDRESSES
            if section == 0:
                session_null = null
            else:
                media_null = null
    if not found:
        return None
    direction = media_direction or session_direction or "sendrecv"
    if media_null if media_null is not None else session_null:
        direction = _NO_RECEIVE.get(direction, direction)
    return direction


def holds(direction: str | None) -> bool | None:
    """Does an offer with this direction put the other party on hold? None: unknown."""
    if direction is None:
        return None
    return direction in ("sendonly", "inactive")
