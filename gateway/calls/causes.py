"""Why a call ended: SIP status codes and Reason headers → `cause.normalized`.

The final response to the initial INVITE decides, by this table (exact codes first,
then the class default). It is the whole contract; docs/events.md repeats it.

    code                                   normalized   why
    -------------------------------------  -----------  ---------------------------------
    486 Busy Here, 600 Busy Everywhere      busy
    408 Request Timeout,                    no_answer    rang out (Timer C, the phone's
    480 Temporarily Unavailable                          own no-answer timer) or nobody
                                                         reachable / do-not-disturb
    487 Request Terminated                  cancelled    the caller hung up first (CANCEL)
    401, 402, 403, 407, 433,                rejected     refused: by the callee (603
    603 Decline, 607 Unwanted, 608                       Decline, 607, 608) or by the
    Rejected                                             network (403, auth, anonymity)
    404, 410, 484, 485, 604                 rejected     the number does not exist or is
                                                         incomplete: refused by the network
    other 4xx, 5xx                          error        the attempt broke (codec mismatch
                                                         488, loops, server errors, 503)
    other 6xx (606 Not Acceptable)          rejected
    3xx                                     diverted     redirected elsewhere (a
                                                         call.diverted precedes it)

Not from a status code:

    BYE in a confirmed dialog               normal
    the call was replaced (RFC 3891)        replaced     an INVITE with Replaces took it
                                                         over (attended transfer, pickup)
    the tracker gave up waiting             timeout      no final response within the
                                                         set-up timeout, or an answered
                                                         call with no BYE and no sign of
                                                         life (session timer expired)

A CANCEL whose Reason (RFC 3326) carries cause 408, 480, 486, 600 or 603 says why the
canceller gave up: the 487 that follows ends the call with that cause's normalized value
(click-to-dial's `SIP;cause=480;text="Phone did not answer"` → `no_answer`).

`sip_reason` is the `text` of the Reason header (RFC 3326) when there is one, else the
Reason header as written, else (for a final response) its reason phrase. A CANCEL whose
Reason says `SIP;cause=200` ("call completed elsewhere") means the call was answered by
another device: it fails as `cancelled` but is not `missed`.
"""

from __future__ import annotations

from gateway.sip.headers import parse_params, split_values, unquote

__all__ = [
    "CANCEL_CAUSES",
    "MISSED_CAUSES",
    "STATUS_CAUSES",
    "Reason",
    "from_status",
    "parse_reason",
    "reason_text",
]

STATUS_CAUSES: dict[int, str] = {
    486: "busy",
    600: "busy",
    408: "no_answer",
    480: "no_answer",
    487: "cancelled",
    401: "rejected",
    402: "rejected",
    403: "rejected",
    407: "rejected",
    433: "rejected",
    603: "rejected",
    607: "rejected",
    608: "rejected",
    404: "rejected",
    410: "rejected",
    484: "rejected",
    485: "rejected",
    604: "rejected",
}

# Reason causes on a CANCEL that say more than "the caller hung up": the 487 that
# follows ends the call with this cause instead of `cancelled` (no answer in time,
# busy elsewhere, declined by the canceller's user).
CANCEL_CAUSES = frozenset({408, 480, 486, 600, 603})

_CLASS_CAUSES = {3: "diverted", 4: "error", 5: "error", 6: "rejected"}

# A call that ended with one of these, unanswered, inbound or internal, was missed: the
# caller wanted someone who did not pick up (not: was busy, refused, or broken).
MISSED_CAUSES = frozenset({"no_answer", "cancelled"})

_MAX_REASON = 256


def from_status(status: int) -> str:
    """The normalized cause of a final response ≥ 300 to the initial INVITE."""
    return STATUS_CAUSES.get(status) or _CLASS_CAUSES.get(status // 100, "error")


class Reason:
    """One Reason header value (RFC 3326): `SIP;cause=200;text="Call completed elsewhere"`."""

    __slots__ = ("cause", "protocol", "text")

    def __init__(self, protocol: str, cause: int | None, text: str | None) -> None:
        self.protocol = protocol
        self.cause = cause
        self.text = text

    @property
    def completed_elsewhere(self) -> bool:
        """RFC 3326 §2 / RFC 3261 forking: answered by another branch or device."""
        return self.protocol.upper() == "SIP" and self.cause == 200


def parse_reason(values: list[str]) -> Reason | None:
    """The first well-formed Reason among the header lines given (None if none is)."""
    for line in values:
        try:
            items = split_values(line, header="Reason")
        except ValueError:
            continue
        for item in items:
            protocol, _, rest = item.partition(";")
            protocol = protocol.strip(" \t")
            if not protocol:
                continue
            try:
                params = parse_params(rest, header="Reason") if rest else {}
            except ValueError:
                params = {}
            cause_text = params.get("cause")
            cause = int(cause_text) if cause_text and cause_text.isdigit() else None
            text = params.get("text")
            return Reason(protocol, cause, unquote(text) if text else None)
    return None


def reason_text(values: list[str]) -> str | None:
    """`sip_reason` from Reason header lines: its text, else the value as written."""
    if not values:
        return None
    reason = parse_reason(values)
    if reason is not None and reason.text:
        return _bounded(reason.text)
    return _bounded(values[0].strip(" \t")) or None


def _bounded(text: str) -> str:
    return text[:_MAX_REASON]
