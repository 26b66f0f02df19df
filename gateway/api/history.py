"""Call history: one row per call, built from the tenant's event stream.

No store of its own: the rows come from the same Redis stream that subscriptions replay
(``{tenant}:events``), so history reaches back exactly as far as the stream's retention
(``events.stream_maxlen`` / ``stream_max_age``), and a number erased for privacy is gone
from it too. Nothing here knows HTTP (gateway/api/me.py serves it).

A row is a call that ended: every call ends with exactly one ``call.failed`` or
``call.cleared`` (docs/events.md), which repeats the call's parties, times, cause and
``missed``. Rows are ordered newest ending first, and a row's place is the ``seq`` of
that last event, so a page's cursor is simply the ``seq`` to read on from. The contact
was recognized on ``call.offered`` (or a later ``call.recognized``): the stream is read
backwards from the cursor, and after a call's last event its earlier ones are picked up
until its ``call.offered``. Calls still going on are not rows yet; the live events show
them.

Outcome (``OUTCOMES``), from the last event:

    answered   call.cleared: the call was answered
    missed     call.failed with missed = true: nobody answered an inbound or internal
               call before the caller gave up or it rang out
    busy       call.failed, cause busy
    cancelled  call.failed, cause cancelled, not missed: the caller (our user, on an
               outbound call) hung up while it rang, or it was answered elsewhere
    failed     any other call.failed (rejected, no answer on an outbound call, diverted,
               replaced, timeout, error): ``cause`` says which

A request reads at most ``MAX_SCAN`` stream entries. When that is not enough to fill a
page (a user's few calls among a busy tenant's) the page is shorter and its cursor says
where to go on; a call whose first event lies even further back keeps its row, without
the contact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from gateway.bus import keys
from gateway.bus.streams import ReplayPage

OUTCOMES = ("answered", "missed", "busy", "failed", "cancelled")
DIRECTIONS = ("inbound", "outbound", "internal")
LAST_EVENTS = frozenset({"call.failed", "call.cleared"})
PAGE = 500  # stream entries per read
MAX_SCAN = 10_000  # stream entries per request at most
MAX_LIMIT = 200  # rows per page
# A call's first event is in the stream no earlier than its created_at, give or take
# the clocks of the node and of Redis (which numbers the entries): past this much before
# it, the first event is not coming (trimmed away with the retention).
CLOCK_SLACK_MS = 60_000
MIN_DIGITS = 3  # a search with fewer digits is text only


class StreamReader(Protocol):
    """What the history needs of the bus (EventBus is one)."""

    async def older_page(
        self, tenant: str, before: str | None, *, count: int = ...
    ) -> ReplayPage: ...


@dataclass(frozen=True)
class HistoryQuery:
    """What a page of history holds. ``visible`` is what the reader may see (None: the
    whole tenant); every other field narrows it."""

    visible: frozenset[str] | None
    extensions: frozenset[str] = frozenset()  # empty: every visible one
    since: float | None = None  # the call started at or after (Unix time)
    until: float | None = None  # ... and before
    direction: str | None = None
    missed: bool | None = None
    q: str | None = None  # a number or a part of one, a recognized name or company
    limit: int = 50
    before: str | None = None  # the cursor: rows whose last event precedes this seq

    def admits(self, last: dict[str, Any], started: float) -> bool:
        """The filters a call's last event decides (all but ``q``)."""
        extension = last.get("extension")
        if self.visible is not None and extension not in self.visible:
            return False
        if self.extensions and extension not in self.extensions:
            return False
        if self.direction is not None and last.get("direction") != self.direction:
            return False
        if self.missed is not None and bool(last.get("missed")) != self.missed:
            return False
        if self.since is not None and started < self.since:
            return False
        return self.until is None or started < self.until

    def matches(self, row: CallRow) -> bool:
        if not self.q:
            return True
        needle = self.q.casefold()
        contact = row.contact or {}
        texts = (row.from_display, row.to_display, contact.get("name"), contact.get("company"))
        if any(needle in str(t).casefold() for t in texts if t is not None):
            return True
        # Digits as digits: "+31 6 1234", "06-1234" and "0612345678" all find +31612345678.
        digits = re.sub(r"\D", "", self.q).lstrip("0")
        if len(digits) < MIN_DIGITS:
            return any(needle in n.casefold() for n in row.numbers())
        return any(digits in re.sub(r"\D", "", n) for n in row.numbers())


@dataclass
class CallRow:
    """A call's row, from its last event, completed by earlier ones read after it."""

    seq: str  # of the call's last event: the row's place in the history
    call_id: str
    conversation_id: str | None
    direction: str | None
    extension: str | None
    from_number: str | None
    to_number: str | None
    from_display: str | None
    to_display: str | None
    started_at: str | None
    answered_at: str | None
    ended_at: str | None
    duration_s: int
    outcome: str
    missed: bool
    cause: str | None
    started: float  # started_at as Unix time (or the last event's, if absent)
    contact: dict[str, Any] | None = None
    screen_pop: list[dict[str, Any]] = field(default_factory=list)
    raw_numbers: list[str] = field(default_factory=list)
    complete: bool = False  # its first event (call.offered) has been read

    @classmethod
    def from_last(cls, seq: str, last: dict[str, Any]) -> CallRow:
        calling, called = _party(last, "calling"), _party(last, "called")
        cause = last.get("cause")
        normalized = cause.get("normalized") if isinstance(cause, dict) else None
        answered = last.get("type") == "call.cleared"
        duration_ms = last.get("duration_ms")
        row = cls(
            seq=seq,
            call_id=str(last["call_id"]),
            conversation_id=last.get("conversation_id"),
            direction=last.get("direction"),
            extension=last.get("extension"),
            from_number=_number(calling),
            to_number=_number(called),
            from_display=calling.get("display"),
            to_display=called.get("display"),
            started_at=last.get("created_at"),
            answered_at=last.get("answered_at"),
            ended_at=last.get("ended_at"),
            duration_s=round(duration_ms / 1000) if isinstance(duration_ms, int) else 0,
            outcome=outcome(answered, bool(last.get("missed")), normalized),
            missed=bool(last.get("missed")),
            cause=normalized,
            started=started_of(seq, last),
        )
        row.raw_numbers = [n for n in (calling.get("number_raw"), called.get("number_raw")) if n]
        row.add_earlier(last)
        return row

    def add_earlier(self, event: dict[str, Any]) -> None:
        """An event of this call older than the ones already read (or the last one)."""
        lookup = event.get("lookup")
        if self.contact is None and isinstance(lookup, dict):
            contact = lookup.get("contact")
            if isinstance(contact, dict):
                self.contact = contact
        pops = event.get("screen_pop")
        if not self.screen_pop and isinstance(pops, list):
            self.screen_pop = pops
        # Recognition may be what filled in a party's E.164 form (call.recognized).
        if self.from_number is None or not self.from_number.startswith("+"):
            self.from_number = _number(_party(event, "calling")) or self.from_number
        if self.to_number is None or not self.to_number.startswith("+"):
            self.to_number = _number(_party(event, "called")) or self.to_number
        if event.get("type") == "call.offered":
            self.complete = True

    def numbers(self) -> list[str]:
        return [n for n in (self.from_number, self.to_number, *self.raw_numbers) if n]

    def to_dict(self) -> dict[str, Any]:
        return {
            "conversation_id": self.conversation_id,
            "call_id": self.call_id,
            "direction": self.direction,
            "from": self.from_number,
            "to": self.to_number,
            "from_display": self.from_display,
            "to_display": self.to_display,
            "extension": self.extension,
            "contact": self.contact,
            "screen_pop": self.screen_pop,
            "started_at": self.started_at,
            "answered_at": self.answered_at,
            "ended_at": self.ended_at,
            "duration_s": self.duration_s,
            "outcome": self.outcome,
            "missed": self.missed,
            "cause": self.cause,
        }


def outcome(answered: bool, missed: bool, cause: str | None) -> str:
    """One of `OUTCOMES` (see the module docstring)."""
    if answered:
        return "answered"
    if missed:
        return "missed"
    if cause in ("busy", "cancelled"):
        return cause
    return "failed"


@dataclass(frozen=True)
class HistoryPage:
    rows: list[CallRow]
    next_cursor: str | None  # None: nothing older qualifies

    def to_dict(self) -> dict[str, Any]:
        return {"calls": [r.to_dict() for r in self.rows], "next_cursor": self.next_cursor}


async def history_page(
    reader: StreamReader,
    tenant: str,
    query: HistoryQuery,
    *,
    page_size: int = PAGE,
    max_scan: int = MAX_SCAN,
) -> HistoryPage:
    """One page of `tenant`'s call history as `query` asks (see the module docstring).
    Raises what the reader raises (redis errors, ValueError for a bad cursor)."""
    rows: list[CallRow] = []
    by_call: dict[str, CallRow] = {}
    late: dict[str, list[dict[str, Any]]] = {}  # call.recognized read before its call ended
    before = query.before
    since_ms = None if query.since is None else query.since * 1000 - CLOCK_SLACK_MS
    past_since = False  # the scan is older than any call of `since` can have ended
    scanned = 0
    while True:
        page = await reader.older_page(tenant, before, count=page_size)
        for seq, event in page.events:
            if since_ms is not None and _ms(seq) < since_ms:
                past_since = True
            call_id = event.get("call_id")
            if not isinstance(call_id, str):
                continue  # peer.up / peer.down
            row = by_call.get(call_id)
            if row is not None:
                row.add_earlier(event)
            elif event.get("type") in LAST_EVENTS and not past_since:
                found = CallRow.from_last(seq, event)
                if query.admits(event, found.started):
                    for newer in late.pop(call_id, ()):
                        found.add_earlier(newer)
                    rows.append(found)
                    by_call[call_id] = found
            elif event.get("type") == "call.recognized":
                late.setdefault(call_id, []).append(event)
        scanned += page_size
        before = page.last_seq or before
        exhausted = page.exhausted or page.last_seq is None
        oldest = _ms(before) if before is not None else 0
        for row in rows:
            if exhausted or oldest < row.started * 1000 - CLOCK_SLACK_MS:
                row.complete = True  # its first event is not in the stream any more
        settled, cut = _settle(rows, query)
        if cut is not None:
            return HistoryPage(settled, cut)
        # Past `since` every row is complete too: its call started after `since`.
        if (exhausted or past_since) and all(r.complete for r in rows):
            return HistoryPage(settled, None)
        if scanned >= max_scan:
            for row in rows:
                row.complete = True
            settled, cut = _settle(rows, query)
            return HistoryPage(settled, cut if cut is not None else before)


def _settle(rows: list[CallRow], query: HistoryQuery) -> tuple[list[CallRow], str | None]:
    """The rows of the page as far as they are known: in order, up to the first row
    still incomplete, those that match; with the cursor once ``limit`` is reached."""
    accepted: list[CallRow] = []
    for row in rows:
        if not row.complete:
            break
        if query.matches(row):
            accepted.append(row)
            if len(accepted) == query.limit:
                return accepted, row.seq
    return accepted, None


def _party(event: dict[str, Any], name: str) -> dict[str, Any]:
    party = event.get(name)
    return party if isinstance(party, dict) else {}


def _number(party: dict[str, Any]) -> str | None:
    found = party.get("number_e164") or party.get("number_raw")
    return str(found) if found else None


def _ms(seq: str) -> int:
    return keys.parse_seq(seq)[0]


def started_of(seq: str, event: dict[str, Any]) -> float:
    """When the call started, as Unix time: its ``created_at``, else its last event's
    place in the stream."""
    text = event.get("created_at")
    if isinstance(text, str):
        try:
            return datetime.fromisoformat(text).timestamp()
        except ValueError:
            pass
    return _ms(seq) / 1000


def parse_time(name: str, text: str) -> float:
    """A query's time (RFC 3339; a date alone is its midnight; no offset is UTC) as
    Unix time; ValueError naming the parameter."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{name}: expected an RFC 3339 time like 2024-05-01T10:00:00Z, got {text[:40]!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()
