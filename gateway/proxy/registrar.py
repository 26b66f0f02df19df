"""The registrar (RFC 3261 §10.3): REGISTER → bindings in the location service.

The caller has authenticated the request already and names the user it proved to be;
this module decides what happens to the bindings and what the 200 OK lists.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass

from gateway.config import SipSettings, Tenant, User
from gateway.config.model import MAX_USER_AGENT
from gateway.proxy.location import Binding, Location
from gateway.sip.headers import NameAddr
from gateway.sip.message import Request
from gateway.sip.uri import SipURI
from gateway.transport.addresses import DEFAULT_PORTS, Source, same_host

MAX_EXPIRES_VALUE = 2**32 - 1


@dataclass(frozen=True, slots=True)
class RegistrarReply:
    status: int
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    outcome: str = "ok"  # metrics label


def _parse_expires(text: str | None) -> int | None:
    if text is None or not text.strip().isdigit():
        return None
    # RFC 3261 §20.19: an overlarge value is treated as the maximum we allow.
    return min(int(text.strip()), MAX_EXPIRES_VALUE)


class Registrar:
    def __init__(self, location: Location, settings: SipSettings) -> None:
        self.location = location
        self.min_expires = settings.registrar_min_expires
        self.max_expires = settings.registrar_max_expires
        self.default_expires = settings.registrar_default_expires
        self.max_contacts = settings.max_contacts_per_aor

    def register(
        self, req: Request, tenant: Tenant, user: User, source: Source, now: float
    ) -> RegistrarReply:
        to_uri = req.to.uri
        if not isinstance(to_uri, SipURI):
            return RegistrarReply(400, "Address of record is not a SIP URI", outcome="rejected")
        if to_uri.user not in (user.username, user.extension):
            return RegistrarReply(403, "Not allowed to register this address", outcome="rejected")

        call_id, cseq = req.call_id, req.cseq.number
        header_expires = _parse_expires(req.get("Expires"))
        current = self.location.bindings(tenant.id, user.extension, now)
        contacts = req.contacts

        if contacts == "*":
            if header_expires != 0:
                return RegistrarReply(
                    400, "Wildcard Contact requires Expires: 0", outcome="rejected"
                )
            if any(b.call_id == call_id and b.cseq >= cseq for b in current):
                return RegistrarReply(400, "CSeq out of order", outcome="rejected")
            self.location.replace(tenant.id, user.extension, [])
            return self._ok(tenant, user, now, outcome="removed")

        if len(contacts) > self.max_contacts:
            return RegistrarReply(403, "Too many contacts", outcome="rejected")

        updated = list(current)
        for contact in contacts:
            expires = self._expires_for(contact, header_expires)
            if 0 < expires < self.min_expires:
                return RegistrarReply(
                    423,
                    "Interval Too Brief",
                    (("Min-Expires", str(self.min_expires)),),
                    outcome="rejected",
                )
            existing = self._find(updated, contact)
            if existing is not None:
                if existing.call_id == call_id and existing.cseq >= cseq:
                    return RegistrarReply(400, "CSeq out of order", outcome="rejected")
                updated.remove(existing)
            if expires == 0:
                continue
            updated.append(self._binding(req, contact, min(expires, self.max_expires), source, now))

        # A phone that rebooted registers again with a new Call-ID and port: keep the
        # newest bindings rather than refusing it once the limit is reached.
        updated.sort(key=lambda b: b.expires_at)
        updated = updated[-self.max_contacts :]
        self.location.replace(tenant.id, user.extension, updated)
        removed = contacts and all(self._expires_for(c, header_expires) == 0 for c in contacts)
        return self._ok(tenant, user, now, outcome="removed" if removed else "ok")

    # -- pieces ----------------------------------------------------------------------
    def _expires_for(self, contact: NameAddr, header_expires: int | None) -> int:
        value = _parse_expires(contact.params.get("expires"))
        if value is None:
            value = header_expires
        return self.default_expires if value is None else value

    @staticmethod
    def _find(bindings: list[Binding], contact: NameAddr) -> Binding | None:
        text = str(contact.uri)
        for binding in bindings:
            if binding.contact_uri == text:
                return binding
        return None

    @staticmethod
    def _binding(
        req: Request, contact: NameAddr, expires: int, source: Source, now: float
    ) -> Binding:
        uri = contact.uri
        behind_nat = False
        top_via = req.top_via
        if isinstance(uri, SipURI) and top_via.rport is not None and not source.reliable:
            port = uri.port or DEFAULT_PORTS.get(uri.transport, 5060)
            behind_nat = not (same_host(uri.host, source.remote[0]) and port == source.remote[1])
        q_text = contact.params.get("q")
        try:
            q = float(q_text) if q_text else 1.0
        except ValueError:
            q = 1.0
        instance = contact.params.get("+sip.instance")
        return Binding(
            contact_uri=str(uri),
            q=q,
            expires_at=now + expires,
            call_id=req.call_id,
            cseq=req.cseq.number,
            source=source,
            behind_nat=behind_nat,
            # Bounded: it is the peer's text, and ua_profiles.py reads no more of it.
            user_agent=(req.get("User-Agent") or "")[:MAX_USER_AGENT],
            instance=instance,
        )

    def _ok(self, tenant: Tenant, user: User, now: float, *, outcome: str) -> RegistrarReply:
        headers: list[tuple[str, str]] = [
            ("Contact", f"<{b.contact_uri}>;expires={b.remaining(now)}")
            for b in self.location.bindings(tenant.id, user.extension, now)
        ]
        headers.append(("Date", email.utils.formatdate(usegmt=True)))
        return RegistrarReply(200, None, tuple(headers), outcome=outcome)
