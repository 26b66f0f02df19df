"""OPTIONS addressed to the gateway itself: what we are and whether we take calls.

Health probes (trunks, load balancers, `sipp`) send these; the answer is cheap and
never needs authentication. While draining the answer is 503 with Retry-After so a
balancer moves new calls elsewhere (handled by the caller of ``options_headers``).
"""

from __future__ import annotations

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
