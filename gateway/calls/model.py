"""The call model: states, the signals that move them, and the transition table.

CSTA (ECMA-269) call states as one call leg through the gateway sees them:

                         INVITE
              idle ─────────────────▶ offered ──── DIVERT (181, 3xx, Diversion):
                                       │  │  │      call.diverted, state unchanged
                           RINGING     │  │  │
                  (first 180/183)      │  │  │ REJECT (final ≥ 300) / TIMEOUT
                     ┌─────────────────┘  │  └──────────────────────────────┐
                     ▼                    │ ANSWER                          ▼
                 delivered ───────────────┤ (first 2xx)                   failed
                  │  DIVERT: diverted     │                                  ▲
                  │  REJECT / TIMEOUT ────┼──────────────────────────────────┘
                  │  ANSWER               ▼
                  └───────────────▶ established ◀──── RETRIEVE ────┐
                                     │  │  │  TRANSFER: call.transferred,
                                     │  │  │            state unchanged
                                     │  │  └── HOLD ─────▶ held ───┘
                                     │  │                   │ TRANSFER (unchanged)
                          BYE /      │  │                   │ BYE / TIMEOUT
                          TIMEOUT    ▼  ▼                   ▼
                                      cleared ◀─────────────┘

Every event names its state after the transition and the state before (`prev_state`;
`idle` for call.offered). Anything not in `TRANSITIONS` is ignored: a late 180 after the
200, a 2xx retransmission, a second BYE, a losing fork's 487 — nothing moves a call
backwards and no retransmission emits an event twice. `cleared` and `failed` are final.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from gateway.calls.events import (
    CallerDisplay,
    Cause,
    Device,
    Diversion,
    Originate,
    Party,
    Transfer,
)

__all__ = [
    "ACTIVE",
    "ENDED",
    "TRANSITIONS",
    "Call",
    "Offer",
    "Signal",
    "State",
    "transition",
]


class State(enum.StrEnum):
    IDLE = "idle"
    OFFERED = "offered"
    DELIVERED = "delivered"
    ESTABLISHED = "established"
    HELD = "held"
    CLEARED = "cleared"
    FAILED = "failed"


class Signal(enum.StrEnum):
    INVITE = "invite"  # an initial INVITE (no To tag) for a new call
    RINGING = "ringing"  # 180 / 183 to the initial INVITE
    ANSWER = "answer"  # 2xx to the initial INVITE
    REJECT = "reject"  # the call attempt's final answer ≥ 300
    DIVERT = "divert"  # 181, 3xx, or an initial INVITE with Diversion/History-Info
    HOLD = "hold"  # an accepted offer leaves the audio sendonly/inactive
    RETRIEVE = "retrieve"  # … and back to sendrecv
    TRANSFER = "transfer"  # a REFER in the dialog got its 2xx
    BYE = "bye"  # BYE in the confirmed dialog, from either side
    TIMEOUT = "timeout"  # the tracker gave up waiting (see tracker.py)


S, G = State, Signal

# (state, signal) → (next state, event type). The table *is* the call model.
TRANSITIONS: Final[Mapping[tuple[State, Signal], tuple[State, str | None]]] = {
    (S.IDLE, G.INVITE): (S.OFFERED, "call.offered"),
    (S.OFFERED, G.RINGING): (S.DELIVERED, "call.delivered"),
    (S.OFFERED, G.ANSWER): (S.ESTABLISHED, "call.established"),
    (S.OFFERED, G.REJECT): (S.FAILED, "call.failed"),
    (S.OFFERED, G.TIMEOUT): (S.FAILED, "call.failed"),
    (S.OFFERED, G.DIVERT): (S.OFFERED, "call.diverted"),
    (S.DELIVERED, G.ANSWER): (S.ESTABLISHED, "call.established"),
    (S.DELIVERED, G.REJECT): (S.FAILED, "call.failed"),
    (S.DELIVERED, G.TIMEOUT): (S.FAILED, "call.failed"),
    (S.DELIVERED, G.DIVERT): (S.DELIVERED, "call.diverted"),
    (S.ESTABLISHED, G.HOLD): (S.HELD, "call.held"),
    (S.ESTABLISHED, G.TRANSFER): (S.ESTABLISHED, "call.transferred"),
    (S.ESTABLISHED, G.BYE): (S.CLEARED, "call.cleared"),
    (S.ESTABLISHED, G.TIMEOUT): (S.CLEARED, "call.cleared"),
    (S.HELD, G.RETRIEVE): (S.ESTABLISHED, "call.retrieved"),
    (S.HELD, G.TRANSFER): (S.HELD, "call.transferred"),
    (S.HELD, G.BYE): (S.CLEARED, "call.cleared"),
    (S.HELD, G.TIMEOUT): (S.CLEARED, "call.cleared"),
}

del S, G

ENDED: Final = frozenset({State.CLEARED, State.FAILED})
RINGING_STATES: Final = frozenset({State.OFFERED, State.DELIVERED})
ACTIVE: Final = frozenset({State.ESTABLISHED, State.HELD})  # a confirmed dialog


def transition(state: State, signal: Signal) -> tuple[State, str | None] | None:
    """The next state and the event to emit, or None: the signal is ignored here."""
    return TRANSITIONS.get((state, signal))


class Offer(NamedTuple):
    """An SDP offer seen in the dialog, applied when its request gets a 2xx."""

    side: str  # "caller" | "callee": who made the offer
    hold: bool | None  # does it put the other side on hold (None: no audio / unknown)
    in_answer: bool = False  # a bodiless re-INVITE: the offer comes in the 2xx


@dataclass(slots=True, eq=False)
class Call:
    """One call: an initial INVITE's Call-ID + From tag, its forks, its dialog."""

    call_id: str  # the gateway's id (UUIDv7)
    tenant: str
    sip_call_id: str
    from_tag: str
    conversation_id: str
    direction: str
    extension: str | None
    calling: Party
    called: Party
    created: float  # epoch seconds of the initial INVITE
    created_at: str  # the same, RFC 3339 (formatted once)
    invite_cseq: int  # CSeq of the (latest) initial INVITE: its responses are "ours"
    parent_call_id: str | None = None
    state: State = State.IDLE
    to_tag: str | None = None  # the confirmed dialog's To tag (set by the 2xx)
    device: Device | None = None
    answered: float | None = None
    answered_at: str | None = None
    ended: float | None = None
    forget_at: float = 0.0
    cause: Cause | None = None
    missed: bool | None = None
    transfer: Transfer | None = None
    diversion: Diversion | None = None
    originate: Originate | None = None  # click-to-dial: the request this call serves
    caller_display: CallerDisplay | None = None  # the name the callee's phone was shown
    # --- bookkeeping, never on the wire -------------------------------------------------
    early: set[str] = field(default_factory=set)  # To tags of branches ringing, no final
    diverted_by: set[str] = field(default_factory=set)  # 181 branches already reported
    cancelled: bool = False  # a CANCEL of the initial INVITE was seen
    completed_elsewhere: bool = False  # … with Reason: SIP;cause=200
    cancel_reason: str | None = None
    cancel_cause: str | None = None  # normalized, from the CANCEL's Reason (cause=480 …)
    replaced: bool = False  # an INVITE with Replaces named this call's dialog
    retry: tuple[int, str | None, float] | None = None  # (status, reason, when) of a
    # final the caller is expected to retry (401/407/422/494), waiting for that retry
    holding: set[str] = field(default_factory=set)  # sides holding the other
    offers: dict[tuple[str, int, str], Offer] = field(default_factory=dict)
    offer_cseq: dict[str, int] = field(default_factory=dict)  # highest offer CSeq per tag
    refers: dict[tuple[str, int], Transfer | None] = field(default_factory=dict)
    session_expires: float | None = None
    deadline: float | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.sip_call_id, self.from_tag)
