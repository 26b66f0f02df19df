"""Where an out-of-dialog request goes (the tenant's dial plan).

- from a trunk to a DID → the phones of the extension that owns it;
- from a phone to an extension of its tenant → that extension's phones;
- from a phone to any other number → the tenant's first outbound trunk that the
  OPTIONS prober does not report down (the first one if all are);
- REGISTER → the registrar; OPTIONS without a user → answered here.
Anything else is refused with a reason: the gateway is not an open relay.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.config import Tenant, Trunk, User
from gateway.proxy.auth import Authenticator
from gateway.proxy.context import ServerContext
from gateway.proxy.destinations import is_loopback
from gateway.proxy.directory import Directory
from gateway.proxy.location import Binding, Location
from gateway.sip.errors import SIPParseError
from gateway.sip.uri import SipURI, TelURI, parse_uri
from gateway.transport.addresses import DEFAULT_PORTS, Target, same_host

if TYPE_CHECKING:
    from gateway.proxy.core import Proxy

# A dialable number: digits with an optional leading +, and the keypad's * and #.
_DIALABLE = re.compile(r"^\+?[0-9*#]{1,32}$")
# Visual separators people and phones put in numbers (RFC 3966 visual-separator).
_SEPARATORS = re.compile(r"[\s\-.()]")


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Forward:
    targets: list[tuple[str | None, Target]]


class Handled:
    """The router answered the request itself (REGISTER, OPTIONS, a challenge)."""


HANDLED = Handled()
Decision = Reply | Forward | Handled


def dialable(user: str) -> str | None:
    cleaned = _SEPARATORS.sub("", user)
    return cleaned if _DIALABLE.match(cleaned) else None


class Router:
    def __init__(
        self, directory: Directory, location: Location, auth: Authenticator, proxy: Proxy
    ) -> None:
        self.directory = directory
        self.location = location
        self.auth = auth
        self.proxy = proxy

    def route(self, ctx: ServerContext) -> Decision:
        req = ctx.request
        source = ctx.source
        trunk_match = self.directory.trunk_for_source(*source.remote)

        if req.method == "REGISTER":
            return self._register(ctx)
        if self.proxy.options_for_us(req):
            self.proxy.answer_options(ctx)
            return HANDLED
        if self.proxy.is_for_us(req):
            return Reply(404, "No user in Request-URI")

        if trunk_match is not None:
            tenant, trunk = trunk_match
            ctx.tenant = tenant.id
            return self._from_trunk(ctx, tenant, trunk)
        return self._from_phone(ctx)

    # -- REGISTER ------------------------------------------------------------------------
    def _register(self, ctx: ServerContext) -> Decision:
        uri = ctx.request.uri
        if not isinstance(uri, SipURI) or uri.user is not None:
            return Reply(400, "REGISTER Request-URI must name a domain only")
        tenant = self.directory.tenant_for_domain_or_default(uri.host)
        if tenant is None or not (
            self.directory.tenant_for_domain(uri.host) or self.proxy.is_our_host(uri)
        ):
            return Reply(404, "Domain not served here")
        ctx.tenant = tenant.id
        if not isinstance(ctx.request.to.uri, SipURI):
            # RFC 3261 §10.3 step 3, before any challenge: the AOR itself is unusable.
            return Reply(400, "Address of record is not a SIP URI")
        outcome = self.auth.check(
            ctx.request, tenant, ctx.source, registrar=True, location=self.location
        )
        if outcome.user is None:
            self.proxy.counters.registrations["auth_challenge"] += 1
            return Reply(outcome.status, outcome.reason, outcome.headers)
        ctx.trusted = True
        refused = self._contact_refusal(ctx)
        if refused is not None:
            self.proxy.counters.registrations["rejected"] += 1
            self.proxy.counters.security[f"contact_{refused}"] += 1
            return Reply(403, "Contact address not allowed")
        self.proxy.register(ctx, tenant, outcome.user)
        return HANDLED

    def _contact_refusal(self, ctx: ServerContext) -> str | None:
        """Why one of the REGISTER's Contacts may not be bound (None: all may). The
        phone is reached over its flow anyway; a Contact aimed at our own services, a
        denied network or this host from elsewhere can only be an attack."""
        contacts = ctx.request.contacts if ctx.request.get("Contact") else []
        if contacts == "*":
            return None
        for contact in contacts:
            uri = contact.uri
            if not isinstance(uri, SipURI):
                continue
            port = uri.port or DEFAULT_PORTS.get(uri.transport, 5060)
            refused = self.proxy.destinations.contact_refusal(uri.host, port, ctx.source.remote[0])
            if refused is not None:
                return refused
        return None

    # -- inbound from a trunk ------------------------------------------------------------
    def _from_trunk(self, ctx: ServerContext, tenant: Tenant, trunk: Trunk) -> Decision:
        number = self._target_user(ctx)
        if number is None:
            return Reply(404, "No number in Request-URI")
        did = self.directory.did(number)
        ctx.direction = "inbound"
        ctx.peer = self.directory.profile(trunk.profile)
        if did is not None and did[0].id == tenant.id:
            return self._to_extension(ctx, tenant, did[1])
        user = self.directory.user(tenant, number)
        if user is not None:
            return self._to_extension(ctx, tenant, user.extension)
        ctx.direction = None
        return Reply(404, "Number not assigned")

    # -- from a phone --------------------------------------------------------------------
    def _from_phone(self, ctx: ServerContext) -> Decision:
        req = ctx.request
        from_uri = req.from_.uri
        if not isinstance(from_uri, SipURI):
            return Reply(403, "From must be a SIP URI")
        tenant = self.directory.tenant_for_domain_or_default(from_uri.host)
        if tenant is None:
            return Reply(403, "Domain not served here")
        ctx.tenant = tenant.id
        outcome = self.auth.check(req, tenant, ctx.source, registrar=False, location=self.location)
        if outcome.user is None:
            return Reply(outcome.status, outcome.reason, outcome.headers)
        ctx.trusted = True
        caller = outcome.user
        if from_uri.user not in (caller.username, caller.extension):
            # The credentials are one user's; the From claims another. Refuse rather
            # than let a phone place calls (and events) in a colleague's name.
            return Reply(403, "From does not match the authenticated user")
        ctx.peer = self.directory.phones.for_message(
            tenant, caller, req, ctx.source,
            lambda: self.location.bindings(tenant.id, caller.extension, self.proxy.clock()),
        )  # fmt: skip
        return self._dial(ctx, tenant, caller)

    def _dial(self, ctx: ServerContext, tenant: Tenant, caller: User) -> Decision:
        req = ctx.request
        uri = req.uri
        target = self._target_user(ctx)
        if target is None:
            return Reply(404, "No user in Request-URI")
        local = isinstance(uri, TelURI) or (isinstance(uri, SipURI) and self.proxy.is_our_host(uri))
        if local or isinstance(uri, SipURI):
            user = self.directory.user(tenant, target) if local else None
            ctx.direction = "internal"
            if user is not None:
                return self._to_extension(ctx, tenant, user.extension)
            did = self.directory.did(target)
            if did is not None and did[0].id == tenant.id and local:
                return self._to_extension(ctx, tenant, did[1])
            number = dialable(target)
            if number is not None:
                ctx.direction, ctx.extension = "outbound", caller.extension
                return self._to_trunk(tenant, number)
            ctx.direction = None
        return Reply(404, "Not Found")

    def _to_trunk(self, tenant: Tenant, number: str) -> Decision:
        trunk = self.directory.outbound_trunk(tenant)
        if trunk is None:
            return Reply(403, "No outbound trunk for this tenant")
        transport = "" if trunk.transport == "udp" else f";transport={trunk.transport}"
        scheme = "sips" if trunk.transport == "tls" else "sip"
        host = f"[{trunk.host}]" if ":" in trunk.host else trunk.host
        ruri = f"{scheme}:{number}@{host}:{trunk.port}{transport}"
        return Forward([(ruri, Target(trunk.transport, trunk.host, trunk.port))])

    def _to_extension(self, ctx: ServerContext, tenant: Tenant, extension: str) -> Decision:
        ctx.extension = extension
        bindings = self.location.bindings(tenant.id, extension, self.proxy.clock())
        targets = contact_targets(bindings, self.proxy)
        if not targets:
            return Reply(480, "Temporarily Unavailable (not registered)")
        return Forward(list(targets))

    @staticmethod
    def _target_user(ctx: ServerContext) -> str | None:
        uri = ctx.request.uri
        if isinstance(uri, TelURI):
            return uri.number
        if isinstance(uri, SipURI):
            return uri.user
        return None


def contact_targets(bindings: list[Binding], proxy: Proxy) -> list[tuple[str, Target]]:
    """(Request-URI, where to send) for each registered contact.

    A phone is reached over its registration's own flow (RFC 5626's idea): the address
    its REGISTER came from, from the port it came to, on its connection if it has one.
    Only a Contact on the very host the REGISTER came from, elsewhere than this machine,
    is used as written (a phone that sends from one port and listens on another): a
    Contact naming any other host is the phone's word alone, and would let any account
    aim our requests at a third party.
    """
    targets: list[tuple[str, Target]] = []
    for binding in bindings:
        uri = parse_sip_uri(binding.contact_uri)
        if uri is None:
            continue
        source = binding.source
        own_host = same_host(uri.host, source.remote[0]) and not is_loopback(uri.host)
        if binding.behind_nat or not own_host:
            target = Target(
                source.transport,
                *source.remote,
                conn_id=source.conn_id,
                local_port=None if source.reliable else source.local[1],
                flow=True,
            )
        else:
            target = proxy.target_for_uri(uri, binding.source)
        targets.append((binding.contact_uri, target))
    return targets


def parse_sip_uri(text: str) -> SipURI | None:
    try:
        uri = parse_uri(text)
    except SIPParseError:
        return None
    return uri if isinstance(uri, SipURI) else None
