"""Record-Route and Route (RFC 3261 §16.4, §16.6 step 4, §16.12; RFC 5658), signed.

What a record-routing proxy does with routes, in one place: the Record-Route values it
inserts (one, or two when the transport changes: RFC 5658), the Route entries naming
it that it removes (including a strict router's repair, §16.4), the next hop of what
remains (a strict next hop wants itself in the Request-URI, §16.12), and the signature
that proves a Route naming us was recorded by us.

Signed Record-Route: in-dialog requests are relayed only for dialogs we set up.

A proxy that record-routes (RFC 3261 §16.6 step 4) later receives the dialog's requests
with its own URI in Route and forwards them to the Request-URI: the remote target, which
the endpoints chose. A Route naming us is trivial to forge, so without a check one
datagram with a To tag, ``Route: <sip:gateway;lr>`` and any Request-URI would be relayed
anywhere from the gateway's trusted address (issue #11: into our own Redis, or a call to
a premium number). Kamailio's answer is its dialog module or an ``ftag`` check; ours is
a signature in the Record-Route URI itself, so no state is kept and every worker and
node sharing ``auth_secret`` can check what another one recorded.

The signature is an HMAC over the Call-ID and the From tag of the request that created
the dialog: the dialog identifier as far as the proxy knows it (the To tag comes later,
from the callee). Requests from the caller carry that tag in From, requests from the
callee in To, so both are tried. It is written in lower-case hex: some elements fold
URI parameter values to lower case, which RFC 3261 §19.1.4 allows.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable
from typing import NamedTuple

from gateway.sip.message import Request
from gateway.sip.uri import SipURI

PARAM = "sg"
_LENGTH = 20  # hex digits: 80 bits, a forgery costs 2**80 tries


class RouteSigner:
    def __init__(self, secret: bytes) -> None:
        # A key of its own, so a nonce MAC can never be replayed as a route signature.
        self._key = hmac.new(secret, b"sipgw record-route v1", hashlib.sha256).digest()

    def sign(self, call_id: str, tag: str) -> str:
        message = f"{call_id}\x00{tag}".encode("utf-8", "surrogateescape")
        return hmac.digest(self._key, message, "sha256").hex()[:_LENGTH]  # one-shot, in C

    def verify(self, signature: str | None, call_id: str, tags: Iterable[str | None]) -> bool:
        """``signature`` was made by us for this Call-ID and one of ``tags``."""
        if signature is None or len(signature) != _LENGTH:
            return False
        given = signature.lower().encode("ascii", "replace")
        return any(
            hmac.compare_digest(self.sign(call_id, tag).encode("ascii"), given)
            for tag in tags
            if tag
        )


class Hop(NamedTuple):
    """One side of the proxy in a Record-Route value: transport, host, port."""

    transport: str
    host: str  # as written in a URI: IPv6 in brackets
    port: int


def record_route_values(scheme: str, inbound: Hop, outbound: Hop, signature: str) -> list[str]:
    """Our Record-Route values in prepend order: one, or two (RFC 5658) when the sides
    differ; the entry facing the caller goes in first, the one facing the callee on top,
    so each side's route set starts with the address it can reach."""

    def value(hop: Hop) -> str:
        param = "" if hop.transport == "udp" or scheme == "sips" else f";transport={hop.transport}"
        return f"<{scheme}:{hop.host}:{hop.port}{param};lr;{PARAM}={signature}>"

    first, second = value(inbound), value(outbound)
    return [second] if first == second else [first, second]


def remove_own_routes(
    req: Request, is_ours: Callable[[object], bool], signer: RouteSigner
) -> tuple[bool, bool]:
    """§16.4: repair a strict router's rewrite, then remove the Route entries naming us.
    Whether any was ours, and whether one of those carried our signature for this
    dialog."""
    popped = signed = False
    uri = req.uri
    if isinstance(uri, SipURI) and "lr" in uri.params and is_ours(uri) and req.routes:
        # A strict router put our Record-Route URI in the Request-URI; the real target is
        # the last Route entry.
        signed = _signed(signer, uri, req)
        last = req.routes[-1]
        values = req.values("Route")
        req.remove("Route")
        for value in values[:-1]:
            req.append("Route", value)
        req.set_uri(str(last.uri))
        popped = True
    while req.routes and is_ours(req.routes[0].uri):
        route = req.routes[0].uri
        assert isinstance(route, SipURI)
        signed = signed or _signed(signer, route, req)
        req.pop_first_value("Route")
        popped = True
    return popped, signed


def _signed(signer: RouteSigner, uri: SipURI, req: Request) -> bool:
    return signer.verify(uri.params.get(PARAM), req.call_id, (req.from_.tag, req.to.tag))


def next_hop(req: Request) -> SipURI | None:
    """Where the request goes after our routes are removed: the first Route, or the
    Request-URI. A strict next hop (§16.12) wants itself in the Request-URI: the
    request is rewritten for it."""
    routes = req.routes
    uri = routes[0].uri if routes else req.uri
    if not isinstance(uri, SipURI):
        return None
    if routes and "lr" not in uri.params:
        req.append("Route", f"<{req.uri_raw}>")
        req.pop_first_value("Route")
        req.set_uri(str(uri))
    return uri
