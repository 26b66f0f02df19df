"""Click-to-dial: ring the user's own phone, then connect it to the destination.

One `DialRequest` per accepted `POST /v1/calls`. Its life, by mode:

REFER (the phone's profile says it follows a REFER; RFC 3515, RFC 5589)
    calling_phone ─180→ phone_ringing ─2xx→ connecting ─NOTIFY 180→ destination_ringing
    ─NOTIFY 2xx→ connected (final: the gateway hangs up its own leg and is out of the
    call). The phone's new call to the destination goes through the proxy like any
    other; the call tracker ties it to the phone leg (same conversation_id, originate).

3PCC (RFC 3725 flow I, for phones that cannot REFER)
    calling_phone → phone_ringing → connecting (the phone's 2xx carried its offer; the
    gateway INVITEs the destination through the trunk with it) → destination_ringing →
    connected (the destination's answer goes to the phone in the ACK) → ended (either
    side hung up: the gateway hangs up the other; final).

Any stage may end in `failed` (with a cause a person can act on) or `cancelled`
(`DELETE /v1/calls/{id}`). Everything here runs inside the proxy's synchronous world
(`ProxyServer.run`), driven by the user agent's callbacks and the proxy's timer queue.
"""

from __future__ import annotations

import enum
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from gateway.calls import causes, media
from gateway.calls.events import CallEvent, Originate, Party, rfc3339, uuid7
from gateway.calls.tracker import CallTracker, Origination
from gateway.config import DialSettings, Tenant, User
from gateway.dial.user_agent import Answer, CallAttempt, Dialog, UserAgent, new_tag
from gateway.proxy.core import Proxy
from gateway.proxy.location import Binding
from gateway.proxy.observe import Observed
from gateway.proxy.routing import Forward, contact_targets
from gateway.proxy.timers import TimerHandle
from gateway.sip.message import Request, Response
from gateway.transport.addresses import Target, host_for_uri

log = logging.getLogger("sipgw.dial")

Mode = Literal["refer", "3pcc"]


class DialState(enum.StrEnum):
    """The stages of a dial request (the API's ``state``; docs/click-to-dial.md)."""

    CALLING_PHONE = "calling_phone"
    PHONE_RINGING = "phone_ringing"
    CONNECTING = "connecting"
    DESTINATION_RINGING = "destination_ringing"
    CONNECTED = "connected"
    ENDED = "ended"
    FAILED = "failed"
    CANCELLED = "cancelled"


D = DialState
# From each state, where a request may go next: the table *is* the life of a dial
# request (see the module docstring). REFER ends in CONNECTED; 3PCC goes on to ENDED.
DIAL_TRANSITIONS: Final[dict[DialState, frozenset[DialState]]] = {
    D.CALLING_PHONE: frozenset({D.PHONE_RINGING, D.CONNECTING, D.FAILED, D.CANCELLED}),
    D.PHONE_RINGING: frozenset({D.CONNECTING, D.FAILED, D.CANCELLED}),
    D.CONNECTING: frozenset({D.DESTINATION_RINGING, D.CONNECTED, D.FAILED, D.CANCELLED}),
    D.DESTINATION_RINGING: frozenset({D.CONNECTED, D.FAILED, D.CANCELLED}),
    D.CONNECTED: frozenset({D.ENDED}),
    D.ENDED: frozenset(),
    D.FAILED: frozenset(),
    D.CANCELLED: frozenset(),
}
del D
FINAL_STATES: Final = frozenset({DialState.ENDED, DialState.FAILED, DialState.CANCELLED})
PHONE_LEG_STATES: Final = frozenset({DialState.CALLING_PHONE, DialState.PHONE_RINGING})
# RFC 3725 flow I: the phone retransmits its 2xx, unacknowledged, for 64*T1 (32 s) and
# then hangs up; the destination must answer within that.
FLOW_I_LIMIT = 30.0
CANCELLED_BY_USER = 'SIP;cause=487;text="Cancelled by the requester"'


class DialError(Exception):
    """A dial request refused or not applicable now: the HTTP status and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Destination:
    """The number to connect to, already normalized by the caller."""

    dial: str  # what goes into the Request-URI: "+31612345678", "202", "1233"
    raw: str  # as the user typed it
    e164: str | None = None
    name: str | None = None  # the contact's name, when the number is known


@dataclass(frozen=True, slots=True)
class DialOrder:
    tenant: Tenant
    user: User  # whose phone rings
    requested_by: str  # username behind the token
    to: Destination
    auto_answer: bool = True
    request_id: str | None = None

    @property
    def own_phone(self) -> bool:
        """True when the phone that rings first is the requester's own."""
        return self.user.username == self.requested_by


def destination_refusal(tenant: Tenant, to: Destination) -> str | None:
    """Why the tenant's click-to-dial policy denies ``to``; None when it may be called.
    The tenant's own extensions are always allowed."""
    if to.e164 is None and tenant.user_by_extension(to.dial) is not None:
        return None
    return tenant.dial.refusal(to.dial)


@dataclass(frozen=True, slots=True)
class DialCause:
    normalized: str  # busy | no_answer | rejected | cancelled | error | normal
    message: str  # for a person: "The destination is busy"
    sip_code: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"normalized": self.normalized, "message": self.message}
        if self.sip_code is not None:
            out["sip_code"] = self.sip_code
        return out


@dataclass(eq=False)
class DialRequest:
    id: str
    tenant: str
    order: DialOrder
    mode: Mode
    auto_answer: str  # the method used: answer-mode | call-info | alert-info | none | off
    conversation_id: str
    phone_call_id: str
    created_at: str
    state: DialState = DialState.CALLING_PHONE
    updated_at: str = ""
    cause: DialCause | None = None
    finished_at: float | None = None
    # --- what it holds on to ----------------------------------------------------------
    phone: CallAttempt | None = None
    phone_dialog: Dialog | None = None
    dest: CallAttempt | None = None
    dest_dialog: Dialog | None = None
    timer: TimerHandle | None = None
    refer_accepted: bool = False
    phone_sdp: bytes = b""
    dest_sdp: bytes = b""
    sdp_session: int = field(default_factory=lambda: secrets.randbelow(2**31))
    sdp_version: int = 1

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES or (
            self.mode == "refer" and self.state is DialState.CONNECTED
        )

    def to_dict(self) -> dict[str, Any]:
        order = self.order
        out: dict[str, Any] = {
            "id": self.id,
            "state": self.state,
            "finished": self.finished,
            "mode": self.mode,
            "from": order.user.extension,
            "to": {"raw": order.to.raw, "dialled": order.to.dial},
            "auto_answer": self.auto_answer,
            "requested_by": order.requested_by,
            "conversation_id": self.conversation_id,
            "phone_call_id": self.phone_call_id,
            "created_at": self.created_at,
            "updated_at": self.updated_at or self.created_at,
        }
        if order.to.e164:
            out["to"]["e164"] = order.to.e164
        if order.request_id is not None:
            out["request_id"] = order.request_id
        if self.cause is not None:
            out["cause"] = self.cause.to_dict()
        return out


class Originator:
    def __init__(
        self,
        proxy: Proxy,
        ua: UserAgent,
        tracker: CallTracker,
        emit: Callable[[list[CallEvent]], None],
        settings: DialSettings,
        node: str,
        *,
        counts: Counter[str] | None = None,
        wall_clock: Callable[[], float] = time.time,
        on_change: Callable[[DialRequest], None] | None = None,
    ) -> None:
        self.proxy = proxy
        self.ua = ua
        self.tracker = tracker
        self.emit = emit
        self.settings = settings
        self.node = node
        self.wall_clock = wall_clock
        self._requests: dict[str, DialRequest] = {}  # by id, oldest first
        self._by_key: dict[tuple[str, str, str], str] = {}  # (tenant, user, request_id)
        self.counts: Counter[str] = Counter() if counts is None else counts  # for metrics
        # Told of every request accepted and every change of its state (its public view,
        # `to_dict()`): the runtime shares it with the other nodes (runtime/shared_dials.py).
        # Called inside the SIP core: it must only note the request, never wait.
        self.on_change = on_change

    # ------------------------------------------------------------------- the API side ---
    def existing(
        self, tenant: str, requested_by: str, request_id: str | None
    ) -> DialRequest | None:
        """The request already started under this idempotency key, if any."""
        if request_id is None:
            return None
        found = self._by_key.get((tenant, requested_by, request_id))
        return self._requests.get(found) if found is not None else None

    def get(self, tenant: str, request_id: str) -> DialRequest | None:
        """The tenant's request, until `keep_finished` after it finished: the retention
        is the same whether or not a later `dial()` has swept the table yet (and the
        same as the copy other nodes read from Redis)."""
        found = self._requests.get(request_id)
        if found is None or found.tenant != tenant:
            return None
        cutoff = self.proxy.clock() - self.settings.keep_finished
        if found.finished_at is not None and found.finished_at < cutoff:
            return None
        return found

    def dial(self, order: DialOrder) -> DialRequest:
        """Start a dial request, or raise `DialError` (403: a destination the tenant's
        `[tenants.dial]` policy denies, checked before any SIP is sent; 409: no phone
        registered)."""
        self._housekeeping()
        tenant, user = order.tenant, order.user
        refusal = destination_refusal(tenant, order.to)
        if refusal is not None:
            self.counts["denied"] += 1
            raise DialError(403, f"to: {refusal}")
        now = self.proxy.clock()
        bindings = self.proxy.location.bindings(tenant.id, user.extension, now)
        if not bindings:
            raise DialError(409, f"extension {user.extension} has no registered phone")
        if len(self._requests) >= self.settings.max_requests:
            raise DialError(503, "too many dial requests in progress; retry later")
        # The user's profile, else the one its phone's registration chose (ua_profiles.py).
        profile = self.proxy.directory.phones.for_bindings(tenant, user, bindings)
        mode: Mode = "refer" if profile.supports_refer else "3pcc"
        # Auto-answer opens a microphone: only ever on the requester's own phone, never
        # on a colleague's that an admin dials from (the API refuses an explicit ask).
        auto_answer = order.auto_answer and order.own_phone
        method = profile.auto_answer if auto_answer else "off"
        wall = self.wall_clock()
        request = DialRequest(
            id=uuid7(wall),
            tenant=tenant.id,
            order=order,
            mode=mode,
            auto_answer=method,
            conversation_id=uuid7(wall),
            phone_call_id=uuid7(wall),
            created_at=rfc3339(wall),
        )
        self._remember(request)
        self.counts["accepted"] += 1
        self._changed(request)
        self.emit([self._originated(request, wall)])
        lines = profile.auto_answer_headers if auto_answer else ()
        host = host_for_uri(self.proxy.advertise)
        headers = tuple(_header(line.replace("{host}", host)) for line in lines)
        self._call_phone(request, bindings, headers)
        return request

    def cancel(self, tenant: str, request_id: str) -> DialRequest:
        request = self.get(tenant, request_id)
        if request is None:
            raise DialError(404, "no such dial request")
        if request.finished:
            raise DialError(409, f"the dial request is already {request.state}")
        cause = DialCause("cancelled", "Cancelled by the requester")
        if request.state in PHONE_LEG_STATES:
            assert request.phone is not None
            request.phone.cancel(CANCELLED_BY_USER)
            self._finish(request, DialState.CANCELLED, cause)
            return request
        self._hang_up(request, CANCELLED_BY_USER)
        connected = request.state is DialState.CONNECTED
        self._finish(request, DialState.ENDED if connected else DialState.CANCELLED, cause)
        return request

    # -------------------------------------------------------------------- phone leg ---
    def _call_phone(
        self, request: DialRequest, bindings: list[Binding], headers: tuple[tuple[str, str], ...]
    ) -> None:
        order = request.order
        domain = order.tenant.domains[0] if order.tenant.domains else self.proxy.advertise
        targets = contact_targets(bindings, self.proxy)
        display = _quoted(f"Dial: {order.to.name or order.to.raw}")
        from_value = f"{display} <sip:{order.to.dial}@{domain}>"
        to_value = f"<sip:{order.user.extension}@{domain}>"
        call_id = f"{secrets.token_hex(10)}@sipgw"
        from_tag = new_tag()
        self.tracker.expect(
            call_id,
            from_tag,
            Origination(
                call_id=request.phone_call_id,
                conversation_id=request.conversation_id,
                originate=self._originate(request),
                extension=order.user.extension,
                calling=self._caller_party(request, domain),
                called=self._called_party(request),
            ),
        )
        body = b""
        if request.mode == "refer":
            body = media.parked_offer(self.proxy.advertise, request.sdp_session)
        request.phone = self.ua.invite(
            targets,
            from_value=from_value,
            to_value=to_value,
            handler=_PhoneLeg(self, request),
            headers=headers,
            body=body,
            ack_later=request.mode == "3pcc",
            observe=Observed(
                tenant=order.tenant.id,
                direction="outbound",
                extension=order.user.extension,
                local=False,
                source="",
                user_agent=None,
            ),
            call_id=call_id,
            from_tag=from_tag,
        )
        self._arm(request, self.settings.ring_timeout, self._phone_timeout)

    def _phone_timeout(self, request: DialRequest) -> None:
        if request.phone is not None and request.state in PHONE_LEG_STATES:
            request.cause = DialCause("no_answer", "The phone did not answer", 480)
            request.phone.cancel('SIP;cause=480;text="Phone did not answer"')

    def phone_answered(self, request: DialRequest, dialog: Dialog, resp: Response) -> None:
        self._disarm(request)
        request.phone_dialog = dialog
        if request.mode == "3pcc":
            request.phone_sdp = resp.body  # the phone's offer (RFC 3725 flow I)
        if request.state in FINAL_STATES:  # cancelled while the 2xx was on its way
            self._ack_phone(request)
            dialog.bye(CANCELLED_BY_USER)
            return
        self._set(request, DialState.CONNECTING)
        if request.mode == "refer":
            self._refer(request, dialog)
            self._arm(request, self.settings.connect_timeout, self._connect_timeout)
            return
        if not resp.body:
            self._ack_phone(request)
            self._fail(request, DialCause("error", "The phone sent no session description"))
            return
        self._call_destination(request, resp.body, resp.content_type)
        limit = min(self.settings.connect_timeout, FLOW_I_LIMIT)
        self._arm(request, limit, self._connect_timeout)

    def phone_failed(self, request: DialRequest, status: int, reason: str) -> None:
        self._disarm(request)
        if request.state in FINAL_STATES:
            return
        cause = request.cause or _phone_cause(status, reason)
        self._finish(request, DialState.FAILED, cause)

    def _refer(self, request: DialRequest, dialog: Dialog) -> None:
        order = request.order
        domain = order.tenant.domains[0] if order.tenant.domains else self.proxy.advertise
        # The target names the gateway's own address facing the phone, not the tenant's
        # domain: a phone without an outbound proxy (Linphone's default) sends the new
        # INVITE to the Refer-To host, and that one it can surely reach.
        refer_to = self.proxy.contact_for(dialog.target, order.to.dial)
        headers = (
            ("Refer-To", f"<{refer_to}>"),
            ("Referred-By", f"<sip:{order.user.extension}@{domain}>"),
        )

        def refer_final(status: int, resp: Response | None) -> None:
            if status < 300:
                request.refer_accepted = True
                return
            if request.state in FINAL_STATES:
                return
            text = f"The phone refused the transfer (SIP {status})"
            self._hang_up(request, f'SIP;cause={status};text="{text}"')
            self._finish(request, DialState.FAILED, DialCause("error", text, status))

        dialog.request("REFER", headers, on_final=refer_final)

    def phone_request(self, request: DialRequest, dialog: Dialog, req: Request) -> Answer:
        method = req.method
        if method == "NOTIFY":
            return self._notify(request, req)
        if method == "BYE":
            self._phone_hung_up(request)
            return Answer(200)
        if method in ("INVITE", "UPDATE"):
            return self._reoffer(request, req, peer_sdp=request.dest_sdp)
        if method in ("INFO", "OPTIONS", "MESSAGE"):
            return Answer(200)
        return Answer(405, "Method Not Allowed", headers=(("Allow", "INVITE, ACK, BYE, NOTIFY"),))

    def _notify(self, request: DialRequest, req: Request) -> Answer:
        event = (req.get("Event") or "").split(";", 1)[0].strip().lower()
        if event != "refer":
            return Answer(489, "Bad Event")
        status = _sipfrag_status(req.body)
        if status is None or request.finished:
            return Answer(200)
        if status < 200:
            if status in (180, 183) and request.state is DialState.CONNECTING:
                self._set(request, DialState.DESTINATION_RINGING)
            return Answer(200)
        self._disarm(request)
        if status < 300:
            self._later(lambda: self._transferred(request))
        else:
            cause = _destination_cause(status)
            self._later(lambda: self._refer_failed(request, cause))
        return Answer(200)

    def _transferred(self, request: DialRequest) -> None:
        if request.finished:
            return
        if request.phone_dialog is not None:
            request.phone_dialog.bye()
        self._finish(request, DialState.CONNECTED, DialCause("normal", "Connected"))

    def _refer_failed(self, request: DialRequest, cause: DialCause) -> None:
        if request.finished:
            return
        self._hang_up(request, f'SIP;cause={cause.sip_code or 500};text="{cause.message}"')
        self._finish(request, DialState.FAILED, cause)

    def _phone_hung_up(self, request: DialRequest) -> None:
        if request.finished:
            return
        self._disarm(request)
        if request.mode == "refer":
            if request.refer_accepted:
                # The phone took the call over and closed our leg itself (Linphone does).
                self._finish(request, DialState.CONNECTED, DialCause("normal", "Connected"))
            else:
                self._finish(request, DialState.FAILED, DialCause("cancelled", "The phone hung up"))
            return
        connected = request.state is DialState.CONNECTED
        self._hang_up(request, None)
        if connected:
            self._finish(request, DialState.ENDED, DialCause("normal", "The phone hung up"))
        else:
            self._finish(request, DialState.FAILED, DialCause("cancelled", "The phone hung up"))

    def _connect_timeout(self, request: DialRequest) -> None:
        if request.finished or request.state is DialState.CONNECTED:
            return
        cause = DialCause("no_answer", "The destination did not answer", 480)
        if request.mode == "3pcc" and request.dest is not None and request.dest_dialog is None:
            request.cause = cause
            request.dest.cancel('SIP;cause=480;text="Destination did not answer"')
            return
        self._hang_up(request, 'SIP;cause=480;text="Destination did not answer"')
        self._finish(request, DialState.FAILED, cause)

    # ------------------------------------------------------- destination leg (3PCC) ---
    def _call_destination(
        self, request: DialRequest, offer: bytes, content_type: str | None
    ) -> None:
        order = request.order
        tenant = order.tenant
        domain = tenant.domains[0] if tenant.domains else self.proxy.advertise
        route = self._destination_route(tenant, order.to.dial)
        if route is None:
            self._ack_phone(request)
            self._fail(request, DialCause("error", "No route to the destination"))
            return
        user = order.user
        display = f"{_quoted(user.display_name)} " if user.display_name else ""
        call_id = f"{secrets.token_hex(10)}@sipgw"
        from_tag = new_tag()
        self.tracker.expect(
            call_id,
            from_tag,
            Origination(
                call_id=uuid7(self.wall_clock()),
                conversation_id=request.conversation_id,
                originate=self._originate(request),
                extension=user.extension,
                calling=self._caller_party(request, domain),
                called=self._called_party(request),
                parent_call_id=request.phone_call_id,
            ),
        )
        direction = "internal" if route[2] else "outbound"
        request.dest = self.ua.invite(
            [(route[0], route[1])],
            from_value=f"{display}<sip:{user.extension}@{domain}>",
            to_value=f"<sip:{order.to.dial}@{domain}>",
            handler=_DestinationLeg(self, request),
            body=offer,
            content_type=content_type,
            observe=Observed(
                tenant=tenant.id,
                direction=direction,
                extension=user.extension,
                local=False,
                source="",
                user_agent=None,
            ),
            call_id=call_id,
            from_tag=from_tag,
        )

    def _destination_route(self, tenant: Tenant, dial: str) -> tuple[str, Target, bool] | None:
        """(Request-URI, target, internal) for the destination: another extension's
        first phone, or the tenant's outbound trunk."""
        if tenant.user_by_extension(dial) is not None:
            bindings = self.proxy.location.bindings(tenant.id, dial, self.proxy.clock())
            targets = contact_targets(bindings, self.proxy)
            return (targets[0][0], targets[0][1], True) if targets else None
        decision = self.proxy.router._to_trunk(tenant, dial)
        if not isinstance(decision, Forward) or not decision.targets:
            return None
        ruri, target = decision.targets[0]
        return (ruri, target, False) if ruri is not None else None

    def destination_progress(self, request: DialRequest, resp: Response) -> None:
        if resp.status in (180, 183) and request.state is DialState.CONNECTING:
            self._set(request, DialState.DESTINATION_RINGING)

    def destination_answered(self, request: DialRequest, dialog: Dialog, resp: Response) -> None:
        self._disarm(request)
        request.dest_dialog = dialog
        if request.finished or request.phone_dialog is None:
            dialog.bye()
            return
        request.dest_sdp = resp.body
        request.phone_dialog.ack(resp.body, resp.content_type)
        self._set(request, DialState.CONNECTED)

    def destination_failed(self, request: DialRequest, status: int, reason: str) -> None:
        self._disarm(request)
        if request.finished:
            return
        cause = request.cause or _destination_cause(status)
        self._ack_phone(request)
        if request.phone_dialog is not None:
            request.phone_dialog.bye(f'SIP;cause={status};text="{cause.message}"')
        self._finish(request, DialState.FAILED, cause)

    def destination_request(self, request: DialRequest, dialog: Dialog, req: Request) -> Answer:
        if req.method == "BYE":
            if not request.finished:
                if request.phone_dialog is not None:
                    request.phone_dialog.bye()
                self._finish(
                    request, DialState.ENDED, DialCause("normal", "The destination hung up")
                )
            return Answer(200)
        if req.method in ("INVITE", "UPDATE"):
            return self._reoffer(request, req, peer_sdp=request.phone_sdp)
        if req.method in ("INFO", "OPTIONS"):
            return Answer(200)
        return Answer(405, "Method Not Allowed", headers=(("Allow", "INVITE, ACK, BYE"),))

    # ---------------------------------------------------------------------- helpers ---
    def _reoffer(self, request: DialRequest, req: Request, *, peer_sdp: bytes) -> Answer:
        """A re-INVITE/UPDATE on one of our legs (hold, resume, refresh)."""
        request.sdp_version += 1
        if not req.body:
            if req.method == "UPDATE":
                return Answer(200)  # a session refresh
            offer = peer_sdp or media.parked_offer(
                self.proxy.advertise, request.sdp_session, request.sdp_version
            )
            return Answer(200, body=offer)
        if peer_sdp:
            body = media.mirror_answer(req.body, peer_sdp, request.sdp_version)
        else:
            body = media.parked_answer(
                req.body, self.proxy.advertise, request.sdp_session, request.sdp_version
            )
        return Answer(200, body=body)

    def _ack_phone(self, request: DialRequest) -> None:
        """ACK the phone's 2xx if not done yet; its offer (3PCC) gets a parked answer."""
        dialog = request.phone_dialog
        if dialog is None or dialog.ack_data is not None:
            return
        if request.phone_sdp:
            dialog.ack(
                media.parked_answer(request.phone_sdp, self.proxy.advertise, request.sdp_session)
            )
        else:
            dialog.ack()

    def _hang_up(self, request: DialRequest, reason: str | None) -> None:
        """End whatever legs the gateway holds (CANCEL what rings, BYE what is up)."""
        if request.dest is not None and request.dest_dialog is None:
            request.dest.cancel(reason)
        if request.dest_dialog is not None:
            request.dest_dialog.bye(reason)
        if request.phone_dialog is not None:
            self._ack_phone(request)
            request.phone_dialog.bye(reason)

    def _fail(self, request: DialRequest, cause: DialCause) -> None:
        self._hang_up(request, f'SIP;cause=500;text="{cause.message}"')
        self._finish(request, DialState.FAILED, cause)

    def _finish(self, request: DialRequest, state: DialState, cause: DialCause) -> None:
        self._disarm(request)
        request.cause = cause
        request.finished_at = self.proxy.clock()
        self._set(request, state)
        self.counts[state] += 1
        log.info(
            "dial request finished",
            extra={
                "dial_id": request.id,
                "tenant": request.tenant,
                "state": state,
                "cause": request.cause.normalized if request.cause else None,
            },
        )

    def _set(self, request: DialRequest, state: DialState) -> None:
        if state is not request.state and state not in DIAL_TRANSITIONS[request.state]:
            # A path the table does not know is a bug: say so, and keep the state the
            # API has shown (a final state is never left).
            log.error(
                "dial request: no transition %s -> %s",
                request.state,
                state,
                extra={"dial_id": request.id},
            )
            return
        request.state = state
        request.updated_at = rfc3339(self.wall_clock())
        if state in FINAL_STATES and request.finished_at is None:
            request.finished_at = self.proxy.clock()
        self._changed(request)

    def _changed(self, request: DialRequest) -> None:
        if self.on_change is not None:
            self.on_change(request)

    def _arm(
        self, request: DialRequest, seconds: float, fire: Callable[[DialRequest], None]
    ) -> None:
        self._disarm(request)
        request.timer = self.proxy.queue.schedule(
            self.proxy.clock() + seconds, lambda: fire(request)
        )

    def _disarm(self, request: DialRequest) -> None:
        self.proxy.queue.cancel(request.timer)
        request.timer = None

    def _later(self, action: Callable[[], None]) -> None:
        # After the answer to the request being handled has gone out.
        self.proxy.queue.schedule(self.proxy.clock(), action)

    def _remember(self, request: DialRequest) -> None:
        self._requests[request.id] = request
        order = request.order
        if order.request_id is not None:
            self._by_key[request.tenant, order.requested_by, order.request_id] = request.id

    def _housekeeping(self) -> None:
        """Forget finished requests after `keep_finished` (and idempotency keys too)."""
        cutoff = self.proxy.clock() - self.settings.keep_finished
        for key in [
            k for k, r in self._requests.items() if r.finished_at and r.finished_at < cutoff
        ]:
            self._forget(self._requests[key])
        while len(self._requests) >= self.settings.max_requests:
            oldest = next((r for r in self._requests.values() if r.finished), None)
            if oldest is None:
                break
            self._forget(oldest)

    def _forget(self, request: DialRequest) -> None:
        del self._requests[request.id]
        order = request.order
        if order.request_id is not None:
            self._by_key.pop((request.tenant, order.requested_by, order.request_id), None)

    @property
    def active(self) -> int:
        return sum(1 for r in self._requests.values() if not r.finished)

    # ------------------------------------------------------------------ the events ---
    def _originate(self, request: DialRequest) -> Originate:
        order = request.order
        return Originate(
            request_id=order.request_id or request.id,
            requested_by=order.requested_by,
            auto_answer=request.auto_answer,
        )

    def _caller_party(self, request: DialRequest, domain: str) -> Party:
        user = request.order.user
        return Party(
            number_raw=user.extension,
            display=user.display_name or None,
            uri=f"sip:{user.extension}@{domain}",
        )

    @staticmethod
    def _called_party(request: DialRequest) -> Party:
        to = request.order.to
        return Party(number_raw=to.raw, number_e164=to.e164, display=to.name)

    def _originated(self, request: DialRequest, wall: float) -> CallEvent:
        order = request.order
        domain = order.tenant.domains[0] if order.tenant.domains else self.proxy.advertise
        return CallEvent(
            type="call.originated",
            occurred_at=rfc3339(wall),
            node=self.node,
            tenant=request.tenant,
            call_id=request.phone_call_id,
            conversation_id=request.conversation_id,
            direction="outbound",
            calling=self._caller_party(request, domain),
            called=self._called_party(request),
            extension=order.user.extension,
            created_at=request.created_at,
            originate=self._originate(request),
        )


class _PhoneLeg:
    """The user agent's callbacks for the call to the user's phone."""

    def __init__(self, originator: Originator, request: DialRequest) -> None:
        self.originator = originator
        self.request = request

    def on_progress(self, call: CallAttempt, resp: Response) -> None:
        if resp.status in (180, 183) and self.request.state is DialState.CALLING_PHONE:
            self.originator._set(self.request, DialState.PHONE_RINGING)

    def on_answer(self, call: CallAttempt, dialog: Dialog, resp: Response) -> None:
        self.originator.phone_answered(self.request, dialog, resp)

    def on_failure(self, call: CallAttempt, status: int, reason: str) -> None:
        self.originator.phone_failed(self.request, status, reason)

    def on_request(self, dialog: Dialog, req: Request) -> Answer:
        return self.originator.phone_request(self.request, dialog, req)


class _DestinationLeg:
    """The user agent's callbacks for the 3PCC call to the destination."""

    def __init__(self, originator: Originator, request: DialRequest) -> None:
        self.originator = originator
        self.request = request

    def on_progress(self, call: CallAttempt, resp: Response) -> None:
        self.originator.destination_progress(self.request, resp)

    def on_answer(self, call: CallAttempt, dialog: Dialog, resp: Response) -> None:
        self.originator.destination_answered(self.request, dialog, resp)

    def on_failure(self, call: CallAttempt, status: int, reason: str) -> None:
        self.originator.destination_failed(self.request, status, reason)

    def on_request(self, dialog: Dialog, req: Request) -> Answer:
        return self.originator.destination_request(self.request, dialog, req)


# --- causes a person can act on ---------------------------------------------------------


def _phone_cause(status: int, reason: str) -> DialCause:
    normalized = causes.from_status(status)
    if normalized == "busy":
        return DialCause("busy", "The phone is busy", status)
    if normalized == "no_answer":
        return DialCause("no_answer", "The phone did not answer", status)
    if status in (603, 607, 608):
        return DialCause("rejected", "The phone rejected the call", status)
    if status == 487:
        return DialCause("cancelled", "Cancelled", status)
    return DialCause("error", f"The phone could not be reached (SIP {status} {reason})", status)


def _destination_cause(status: int) -> DialCause:
    normalized = causes.from_status(status)
    if normalized == "busy":
        return DialCause("busy", "The destination is busy", status)
    if normalized == "no_answer":
        return DialCause("no_answer", "The destination did not answer", status)
    if status in (404, 410, 484, 485, 604):
        return DialCause("rejected", "The number does not exist or is incomplete", status)
    if status in (603, 607, 608):
        return DialCause("rejected", "The destination declined the call", status)
    return DialCause("error", f"The destination could not be reached (SIP {status})", status)


def _sipfrag_status(body: bytes) -> int | None:
    """The status of a message/sipfrag body's status line (RFC 3420): `SIP/2.0 180 …`."""
    line = body.split(b"\n", 1)[0].strip()
    parts = line.split()
    if len(parts) >= 2 and parts[0].upper().startswith(b"SIP/") and parts[1].isdigit():
        return int(parts[1])
    return None


def _header(line: str) -> tuple[str, str]:
    name, _, value = line.partition(":")
    return name.strip(), value.strip()


def _quoted(text: str) -> str:
    """A display name as a quoted-string (RFC 3261 §25.1), control characters dropped."""
    cleaned = "".join(ch for ch in text if ch >= " " and ch != "\x7f")[:64]
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'
