"""The gateway as the dialog-event notifier (RFC 6665, RFC 4235) of its own extensions:
the SIP side of the busy lamp field.

- A ``SUBSCRIBE`` with ``Event: dialog`` to an extension of the subscriber's own
  tenant reaches ``subscribe`` after the router authenticated it like any request
  from a phone (routing.py; an unauthenticated one is challenged and leaves no state).
  It is answered 200 with our To tag, Expires and Contact; the first NOTIFY, with the
  full state, follows at once (a zero-delay timer, so after the 200).
- In-dialog requests (refresh, un-SUBSCRIBE with ``Expires: 0``) reach ``handles`` by
  our To tag's prefix, like the click-to-dial user agent's; they must come from the
  host the subscription was made from.
- Every change of the watched extension's dialogs (lines.py, fed by the tenant's call
  events from the bus on every worker and node) is one NOTIFY per subscription,
  through the one transaction layer (tm.py) as a client transaction, each with a full
  dialog-info body and a ``version`` one higher (subscriptions.py: one in flight at a
  time).
- Every NOTIFY goes to the subscriber's own flow: the address and connection its
  SUBSCRIBE came from, never to whatever its Contact names (that is only the
  Request-URI), and through the destination policy (``Proxy.send``).

Answers, where RFC 6665 and RFC 3261 say: 489 Bad Event (with Allow-Events) for
another package addressed to the gateway itself, 404 for an unknown extension, 403
for another tenant's extension or a subscriber over its limit, 503 with Retry-After
for a tenant over its limit, 423 Interval Too Brief (with Min-Expires), 481 for an
unknown dialog, 400 without a Contact.

Sans-I/O like the proxy: time is the proxy's clock, deadlines its TimerQueue.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.blf.dialog_info import CONTENT_TYPE, render
from gateway.blf.lines import Lines
from gateway.blf.subscriptions import (
    Do,
    SubInput,
    Subscription,
    SubscriptionTable,
    SubState,
    advance,
)
from gateway.config import Tenant, User
from gateway.config.blf import BlfSettings
from gateway.proxy.context import ServerContext
from gateway.proxy.routing import Decision, Reply
from gateway.sip.errors import SIPParseError
from gateway.sip.message import Request, Response, make_response
from gateway.sip.random_ids import random_hex
from gateway.sip.uri import SipURI, TelURI
from gateway.transport.addresses import Source, Target

if TYPE_CHECKING:
    from gateway.proxy.core import Proxy

log = logging.getLogger("sipgw.blf")

PACKAGE = "dialog"
# Our To tags and NOTIFY branches say whose they are (like the user agent's and the
# prober's): in-dialog requests are recognized without a table look-up for others.
TAG_PREFIX = "blf"
BRANCH_PREFIX = "z9hG4bKbl"
TENANT_FULL_RETRY_AFTER = 60
MAX_EXPIRES_VALUE = 2**32 - 1

Run = Callable[[Callable[[], None]], None]


class _Notify:
    """One NOTIFY in flight: whose, and whether it ends the subscription."""

    __slots__ = ("final", "sub")

    def __init__(self, sub: Subscription, final: bool) -> None:
        self.sub = sub
        self.final = final


class _Served:
    """The server transaction of an in-dialog request we answer (absorbs retransmissions)."""

    __slots__ = ()


_SERVED = _Served()


def event_package(req: Request) -> tuple[str, str | None]:
    """The Event header's package (lower case, "" without the header) and its ``id``
    parameter (RFC 6665 §8.2.1: ``Event: dialog;id=x``)."""
    package, *params = (req.get("Event") or "").split(";")
    event_id = None
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "id" and value.strip():
            event_id = value.strip()
    return package.strip().lower(), event_id


def _expires(req: Request) -> int | None:
    text = req.get("Expires")
    if text is None:
        return None
    text = text.strip()
    if not text.isdigit():
        raise SIPParseError("Expires must be a number of seconds", status=400, header="Expires")
    return min(int(text), MAX_EXPIRES_VALUE)


class Notifier:
    def __init__(
        self,
        proxy: Proxy,
        settings: BlfSettings,
        lines: Lines,
        *,
        watch: Callable[[str], None] | None = None,
        run: Run | None = None,
    ) -> None:
        """``watch(tenant)``: called when this process gets its first subscription of a
        tenant (the runtime then feeds that tenant's call events, `on_event`, and says
        `caught_up`). ``run``: how work that starts outside a message (a transport error
        reported later) is run so the proxy's timer is re-armed."""
        self.proxy = proxy
        self.settings = settings
        self.lines = lines
        self.watch = watch
        self.run: Run = run or (lambda fn: fn())
        self.table = SubscriptionTable()
        self._watched: set[str] = set()
        self._catching_up: set[str] = set()
        self.notifies = 0  # NOTIFYs sent (not retransmissions)
        self.notify_failures = 0  # NOTIFYs that ended their subscription by failing

    # ============================================================ out of dialog ===
    def takes(self, req: Request) -> bool:
        """An out-of-dialog SUBSCRIBE the gateway answers as the notifier: the dialog
        package to one of our hosts, or any package to the gateway itself (489)."""
        uri = req.uri
        if isinstance(uri, SipURI):
            if not self.proxy.is_our_host(uri):
                return False
            return uri.user is None or event_package(req)[0] == PACKAGE
        return isinstance(uri, TelURI) and event_package(req)[0] == PACKAGE

    def subscribe(self, ctx: ServerContext) -> Decision:
        """Authenticate a SUBSCRIBE like any request from a phone, then answer it."""
        found = self._subscriber(ctx)
        if isinstance(found, Reply):
            return found
        return self._subscribe(ctx, *found)

    def _subscriber(self, ctx: ServerContext) -> tuple[Tenant, User] | Reply:
        """The tenant and user that sent it, as routing.py's ``_from_phone`` decides
        for a call: the From's domain names the tenant, the digest the user, and From
        must name that user. Until then nothing is kept (the challenge is stateless)."""
        req = ctx.request
        from_uri = req.from_.uri
        if not isinstance(from_uri, SipURI):
            return Reply(403, "From must be a SIP URI")
        tenant = self.proxy.directory.tenant_for_domain_or_default(from_uri.host)
        if tenant is None:
            return Reply(403, "Domain not served here")
        ctx.tenant = tenant.id
        outcome = self.proxy.auth.check(req, tenant, ctx.source, registrar=False)
        if outcome.user is None:
            return Reply(outcome.status, outcome.reason, outcome.headers)
        ctx.trusted = True
        user = outcome.user
        if from_uri.user not in (user.username, user.extension):
            return Reply(403, "From does not match the authenticated user")
        return tenant, user

    def _subscribe(self, ctx: ServerContext, tenant: Tenant, user: User) -> Decision:
        req = ctx.request
        package, event_id = event_package(req)
        if package != PACKAGE or not self.settings.enabled:
            return Reply(489, "Bad Event", (("Allow-Events", PACKAGE),))
        found = self._watched_user(req, tenant)
        if isinstance(found, Reply):
            return found
        watched = found
        contacts = req.contacts if req.get("Contact") else []
        if contacts == "*" or len(contacts) != 1:
            return Reply(400, "SUBSCRIBE needs one Contact")
        expires = _expires(req)
        expires = self.settings.default_expires if expires is None else expires
        if 0 < expires < self.settings.min_expires:
            return Reply(
                423, "Interval Too Brief", (("Min-Expires", str(self.settings.min_expires)),)
            )
        expires = min(expires, self.settings.max_expires)
        remote_target = str(contacts[0].uri)
        self._replace_older(tenant.id, user.username, watched.extension, remote_target)
        if self.table.of_subscriber(tenant.id, user.username) >= self.settings.max_per_subscriber:
            return Reply(403, "Too many subscriptions for this user")
        if self.table.of_tenant(tenant.id) >= self.settings.max_per_tenant:
            return Reply(
                503,
                "Too many subscriptions for this tenant",
                (("Retry-After", str(TENANT_FULL_RETRY_AFTER)),),
            )
        sub = self._new_subscription(ctx, tenant, user, watched, remote_target, event_id, expires)
        # The 200 carries our To tag: the proxy answers with the context's tag.
        ctx._to_tag = sub.local_tag
        now = self.proxy.clock()
        first = SubInput.CHANGE if expires > 0 else SubInput.END  # Expires 0: a fetch
        self.proxy.queue.schedule(now, functools.partial(self._input, sub, first))
        contact = self.proxy.contact_for(sub.target, watched.extension)
        return Reply(200, "OK", (("Expires", str(expires)), ("Contact", f"<{contact}>")))

    def _watched_user(self, req: Request, tenant: Tenant) -> User | Reply:
        uri = req.uri
        if isinstance(uri, SipURI):
            if uri.user is None:
                return Reply(404, "No user in Request-URI")
            owner = self.proxy.directory.tenant_for_domain(uri.host)
            if owner is not None and owner.id != tenant.id:
                # Another tenant's extension: its calls are none of this subscriber's
                # business, whether or not the extension exists there.
                return Reply(403, "Extension of another tenant")
            name = uri.user
        else:
            assert isinstance(uri, TelURI)
            name = uri.number
        user = self.proxy.directory.user(tenant, name)
        if user is None or not self.lines.serves(tenant.id, user.extension):
            return Reply(404, "No such extension")
        return user

    def _replace_older(
        self, tenant: str, subscriber: str, extension: str, remote_target: str
    ) -> None:
        """A phone that subscribes again to the same extension from the same Contact
        (it restarted, forgot its dialog) replaces its older subscription, rather than
        filling its quota with dialogs it will never refresh."""
        for sub in self.table.watching(tenant, extension):
            if sub.subscriber == subscriber and sub.remote_target == remote_target:
                self._forget(sub)

    def _new_subscription(
        self,
        ctx: ServerContext,
        tenant: Tenant,
        user: User,
        watched: User,
        remote_target: str,
        event_id: str | None,
        expires: int,
    ) -> Subscription:
        req, source = ctx.request, ctx.source
        local_tag = TAG_PREFIX + random_hex(6)
        now = self.proxy.clock()
        sub = Subscription(
            tenant=tenant.id,
            extension=watched.extension,
            subscriber=user.username,
            entity=f"sip:{watched.extension}@{tenant.domains[0]}",
            call_id=req.call_id,
            local_tag=local_tag,
            remote_tag=req.from_.tag or "",
            local_uri=f"{req.get('To')};tag={local_tag}",
            remote_uri=req.get("From") or "",
            remote_target=remote_target,
            event_id=event_id,
            target=_flow(source),
            source_host=source.remote[0],
            expires_at=now + expires,
            remote_cseq=req.cseq.number,
        )
        self.table.add(sub)
        self._arm_expiry(sub)
        if tenant.id not in self._watched:
            self._watched.add(tenant.id)
            if self.watch is not None:
                self._catching_up.add(tenant.id)
                self.watch(tenant.id)
        log.info(
            "blf subscription",
            extra={"tenant": tenant.id, "subscriber": user.username, "extension": sub.extension},
        )
        return sub

    # ================================================================= in dialog ===
    def handles(self, req: Request, source: Source) -> bool:
        """An in-dialog request of one of our subscriptions (True: answered here)."""
        tag = req.to.tag or ""
        if not tag.startswith(TAG_PREFIX):
            return False
        if req.method == "ACK":
            return True  # nothing of ours is acknowledged
        key = ("blf", req.top_via.branch or "", req.top_via.sent_by.lower(), req.method)
        entry = self.proxy.tm.server.get(key)
        if entry is not None:
            self.proxy.tm.request_again(entry)  # a retransmission: the same answer again
            return True
        target = self.proxy.response_target(req, source)
        entry = self.proxy.tm.start_server(
            key,
            invite=req.method == "INVITE",
            reliable=source.reliable,
            target=target,
            send=self.proxy.send,
            user=self,
            owner=_SERVED,
        )
        sub = self.table.by_dialog.get((req.call_id, tag))
        if (
            sub is None
            or sub.remote_tag != (req.from_.tag or "")
            or source.remote[0] != sub.source_host
        ):
            self._answer(entry, req, 481, "Subscription Does Not Exist")
            return True
        if req.method != "SUBSCRIBE":
            self._answer(entry, req, 405, "Method Not Allowed", (("Allow", "SUBSCRIBE"),))
            return True
        if req.cseq.number <= sub.remote_cseq:
            self._answer(entry, req, 500, "CSeq out of order")  # RFC 3261 §12.2.2
            return True
        sub.remote_cseq = req.cseq.number
        try:
            expires = _expires(req)
        except SIPParseError as err:
            self._answer(entry, req, 400, str(err))
            return True
        expires = self.settings.default_expires if expires is None else expires
        if 0 < expires < self.settings.min_expires:
            minimum = (("Min-Expires", str(self.settings.min_expires)),)
            self._answer(entry, req, 423, "Interval Too Brief", minimum)
            return True
        expires = min(expires, self.settings.max_expires)
        self._answer(entry, req, 200, "OK", (("Expires", str(expires)),))
        if expires == 0:
            self._end(sub, "timeout")  # un-SUBSCRIBE (RFC 6665 §4.1.2.3)
            return True
        sub.expires_at = self.proxy.clock() + expires
        self._arm_expiry(sub)
        self._input(sub, SubInput.CHANGE)  # a refresh is answered with the state too
        return True

    def _answer(
        self,
        entry: Any,
        req: Request,
        status: int,
        reason: str,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        resp = make_response(
            req, status, reason, headers=(*headers, ("Server", self.proxy.sip.user_agent))
        )
        self.proxy.tm.respond(entry, status, resp.to_bytes())

    # ============================================================ call events ===
    def on_event(self, tenant: str, event: dict[str, Any]) -> None:
        """One call event of a watched tenant, in stream order."""
        changed = self.lines.apply(tenant, event)
        if not changed or tenant in self._catching_up:
            return
        for extension, view in changed:
            for sub in self.table.watching(tenant, extension):
                if view.state == "terminated":
                    sub.ended[view.id] = view
                self._input(sub, SubInput.CHANGE)

    def caught_up(self, tenant: str) -> None:
        """The tenant's recent events are read (the runtime's catch-up): every
        subscription of it gets the state as it is now."""
        if tenant not in self._catching_up:
            return
        self._catching_up.discard(tenant)
        log.info("blf: watching the tenant's calls", extra={"tenant": tenant})
        for sub in list(self.table.by_dialog.values()):
            if sub.tenant == tenant and self.lines.dialogs(tenant, sub.extension):
                self._input(sub, SubInput.CHANGE)

    def deactivate(self) -> None:
        """The process is stopping: every subscription ends with a final NOTIFY saying
        ``reason=deactivated``, on which the subscriber subscribes again at once (RFC
        6665 §4.2.2), to whichever worker or node takes it, rather than keep a dark
        lamp until its next refresh."""
        for sub in list(self.table.by_dialog.values()):
            self._end(sub, "deactivated")

    # ============================================================ the state table ===
    def _input(self, sub: Subscription, event: SubInput) -> None:
        sub.state, do = advance(sub.state, event)
        if do is Do.NOTIFY:
            self._notify(sub, final=False)
        elif do is Do.FINAL_NOTIFY:
            self._notify(sub, final=True)
        elif do is Do.FORGET:
            self._forget(sub)

    def _end(self, sub: Subscription, reason: str) -> None:
        sub.end_reason = reason
        self.proxy.counters.blf[f"ended_{reason}"] += 1
        self._input(sub, SubInput.END)

    def _arm_expiry(self, sub: Subscription) -> None:
        queue = self.proxy.queue
        queue.cancel(sub.expiry)
        sub.expiry = queue.schedule(sub.expires_at, functools.partial(self._end, sub, "timeout"))

    def _forget(self, sub: Subscription) -> None:
        # ENDED: the answer to a NOTIFY still in flight (a replaced subscription's)
        # changes nothing any more.
        sub.state = SubState.ENDED
        self.proxy.queue.cancel(sub.expiry)
        sub.expiry = None
        self.table.remove(sub)

    # ================================================================== NOTIFY ===
    def _notify(self, sub: Subscription, *, final: bool) -> None:
        proxy = self.proxy
        branch = BRANCH_PREFIX + random_hex(8)
        data = self._request(sub, branch, final=final)
        owner = _Notify(sub, final)
        if data is None:
            # No listener of the subscriber's transport to send from: it is unreachable.
            self._notify_done(owner, ok=False)
            return
        self.notifies += 1
        proxy.counters.request_out(sub.target.transport, "NOTIFY")
        proxy.tm.start_client(
            branch, "NOTIFY", data, sub.target, send=self._send, user=self, owner=owner
        )

    def _request(self, sub: Subscription, branch: str, *, final: bool) -> bytes | None:
        proxy = self.proxy
        via = proxy.via_for(sub.target, branch)
        if via is None:
            return None
        now = proxy.clock()
        dialogs = self.lines.dialogs(sub.tenant, sub.extension)
        dialogs.extend(view for view in sub.ended.values() if view.id)
        sub.ended.clear()
        sub.version += 1
        sub.cseq += 1
        body = render(sub.entity, sub.version, dialogs)
        if final:
            state = f"terminated;reason={sub.end_reason}"
        else:
            state = f"active;expires={max(0, int(sub.expires_at - now))}"
        event = PACKAGE if sub.event_id is None else f"{PACKAGE};id={sub.event_id}"
        lines = (
            f"NOTIFY {sub.remote_target} SIP/2.0",
            f"Via: {via}",
            f"Max-Forwards: {proxy.sip.max_forwards}",
            f"From: {sub.local_uri}",
            f"To: {sub.remote_uri}",
            f"Call-ID: {sub.call_id}",
            f"CSeq: {sub.cseq} NOTIFY",
            f"Contact: <{proxy.contact_for(sub.target, sub.extension)}>",
            f"Event: {event}",
            f"Subscription-State: {state}",
            f"Content-Type: {CONTENT_TYPE}",
            f"User-Agent: {proxy.sip.user_agent}",
            f"Content-Length: {len(body)}",
        )
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def _send(self, data: bytes, target: Target, on_error: Callable[[], None] | None) -> None:
        # A transport error comes later, outside a message: through `run`, which
        # re-arms the timers.
        if on_error is not None:
            on_error = functools.partial(self.run, on_error)
        self.proxy.send(data, target, on_error)

    def _notify_done(self, owner: _Notify, *, ok: bool) -> None:
        sub = owner.sub
        if owner.final:
            self._input(sub, SubInput.FINAL_DONE)
            return
        if not ok:
            self.notify_failures += 1
        self.proxy.counters.blf["notify_answered" if ok else "notify_failed"] += 1
        self._input(sub, SubInput.ANSWERED if ok else SubInput.FAILED)

    # -- the notifier as the transaction user of its NOTIFYs (tm.py) ---------------------
    def txn_response(self, owner: Any, status: int, data: bytes, resp: Response | None) -> None:
        if isinstance(owner, _Notify) and status >= 200:
            self._notify_done(owner, ok=status < 300)

    def txn_failed(self, owner: Any, status: int) -> None:
        if isinstance(owner, _Notify):
            self._notify_done(owner, ok=False)

    def txn_ended(self, owner: Any) -> None:
        pass


def _flow(source: Source) -> Target:
    """The subscriber's own flow: back where its SUBSCRIBE came from, from the port it
    came to, on its connection if it has one."""
    return Target(
        source.transport,
        *source.remote,
        conn_id=source.conn_id,
        local_port=None if source.reliable else source.local[1],
        flow=True,
    )
