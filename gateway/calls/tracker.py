"""The call tracker: SIP messages in, `CallEvent`s out. Sans-I/O, no clock of its own.

`CallTracker.observe(msg, meta)` is fed every request and response the proxy receives
(from either side of a call) and the final answers to INVITEs the proxy generates or
chooses among forks (`meta.local`); the HEP intake feeds it the same way. It returns the
events that message causes (usually none or one) after a few dict look-ups by Call-ID;
SDP is scanned only for in-dialog offers. `expire(now)` fires the tracker's own
deadlines and forgets ended calls; `next_deadline` says when it wants to be called.

What a call is
    One initial INVITE's Call-ID + From tag (`Call.key`). Only an initial INVITE (no To
    tag) whose `meta.tenant` is set creates one. Responses with different To tags are
    forks of that call, never calls of their own. In-dialog requests find their call
    from either side: (Call-ID, From tag) is the caller's, (Call-ID, To tag) the callee's,
    and the other tag must be the confirmed dialog's To tag.

Forks and final answers
    Through the proxy, an INVITE's failed branches are not reported one by one: the one
    final answer the caller gets comes with `meta.local = True` and decides. A final
    ≥ 300 *without* `local` (monitor mode: every branch is on the wire) ends only its
    branch while another branch is still ringing (has sent a 1xx with its To tag and no
    final); the last one decides. (Monitor mode cannot see a branch that has not rung
    yet: a branch failing before the other rings fails the call.)

Retries
    A 401/407/422/494 to the initial INVITE is usually followed by the same INVITE
    again (same Call-ID and From tag, next CSeq, RFC 3261 §8.1.3.5): the call waits
    `retry_window` seconds for it and goes on as the same call; if it does not come,
    the call fails with that status. A new initial INVITE with a higher CSeq after the
    call *ended* (a caller following a 302) is a new call of the same conversation, its
    `parent_call_id` the ended call.

Redirection and diversion
    181 → `call.diverted` (once per branch). 3xx → `call.diverted` (reason from the
    3xx's Diversion header, else `unconditional` before ringing and `deflection` after,
    `to` = the 3xx Contact) and then `call.failed` with cause `diverted`: the attempt
    through us has ended, the caller may place the next one. An initial INVITE with
    Diversion (RFC 5806) or History-Info (RFC 7044/4458) gives `call.offered` (carrying
    the diversion) followed by `call.diverted`.

Transfers
    REFER in the confirmed dialog: on its 2xx, `call.transferred` (kind `attended` when
    Refer-To carries Replaces, else `blind`). The transferee's new call (within
    `transfer_window` seconds, same tenant) gets the transferred call's
    `conversation_id`, `parent_call_id` and `transfer`. It is matched by, in order:
    the same Replaces as in the Refer-To (exact), or the best of: Referred-By user ==
    the REFER's Referred-By (or From) user, the REFER's Refer-To user == the new
    Request-URI or To user, the new From user == the transferee (the REFER's To user);
    Referred-By alone, or target + transferee together, is enough; ties go to the newest
    REFER. An INVITE with Replaces that no REFER explains (attended transfer without
    REFER through us, call pickup) joins the replaced call's conversation. Either way the
    replaced call ends with cause `replaced` (and is not `missed`).

Hold
    An offer (re-INVITE or UPDATE body; for a bodiless re-INVITE, the 2xx body) whose
    first audio stream is sendonly/inactive (or c=0.0.0.0) means its sender holds the
    other side; sendrecv/recvonly means it does not. It counts when its request gets a
    2xx. The call is `held` while either side holds: `call.held` when the first side
    starts, `call.retrieved` when the last one stops.

Ending, timers, memory
    BYE in the confirmed dialog (either side) → `call.cleared`, cause `normal`. Ended
    calls linger `linger` seconds (retransmissions find them and change nothing), then
    `expire()` forgets them. A call with no final answer after `setup_timeout` fails
    with cause `timeout`; an answered call clears with cause `timeout` when its session
    timer (RFC 4028 Session-Expires of the last 2xx, plus 32 s) or, without one,
    `max_idle` seconds pass with no BYE and no refresh. At most `max_calls` calls are
    kept: the oldest ended call goes first, else the oldest call (`evicted` counts both).

Parties
    calling = the first usable identity among the headers the peer's profile trusts
    (`caller_id`, e.g. P-Asserted-Identity then From for a trunk; without a profile:
    P-Asserted-Identity for an inbound call, else From), From alone when the request
    asks for privacy (`Privacy: id`). called = the Request-URI as received for an
    inbound call (the DID as dialled), else To. `number_raw` is the URI user part
    (without user parameters) or the tel: number; `number_e164` is that number in E.164
    when the `e164` callback (number normalization with the tenant's or the peer's
    region, wired in by app.py) makes one of it, or when it already is E.164. Every text
    taken from SIP is cut at 512 characters and made valid UTF-8.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from gateway.calls import causes, sdp
from gateway.calls.events import (
    DIRECTIONS,
    CallerDisplay,
    CallEvent,
    Cause,
    Device,
    Diversion,
    Originate,
    Party,
    Transfer,
    rfc3339,
    uuid7,
)
from gateway.calls.model import (
    ACTIVE,
    ENDED,
    RINGING_STATES,
    Call,
    Offer,
    Signal,
    State,
    transition,
)
from gateway.sip.errors import SIPParseError
from gateway.sip.headers import NameAddr, parse_name_addr, parse_params, unquote
from gateway.sip.message import Request, Response
from gateway.sip.uri import URI, SipURI, TelURI

__all__ = [
    "CALLEE",
    "CALLER",
    "RETRY_STATUSES",
    "CallTracker",
    "Meta",
    "MetaLike",
    "Origination",
    "calling_party",
]

CALLER, CALLEE = "caller", "callee"

# Finals after which a UAC sends the INVITE again with the same Call-ID and From tag.
RETRY_STATUSES = frozenset({401, 407, 422, 494})

SESSION_GRACE = 32.0  # RFC 4028 §10: the refresher sends its BYE up to 32 s early
MAX_TRANSFERS_PER_TENANT = 1024
MAX_EXPECTED = 4096
_MAX_TEXT = 512
_MAX_EARLY = 16
_MAX_PENDING = 8
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_HISTORY_CAUSE = re.compile(r"cause=([0-9]{3})")

# RFC 4458 §3 cause values → RFC 5806 diversion reasons.
_HISTORY_REASONS = {
    "302": "unconditional",
    "486": "user-busy",
    "408": "no-answer",
    "480": "deflection",
    "487": "deflection",
    "503": "unavailable",
    "404": "unknown",
}


# (tenant, the party's URI, the peer's region or None) → the number in E.164, or None
# when it is not a phone number (anonymous, an extension, a SIP user, …).
E164Of = Callable[[str, URI, str | None], str | None]


class MetaLike(Protocol):
    """What `observe()` reads of its `meta` (the proxy's `Observed` fits as it is)."""

    @property
    def tenant(self) -> str | None: ...
    @property
    def direction(self) -> str | None: ...
    @property
    def extension(self) -> str | None: ...
    @property
    def local(self) -> bool: ...
    @property
    def source(self) -> str: ...
    @property
    def user_agent(self) -> str | None: ...
    @property
    def caller_id(self) -> tuple[str, ...]: ...
    @property
    def region(self) -> str | None: ...
    @property
    def shown(self) -> ShownLike | None: ...


class ShownLike(Protocol):
    """The name the callee's phone was shown (the proxy's caller_display.Shown)."""

    @property
    def name(self) -> str: ...
    @property
    def answered_by(self) -> str: ...
    @property
    def headers(self) -> tuple[str, ...]: ...
    @property
    def contact_source(self) -> str | None: ...


@dataclass(slots=True, unsafe_hash=True)
class Meta:
    """What the caller of observe() knows about a message."""

    tenant: str | None  # None: the tracker finds the call by its dialog
    direction: str | None  # "inbound" | "outbound" | "internal" for new calls
    extension: str | None  # callee for inbound/internal, caller for outbound
    local: bool = False  # a final answer the gateway generated or chose itself
    source: str = ""  # "udp:1.2.3.4:5060", for device info only
    user_agent: str | None = None  # User-Agent of a request, Server of a response
    caller_id: tuple[str, ...] = ()  # headers naming the caller, most trusted first
    region: str | None = None  # the peer's region for national numbers (else the tenant's)
    shown: ShownLike | None = None  # the recognized name the callee's phone was shown


@dataclass(frozen=True, slots=True)
class Origination:
    """What the gateway knows of a call it places itself (click-to-dial) before the
    INVITE is observed: its ids, the request it serves, and its parties as the user
    sees them (the From of an INVITE to the user's phone names the destination)."""

    call_id: str
    conversation_id: str
    originate: Originate
    direction: str = "outbound"
    extension: str | None = None
    calling: Party | None = None
    called: Party | None = None
    parent_call_id: str | None = None


@dataclass(slots=True, eq=False)
class _PendingTransfer:
    """A REFER waiting for the transferee's new call."""

    tenant: str
    call_id: str
    conversation_id: str
    transfer: Transfer
    refer_to_user: str | None
    transferee_user: str | None
    referred_by_user: str | None
    replaces: tuple[str, frozenset[str]] | None
    deadline: float
    owner: tuple[tuple[str, str], tuple[str, int]]  # (call key, REFER key)
    originate: Originate | None = None


_K = TypeVar("_K")
_V = TypeVar("_V")


def _bounded_put(table: dict[_K, _V], key: _K, value: _V, limit: int = _MAX_PENDING) -> None:
    if len(table) >= limit:
        del table[next(iter(table))]
    table[key] = value


class CallTracker:
    """Dialog observations → call states → `CallEvent`s (see the module docstring)."""

    def __init__(
        self,
        node: str,
        *,
        clock: Callable[[], float] = time.time,
        max_calls: int = 100_000,
        linger: float = 32.0,
        setup_timeout: float = 300.0,
        max_idle: float = 43_200.0,
        retry_window: float = 32.0,
        transfer_window: float = 30.0,
        e164: E164Of | None = None,
    ) -> None:
        if max_calls < 1:
            raise ValueError("max_calls must be at least 1")
        self.node = node
        self.clock = clock
        self.max_calls = max_calls
        self.linger = linger
        self.setup_timeout = setup_timeout
        self.max_idle = max_idle
        self.retry_window = retry_window
        self.transfer_window = transfer_window
        self.e164 = e164
        self.evicted = 0  # calls forgotten early to stay within max_calls
        self.errors = 0  # messages whose headers we could not read
        self._calls: dict[tuple[str, str], Call] = {}  # by key, oldest first
        self._ended: dict[tuple[str, str], Call] = {}  # lingering, by end time
        self._deadlines: list[tuple[float, int, Call]] = []  # heap, stale entries skipped
        self._order = itertools.count()
        self._transfers: dict[str, list[_PendingTransfer]] = {}  # by tenant, oldest first
        self._expected: dict[tuple[str, str], Origination] = {}  # by (Call-ID, From tag)

    # ----------------------------------------------------------------- public API ---
    @property
    def active_calls(self) -> int:
        """Calls not ended yet (offered, delivered, established, held)."""
        return len(self._calls) - len(self._ended)

    @property
    def tracked_calls(self) -> int:
        """Every call held in memory, the lingering ended ones included."""
        return len(self._calls)

    @property
    def next_deadline(self) -> float | None:
        """When `expire()` next has something to do (None: nothing pending)."""
        heap = self._deadlines
        while heap and not self._current(heap[0]):
            heapq.heappop(heap)
        candidates = [heap[0][0]] if heap else []
        if self._ended:
            candidates.append(next(iter(self._ended.values())).forget_at)
        candidates.extend(pending[0].deadline for pending in self._transfers.values())
        return min(candidates) if candidates else None

    def observe(
        self, msg: Request | Response, meta: MetaLike, *, now: float | None = None
    ) -> list[CallEvent]:
        """The events this message causes. `now` overrides the clock (HEP capture time)."""
        when = self.clock() if now is None else now
        try:
            if isinstance(msg, Request):
                method = msg.method
                if method == "INVITE":
                    if msg.to.tag:
                        return self._on_offer_request(msg)
                    return self._on_initial_invite(msg, meta, when)
                if method == "BYE":
                    return self._on_bye(msg, when)
                if method == "CANCEL":
                    return self._on_cancel(msg)
                if method == "REFER":
                    return self._on_refer(msg, when)
                if method == "UPDATE":
                    return self._on_offer_request(msg)
                return []
            method = msg.cseq.method
            if method == "INVITE":
                return self._on_invite_response(msg, meta, when)
            if method == "UPDATE":
                return self._on_offer_response(msg, when)
            if method == "REFER":
                return self._on_refer_response(msg, when)
            return []
        except SIPParseError:
            self.errors += 1
            return []

    def expect(self, sip_call_id: str, from_tag: str, origination: Origination) -> None:
        """The INVITE with this Call-ID and From tag, when it is observed, is the call
        the gateway places itself: it takes these ids, parties and `originate`."""
        _bounded_put(self._expected, (sip_call_id, from_tag), origination, MAX_EXPECTED)

    def expire(self, now: float) -> list[CallEvent]:
        """Fire due deadlines (events), forget calls ended `linger` ago, drop old REFERs."""
        events: list[CallEvent] = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if self._current(entry):
                call = entry[2]
                call.deadline = None
                event = self._timeout(call, now)
                if event is not None:
                    events.append(event)
        ended = self._ended
        while ended:
            key = next(iter(ended))
            call = ended[key]
            if call.forget_at > now:
                break
            del ended[key]
            if self._calls.get(key) is call:
                del self._calls[key]
        for tenant in list(self._transfers):
            pending = [p for p in self._transfers[tenant] if p.deadline > now]
            if pending:
                self._transfers[tenant] = pending
            else:
                del self._transfers[tenant]
        return events

    # ------------------------------------------------------------------- requests ---
    def _on_initial_invite(self, req: Request, meta: MetaLike, now: float) -> list[CallEvent]:
        call_id = req.call_id
        from_tag = req.from_.tag or ""
        cseq = req.cseq.number
        key = (call_id, from_tag)
        parent = self._calls.get(key)
        if parent is not None:
            if cseq <= parent.invite_cseq:
                return []  # a retransmission (or older)
            if parent.state not in ENDED:
                # The same INVITE again after a 401/407/422 (or a final we never saw).
                parent.invite_cseq = cseq
                parent.early.clear()
                if parent.retry is not None:
                    parent.retry = None
                    self._arm(parent, now + self.setup_timeout)
                return []
        tenant = meta.tenant
        if tenant is None:
            return []
        if parent is not None:
            self._forget(parent)  # the ended attempt makes room for the next one
            if parent.tenant != tenant:
                parent = None
        expected = self._expected.pop(key, None)
        direction = meta.direction if meta.direction in DIRECTIONS else "internal"
        if expected is not None:
            direction = expected.direction
        assert direction is not None
        calling_uri, calling = _calling(req, direction, meta.caller_id)
        called_uri, called = _called(req, direction)
        if self.e164 is not None:
            calling = self._normalized(calling, calling_uri, tenant, meta.region)
            called = self._normalized(called, called_uri, tenant, meta.region)
        transfer: Transfer | None = None
        originate: Originate | None = None
        call_uuid = uuid7(now)
        if expected is not None:
            call_uuid, originate = expected.call_id, expected.originate
            conversation_id, parent_call_id = expected.conversation_id, expected.parent_call_id
            calling = expected.calling or calling
            called = expected.called or called
        elif parent is not None:
            conversation_id, parent_call_id = parent.conversation_id, parent.call_id
        else:
            replaces_value = req.get("Replaces")
            replaces = _replaces_key(replaces_value) if replaces_value else None
            replaced = self._replaced_call(replaces, tenant) if replaces else None
            if replaced is not None:
                replaced.replaced = True
            link = self._match_transfer(req, tenant, replaces, now)
            if link is not None:
                conversation_id, parent_call_id = link.conversation_id, link.call_id
                transfer, originate = link.transfer, link.originate
            elif replaced is not None:
                conversation_id, parent_call_id = replaced.conversation_id, replaced.call_id
            else:
                conversation_id, parent_call_id = uuid7(now), None
        self._make_room()
        call = Call(
            call_id=call_uuid,
            tenant=tenant,
            sip_call_id=call_id,
            from_tag=from_tag,
            conversation_id=conversation_id,
            direction=direction,
            extension=expected.extension if expected is not None else meta.extension,
            calling=calling,
            called=called,
            created=now,
            created_at=rfc3339(now),
            invite_cseq=cseq,
            parent_call_id=parent_call_id,
            transfer=transfer,
            device=_device(req, meta) if direction == "outbound" else None,
            diversion=_invite_diversion(req),
            originate=originate,
            caller_display=_caller_display(meta.shown),
        )
        self._calls[key] = call
        self._arm(call, now + self.setup_timeout)
        events = _some(self._fire(call, Signal.INVITE, now))
        if call.diversion is not None:
            events.extend(_some(self._fire(call, Signal.DIVERT, now)))
        return events

    def _normalized(self, party: Party, uri: URI, tenant: str, region: str | None) -> Party:
        if party.number_e164 is not None or party.number_raw is None:
            return party
        assert self.e164 is not None
        try:
            e164 = self.e164(tenant, uri, region)
        except Exception:  # a number must never cost a call its events
            self.errors += 1
            return party
        return party if e164 is None else dataclasses.replace(party, number_e164=e164)

    def _on_cancel(self, req: Request) -> list[CallEvent]:
        call = self._calls.get((req.call_id, req.from_.tag or ""))
        if call is None or call.state not in RINGING_STATES:
            return []
        if req.cseq.number != call.invite_cseq:
            return []
        call.cancelled = True
        reasons = req.get_all("Reason")
        if reasons:
            reason = causes.parse_reason(reasons)
            if reason is not None and reason.completed_elsewhere:
                call.completed_elsewhere = True
            elif reason is not None and reason.cause in causes.CANCEL_CAUSES:
                # The canceller says why (RFC 3326): 480/408 = nobody answered in time.
                call.cancel_cause = causes.from_status(reason.cause)
            call.cancel_reason = _text(causes.reason_text(reasons))
        return []

    def _on_bye(self, req: Request, now: float) -> list[CallEvent]:
        found = self._dialog(req)
        if found is None:
            return []
        call = found[0]
        if transition(call.state, Signal.BYE) is None:
            return []
        normalized = "replaced" if call.replaced else "normal"
        cause = Cause(normalized, None, _text(causes.reason_text(req.get_all("Reason"))))
        return _some(self._finish(call, cause, Signal.BYE, now))

    def _on_offer_request(self, req: Request) -> list[CallEvent]:
        """A re-INVITE or UPDATE in the dialog: remember its offer until the 2xx."""
        found = self._dialog(req)
        if found is None:
            return []
        call, side = found
        if call.state not in ACTIVE:
            return []
        tag, cseq = req.from_.tag or "", req.cseq.number
        if cseq <= call.offer_cseq.get(tag, -1):
            return []  # a retransmission, or older than an offer already seen
        call.offer_cseq[tag] = cseq
        key = (tag, cseq, req.method)
        if req.body and sdp.is_sdp(req.content_type):
            offer = Offer(side, sdp.holds(sdp.audio_direction(req.body)))
        elif req.method == "INVITE":
            offer = Offer(CALLEE if side == CALLER else CALLER, None, in_answer=True)
        else:
            offer = Offer(side, None)  # a bodiless UPDATE: a session refresh only
        _bounded_put(call.offers, key, offer)
        return []

    def _on_refer(self, req: Request, now: float) -> list[CallEvent]:
        found = self._dialog(req)
        if found is None:
            return []
        call = found[0]
        if call.state not in ACTIVE:
            return []
        key = (req.from_.tag or "", req.cseq.number)
        if key in call.refers:
            return []  # a retransmission
        target = _name_addr(req.get("Refer-To"))
        if target is None:
            return []
        uri = target.uri
        replaces: str | None = None
        if isinstance(uri, SipURI) and uri.headers:
            for name, value in uri.headers.items():
                if name.lower() == "replaces":
                    replaces = value
            uri = uri.replace(headers={})
        by = _name_addr(req.get("Referred-By"))
        referred_by = by.uri if by is not None else req.from_.uri
        transfer = Transfer(
            kind="attended" if replaces else "blind",
            refer_to=_uri_text(uri),
            referred_by=_uri_text(referred_by),
            replaces=_text(replaces),
        )
        _bounded_put(call.refers, key, transfer)
        pending = self._transfers.setdefault(call.tenant, [])
        if len(pending) >= MAX_TRANSFERS_PER_TENANT:
            del pending[0]
        pending.append(
            _PendingTransfer(
                tenant=call.tenant,
                call_id=call.call_id,
                conversation_id=call.conversation_id,
                transfer=transfer,
                refer_to_user=_user(uri),
                transferee_user=_user(req.to.uri),
                referred_by_user=_user(referred_by),
                replaces=_replaces_key(replaces) if replaces else None,
                deadline=now + self.transfer_window,
                owner=(call.key, key),
                originate=call.originate,
            )
        )
        return []

    # ------------------------------------------------------------------ responses ---
    def _on_invite_response(self, resp: Response, meta: MetaLike, now: float) -> list[CallEvent]:
        status = resp.status
        if status == 100:
            return []
        call = self._calls.get((resp.call_id, resp.from_.tag or ""))
        if call is None or resp.cseq.number != call.invite_cseq:
            return self._on_offer_response(resp, now) if status >= 200 else []
        state = call.state
        if status < 200:
            if state not in RINGING_STATES:
                return []  # a late 1xx (another fork's, or reordered) changes nothing
            tag = resp.to.tag
            if tag and len(call.early) < _MAX_EARLY:
                call.early.add(tag)
            if status == 181:
                mark = tag or ""
                if mark in call.diverted_by or len(call.diverted_by) >= _MAX_EARLY:
                    return []
                call.diverted_by.add(mark)
                call.diversion = _response_diversion(resp, call, redirect=False)
                return _some(self._fire(call, Signal.DIVERT, now))
            if status in (180, 183):
                return _some(self._fire(call, Signal.RINGING, now))
            return []
        if status < 300:
            if transition(state, Signal.ANSWER) is None:
                return []  # a retransmission, or a second fork answering too
            call.to_tag = resp.to.tag or ""
            call.answered, call.answered_at = now, rfc3339(now)
            if call.direction != "outbound":
                call.device = _device(resp, meta)
            call.early.clear()
            call.retry = None
            self._refresh(call, resp, now)
            return _some(self._fire(call, Signal.ANSWER, now))
        if state not in RINGING_STATES:
            return []  # a losing fork's final, or a final after the answer
        if not meta.local:
            tag = resp.to.tag
            if tag:
                call.early.discard(tag)
            if call.early:
                return []  # one branch ended; another is still ringing
        if status in RETRY_STATUSES and not call.cancelled:
            if call.retry is None:
                call.retry = (status, _phrase(resp), now)
                self._arm(call, now + self.retry_window)
            return []
        events: list[CallEvent] = []
        if status < 400:
            call.diversion = _response_diversion(resp, call, redirect=True)
            events.extend(_some(self._fire(call, Signal.DIVERT, now)))
        normalized = "replaced" if call.replaced else causes.from_status(status)
        if status == 487:
            # Why the attempt was cancelled: the CANCEL's Reason, else the 487's own
            # (a proxy whose Timer C fired says cause=408).
            cancel_cause = call.cancel_cause or _reason_cause(resp)
            if cancel_cause is not None and not call.replaced:
                normalized = cancel_cause
        reason = _text(causes.reason_text(resp.get_all("Reason")))
        if reason is None and status == 487:
            reason = call.cancel_reason
        cause = Cause(normalized, status, reason or _phrase(resp))
        events.extend(_some(self._finish(call, cause, Signal.REJECT, now)))
        return events

    def _answered_call(self, resp: Response) -> Call | None:
        """The call a final response to an in-dialog request belongs to (None for a
        provisional response or an unknown dialog)."""
        if resp.status < 200:
            return None
        found = self._dialog(resp)
        return found[0] if found is not None else None

    def _on_offer_response(self, resp: Response, now: float) -> list[CallEvent]:
        """The answer to a re-INVITE or UPDATE: a 2xx makes its offer count."""
        status = resp.status
        call = self._answered_call(resp)
        if call is None:
            return []
        key = (resp.from_.tag or "", resp.cseq.number, resp.cseq.method)
        offer = call.offers.pop(key, None)
        if status >= 300 or offer is None or call.state not in ACTIVE:
            return []
        self._refresh(call, resp, now)
        hold = offer.hold
        if offer.in_answer:
            hold = None
            if resp.body and sdp.is_sdp(resp.content_type):
                hold = sdp.holds(sdp.audio_direction(resp.body))
        if hold is None:
            return []
        if hold:
            call.holding.add(offer.side)
        else:
            call.holding.discard(offer.side)
        signal = Signal.HOLD if call.holding else Signal.RETRIEVE
        return _some(self._fire(call, signal, now))

    def _on_refer_response(self, resp: Response, now: float) -> list[CallEvent]:
        status = resp.status
        call = self._answered_call(resp)
        if call is None:
            return []
        key = (resp.from_.tag or "", resp.cseq.number)
        transfer = call.refers.get(key)
        if transfer is None:
            return []  # unknown REFER, or already answered
        call.refers[key] = None
        if status >= 300:
            self._drop_transfer(call.tenant, (call.key, key))
            return []
        if transition(call.state, Signal.TRANSFER) is None:
            return []
        call.transfer = transfer
        return _some(self._fire(call, Signal.TRANSFER, now))

    # -------------------------------------------------------------- state changes ---
    def _fire(self, call: Call, signal: Signal, now: float) -> CallEvent | None:
        step = transition(call.state, signal)
        if step is None:
            return None
        prev = call.state
        call.state, event_type = step
        if call.state in ENDED:
            self._end(call, now)
        if event_type is None:
            return None
        return self._event(call, event_type, prev, now)

    def _finish(
        self, call: Call, cause: Cause, signal: Signal, now: float, ended: float | None = None
    ) -> CallEvent | None:
        if transition(call.state, signal) is None:
            return None
        call.cause = cause
        call.ended = now if ended is None else ended
        call.missed = (
            call.answered is None
            and call.direction != "outbound"
            and cause.normalized in causes.MISSED_CAUSES
            and not call.completed_elsewhere
        )
        return self._fire(call, signal, now)

    def _timeout(self, call: Call, now: float) -> CallEvent | None:
        if call.state in RINGING_STATES and call.retry is not None:
            status, reason, when = call.retry
            normalized = "replaced" if call.replaced else causes.from_status(status)
            return self._finish(call, Cause(normalized, status, reason), Signal.REJECT, now, when)
        return self._finish(call, Cause("timeout"), Signal.TIMEOUT, now)

    def _end(self, call: Call, now: float) -> None:
        call.forget_at = now + self.linger
        call.deadline = None
        call.offers.clear()
        call.offer_cseq.clear()
        call.refers.clear()
        call.early.clear()
        call.holding.clear()
        self._ended[call.key] = call

    def _event(self, call: Call, event_type: str, prev: State, now: float) -> CallEvent:
        duration_ms: int | None = None
        ended_at: str | None = None
        if call.ended is not None:
            ended_at = rfc3339(call.ended)
            if call.answered is not None:
                duration_ms = max(0, round((call.ended - call.answered) * 1000))
        return CallEvent(
            type=event_type,
            occurred_at=rfc3339(now),
            node=self.node,
            tenant=call.tenant,
            event_id=uuid7(now),
            call_id=call.call_id,
            sip_call_id=call.sip_call_id,
            from_tag=call.from_tag,
            to_tag=call.to_tag,
            conversation_id=call.conversation_id,
            parent_call_id=call.parent_call_id,
            direction=call.direction,
            state=call.state.value,
            prev_state=prev.value,
            calling=call.calling,
            called=call.called,
            extension=call.extension,
            device=call.device,
            created_at=call.created_at,
            answered_at=call.answered_at,
            ended_at=ended_at,
            duration_ms=duration_ms,
            cause=call.cause,
            missed=call.missed,
            transfer=call.transfer,
            diversion=call.diversion,
            originate=call.originate,
            caller_display=call.caller_display if event_type == "call.offered" else None,
        )

    def _refresh(self, call: Call, resp: Response, now: float) -> None:
        """A 2xx to an INVITE or UPDATE: the session is alive; re-arm its timer."""
        call.session_expires = _session_expires(resp.get("Session-Expires"))
        if call.session_expires is not None:
            self._arm(call, now + call.session_expires + SESSION_GRACE)
        else:
            self._arm(call, now + self.max_idle)

    # --------------------------------------------------------------- bookkeeping ---
    def _dialog(self, msg: Request | Response) -> tuple[Call, str] | None:
        """The call whose confirmed dialog this in-dialog message belongs to, and the
        side that sent the request (for a response: the side its request came from)."""
        call_id = msg.call_id
        from_tag = msg.from_.tag or ""
        to_tag = msg.to.tag or ""
        call = self._calls.get((call_id, from_tag))
        if call is not None and call.to_tag is not None and call.to_tag == to_tag:
            return call, CALLER
        call = self._calls.get((call_id, to_tag))
        if call is not None and call.to_tag is not None and call.to_tag == from_tag:
            return call, CALLEE
        return None

    def _arm(self, call: Call, deadline: float) -> None:
        call.deadline = deadline
        heap = self._deadlines
        heapq.heappush(heap, (deadline, next(self._order), call))
        if len(heap) > 2 * len(self._calls) + 64:
            self._deadlines = [entry for entry in heap if self._current(entry)]
            heapq.heapify(self._deadlines)

    def _current(self, entry: tuple[float, int, Call]) -> bool:
        deadline, _, call = entry
        return (
            call.deadline == deadline
            and call.state not in ENDED
            and self._calls.get(call.key) is call
        )

    def _forget(self, call: Call) -> None:
        key = call.key
        if self._ended.get(key) is call:
            del self._ended[key]
        if self._calls.get(key) is call:
            del self._calls[key]

    def _make_room(self) -> None:
        while len(self._calls) >= self.max_calls:
            victims = self._ended if self._ended else self._calls
            self._forget(victims[next(iter(victims))])
            self.evicted += 1

    def _replaced_call(self, replaces: tuple[str, frozenset[str]], tenant: str) -> Call | None:
        call_id, tags = replaces
        for tag in tags:
            call = self._calls.get((call_id, tag))
            if call is None or call.tenant != tenant or call.state in ENDED:
                continue
            others = tags - {tag}
            if call.to_tag is not None:
                if {call.from_tag, call.to_tag} == set(tags):
                    return call
            elif others <= call.early:  # an early dialog (RFC 3891 early-only, pickup)
                return call
        return None

    def _match_transfer(
        self,
        req: Request,
        tenant: str,
        replaces: tuple[str, frozenset[str]] | None,
        now: float,
    ) -> _PendingTransfer | None:
        pending = self._transfers.get(tenant)
        if not pending:
            return None
        by = _name_addr(req.get("Referred-By"))
        referred_by = _user(by.uri) if by is not None else None
        targets = {_user(req.uri), _user(req.to.uri)} - {None}
        caller = _user(req.from_.uri)
        best: _PendingTransfer | None = None
        best_score = 0
        for candidate in reversed(pending):  # newest first: ties go to the newest
            if candidate.deadline <= now:
                continue
            if replaces is not None and candidate.replaces == replaces:
                best = candidate
                break
            by_referrer = referred_by is not None and candidate.referred_by_user == referred_by
            by_target = candidate.refer_to_user in targets
            by_transferee = caller is not None and caller == candidate.transferee_user
            if not (by_referrer or (by_target and by_transferee)):
                continue
            score = by_referrer + by_target + by_transferee
            if score > best_score:
                best, best_score = candidate, score
        if best is not None:
            pending.remove(best)
        return best

    def _drop_transfer(self, tenant: str, owner: tuple[tuple[str, str], tuple[str, int]]) -> None:
        pending = self._transfers.get(tenant)
        if pending:
            pending[:] = [p for p in pending if p.owner != owner]


# --- reading SIP ------------------------------------------------------------------------


def _reason_cause(resp: Response) -> str | None:
    reason = causes.parse_reason(resp.get_all("Reason"))
    if reason is None or reason.cause not in causes.CANCEL_CAUSES:
        return None
    return causes.from_status(reason.cause)


def _some(event: CallEvent | None) -> list[CallEvent]:
    return [] if event is None else [event]


def _text(text: str | None) -> str | None:
    """Valid UTF-8 (header octets that were not UTF-8 become U+FFFD), at most 512 chars."""
    if text is None:
        return None
    if not text.isascii():
        try:
            text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "replace").decode("utf-8")
    return text[:_MAX_TEXT]


def _phrase(resp: Response) -> str | None:
    return _text(resp.reason) or None


def _name_addr(value: str | None) -> NameAddr | None:
    if not value:
        return None
    try:
        return parse_name_addr(value)
    except SIPParseError:
        return None


def _first_value(msg: Request | Response, name: str) -> str | None:
    try:
        values = msg.values(name)
    except SIPParseError:
        return None
    return values[0] if values else None


def _uri_text(uri: URI) -> str | None:
    if isinstance(uri, SipURI) and (uri.password is not None or uri.headers):
        uri = uri.replace(password=None, headers={})
    return _text(str(uri))


def _user(uri: URI) -> str | None:
    """The number or user of a URI: SIP user part without its parameters, tel: number."""
    if isinstance(uri, SipURI):
        user = uri.user
        if not user:
            return None
        return _text(user.split(";", 1)[0]) or None
    if isinstance(uri, TelURI):
        return _text(uri.number)
    return None


def _party(uri: URI, display: str | None) -> Party:
    number = _user(uri)
    return Party(
        number_raw=number,
        number_e164=number if number is not None and _E164.fullmatch(number) else None,
        display=_text(display) or None,
        uri=_uri_text(uri),
    )


def _private(req: Request) -> bool:
    """RFC 3323/3325: `Privacy: id` asks not to reveal the asserted identity."""
    value = req.get("Privacy")
    if not value:
        return False
    return "id" in {item.strip(" \t").lower() for item in re.split(r"[;,]", value)}


_DEFAULT_CALLER_ID = {
    "inbound": ("P-Asserted-Identity", "From"),
    "outbound": ("From",),
    "internal": ("From",),
}


def calling_party(req: Request, direction: str, caller_id: tuple[str, ...]) -> tuple[URI, Party]:
    """Who calls, as ``call.offered`` will name them (before E.164 normalization): the
    URI and the party. What the callee's display shows is looked up with it
    (gateway/runtime/caller_names.py), so both agree on who the caller is."""
    return _calling(req, direction, caller_id)


def _calling(req: Request, direction: str, caller_id: tuple[str, ...]) -> tuple[URI, Party]:
    """The first usable identity among the peer profile's caller-id headers.

    From is the last resort whatever the profile says. `Privacy: id` (RFC 3323) hides
    every asserted identity: the caller asked not to be shown, so only From counts.
    """
    source = req.from_
    if not _private(req):
        for name in caller_id or _DEFAULT_CALLER_ID[direction]:
            if name.lower() == "from":
                break
            asserted = _name_addr(_first_value(req, name))
            if asserted is not None and _user(asserted.uri) is not None:
                return asserted.uri, _party(asserted.uri, asserted.display or source.display)
    return source.uri, _party(source.uri, source.display)


def _called(req: Request, direction: str) -> tuple[URI, Party]:
    to = req.to
    if direction == "inbound" and _user(req.uri) is not None:
        return req.uri, _party(req.uri, to.display)
    return to.uri, _party(to.uri, to.display)


def _caller_display(shown: ShownLike | None) -> CallerDisplay | None:
    if shown is None:
        return None
    return CallerDisplay(shown.name, shown.answered_by, shown.headers, shown.contact_source)


def _device(msg: Request | Response, meta: MetaLike) -> Device | None:
    contact: str | None = None
    try:
        contacts = msg.contacts
    except SIPParseError:
        contacts = []
    if contacts and contacts != "*":
        contact = _uri_text(contacts[0].uri)
    user_agent = _text(meta.user_agent)
    source = _text(meta.source) or None
    if user_agent is None and contact is None and source is None:
        return None
    return Device(user_agent=user_agent, contact=contact, source=source)


def _invite_diversion(req: Request) -> Diversion | None:
    """Diversion (RFC 5806, topmost = latest) or History-Info (RFC 7044 / RFC 4458)."""
    diversion = _name_addr(_first_value(req, "Diversion"))
    if diversion is not None:
        reason = diversion.params.get("reason")
        return Diversion(
            reason=(_text(unquote(reason)) if reason else None) or "unknown",
            from_=_uri_text(diversion.uri),
            to=_uri_text(req.uri),
        )
    if "History-Info" not in req:
        return None
    try:
        values = req.values("History-Info")
    except SIPParseError:
        return None
    entries = [entry for entry in map(_name_addr, values) if entry is not None]
    # RFC 4458: a `cause` parameter on the URI the request was diverted *to*.
    for index in range(len(entries) - 1, 0, -1):
        uri = entries[index].uri
        if isinstance(uri, SipURI) and uri.params.get("cause"):
            cause = uri.params["cause"] or ""
            return Diversion(
                reason=_HISTORY_REASONS.get(cause, "unknown"),
                from_=_uri_text(entries[index - 1].uri),
                to=_uri_text(uri),
            )
    # RFC 7044: a Reason on the entry that was retargeted, or `mp` on its successor.
    for index in range(len(entries) - 2, -1, -1):
        uri = entries[index].uri
        reason_value = None
        if isinstance(uri, SipURI):
            for name, value in uri.headers.items():
                if name.lower() == "reason":
                    reason_value = value
        match = _HISTORY_CAUSE.search(reason_value) if reason_value else None
        if match is not None or "mp" in entries[index + 1].params:
            cause = match.group(1) if match is not None else ""
            return Diversion(
                reason=_HISTORY_REASONS.get(cause, "unknown"),
                from_=_uri_text(uri),
                to=_uri_text(entries[index + 1].uri),
            )
    return None


def _response_diversion(resp: Response, call: Call, *, redirect: bool) -> Diversion:
    reason: str | None = None
    header = _name_addr(_first_value(resp, "Diversion"))
    if header is not None and header.params.get("reason"):
        reason = _text(unquote(header.params["reason"] or ""))
    target: str | None = None
    if redirect:
        try:
            contacts = resp.contacts
        except SIPParseError:
            contacts = []
        if contacts and contacts != "*":
            target = _uri_text(contacts[0].uri)
        if not reason:
            reason = "deflection" if call.state is State.DELIVERED else "unconditional"
    return Diversion(reason=reason or "unknown", from_=call.called.uri, to=target)


def _replaces_key(value: str) -> tuple[str, frozenset[str]] | None:
    """RFC 3891 `call-id;to-tag=…;from-tag=…` → (Call-ID, {the two tags})."""
    call_id, _, rest = value.partition(";")
    call_id = call_id.strip(" \t")
    if not call_id or not rest:
        return None
    try:
        params = parse_params(rest, header="Replaces")
    except SIPParseError:
        return None
    to_tag, from_tag = params.get("to-tag"), params.get("from-tag")
    if not to_tag or not from_tag:
        return None
    return call_id, frozenset({to_tag, from_tag})


def _session_expires(value: str | None) -> float | None:
    """RFC 4028 Session-Expires delta-seconds (`1800;refresher=uac`), None if absent."""
    if not value:
        return None
    number = value.split(";", 1)[0].strip(" \t")
    if not number.isdigit() or not 0 < int(number) <= 86_400:
        return None
    return float(number)
