"""A small user agent core beside the proxy: the calls the gateway places itself.

Click-to-dial makes the gateway a party, not only a proxy (RFC 3261 §8, §12-§15): it
calls the user's phone (one INVITE forked to every registered contact), sends ACK, REFER
and BYE in the dialog it gets, and answers what the phone sends back in that dialog
(the REFER subscription's NOTIFYs, a re-INVITE for hold, BYE). For third-party call
control it also calls the destination through a trunk and holds the ACK of a 2xx until
the other side's answer is known (RFC 3725 flow I).

Like the proxy it is synchronous and sans-I/O: messages go out through the proxy's
transport, deadlines go into the proxy's timer queue, and what it learns goes to a
`Handler` (gateway/dial/originate.py) by plain method calls.

How messages find it
    Responses: its requests are client transactions of the proxy's one transaction
    layer (``Proxy.tm``, proxy/tm.py), which matches their responses and reports to it
    (``txn_response``, ``txn_failed``); a 2xx that comes again after its transaction
    ended reaches it by its branch prefix, ``BRANCH`` (``on_stray_response``: ACK it
    again). In-dialog requests: the To tag is ours (``TAG_PREFIX``); the proxy asks
    `handles()` before routing anything that carries a To tag.

Every message it sends or receives that matters for call state is also handed to the
proxy's observer, so its calls produce call events like proxied ones.
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from gateway.proxy.branch_state import BranchInput, BranchState, advance
from gateway.proxy.messages import build_ack, build_cancel
from gateway.proxy.observe import Observed
from gateway.proxy.tm import ServerEntry
from gateway.sip.message import Request, Response, make_response, parse_message
from gateway.sip.uri import SipURI
from gateway.transport.addresses import Source, Target

if TYPE_CHECKING:
    from gateway.proxy.core import Proxy

log = logging.getLogger("sipgw.ua")

BRANCH = "z9hG4bKua"
TAG_PREFIX = "sgua"
ALLOW = "INVITE, ACK, CANCEL, BYE, REFER, NOTIFY, OPTIONS"
MAX_DIALOGS = 10_000

OnFinal = Callable[[int, Response | None], None]


@dataclass(frozen=True, slots=True)
class Answer:
    """What the handler answers to an in-dialog request."""

    status: int
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    content_type: str | None = None


class Handler(Protocol):
    """What the UA tells the element that placed a call (one handler per call)."""

    def on_progress(self, call: CallAttempt, resp: Response) -> None: ...
    def on_answer(self, call: CallAttempt, dialog: Dialog, resp: Response) -> None: ...
    def on_failure(self, call: CallAttempt, status: int, reason: str) -> None: ...
    def on_request(self, dialog: Dialog, req: Request) -> Answer: ...


@dataclass(eq=False, slots=True)
class _Branch:
    call: CallAttempt
    branch_id: str
    target: Target
    data: bytes
    state: BranchState = BranchState.TRYING  # answer and cancellation (branch_state.py)
    final: int = 0  # the final status, once FINAL


@dataclass(eq=False, slots=True)
class _Request:
    """A non-INVITE client transaction (REFER, BYE, CANCEL) and who waits for it."""

    branch_id: str
    method: str
    target: Target
    on_final: OnFinal | None


@dataclass(eq=False, slots=True)
class CallAttempt:
    """One INVITE the gateway sent (to one or several contacts) and its outcome."""

    ua: UserAgent
    handler: Handler
    call_id: str
    from_value: str  # with our tag
    to_value: str
    from_tag: str
    ack_later: bool  # 3PCC: the ACK of the 2xx waits for the other side's answer
    branches: list[_Branch] = field(default_factory=list)
    dialog: Dialog | None = None
    ended: bool = False  # answered, failed or cancelled: no more branch outcomes
    cancelled: bool = False
    cancel_reason: str | None = None
    best: tuple[int, str] | None = None

    def cancel(self, reason: str | None = None) -> None:
        """CANCEL every branch still ringing (RFC 3261 §9.1); `reason` is a Reason
        header value (RFC 3326) that tells the phone and the call events why."""
        self.ua.cancel(self, reason)


@dataclass(eq=False, slots=True)
class Dialog:
    """A dialog the gateway is a party to, as the UAC of its INVITE (§12.1.2)."""

    ua: UserAgent
    call: CallAttempt
    call_id: str
    local_tag: str
    remote_tag: str
    from_value: str
    to_value: str  # with the remote tag
    remote_target: str
    route_set: list[str]
    target: Target
    invite_cseq: int
    local_cseq: int
    remote_cseq: int | None = None
    ack_data: bytes | None = None
    ended: bool = False
    _responses: dict[tuple[str, str], _Served] = field(default_factory=dict)

    def ack(self, body: bytes = b"", content_type: str | None = None) -> None:
        """ACK the 2xx (§13.2.2.4); with `ack_later`, this is when the answer goes."""
        self.ua.send_ack(self, body, content_type)

    def request(
        self,
        method: str,
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes = b"",
        content_type: str | None = None,
        on_final: OnFinal | None = None,
    ) -> None:
        self.ua.send_in_dialog(self, method, headers, body, content_type, on_final)

    def bye(self, reason: str | None = None, on_final: OnFinal | None = None) -> None:
        if self.ended:
            return
        self.ended = True
        headers = (("Reason", reason),) if reason else ()
        self.ua.send_in_dialog(self, "BYE", headers, b"", None, on_final)


@dataclass(eq=False, slots=True)
class _Served:
    """A server transaction for an in-dialog request the peer sent us."""

    dialog: Dialog
    key: tuple[str, str]
    target: Target
    # Its server transaction in the proxy's one layer (proxy/tm.py); None once ended.
    entry: ServerEntry | None = None
    acked: bool = False  # the ACK of our 2xx to a re-INVITE came: stop re-sending it


class UserAgent:
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.user_agent = proxy.sip.user_agent
        self._dialogs: dict[tuple[str, str], Dialog] = {}  # (Call-ID, our tag)
        # Its transactions are in the proxy's one layer (tm.py); what comes back after
        # one ended (a 2xx retransmitted once more) comes here by the branch prefix.
        proxy.response_handlers[BRANCH] = self.on_stray_response
        proxy.ua = self

    # ------------------------------------------------------------------ placing calls ---
    def invite(
        self,
        targets: list[tuple[str, Target]],
        *,
        from_value: str,
        to_value: str,
        handler: Handler,
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes = b"",
        content_type: str | None = None,
        ack_later: bool = False,
        observe: Observed | None = None,
        call_id: str | None = None,
        from_tag: str | None = None,
    ) -> CallAttempt:
        """INVITE every (Request-URI, target) at once: the branches of one call (same
        Call-ID, From tag and CSeq, as a forking proxy would send them)."""
        from_tag = from_tag or new_tag()
        call = CallAttempt(
            ua=self,
            handler=handler,
            call_id=call_id or f"{secrets.token_hex(10)}@sipgw",
            from_value=f"{from_value};tag={from_tag}",
            to_value=to_value,
            from_tag=from_tag,
            ack_later=ack_later,
        )
        observed = False
        for request_uri, target in targets:
            data = self._invite_bytes(call, request_uri, target, headers, body, content_type)
            if data is None:
                continue
            if observe is not None and not observed:
                observed = True
                self._observe_message(_parse_request(data), observe)
            self._start_branch(call, target, data)
        if not call.branches:
            call.ended = True
            self.proxy.queue.schedule(
                self.proxy.clock(), functools.partial(handler.on_failure, call, 503, "No route")
            )
        return call

    def _invite_bytes(
        self,
        call: CallAttempt,
        request_uri: str,
        target: Target,
        headers: tuple[tuple[str, str], ...],
        body: bytes,
        content_type: str | None,
    ) -> bytes | None:
        branch_id = BRANCH + secrets.token_hex(8)
        via = self.proxy.via_for(target, branch_id)
        if via is None:
            return None
        lines = [
            f"INVITE {request_uri} SIP/2.0",
            f"Via: {via}",
            "Max-Forwards: 70",
            f"From: {call.from_value}",
            f"To: {call.to_value}",
            f"Call-ID: {call.call_id}",
            "CSeq: 1 INVITE",
            f"Contact: <{self.proxy.contact_for(target, 'sipgw')}>",
            f"Allow: {ALLOW}",
            f"User-Agent: {self.user_agent}",
        ]
        lines.extend(f"{name}: {value}" for name, value in headers)
        return _finish(lines, body, content_type)

    def _start_branch(self, call: CallAttempt, target: Target, data: bytes) -> None:
        branch_id = _branch_of(data)
        branch = _Branch(call, branch_id, target, data)
        call.branches.append(branch)
        self.proxy.counters.request_out(target.transport, "INVITE")
        self.proxy.tm.start_client(
            branch_id, "INVITE", data, target,
            send=self.proxy.send, user=self, owner=branch,
            make_ack=functools.partial(build_ack, data),
        )  # fmt: skip

    def cancel(self, call: CallAttempt, reason: str | None) -> None:
        if call.ended or call.cancelled:
            return
        call.cancelled = True
        call.cancel_reason = reason
        cancel: Request | None = None
        for branch in call.branches:
            # §9.1: a CANCEL only after a provisional response (branch_state.py).
            branch.state, send_cancel = advance(branch.state, BranchInput.CANCEL)
            if not send_cancel:
                continue
            data = self._send_cancel(branch)
            if cancel is None:
                cancel = _parse_request(data)
        if cancel is not None:
            self._observe_message(cancel)

    def _send_cancel(self, branch: _Branch) -> bytes:
        data = build_cancel(branch.data, reason=branch.call.cancel_reason)
        self._start_request(branch.branch_id, "CANCEL", branch.target, data, None)
        return data

    # ------------------------------------------------------------- in-dialog requests ---
    def send_in_dialog(
        self,
        dialog: Dialog,
        method: str,
        headers: tuple[tuple[str, str], ...],
        body: bytes,
        content_type: str | None,
        on_final: OnFinal | None,
    ) -> None:
        dialog.local_cseq += 1
        branch_id = BRANCH + secrets.token_hex(8)
        via = self.proxy.via_for(dialog.target, branch_id)
        if via is None:
            if on_final is not None:
                on_final(503, None)
            return
        lines = [*self._dialog_head(dialog, method, via, dialog.local_cseq)]
        lines.append(f"Contact: <{self.proxy.contact_for(dialog.target, 'sipgw')}>")
        lines.append(f"User-Agent: {self.user_agent}")
        lines.extend(f"{name}: {value}" for name, value in headers)
        data = _finish(lines, body, content_type)
        self._observe_message(_parse_request(data))
        if method == "BYE":
            self._forget_later(dialog)
        self._start_request(branch_id, method, dialog.target, data, on_final)

    def send_ack(self, dialog: Dialog, body: bytes, content_type: str | None) -> None:
        if dialog.ack_data is None:
            via = self.proxy.via_for(dialog.target, BRANCH + secrets.token_hex(8))
            if via is None:
                return
            lines = self._dialog_head(dialog, "ACK", via, dialog.invite_cseq)
            dialog.ack_data = _finish(lines, body, content_type)
            self._observe_message(_parse_request(dialog.ack_data))
        self.proxy.counters.request_out(dialog.target.transport, "ACK")
        self.proxy.send(dialog.ack_data, dialog.target)

    def _dialog_head(self, dialog: Dialog, method: str, via: str, cseq: int) -> list[str]:
        lines = [f"{method} {dialog.remote_target} SIP/2.0", f"Via: {via}"]
        lines.extend(f"Route: {route}" for route in dialog.route_set)
        lines.extend(
            [
                "Max-Forwards: 70",
                f"From: {dialog.from_value}",
                f"To: {dialog.to_value}",
                f"Call-ID: {dialog.call_id}",
                f"CSeq: {cseq} {method}",
            ]
        )
        return lines

    def _start_request(
        self, branch_id: str, method: str, target: Target, data: bytes, on_final: OnFinal | None
    ) -> None:
        request = _Request(branch_id, method, target, on_final)
        self.proxy.counters.request_out(target.transport, method)
        self.proxy.tm.start_client(
            branch_id, method, data, target, send=self.proxy.send, user=self, owner=request
        )

    # ---------------------------------------------------------------------- responses ---
    def on_stray_response(self, resp: Response, source: Source) -> None:
        """A response to one of our requests whose transaction is over: a 2xx to an
        INVITE is ACKed again (§13.2.2.4); anything else is late and dropped."""
        if resp.cseq.method == "INVITE" and 200 <= resp.status < 300:
            self._late_2xx(resp)

    def _late_2xx(self, resp: Response) -> None:
        """A 2xx retransmission after its transaction ended: ACK it again (§13.2.2.4)."""
        dialog = self._dialogs.get((resp.call_id, resp.from_.tag or ""))
        if dialog is not None and dialog.ack_data is not None:
            self.proxy.send(dialog.ack_data, dialog.target)

    def _on_invite_response(self, branch: _Branch, status: int, resp: Response | None) -> None:
        call = branch.call
        if status < 200:
            branch.state, send_cancel = advance(branch.state, BranchInput.PROVISIONAL)
            if send_cancel:
                self._send_cancel(branch)
            if resp is not None and status > 100 and not call.ended:
                self._observe_message(resp)
                call.handler.on_progress(call, resp)
            return
        branch.state, _ = advance(branch.state, BranchInput.FINAL)
        branch.final = status
        if status < 300:
            assert resp is not None
            self._on_2xx(branch, resp)
            return
        reason = (
            resp.reason
            if resp is not None
            else ("Request Timeout" if status == 408 else "Service Unavailable")
        )
        self._branch_failed(branch, status, reason, resp)

    def _on_2xx(self, branch: _Branch, resp: Response) -> None:
        call = branch.call
        tag = resp.to.tag or ""
        if call.dialog is not None:
            if call.dialog.remote_tag == tag:
                if call.dialog.ack_data is not None:  # our ACK was lost: send it again
                    self.proxy.send(call.dialog.ack_data, call.dialog.target)
                return
            # A second fork answered too (§13.2.2.4): ACK it, then hang it up.
            extra = self._new_dialog(branch, resp)
            extra.ack()
            extra.bye('SIP;cause=200;text="Call completed elsewhere"')
            return
        dialog = self._new_dialog(branch, resp)
        call.dialog = dialog
        call.ended = True
        self._observe_message(resp)
        for other in call.branches:
            if other is not branch and other.state is not BranchState.FINAL:
                call.cancel_reason = 'SIP;cause=200;text="Call completed elsewhere"'
                other.state, send_cancel = advance(other.state, BranchInput.CANCEL)
                if send_cancel:
                    self._send_cancel(other)
        if call.cancelled:
            # Answered while we were cancelling: the CANCEL lost the race (§9.1).
            dialog.ack()
            dialog.bye(call.cancel_reason)
            call.handler.on_failure(call, 487, "Request Terminated")
            return
        if not call.ack_later:
            dialog.ack()
        call.handler.on_answer(call, dialog, resp)

    def _new_dialog(self, branch: _Branch, resp: Response) -> Dialog:
        contacts = resp.contacts if resp.get("Contact") else []
        remote_target = (
            str(contacts[0].uri)
            if isinstance(contacts, list) and contacts
            else _request_uri(branch.data)
        )
        route_set = [f"<{rr.uri}>" for rr in reversed(resp.record_routes)]
        target = branch.target
        if route_set:
            first = resp.record_routes[-1].uri
            if isinstance(first, SipURI):
                target = self.proxy.target_for_uri(first)
        call = branch.call
        dialog = Dialog(
            ua=self,
            call=call,
            call_id=call.call_id,
            local_tag=call.from_tag,
            remote_tag=resp.to.tag or "",
            from_value=call.from_value,
            to_value=resp.get("To") or call.to_value,
            remote_target=remote_target,
            route_set=route_set,
            target=target,
            invite_cseq=1,
            local_cseq=1,
        )
        if len(self._dialogs) >= MAX_DIALOGS:
            del self._dialogs[next(iter(self._dialogs))]
        self._dialogs[call.call_id, call.from_tag] = dialog
        return dialog

    def _branch_failed(
        self, branch: _Branch, status: int, reason: str, resp: Response | None
    ) -> None:
        call = branch.call
        if call.best is None or _rank(status) < _rank(call.best[0]):
            call.best = (status, reason)
        if call.ended or any(b.state is not BranchState.FINAL for b in call.branches):
            return
        call.ended = True
        status, reason = call.best
        if resp is not None and resp.status == status:
            final = resp
        else:
            final = _local_response(branch, status, reason)
        self._observe_message(final, local=True)
        call.handler.on_failure(call, status, reason)

    # --------------------------------------------------- requests the peer sends us ---
    def handles(self, req: Request, source: Source) -> bool:
        """Take an in-dialog request for one of our dialogs (True), or leave it."""
        tag = req.to.tag or ""
        if not tag.startswith(TAG_PREFIX):
            return False
        dialog = self._dialogs.get((req.call_id, tag))
        if req.method == "ACK":
            if dialog is not None:
                self._on_ack(dialog, req)
            return True
        target = self.proxy.response_target(req, source)
        # A REFER's subscription may outlive the INVITE usage (RFC 6665 §4.5.2): its
        # NOTIFYs are still answered after a BYE.
        if dialog is None or (dialog.ended and req.method not in ("BYE", "NOTIFY")):
            self._reply(req, target, 481, "Call/Transaction Does Not Exist")
            return True
        key = (req.top_via.branch or "", req.method)
        served = dialog._responses.get(key)
        if served is not None:  # a retransmission: the transaction answers it again
            if served.entry is not None:
                self.proxy.tm.request_again(served.entry)
            return True
        cseq = req.cseq.number
        if dialog.remote_cseq is not None and cseq <= dialog.remote_cseq:
            self._reply(req, target, 500, "CSeq out of order")  # §12.2.2
            return True
        dialog.remote_cseq = cseq
        served = _Served(dialog, key, target)
        served.entry = self.proxy.tm.start_server(
            ("ua", *key),
            invite=req.method == "INVITE",
            reliable=source.reliable,
            target=target,
            send=self.proxy.send,
            user=self,
            owner=served,
        )
        dialog._responses[key] = served
        self._observe_message(req)
        if req.method == "BYE":
            dialog.ended = True
            answer = Answer(200)
            self._answer(served, req, answer)
            dialog.call.handler.on_request(dialog, req)
            self._forget_later(dialog)
            return True
        try:
            answer = dialog.call.handler.on_request(dialog, req)
        except Exception:
            log.exception("in-dialog request handler failed")
            answer = Answer(500, "Server Internal Error")
        self._answer(served, req, answer)
        return True

    def _answer(self, served: _Served, req: Request, answer: Answer) -> None:
        headers = list(answer.headers)
        if req.method == "INVITE" and 200 <= answer.status < 300:
            headers.append(("Contact", f"<{self.proxy.contact_for(served.target, 'sipgw')}>"))
        headers.append(("Server", self.user_agent))
        if answer.body:
            headers.append(("Content-Type", answer.content_type or "application/sdp"))
            headers.append(("Content-Length", str(len(answer.body))))
        resp = make_response(req, answer.status, answer.reason, headers=headers)
        resp.body = answer.body
        if req.method == "INVITE":
            self._observe_message(resp)
        self.proxy.counters.response_out(served.target.transport, answer.status)
        data = resp.to_bytes()
        if served.entry is not None:
            self.proxy.tm.respond(served.entry, answer.status, data)
        if req.method == "INVITE" and 200 <= answer.status < 300 and not served.target.reliable:
            # §13.3.1.4: the UAS core, not the transaction, retransmits a 2xx until ACK.
            self._retransmit_2xx(served, data, self.proxy.timers.t1)

    def _retransmit_2xx(self, served: _Served, data: bytes, interval: float) -> None:
        if served.acked or interval > 64 * self.proxy.timers.t1:
            return

        def again() -> None:
            if not served.acked:
                self.proxy.send(data, served.target)
                self._retransmit_2xx(served, data, min(interval * 2, self.proxy.timers.t2))

        self.proxy.queue.schedule(self.proxy.clock() + interval, again)

    def _on_ack(self, dialog: Dialog, req: Request) -> None:
        for served in list(dialog._responses.values()):
            if served.key[1] == "INVITE" and not served.acked:
                served.acked = True
                # The ACK of a non-2xx is the transaction's (§17.2.1); of a 2xx, ours.
                if served.entry is not None:
                    self.proxy.tm.request_again(served.entry, is_ack=True)
        self._observe_message(req)

    def _reply(self, req: Request, target: Target, status: int, reason: str) -> None:
        resp = make_response(req, status, reason, headers=(("Server", self.user_agent),))
        self.proxy.counters.response_out(target.transport, status)
        self.proxy.send(resp.to_bytes(), target)

    # -- the user agent as the transaction user of its requests (proxy/tm.py) ---------
    def txn_response(self, owner: Any, status: int, data: bytes, resp: Response | None) -> None:
        if isinstance(owner, _Branch):
            self._on_invite_response(owner, status, resp)
            return
        request: _Request = owner
        if status >= 200:
            if resp is not None and request.method != "CANCEL":
                self._observe_message(resp)
            self._final(request, status, resp)

    def txn_failed(self, owner: Any, status: int) -> None:
        if isinstance(owner, _Served):
            return  # our final answer was never acknowledged: nothing more to do
        reason = "Request Timeout" if status == 408 else "Service Unavailable"
        if isinstance(owner, _Branch):
            branch = owner
            if branch.state is not BranchState.FINAL:
                branch.state, _ = advance(branch.state, BranchInput.FINAL)
                branch.final = status
                self._branch_failed(branch, status, reason, None)
            return
        self._final(owner, status, None)

    def txn_ended(self, owner: Any) -> None:
        if isinstance(owner, _Served):
            owner.dialog._responses.pop(owner.key, None)
            owner.entry = None  # the entry pointed back at it: no cycle is left
        # A client transaction's records go with the call or the dialog.

    def _final(self, request: _Request, status: int, resp: Response | None) -> None:
        on_final, request.on_final = request.on_final, None
        if on_final is not None:
            try:
                on_final(status, resp)
            except Exception:
                log.exception("request outcome handler failed")

    def _forget_later(self, dialog: Dialog) -> None:
        # Kept for 64*T1 so retransmitted BYEs and NOTIFYs still find their dialog.
        def forget() -> None:
            self._dialogs.pop((dialog.call_id, dialog.local_tag), None)

        self.proxy.queue.schedule(self.proxy.clock() + 64 * self.proxy.timers.t1, forget)

    # ------------------------------------------------------------------ observation ---
    def _observe_message(
        self, msg: Request | Response, info: Observed | None = None, *, local: bool = False
    ) -> None:
        """Tell the call tracker (`info` for an initial INVITE; in-dialog messages and
        responses need none: the tracker finds their call by the dialog)."""
        observer = self.proxy.observer
        if observer is None:
            return
        if info is None:
            info = Observed(
                tenant=None, direction=None, extension=None, local=local, source="",
                user_agent=None,
            )  # fmt: skip
        try:
            observer(msg, info)
        except Exception:
            log.exception("call observer failed")


# --- building messages ------------------------------------------------------------------


def new_tag() -> str:
    """A From tag the UA will recognize as its own in requests the peer sends back."""
    return TAG_PREFIX + secrets.token_hex(6)


def _finish(lines: list[str], body: bytes, content_type: str | None) -> bytes:
    if body:
        lines.append(f"Content-Type: {content_type or 'application/sdp'}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _branch_of(data: bytes) -> str:
    head = data.split(b"\r\n", 2)[1].decode()
    return head.split("branch=", 1)[1].split(";", 1)[0]


def _request_uri(data: bytes) -> str:
    return data.split(b" ", 2)[1].decode()


def _parse_request(data: bytes) -> Request:
    msg = parse_message(data)
    assert isinstance(msg, Request)
    return msg


def _local_response(branch: _Branch, status: int, reason: str) -> Response:
    """The final answer we stand for when no branch sent one (timeout, transport)."""
    return make_response(_parse_request(branch.data), status, reason, to_tag=TAG_PREFIX + "x")


def _rank(status: int) -> tuple[int, int]:
    # Like the proxy's best-response choice (§16.7): 6xx first, then the lowest class;
    # within 4xx, what says most about the callee (busy, declined) over timeouts.
    if status >= 600:
        return (0, 0)
    preferred = {486: 0, 603: 0, 480: 1, 404: 1, 408: 2, 487: 3}
    return (status // 100, preferred.get(status, 2))
