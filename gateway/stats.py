"""Hot-path counters.

The SIP path counts every datagram; a Prometheus client call per message costs a lock
and several dict look-ups. Here a counter is a plain ``dict[key, int]`` increment, and
``api/metrics.py`` folds the totals into Prometheus families when it is scraped
(DESIGN.md: "batch hot-path metrics").

Label values must come from small closed sets (methods, status classes, reasons);
never a number, a URI or a call id.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any

# Methods we name in metrics; anything else is folded into "other" so a peer sending
# invented methods cannot grow the label set.
KNOWN_METHODS = frozenset(
    {
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "OPTIONS",
        "REGISTER",
        "PRACK",
        "SUBSCRIBE",
        "NOTIFY",
        "PUBLISH",
        "INFO",
        "REFER",
        "MESSAGE",
        "UPDATE",
    }
)


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


def status_class(status: int) -> str:
    return f"{status // 100}xx"


# Why a call ended: the `cause.normalized` values of call.cleared / call.failed
# (gateway/calls/causes.py; this layer may not import it). Anything else is "other".
CALL_OUTCOMES = frozenset(
    {
        "normal",
        "busy",
        "no_answer",
        "cancelled",
        "rejected",
        "error",
        "diverted",
        "replaced",
        "timeout",
    }
)


def outcome_label(normalized: str | None) -> str:
    if normalized is None:
        return "unknown"
    return normalized if normalized in CALL_OUTCOMES else "other"


LOOKUP_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Garbage-collector pauses: the bar of issue #12 is 20 ms; seconds-long ones were seen.
GC_PAUSE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Histogram:
    """Cumulative-bucket histogram with plain-int buckets (one bisect per observation)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations <= it) pairs, "+Inf" last, as Prometheus wants."""
        result, running = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            result.append((bound, running))
        return result


@dataclass
class Counters:
    """Every counter the SIP path bumps. One instance per process."""

    # (direction "in"/"out", transport, method label) for requests
    requests: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    # (direction, transport, status class) for responses
    responses: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    # reason of a parse error, already a short fixed phrase
    parse_errors: Counter[str] = field(default_factory=Counter)
    # transactions created by kind ("client"/"server")
    transactions_created: Counter[str] = field(default_factory=Counter)
    # registrations by outcome ("ok", "auth_challenge", "auth_failed", "rejected", "removed")
    registrations: Counter[str] = field(default_factory=Counter)
    # requests we answered ourselves, by status code class and reason key
    local_replies: Counter[str] = field(default_factory=Counter)
    # transport-level events ("tcp_accepted", "tcp_refused_limit", "idle_closed", …)
    transport: Counter[str] = field(default_factory=Counter)
    # call events emitted, by type
    events: Counter[str] = field(default_factory=Counter)
    # calls ended (call.cleared / call.failed), by outcome_label(cause.normalized)
    calls_ended: Counter[str] = field(default_factory=Counter)
    # confirmed dialogs seen to start (call.established) and to end (call.cleared): the
    # tracker's model has no other way into or out of established/held, so the
    # difference is the number of dialogs up (see api/metrics.py for its bounds)
    dialogs_started: int = 0
    dialogs_ended: int = 0
    # HEP intake: received, sip (handed to the call tracker), other_proto, callback_error,
    # socket_error
    hep: Counter[str] = field(default_factory=Counter)
    # HEP packets dropped, by reason: unknown_source, no_auth_key, bad_auth_key,
    # malformed, bad_sip (gateway/calls/hep.py DROP_REASONS)
    hep_dropped: Counter[str] = field(default_factory=Counter)
    # what the SIP edge refused (issue #11): unsigned_route, stray_response,
    # destination_<why>, reply_refused_<why>, contact_<why>, reply_too_large
    security: Counter[str] = field(default_factory=Counter)
    # failed digest authentications by reason, and attempts refused while throttled
    auth_failures: Counter[str] = field(default_factory=Counter)
    # caller look-ups by (status hit/miss/error/timeout, local cache hit/miss/none)
    lookups: Counter[tuple[str, str]] = field(default_factory=Counter)
    lookup_seconds: Histogram = field(default_factory=lambda: Histogram(LOOKUP_BUCKETS))
    # contact sync: numbers upserted / deleted through the API, sources removed
    contacts: Counter[str] = field(default_factory=Counter)
    # click-to-dial requests: "accepted", then how each finished (connected, ended,
    # failed, cancelled)
    dial_requests: Counter[str] = field(default_factory=Counter)
    # the busy lamp field (gateway/blf): NOTIFYs answered or failed, and subscriptions
    # ended by the notifier, by the reason of their final NOTIFY ("ended_timeout":
    # expired or un-SUBSCRIBEd; "ended_deactivated": the process stopping)
    blf: Counter[str] = field(default_factory=Counter)
    # garbage-collector pauses of this process (gc.callbacks, gateway/gc_pauses.py): each
    # collection's duration, how many by generation, and the longest since start
    gc_pause_seconds: Histogram = field(default_factory=lambda: Histogram(GC_PAUSE_BUCKETS))
    gc_collections: Counter[str] = field(default_factory=Counter)
    gc_pause_max_seconds: float = 0.0
    gc_pause_cpu_max_seconds: float = 0.0  # the longest in CPU time (no preemption)

    def snapshot(self) -> dict[str, Any]:
        """Every counter as JSON-able data (what a worker sends to the one scraped)."""
        out: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, Counter):
                out[item.name] = [
                    [list(key) if isinstance(key, tuple) else key, count]
                    for key, count in value.items()
                ]
            elif isinstance(value, Histogram):
                out[item.name] = {"counts": value.counts, "sum": value.sum}
            else:
                out[item.name] = value
        return out

    def merge(self, snapshot: dict[str, Any]) -> None:
        """Add another worker's `snapshot()` to these counters."""
        for item in fields(self):
            theirs = snapshot.get(item.name)
            if theirs is None:
                continue
            mine = getattr(self, item.name)
            if isinstance(mine, Counter):
                for key, count in theirs:
                    mine[tuple(key) if isinstance(key, list) else key] += int(count)
            elif isinstance(mine, Histogram):
                if len(theirs["counts"]) == len(mine.counts):
                    mine.counts = [
                        a + int(b) for a, b in zip(mine.counts, theirs["counts"], strict=True)
                    ]
                    mine.sum += float(theirs["sum"])
                    mine.count = sum(mine.counts)
            elif isinstance(mine, float):  # a maximum (the longest GC pause)
                setattr(self, item.name, max(mine, float(theirs)))
            elif isinstance(mine, int):
                setattr(self, item.name, mine + int(theirs))

    def request_in(self, transport: str, method: str) -> None:
        self.requests["in", transport, method_label(method)] += 1

    def request_out(self, transport: str, method: str) -> None:
        self.requests["out", transport, method_label(method)] += 1

    def response_in(self, transport: str, status: int) -> None:
        self.responses["in", transport, status_class(status)] += 1

    def response_out(self, transport: str, status: int) -> None:
        self.responses["out", transport, status_class(status)] += 1

    def event_emitted(self, event_type: str, outcome: str | None = None) -> None:
        """One call event handed to the bus; `outcome` is its cause.normalized."""
        self.events[event_type] += 1
        if event_type == "call.established":
            self.dialogs_started += 1
        elif event_type == "call.cleared":
            self.dialogs_ended += 1
            self.calls_ended[outcome_label(outcome)] += 1
        elif event_type == "call.failed":
            self.calls_ended[outcome_label(outcome)] += 1


# Headers whose parse errors get their own label; any other name is "other" so a peer
# cannot grow the label set by inventing header names.
_LABELLED_HEADERS = frozenset(
    {
        "Via",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Max-Forwards",
        "Contact",
        "Content-Length",
        "Route",
        "Record-Route",
        "Expires",
        "Authorization",
        "Proxy-Authorization",
    }
)


def parse_error_label(status: int, header: str | None) -> str:
    """A bounded label for a parse error: the answer code and the header at fault."""
    where = header if header in _LABELLED_HEADERS else ("start-line" if header is None else "other")
    return f"{status}:{where}"
