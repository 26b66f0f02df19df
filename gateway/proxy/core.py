"""The transaction-stateful proxy (RFC 3261 §16) and the entry point for every message.

``Proxy.receive(data, source)`` is the only way in. Everything it does is synchronous:
it parses, consults the tables, and hands bytes to ``transport.send``; time reaches
it only through ``fire_timers(now)`` at the deadline ``next_deadline()`` reports. So the
whole proxy is driven in unit tests without sockets or an event loop.

Reading order: receive → _on_request (validation, transactions, CANCEL/ACK) →
_process (§16.3 checks, §16.4 route preprocessing, routing decision) → _fork (§16.6
forwarding through client transactions) → _on_response / _branch_response (§16.7
response context, best-response choice) → timers.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import secrets
from collections.abc import Callable
from typing import Any, Protocol

from gateway.config import Settings, Tenant, User
from gateway.proxy.auth import Authenticator
from gateway.proxy.branch_state import BranchInput, BranchState, advance
from gateway.proxy.caller_display import (
    CallerNames,
    Shown,
    Wait,
    with_display,
    with_display_all,
)
from gateway.proxy.context import Branch, ServerContext
from gateway.proxy.destinations import DestinationPolicy, service_endpoints
from gateway.proxy.directory import Directory
from gateway.proxy.event_notifier import EventNotifier
from gateway.proxy.location import Location
from gateway.proxy.messages import build_ack, build_cancel, last_resort_response
from gateway.proxy.observe import Observed, Observer
from gateway.proxy.options import options_headers, quick_options, quick_reply
from gateway.proxy.record_route import (
    Hop,
    RouteSigner,
    next_hop,
    record_route_values,
    remove_own_routes,
)
from gateway.proxy.registrar import Registrar
from gateway.proxy.routing import Forward, Handled, Reply, Router
from gateway.proxy.timers import TimerQueue
from gateway.proxy.tm import Send, TransactionLayer
from gateway.sip.errors import SIPParseError
from gateway.sip.headers import Via
from gateway.sip.message import Limits, Request, Response, make_response, parse_message
from gateway.sip.random_ids import random_hex
from gateway.sip.transaction import (
    Timers,
    TransactionError,
    is_rfc3261_branch,
)
from gateway.sip.uri import SipURI, TelURI, parse_uri
from gateway.stats import Counters, parse_error_label
from gateway.transport.addresses import (
    DEFAULT_PORTS,
    Source,
    Target,
    host_for_uri,
    ip_version,
    same_host,
)

log = logging.getLogger("sipgw.proxy")

BRANCH_PREFIX = "z9hG4bKsg"
SUPPORTED_PROXY_REQUIRE: frozenset[str] = frozenset()
RECORD_ROUTE_METHODS = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})
DRAIN_RETRY_AFTER = 30
RANG_OUT = 'SIP;cause=408;text="No answer"'
HOUSEKEEPING_INTERVAL = 30.0
# What an unauthenticated request may make us send back, in bytes per byte received:
# a spoofed source must not turn us into an amplifier (issue #11).
MAX_REPLY_RATIO = 2.0

ServerKey = tuple[str, ...]
# The counter keys of an OPTIONS answered from the template (Counters.request_in and
# response_out would build them per probe).
_OPTIONS_IN = ("in", "udp", "OPTIONS")
_OK_OUT = ("out", "udp", "2xx")


class DialogParty(Protocol):
    """A party the gateway itself is in some dialogs (the click-to-dial user agent,
    gateway/dial): it takes the in-dialog requests of its own dialogs."""

    def handles(self, req: Request, source: Source) -> bool: ...


class TransportPort(Protocol):
    """What the proxy needs of the transport layer."""

    def send(
        self, data: bytes, target: Target, on_error: Callable[[], None] | None = None
    ) -> None: ...
    def local_port(self, transport: str, version: int = 4) -> int: ...
    def supports(self, transport: str) -> bool: ...
    def add_alias(self, conn_id: int, host: str, port: int) -> None: ...


def _server_key(req: Request, method: str) -> ServerKey:
    """RFC 3261 §17.2.3 matching; RFC 2543 fallback for branches without the cookie."""
    via = req.top_via
    branch = via.branch or ""
    if is_rfc3261_branch(branch):
        return ("3261", branch, via.sent_by.lower(), method)
    return (
        "2543",
        req.call_id,
        req.from_.tag or "",
        str(req.cseq.number),
        via.sent_by.lower(),
        req.uri_raw,
        method,
    )


def _back_to(source: Source) -> Target:
    """Straight back to where a message came from, from the port it came to."""
    local_port = source.local[1] if source.transport == "udp" else None
    return Target(source.transport, *source.remote, source.conn_id, local_port)


def _release(ctx: ServerContext) -> None:
    """Once a request's server transaction and all its branches are over, drop the
    context's list of branches: each branch points back at its context, and the cycle
    would otherwise leave a call's state to the garbage collector (86 objects a call)
    rather than to reference counting."""
    if ctx.terminated and all(branch.terminated for branch in ctx.branches):
        ctx.branches.clear()


def _park(ctx: ServerContext) -> None:
    """The final response is out: what the context keeps to the end of its transaction
    (retransmissions, a late CANCEL or ACK) needs the messages' bytes, rarely their
    parsed form, so that is dropped (`Message.drop_parsed`) rather than walked by the
    garbage collector for the transaction's remaining seconds."""
    ctx.request.drop_parsed()
    for branch in ctx.branches:
        if branch.response is not None:
            branch.response.drop_parsed()


def _show_caller(req: Request, shown: Shown) -> None:
    """Write the recognized name into the callee's copy of an INVITE (caller_display.py):
    the display-name of From and/or of every P-Asserted-Identity (one is added, naming
    the caller's URI, when there is none)."""
    if "From" in shown.headers:
        value = req.get("From")
        if value is not None:
            req.set("From", with_display(value, shown.name))
    if "P-Asserted-Identity" in shown.headers:
        lines = req.get_all("P-Asserted-Identity") or [f"<{shown.uri}>"]
        if len(lines) > 1:
            req.remove("P-Asserted-Identity")  # several lines become one, in their order
        value = ", ".join(with_display_all(line, shown.name) for line in lines)
        req.set("P-Asserted-Identity", value)


def _format_via(via: Via, params: dict[str, str | None]) -> str:
    host = via.host if via.port is None else f"{via.host}:{via.port}"
    text = f"{via.protocol}/{via.transport} {host}"
    for name, value in params.items():
        text += f";{name}" if value is None else f";{name}={value}"
    return text


class Proxy:
    def __init__(
        self,
        settings: Settings,
        *,
        transport: TransportPort,
        counters: Counters,
        clock: Callable[[], float],
        location: Location | None = None,
        auth_secret: bytes | None = None,
        observer: Observer | None = None,
        resolve: Callable[[str, int], list[str]] | None = None,
    ) -> None:
        """``resolve`` (host, port) → addresses: how the runtime looks up the host names
        of our own services (a Redis named in a container network), once, at start."""
        self.settings = settings
        self.sip = settings.sip
        self.transport = transport
        self.counters = counters
        self.clock = clock
        self.limits = Limits(
            max_message=self.sip.max_message_size,
            max_headers=self.sip.max_headers,
            max_header_line=self.sip.max_header_line,
        )
        self.timers = Timers(t1=self.sip.t1, t2=self.sip.t2, t4=self.sip.t4)
        self.directory = Directory(settings)
        self.location = location if location is not None else Location()
        self.registrar = Registrar(self.location, self.sip)
        secret = auth_secret or secrets.token_bytes(32)
        self.auth = Authenticator(
            self.directory,
            secret=secret,
            settings=self.sip,
            clock=self.clock,
            failures=counters.auth_failures,
            # Per process: nonce-counts are remembered where the nonce was issued, and a
            # restarted process, having forgotten them, answers its old nonces as stale.
            issuer=secrets.token_bytes(4),
        )
        self.route_signer = RouteSigner(secret)
        self.destinations = DestinationPolicy(
            services=service_endpoints(settings),
            sip_ports=self._listening_ports,
            deny=self.sip.deny_destinations,
            local_hosts=[spec.host for spec in self.sip.listen] + [self.sip.advertise or ""],
            is_peer=self._is_known_peer,
            resolve=resolve,
        )
        self.router = Router(self.directory, self.location, self.auth, self)
        self.queue = TimerQueue()
        # Every client transaction of the gateway: the proxy's branches, the user agent's
        # and the prober's requests (tm.py, like Kamailio's tm).
        self.tm = TransactionLayer(queue=self.queue, timers=self.timers, clock=self.clock)
        # One bound method for every transaction's sends: `self._send_raw` read as a value
        # would make a new one per transaction, kept (and walked by the collector) for
        # as long as the transaction lives.
        self._send_out: Send = self._send_raw
        self.draining = False
        self.observer = observer
        # Elements that originate requests of their own (the click-to-dial user agent)
        # get the responses that match no transaction any more whose top Via branch
        # starts with their prefix (BRANCH_PREFIX's length: "z9hG4bK" + 2).
        self.response_handlers: dict[str, Callable[[Response, Source], None]] = {}
        self.ua: DialogParty | None = None  # set by UserAgent(proxy): the gateway's own calls
        self.notifier: EventNotifier | None = None  # set by blf.Notifier: dialog events
        # The recognized caller's name on the callee's display (caller_display.py), set
        # by the runtime when a tenant has it on.
        self.caller_names: CallerNames | None = None
        # Worker processes (transport/relay.py): a sibling's own port → its index, every
        # worker's own ports (they are all "us"), and how to hand a message over.
        self.siblings: dict[int, int] = {}
        self.worker_ports: frozenset[int] = frozenset()
        self.relay: Callable[[int, bytes, Source], None] | None = None
        self._ports: frozenset[int] | None = None
        self._options_uri_for_us = functools.lru_cache(maxsize=1024)(self._options_uri_is_us)
        self.queue.schedule(self.clock() + HOUSEKEEPING_INTERVAL, self._housekeeping)
        # Without an explicit advertise address, the listen address of the right family
        # goes into Via and Record-Route (the loader refuses wildcards without one).
        self.advertise = (self.sip.advertise or self.sip.listen[0].host).strip("[]")
        self._our_hosts = {self.advertise.lower()} | {
            spec.host.strip("[]").lower() for spec in self.sip.listen
        }

    # ================================================================== entry point ===
    def receive(self, data: bytes, source: Source) -> bool:
        """Handle one message; False when it changed no timer (an OPTIONS answered from
        the template), so the I/O layer need not re-arm."""
        if data[:8] == b"OPTIONS " and not source.reliable and self._quick_options(data, source):
            return False
        try:
            msg = parse_message(data, self.limits, stream=source.reliable)
        except SIPParseError as err:
            self._parse_error(data, source, err)
            return True
        if self.siblings and source.transport == "udp":
            owner = self._owner(msg)
            if owner is not None and self.relay is not None:
                # Meant for a sibling worker (its port is in the Via or the Route): the
                # transaction and the call are there.
                self.counters.transport["relayed_to_worker"] += 1
                self.relay(owner, data, source)
                return True
        if isinstance(msg, Request):
            self.counters.request_in(source.transport, msg.method)
            self._on_request(msg, source, len(data))
        else:
            self.counters.response_in(source.transport, msg.status)
            self._on_response(msg, source)
        return True

    def _quick_options(self, data: bytes, source: Source) -> bool:
        """Answer a probe's OPTIONS to us from a template (options.py); False: it is not
        one, or not plainly well-formed, and takes the full way."""
        uri_end = data.find(b" ", 8)
        if uri_end < 0 or self.draining or not self._options_uri_for_us(data[8:uri_end]):
            return False
        options = quick_options(data, data[8:uri_end])
        if options is None:
            return False
        host = options.host.decode("ascii")
        remote_host, remote_port = source.remote
        rport = remote_port if b"rport" in options.params else None
        # RFC 3581 §4: with rport, received is added even when it repeats the sent-by.
        stamp = rport is not None or not same_host(host, remote_host)
        received = remote_host.encode("ascii") if stamp else None
        if rport is not None:
            target = Target("udp", remote_host, remote_port, local_port=source.local[1], flow=True)
        else:
            port = options.port or 5060
            target = Target("udp", remote_host, port, local_port=source.local[1], flow=True)
        if self.destinations.refusal_for(target) is not None:
            return False  # the full way counts and drops it
        reply = quick_reply(options, received, rport)
        trusted = self.directory.trunk_for_source(remote_host, remote_port) is not None
        if not trusted and len(reply) > MAX_REPLY_RATIO * len(data):
            return False
        counters = self.counters
        counters.requests[_OPTIONS_IN] += 1
        counters.local_replies["2xx"] += 1
        counters.responses[_OK_OUT] += 1
        self.transport.send(reply, target)
        return True

    def _options_uri_is_us(self, uri: bytes) -> bool:
        """An OPTIONS to this Request-URI is ours to answer (memoized per proxy as
        ``_options_uri_for_us``: probes repeat the same few)."""
        try:
            parsed = parse_uri(uri.decode("utf-8", "surrogateescape"))
        except (SIPParseError, UnicodeError):
            return False
        return isinstance(parsed, SipURI) and self.answers_options(parsed)

    def _owner(self, msg: Request | Response) -> int | None:
        """The sibling worker a message belongs to, or None when it is ours to handle."""
        try:
            if isinstance(msg, Response):
                via = msg.top_via
                host, port = via.host, via.port or 5060
            elif msg.to.tag:
                routes = msg.routes
                uri = routes[0].uri if routes else msg.uri
                if not isinstance(uri, SipURI):
                    return None
                host, port = uri.host, uri.port or 5060
            else:
                return None
        except SIPParseError:
            return None
        owner = self.siblings.get(port)
        if owner is None or not any(same_host(host, ours) for ours in self._our_hosts):
            return None
        return owner

    def _parse_error(self, data: bytes, source: Source, err: SIPParseError) -> None:
        self.counters.parse_errors[parse_error_label(err.status, err.header)] += 1
        if err.status == 0:
            return
        reply = last_resort_response(data, err.status, str(err))
        if reply is not None and len(reply) <= MAX_REPLY_RATIO * len(data):
            self._send_raw(reply, _back_to(source))

    # ===================================================================== requests ===
    def _on_request(self, req: Request, source: Source, size: int) -> None:
        try:
            req.validate()
        except SIPParseError as err:
            self.counters.parse_errors[parse_error_label(err.status, err.header)] += 1
            if req.method != "ACK" and err.status:
                self._reply_stateless(req, source, err.status, str(err), size)
            return
        self._stamp_received(req, source)
        if self.ua is not None and req.to.tag and self.ua.handles(req, source):
            return  # in a dialog the gateway is a party to (click-to-dial)
        if self.notifier is not None and req.to.tag and self.notifier.handles(req, source):
            return  # a subscription the gateway is the notifier of (busy lamp field)
        if req.method == "ACK":
            self._on_ack(req, source)
            return
        if req.method == "CANCEL":
            self._on_cancel(req, source, size)
            return
        key = _server_key(req, req.method)
        entry = self.tm.server.get(key)
        if entry is not None:
            # A retransmission: the transaction re-sends its last response, if any.
            self.tm.request_again(entry)
            return
        response_target = self.response_target(req, source)
        refused = self.destinations.refusal_for(response_target)
        if refused is not None:
            # Its Via names a place we never send to (our Redis, a metadata service):
            # answering would be the attack. Nothing goes back.
            self.counters.security[f"reply_refused_{refused}"] += 1
            return
        ctx = self._new_server_context(req, source, key, size, response_target)
        try:
            self._process(ctx)
        except SIPParseError as err:
            # A header the routing step needed turned out malformed.
            self.counters.parse_errors[parse_error_label(err.status, err.header)] += 1
            if not ctx.final_sent:
                self._respond(ctx, err.status or 400, str(err))

    def _new_server_context(
        self,
        req: Request,
        source: Source,
        key: ServerKey,
        size: int,
        response_target: Target | None = None,
    ) -> ServerContext:
        if response_target is None:
            response_target = self.response_target(req, source)
        ctx = ServerContext(req, source, None, key, response_target)
        ctx.entry = self.tm.start_server(
            key,
            invite=req.method == "INVITE",
            reliable=source.reliable,
            target=response_target,
            send=self._send_out,
            user=self,
            owner=ctx,
        )
        ctx.size = size
        # A trunk is trusted by its address: its requests get full, stateful answers.
        ctx.trusted = self.directory.trunk_for_source(*source.remote) is not None
        self.counters.transactions_created["server"] += 1
        if source.reliable and source.conn_id is not None:
            self._alias_connection(req, source)
        return ctx

    def _stamp_received(self, req: Request, source: Source) -> None:
        """RFC 3261 §18.2.1 `received` and RFC 3581 `rport` on the top Via."""
        via = req.top_via
        needs_received = not same_host(via.host, source.remote[0])
        if via.rport is None and not needs_received:
            return
        params = dict(via.params)
        params["received"] = source.remote[0]
        if via.rport is not None:
            params["rport"] = str(source.remote[1])
        req.pop_first_value("Via")
        req.prepend("Via", _format_via(via, params))

    def response_target(self, req: Request, source: Source) -> Target:
        """Where responses to this request go (RFC 3261 §18.2.2, RFC 3581 §4)."""
        via = req.top_via
        # Responses go back to the host the request came from (`received` is stamped
        # whenever the Via names another): a flow, even on our own host.
        if source.reliable:
            # The connection it came on; if that is gone, the sent-by address, where the
            # client listens (§18.2.2), not the ephemeral port it connected from.
            default = DEFAULT_PORTS.get(source.transport, 5060)
            host = via.params.get("received") or via.host
            return Target(source.transport, host, via.port or default, source.conn_id, flow=True)
        # From the port the request came to: a NAT in front of the client lets in only
        # what comes from there (and with workers, that is the port it knows).
        if via.params.get("rport"):
            return Target("udp", *source.remote, local_port=source.local[1], flow=True)
        host = via.params.get("received") or via.host
        return Target("udp", host, via.port or 5060, local_port=source.local[1], flow=True)

    def _alias_connection(self, req: Request, source: Source) -> None:
        # Requests to the phone's advertised Contact must reuse its connection.
        assert source.conn_id is not None
        contacts = req.contacts if req.get("Contact") else []
        if contacts == "*":
            return
        for contact in contacts:
            uri = contact.uri
            if isinstance(uri, SipURI) and same_host(uri.host, source.remote[0]):
                port = uri.port or DEFAULT_PORTS.get(source.transport, 5060)
                self.transport.add_alias(source.conn_id, uri.host, port)

    # ---------------------------------------------------------------- ACK and CANCEL ---
    def _on_ack(self, req: Request, source: Source) -> None:
        ctx = self._server_context(_server_key(req, "INVITE"))
        if ctx is not None and ctx.entry is not None and ctx.final_status >= 300:
            # The ACK of a non-2xx final answer is hop by hop: ours to absorb (§17.2.1).
            self.tm.request_again(ctx.entry, is_ack=True)
            return
        # The ACK of a 2xx is a request of its own that goes end to end (§13.2.2.4).
        if req.max_forwards == 0:
            return
        popped, signed = self._preprocess_route(req)
        if not popped:
            return  # not record-routed through us (or the ACK of our own stateless reply)
        if not signed:
            # A Route naming us that we never recorded: forwarding it would make us a
            # relay for anyone. An ACK gets no answer, so it is dropped and counted.
            self.counters.security["unsigned_route"] += 1
            return
        target = self._next_hop(req)
        if target is None:
            return
        self._forward_stateless(req, target, source)

    def _on_cancel(self, req: Request, source: Source, size: int) -> None:
        own_key = _server_key(req, "CANCEL")
        known = self.tm.server.get(own_key)
        if known is not None:
            self.tm.request_again(known)
            return
        cancel_ctx = self._new_server_context(req, source, own_key, size)
        invite_ctx = self._server_context(_server_key(req, "INVITE"))
        if invite_ctx is None:
            self._respond(cancel_ctx, 481, "Call/Transaction Does Not Exist")
            return
        # It names the INVITE's transaction (branch and sent-by): as trusted as that.
        cancel_ctx.trusted = cancel_ctx.trusted or invite_ctx.trusted
        self._respond(cancel_ctx, 200)
        if invite_ctx.observed:
            self._report_request(invite_ctx)  # still pending while a name was awaited
            self._observe_request(cancel_ctx)
        invite_ctx.cancelled = True
        for branch in invite_ctx.branches:
            self._cancel_branch(branch)
        if not invite_ctx.branches and not invite_ctx.final_sent:
            self._respond(invite_ctx, 487, "Request Terminated")

    # ================================================================ §16.3-§16.5 ===
    def _process(self, ctx: ServerContext) -> None:
        req = ctx.request
        if not isinstance(req.uri, SipURI | TelURI):
            self._respond(ctx, 416, "Unsupported URI Scheme")
            return
        if req.max_forwards == 0 and not self.options_for_us(req):
            self._respond(ctx, 483, "Too Many Hops")
            return
        ctx.loop_hash = self._loop_hash(req)
        if self._looped(req, ctx.loop_hash):
            self._respond(ctx, 482, "Loop Detected")
            return
        unsupported = [t for t in req.proxy_require if t not in SUPPORTED_PROXY_REQUIRE]
        if unsupported:
            self._respond(
                ctx, 420, "Bad Extension", headers=(("Unsupported", ", ".join(unsupported)),)
            )
            return

        popped, signed = self._preprocess_route(req)
        if req.to.tag:
            if not popped:
                # In-dialog but not routed through us: we never record-routed this
                # dialog, and relaying it would make us an open relay.
                self._respond(ctx, 404, "Not Here (dialog unknown)")
                return
            if not signed:
                # A Route naming us without our signature for this dialog: forged, or a
                # dialog of another gateway. Relaying it would go wherever it asks.
                self.counters.security["unsigned_route"] += 1
                self._respond(ctx, 403, "Dialog not record-routed here")
                return
            # In-dialog through our Record-Route: follow the remaining Route set or the
            # Request-URI, no location look-up (§16.5). One of the dialog's parties
            # (or someone who saw its Record-Route) sent it: it may be answered in full.
            ctx.trusted = True
            self._observe_request(ctx, after_forward=True)
            target = self._next_hop(req)
            if target is None:
                self._respond(ctx, 404, "Next hop unknown")
                return
            self._fork(ctx, [(None, target)], record_route=False)
            self._report_request(ctx)
            return
        if req.routes:
            # An initial request pre-routed to some other host: relaying it would let
            # anyone use us to reach anyone (Kamailio's default config refuses it too).
            self._respond(ctx, 403, "Preloaded Route denied")
            return
        # An initial request, maybe with our own Route popped (we are the phone's
        # outbound proxy): it is routed by the dial plan like any other.
        if self.draining and req.method != "OPTIONS":
            self._respond(ctx, 503, "Draining", headers=(("Retry-After", str(DRAIN_RETRY_AFTER)),))
            return

        notifier = self.notifier
        if notifier is not None and req.method == "SUBSCRIBE" and notifier.takes(req):
            decision = notifier.subscribe(ctx)
        else:
            decision = self.router.route(ctx)
        if isinstance(decision, Handled):
            return
        challenge = isinstance(decision, Reply) and decision.status in (401, 407)
        if req.method == "INVITE" and ctx.direction is not None and not challenge:
            self._observe_request(ctx, after_forward=True)
        if isinstance(decision, Reply):
            self._respond(ctx, decision.status, decision.reason, headers=decision.headers)
            return
        assert isinstance(decision, Forward)
        if not decision.targets:
            self._respond(ctx, 480, "Temporarily Unavailable")
            return
        self._fork(ctx, decision.targets, record_route=req.method in RECORD_ROUTE_METHODS)
        if not ctx.awaiting_name:
            self._report_request(ctx)  # else once the branches start (_start_branches)

    # -- what the router calls back for --------------------------------------------------
    def is_for_us(self, req: Request) -> bool:
        """The Request-URI names this gateway itself (not a user behind it)."""
        uri = req.uri
        return isinstance(uri, SipURI) and uri.user is None and self.is_our_host(uri)

    def options_for_us(self, req: Request) -> bool:
        """An OPTIONS the gateway answers itself: to our host, naming no user of ours.

        Probes address us as ``sip:gw`` or ``sip:ping@gw``; an OPTIONS for a real
        extension or DID goes on to that user's phones.
        """
        uri = req.uri
        return req.method == "OPTIONS" and isinstance(uri, SipURI) and self.answers_options(uri)

    def answers_options(self, uri: SipURI) -> bool:
        """An OPTIONS to ``uri`` is ours to answer (see options_for_us)."""
        if not self.is_our_host(uri):
            return False
        if uri.user is None:
            return True
        tenant = self.directory.tenant_for_domain_or_default(uri.host)
        if tenant is not None and self.directory.user(tenant, uri.user) is not None:
            return False
        return self.directory.did(uri.user) is None

    def is_our_host(self, uri: SipURI) -> bool:
        """Our address, or (without a port) a domain one of our tenants serves."""
        if uri.port is None and self.directory.tenant_for_domain(uri.host) is not None:
            return True
        return self._uri_is_us(uri)

    def answer_options(self, ctx: ServerContext) -> None:
        unsupported = [t for t in ctx.request.require if t]
        if unsupported:
            self._respond(
                ctx, 420, "Bad Extension", headers=(("Unsupported", ", ".join(unsupported)),)
            )
        elif self.draining:
            self._respond(ctx, 503, "Draining", headers=(("Retry-After", str(DRAIN_RETRY_AFTER)),))
        else:
            self._respond(ctx, 200, headers=options_headers())

    def register(self, ctx: ServerContext, tenant: Tenant, user: User) -> None:
        if self.draining:
            self._respond(ctx, 503, "Draining", headers=(("Retry-After", str(DRAIN_RETRY_AFTER)),))
            return
        reply = self.registrar.register(ctx.request, tenant, user, ctx.source, self.clock())
        self.counters.registrations[reply.outcome] += 1
        self._respond(ctx, reply.status, reply.reason, headers=reply.headers)

    # -- §16.3 step 4 --------------------------------------------------------------------
    def _loop_hash(self, req: Request) -> str:
        # §16.6 item 8 without the topmost Via: a request that comes back to us with the
        # same target and identity is a loop; a changed Request-URI is a spiral.
        parts = (
            req.uri_raw,
            req.from_.tag or "",
            req.to.tag or "",
            req.call_id,
            str(req.cseq.number),
            ",".join(req.proxy_require),
            ",".join(req.get_all("Proxy-Authorization")),
        )
        return hashlib.blake2s("\x00".join(parts).encode(), digest_size=6).hexdigest()

    def _looped(self, req: Request, loop_hash: str) -> bool:
        marker = BRANCH_PREFIX + loop_hash
        if not any(marker in value for value in req.get_all("Via")):
            return False  # the usual case, decided without parsing every Via
        for via in req.vias:
            branch = via.branch or ""
            if branch.startswith(marker) and self._is_our_sent_by(via):
                return True
        return False

    def _is_our_sent_by(self, via: Via) -> bool:
        transport = via.transport.lower()
        return self._is_our_address(via.host, via.port or DEFAULT_PORTS.get(transport, 5060))

    def _is_our_address(self, host: str, port: int) -> bool:
        """``host:port`` is one of our listening sockets (by address, not by domain)."""
        return port in self._listening_ports() and any(
            same_host(host, ours) for ours in self._our_hosts
        )

    def _uri_is_us(self, uri: SipURI) -> bool:
        return self._is_our_address(uri.host, uri.port or DEFAULT_PORTS.get(uri.transport, 5060))

    # -- §16.4 ---------------------------------------------------------------------------
    def _route_is_ours(self, uri: object) -> bool:
        return isinstance(uri, SipURI) and uri.user is None and self._uri_is_us(uri)

    def _preprocess_route(self, req: Request) -> tuple[bool, bool]:
        return remove_own_routes(req, self._route_is_ours, self.route_signer)

    def _next_hop(self, req: Request) -> Target | None:
        uri = next_hop(req)
        return None if uri is None else self.target_for_uri(uri)

    def target_for_uri(self, uri: SipURI, source: Source | None = None) -> Target:
        transport = uri.transport if uri.transport in ("udp", "tcp", "tls") else "udp"
        if uri.scheme == "sips":
            transport = "tls"
        port = uri.port or DEFAULT_PORTS[transport]
        conn_id = source.conn_id if source is not None and source.transport == transport else None
        return Target(transport, uri.host, port, conn_id)

    # ========================================================== §16.6 forwarding ===
    def _fork(
        self, ctx: ServerContext, targets: list[tuple[str | None, Target]], *, record_route: bool
    ) -> None:
        """Forward to every target the destination policy allows; §16.2: a stateful
        proxy answers an INVITE with 100 Trying as soon as it knows it will forward, so
        the caller stops retransmitting."""
        allowed = [(uri, target) for uri, target in targets if self._may_send(target)]
        if not allowed:
            self._respond(ctx, 403, "Destination not allowed")
            return
        if ctx.request.method == "INVITE":
            self._respond(ctx, 100)
            if self._wait_for_name(ctx, allowed, record_route):
                return
        self._start_branches(ctx, allowed, record_route)

    def _start_branches(
        self, ctx: ServerContext, targets: list[tuple[str | None, Target]], record_route: bool
    ) -> None:
        for request_uri, target in targets:
            if ctx.cancelled:
                break
            self._start_branch(ctx, request_uri, target, record_route=record_route)
        if not ctx.branches and not ctx.final_sent:
            self._respond(ctx, 503, "No route available")

    def _wait_for_name(
        self, ctx: ServerContext, targets: list[tuple[str | None, Target]], record_route: bool
    ) -> bool:
        """Ask what the callee's display shows of an inbound caller (caller_display.py).
        A local answer is used at once (False: go on); when the tenant lets the INVITE
        wait for Redis, the branches start on the answer or when the wait is up,
        whichever comes first (True: they are started later)."""
        names = self.caller_names
        if names is None or ctx.direction != "inbound" or ctx.request.to.tag:
            return False
        answer = names.now(ctx)
        if not isinstance(answer, Wait):
            ctx.shown = answer
            return False
        ctx.awaiting_name = True

        def go(shown: Shown | None) -> None:
            if not ctx.awaiting_name:
                return  # the other of the two came first
            ctx.awaiting_name = False
            self.queue.cancel(timer)
            if ctx.cancelled or ctx.final_sent:
                return  # CANCELled while waiting: the 487 is already sent
            ctx.shown = shown
            self._start_branches(ctx, targets, record_route)
            self._report_request(ctx)

        timer = self.queue.schedule(self.clock() + answer.seconds, lambda: go(None))
        names.ask(answer, go)
        return True

    def _may_send(self, target: Target) -> bool:
        refused = self.destinations.refusal_for(target)
        if refused is None:
            return True
        self.counters.security[f"destination_{refused}"] += 1
        log.info(
            "destination refused",
            extra={"target": f"{target.transport}:{target.host}:{target.port}", "why": refused},
        )
        return False

    def send(self, data: bytes, target: Target, on_error: Callable[[], None] | None = None) -> bool:
        """Send what the gateway originates or answers outside a proxied transaction
        (click-to-dial, probes, stateless ACKs) if the destination policy allows it;
        False (and nothing sent) when it does not."""
        if not self._may_send(target):
            if on_error is not None:
                on_error()  # fail the transaction now, as an unreachable address would
            return False
        self._send_raw(data, target, on_error)
        return True

    def _start_branch(
        self, ctx: ServerContext, request_uri: str | None, target: Target, *, record_route: bool
    ) -> None:
        req = ctx.request.copy()
        if request_uri is not None:
            req.set_uri(request_uri)
        mf = req.max_forwards
        req.set("Max-Forwards", str(self.sip.max_forwards if mf is None else mf - 1))
        version = ip_version(target.host) or 4
        try:
            out_port = self.transport.local_port(target.transport, version)
        except LookupError:
            self.counters.transport["no_listener_for_branch"] += 1
            return
        if record_route:
            signature = self.route_signer.sign(req.call_id, req.from_.tag or "")
            for value in self._record_route(ctx.source, target, out_port, req, signature):
                req.prepend("Record-Route", value)
        branch_id = f"{BRANCH_PREFIX}{ctx.loop_hash}.{random_hex(5)}"
        sent_by = f"{host_for_uri(self._advertise_for(version))}:{out_port}"
        req.prepend("Via", f"SIP/2.0/{target.transport.upper()} {sent_by};branch={branch_id};rport")
        for name in self.auth.consumed_headers(req):
            req.remove(name)
        if ctx.shown is not None:
            _show_caller(req, ctx.shown)
        data = req.to_bytes()
        invite = req.method == "INVITE"
        branch = Branch(ctx, branch_id, target, data, invite=invite)
        ctx.branches.append(branch)
        self.counters.transactions_created["client"] += 1
        self.counters.request_out(target.transport, req.method)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "forwarding",
                extra={
                    "method": req.method,
                    "branch": branch_id,
                    "server_key": "|".join(ctx.key),
                    "target": f"{target.transport}:{target.host}:{target.port}",
                },
            )
        self.tm.start_client(
            branch_id,
            req.method,
            data,
            target,
            send=self._send_out,  # the destination policy was asked once, by _fork
            user=self,
            owner=branch,
            make_ack=functools.partial(build_ack, data) if invite else None,
        )
        if invite:
            branch.timer_c = self.queue.schedule_after(
                self.clock(), self.sip.fork_timeout, functools.partial(self._timer_c, branch)
            )

    def _record_route(
        self, source: Source, target: Target, out_port: int, req: Request, signature: str
    ) -> list[str]:
        """Our Record-Route values for this branch: the side facing the caller (where
        the request came in) and the one facing the callee (where it goes out)."""
        scheme = "sips" if isinstance(req.uri, SipURI) and req.uri.scheme == "sips" else "sip"
        in_host = host_for_uri(self._advertise_for(ip_version(source.local[0]) or 4))
        out_host = host_for_uri(self._advertise_for(ip_version(target.host) or 4))
        return record_route_values(
            scheme,
            Hop(source.transport, in_host, source.local[1]),
            Hop(target.transport, out_host, out_port),
            signature,
        )

    def via_for(self, target: Target, branch: str) -> str | None:
        """A Via value for a request we originate towards ``target`` (None: we have
        no listener of that transport to send from)."""
        version = ip_version(target.host) or 4
        try:
            port = self.transport.local_port(target.transport, version)
        except LookupError:
            return None
        sent_by = f"{host_for_uri(self._advertise_for(version))}:{port}"
        return f"SIP/2.0/{target.transport.upper()} {sent_by};branch={branch};rport"

    def contact_for(self, target: Target, user: str) -> str:
        """A Contact URI naming ``user`` at the address facing ``target``."""
        version = ip_version(target.host) or 4
        port = self.transport.local_port(target.transport, version)
        param = "" if target.transport == "udp" else f";transport={target.transport}"
        return f"sip:{user}@{host_for_uri(self._advertise_for(version))}:{port}{param}"

    def _advertise_for(self, version: int) -> str:
        if self.sip.advertise:
            advertised_version = ip_version(self.sip.advertise)
            # A host name serves both families; an address only its own.
            if advertised_version is None or advertised_version == version:
                return self.sip.advertise.strip("[]")
        for spec in self.sip.listen:
            if (ip_version(spec.host) or 4) == version:
                return spec.host.strip("[]")
        return self.advertise

    def _forward_stateless(self, req: Request, target: Target, source: Source) -> None:
        mf = req.max_forwards
        req.set("Max-Forwards", str(self.sip.max_forwards if mf is None else mf - 1))
        version = ip_version(target.host) or 4
        try:
            port = self.transport.local_port(target.transport, version)
        except LookupError:
            return
        sent_by = f"{host_for_uri(self._advertise_for(version))}:{port}"
        branch = f"{BRANCH_PREFIX}{self._loop_hash(req)}.{random_hex(5)}"
        req.prepend("Via", f"SIP/2.0/{target.transport.upper()} {sent_by};branch={branch};rport")
        if self.send(req.to_bytes(), target):
            self.counters.request_out(target.transport, req.method)

    # ================================================================== responses ===
    def _on_response(self, resp: Response, source: Source) -> None:
        try:
            resp.validate_for_relay()
            top = resp.top_via
            method = resp.cseq.method
        except SIPParseError as err:
            self.counters.parse_errors[parse_error_label(0, err.header)] += 1
            return
        branch_id = top.branch or ""
        entry = self.tm.client.get((branch_id, method))
        if entry is not None and entry.user is not self:
            # A transaction of the gateway as a party (click-to-dial, probes): what it
            # acts on is validated in full.
            if self._valid_for_us(resp):
                self.tm.receive(entry, resp)
            return
        if entry is None:
            stray = self.response_handlers.get(branch_id[: len(BRANCH_PREFIX)])
            if stray is not None:
                # The user agent's own, its transaction over (a 2xx again: ACK again).
                if self._valid_for_us(resp):
                    stray(resp, source)
                return
            # No transaction of ours: RFC 6026 keeps the client transaction Accepted for
            # 64*T1 to pass 2xx retransmissions on, so anything later is a stray. A
            # stray is never forwarded statelessly on its Via: that Via is whatever the
            # sender wrote, and forwarding would relay its body there.
            self.counters.security["stray_response"] += 1
            return
        branch = entry.owner
        assert isinstance(branch, Branch)
        # Final failures of INVITE branches are not reported one by one: what counts is
        # the answer chosen for the caller (observed in _respond/_respond_with).
        branch_failure = branch.ctx.request.method == "INVITE" and resp.status >= 300
        if branch.ctx.observed and not branch.is_cancel and not branch_failure:
            self._observe(resp, branch.ctx, local=False, source=source)
        self.tm.receive(entry, resp)

    def _valid_for_us(self, resp: Response) -> bool:
        try:
            resp.validate()
        except SIPParseError as err:
            self.counters.parse_errors[parse_error_label(0, err.header)] += 1
            return False
        return True

    def _branch_response(
        self, branch: Branch, data: bytes, status: int, parsed: Response | None
    ) -> None:
        ctx = branch.ctx
        resp = parsed if parsed is not None else parse_message(data, self.limits)
        assert isinstance(resp, Response)
        if status < 200:
            if status > 100 and branch.timer_c is not None:
                # §16.7 step 2: a provisional other than 100 restarts Timer C.
                self.queue.restart(branch.timer_c, self.clock())
            branch.state, send_cancel = advance(branch.state, BranchInput.PROVISIONAL)
            if send_cancel:
                self._send_cancel(branch)
            if status == 100 or ctx.final_sent:
                return
            self._respond_with(ctx, resp)
            return
        branch.state, _ = advance(branch.state, BranchInput.FINAL)
        branch.final = status
        self.queue.cancel(branch.timer_c)
        if status < 300:
            # Every 2xx goes upstream at once, and the other branches are cancelled.
            self._respond_with(ctx, resp)
            if ctx.request.method == "INVITE":
                for other in ctx.branches:
                    if other is not branch:
                        self._cancel_branch(other)
            return
        branch.response = resp
        if status >= 600 and ctx.request.method == "INVITE":
            for other in ctx.branches:
                if other is not branch:
                    self._cancel_branch(other)
        self._maybe_send_best(ctx)

    def _branch_failed(self, branch: Branch, status: int, reason: str) -> None:
        if branch.state is BranchState.FINAL:
            return
        branch.state, _ = advance(branch.state, BranchInput.FINAL)
        branch.final = status
        branch.local_reason = reason
        self.queue.cancel(branch.timer_c)
        self._maybe_send_best(branch.ctx)

    def _maybe_send_best(self, ctx: ServerContext) -> None:
        if ctx.final_sent or any(b.state is not BranchState.FINAL for b in ctx.branches):
            return
        best = self._best_branch(ctx)
        if best.response is None:
            self._respond(ctx, best.final, best.local_reason)
            return
        resp = best.response
        if resp.status == 487 and best.rang_out and not resp.get("Reason"):
            # §16.8 forwards the 487 of our Timer C CANCEL; the Reason tells the caller
            # (and the call events) it rang out rather than being cancelled.
            resp.append("Reason", RANG_OUT)
        if resp.status in (401, 407):
            self._merge_challenges(ctx, resp)
        if resp.status == 503:
            # §16.7 step 6: a 503 upstream would make the caller think *we* are down.
            self._respond(ctx, 500, "Server Internal Error (downstream unavailable)")
            return
        self._respond_with(ctx, resp)

    @staticmethod
    def _best_branch(ctx: ServerContext) -> Branch:
        finals = [b for b in ctx.branches if b.final]
        six = [b for b in finals if b.final >= 600]
        if six:
            return six[0]

        def rank(b: Branch) -> tuple[int, int]:
            # Lowest class wins; within 4xx prefer what the caller can act on.
            preferred = {401: 0, 407: 0, 415: 1, 420: 1, 484: 1, 487: 2}
            return (b.final // 100, preferred.get(b.final, 5))

        return min(finals, key=rank)

    @staticmethod
    def _merge_challenges(ctx: ServerContext, resp: Response) -> None:
        for other in ctx.branches:
            if other.response is None or other.response is resp:
                continue
            for name in ("WWW-Authenticate", "Proxy-Authenticate"):
                for value in other.response.get_all(name):
                    resp.append(name, value)

    # =========================================================== sending responses ===
    def _respond(
        self,
        ctx: ServerContext,
        status: int,
        reason: str | None = None,
        *,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        if status >= 200 and not ctx.trusted and not ctx.final_sent:
            self._respond_untrusted(ctx, status, reason, headers)
            return
        to_tag = ctx.to_tag if status > 100 and not ctx.request.to.tag else None
        resp = make_response(ctx.request, status, reason, to_tag=to_tag, headers=headers)
        if status >= 200:
            resp.set("Server", self.sip.user_agent)
        if ctx.observed and status >= 300 and ctx.request.method == "INVITE" and not ctx.final_sent:
            self._observe(resp, ctx, local=True, source=None)
        self._send_response(ctx, resp.to_bytes(), status, local=True)

    def _respond_untrusted(
        self,
        ctx: ServerContext,
        status: int,
        reason: str | None,
        headers: tuple[tuple[str, str], ...],
    ) -> None:
        """One stateless answer to a sender that proved nothing: no 100 Trying before it,
        no transaction to retransmit it (Timer G would send a 407 ten times to a spoofed
        address), and never more than MAX_REPLY_RATIO times the request's bytes."""
        ctx.final_sent = True
        ctx.final_status = status
        self._end_server(ctx)
        to_tag = ctx.to_tag if not ctx.request.to.tag else None
        resp = make_response(ctx.request, status, reason, to_tag=to_tag, headers=headers)
        if ctx.observed and status >= 300 and ctx.request.method == "INVITE":
            self._observe(resp, ctx, local=True, source=None)
        data = resp.to_bytes()
        challenges = [h for h in headers if h[0] in ("WWW-Authenticate", "Proxy-Authenticate")]
        if len(data) > MAX_REPLY_RATIO * ctx.size and len(challenges) > 1:
            # Offer only the profile's preferred algorithm (the first) rather than none.
            fewer = tuple(h for h in headers if h not in challenges[1:])
            smaller = make_response(ctx.request, status, reason, to_tag=to_tag, headers=fewer)
            data = smaller.to_bytes()
        if len(data) > MAX_REPLY_RATIO * ctx.size:
            self.counters.security["reply_too_large"] += 1
            return
        self.counters.local_replies[f"{status // 100}xx"] += 1
        self.counters.response_out(ctx.response_target.transport, status)
        self._send_raw(data, ctx.response_target)

    def _respond_with(self, ctx: ServerContext, resp: Response) -> None:
        if ctx.observed and resp.status >= 300 and ctx.request.method == "INVITE":
            self._observe(resp, ctx, local=True, source=None)
        resp.pop_first_value("Via")
        if ctx.shown is not None and "From" in ctx.shown.headers:
            # The caller gets its own From back (only the callee's copy was renamed).
            original = ctx.request.get("From")
            if original is not None:
                resp.set("From", original)
        self._send_response(ctx, resp.to_bytes(), resp.status, local=False)

    def _send_response(self, ctx: ServerContext, data: bytes, status: int, *, local: bool) -> None:
        if local:
            self.counters.local_replies[f"{status // 100}xx"] += 1
        if status >= 200:
            if ctx.final_sent and not (200 <= status < 300 and ctx.request.method == "INVITE"):
                return
            ctx.final_sent = True
            ctx.final_status = ctx.final_status or status
        if ctx.entry is None:
            return  # its transaction is over: nothing goes out through it any more
        try:
            self.tm.respond(ctx.entry, status, data)
            if status >= 200:
                _park(ctx)
        except TransactionError:
            # A further 2xx to an INVITE (another fork answered, or a retransmission):
            # RFC 6026 has the proxy pass it on outside the transaction.
            if 200 <= status < 300:
                self.counters.response_out(ctx.response_target.transport, status)
                self._send_raw(data, ctx.response_target)
            return
        self.counters.response_out(ctx.response_target.transport, status)

    # ================================================================ observation ===
    def _observe_request(self, ctx: ServerContext, *, after_forward: bool = False) -> None:
        """Report the request to the observer: now, or ``after_forward``: once it has
        left (call events are built after the forward, off the SIP path's latency), or
        before the first response to it is reported, whichever comes first."""
        ctx.observed = True
        ctx.report_pending = True
        if not after_forward:
            self._report_request(ctx)

    def _report_request(self, ctx: ServerContext) -> None:
        if ctx.report_pending:
            ctx.report_pending = False
            self._observe(ctx.request, ctx, local=False, source=ctx.source)

    def _observe(
        self, msg: Request | Response, ctx: ServerContext, *, local: bool, source: Source | None
    ) -> None:
        if self.observer is None:
            return
        if ctx.report_pending and msg is not ctx.request:
            self._report_request(ctx)  # the request first, then what answers it
        initial = isinstance(msg, Request) and msg.method == "INVITE" and not msg.to.tag
        where = f"{source.transport}:{source.remote[0]}:{source.remote[1]}" if source else ""
        info = Observed(
            tenant=ctx.tenant if initial else None,
            direction=ctx.direction if initial else None,
            extension=ctx.extension if initial else None,
            local=local,
            source=where,
            user_agent=msg.get("User-Agent" if isinstance(msg, Request) else "Server"),
            caller_id=ctx.peer.caller_id if initial and ctx.peer is not None else (),
            region=ctx.peer.region if initial and ctx.peer is not None else None,
            shown=ctx.shown if initial else None,
        )
        try:
            self.observer(msg, info)
        except Exception:
            # Call events must never cost a call: log, count, and carry on routing.
            self.counters.transport["observer_error"] += 1
            log.exception("call observer failed")

    # ===================================================== transaction action loops ===
    def _server_context(self, key: ServerKey) -> ServerContext | None:
        entry = self.tm.server.get(key)
        owner = None if entry is None else entry.owner
        return owner if isinstance(owner, ServerContext) else None

    def _end_server(self, ctx: ServerContext) -> None:
        """Drop a server transaction nobody answers through any more (an untrusted
        request answered statelessly)."""
        if ctx.entry is not None:
            self.tm.forget(ctx.entry)
            ctx.entry = None

    # -- the proxy as the transaction user of its branches and requests (tm.py) --------
    def txn_response(self, owner: Any, status: int, data: bytes, resp: Response | None) -> None:
        branch: Branch = owner
        if branch.is_cancel:
            # A CANCEL's own outcome changes nothing upstream: the INVITE branch still
            # ends with its 487 (or its own timeout).
            return
        self._branch_response(branch, data, status, resp)

    def txn_failed(self, owner: Any, status: int) -> None:
        if isinstance(owner, ServerContext):
            # Our final response was never acknowledged: nothing more to do.
            self.counters.transport["server_txn_timeout"] += 1
            return
        branch: Branch = owner
        if not branch.is_cancel:
            reason = "Request Timeout" if status == 408 else "Service Unavailable"
            self._branch_failed(branch, status, reason)

    def txn_ended(self, owner: Any) -> None:
        if isinstance(owner, ServerContext):
            owner.entry = None  # the entry pointed back at it: no cycle is left
            owner.terminated = True
            _release(owner)
            return
        branch: Branch = owner
        branch.terminated = True
        _release(branch.ctx)

    def _send_raw(
        self, data: bytes, target: Target, on_error: Callable[[], None] | None = None
    ) -> None:
        self.transport.send(data, target, on_error)

    def _reply_stateless(
        self, req: Request, source: Source, status: int, reason: str, size: int
    ) -> None:
        try:
            resp = make_response(req, status, reason, to_tag=random_hex(6))
            data = resp.to_bytes()
        except SIPParseError:
            built = last_resort_response(req.to_bytes(), status, reason)
            if built is None:
                return
            data = built
        if len(data) > MAX_REPLY_RATIO * size:
            self.counters.security["reply_too_large"] += 1
            return
        self.counters.local_replies[f"{status // 100}xx"] += 1
        self.counters.response_out(source.transport, status)
        self._send_raw(data, _back_to(source))

    # ===================================================================== CANCEL ===
    def _cancel_branch(self, branch: Branch) -> None:
        if not branch.invite:
            return
        # §9.1: a CANCEL may only follow a provisional response (branch_state.py).
        branch.state, send_cancel = advance(branch.state, BranchInput.CANCEL)
        if send_cancel:
            self._send_cancel(branch)

    def _send_cancel(self, branch: Branch) -> None:
        data = build_cancel(branch.request, reason=RANG_OUT if branch.rang_out else None)
        cancel = Branch(
            branch.ctx, branch.branch_id, branch.target, data, invite=False, method="CANCEL"
        )
        cancel.is_cancel = True
        self.counters.request_out(branch.target.transport, "CANCEL")
        self.tm.start_client(
            branch.branch_id, "CANCEL", data, branch.target,
            send=self._send_out, user=self, owner=cancel,
        )  # fmt: skip

    def _timer_c(self, branch: Branch) -> None:
        # Timer C (§16.6 item 11): the branch rang too long.
        if branch.state is BranchState.FINAL:
            return
        branch.rang_out = True
        if branch.state.heard_provisional:
            self._cancel_branch(branch)
        else:
            self._branch_failed(branch, 408, "Request Timeout")

    # ====================================================================== timers ===
    def _housekeeping(self) -> None:
        # Bindings expire lazily when their AOR is looked up; this sweeps the ones of
        # phones nobody calls, so memory follows the live registrations.
        self.location.purge(self.clock())
        self.queue.schedule(self.clock() + HOUSEKEEPING_INTERVAL, self._housekeeping)

    def next_deadline(self) -> float | None:
        return self.queue.next_deadline()

    def fire_timers(self, now: float) -> None:
        self.queue.fire(now)

    # ====================================================================== misc ===
    def _is_known_peer(self, host: str, port: int) -> bool:
        """A configured trunk, or a registered phone: where the destination policy lets
        us send even on this machine's own addresses."""
        return self.directory.is_trunk_address(host, port) or self.location.reaches(
            host, port, self.clock()
        )

    def _listening_ports(self) -> frozenset[int]:
        """The ports we listen on: the transport's actual ones once it has bound them
        (port 0 in the settings means "any"), the configured ones before."""
        if self._ports is None:
            listening = getattr(self.transport, "listening", None)
            if not listening:
                return frozenset(spec.port for spec in self.sip.listen) | self.worker_ports
            self._ports = frozenset(spec.port for spec in listening) | self.worker_ports
        return self._ports

    @property
    def active_transactions(self) -> tuple[int, int]:
        return len(self.tm.server), len(self.tm.client)

    @property
    def pending_requests(self) -> int:
        """Requests still waiting for their final answer (what draining waits for)."""
        contexts = (entry.owner for entry in self.tm.server.values())
        return sum(1 for c in contexts if isinstance(c, ServerContext) and not c.final_sent)

    def start_draining(self) -> None:
        if not self.draining:
            log.info("draining: new calls are refused with 503")
        self.draining = True
