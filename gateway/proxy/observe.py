"""What the proxy tells the layers above about the messages it handles.

The call tracker (gateway/calls) sits above the proxy and cannot be imported here; the
proxy hands every message that matters for call state to an ``Observer`` callback with
what routing learned about it, and the wiring in app.py feeds the tracker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.proxy.caller_display import Shown
from gateway.sip.message import Request, Response


@dataclass(slots=True, unsafe_hash=True)
class Observed:
    tenant: str | None  # known for initial INVITEs; None for in-dialog messages
    direction: str | None  # "inbound" | "outbound" | "internal"
    extension: str | None
    local: bool  # a response the gateway generated (or chose among forks) itself
    source: str  # "udp:127.0.0.1:5060"; empty for local responses
    user_agent: str | None
    # From the peer's SIP profile (initial INVITEs only): the headers that name the
    # caller, in order of trust, and the region its national numbers are read in.
    caller_id: tuple[str, ...] = ()
    region: str | None = None
    # The recognized name the callee's copy of the INVITE shows (caller_display.py).
    shown: Shown | None = None


Observer = Callable[[Request | Response, Observed], None]
