"""Digest authentication of phones (RFC 3261 §22, RFC 8760), one realm per tenant.

Trunks are trusted by source address and never challenged; phones prove who they are
on every out-of-dialog request. The nonce is stateless (HMAC of a timestamp and of the
worker that issued it): its nonce-counts are checked where it was issued, and a sibling
answers it as stale (gateway/sip/digest.py). The digest ``uri`` must name the
Request-URI, so a captured credential cannot be used for another destination, and
failed guesses are slowed down per user and per source (auth_throttle.py).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from gateway.config import SipSettings, Tenant, User
from gateway.proxy.auth_throttle import AuthThrottle
from gateway.proxy.directory import Directory
from gateway.proxy.flood import source_bucket
from gateway.proxy.location import Binding, Location
from gateway.sip.digest import AuthResult, DigestServer, parse_credentials
from gateway.sip.errors import SIPParseError
from gateway.sip.message import Request
from gateway.sip.uri import parse_uri
from gateway.transport.addresses import Source

log = logging.getLogger("sipgw.auth")


# Reasons a failed digest is counted under; anything else is "malformed".
_FAILURE_LABELS = frozenset(
    {"bad credentials", "uri mismatch", "replayed nonce count", "invalid nonce"}
)


@dataclass(frozen=True, slots=True)
class AuthOutcome:
    user: User | None = None
    status: int = 0  # 401/407 to challenge, 403 to refuse
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    throttled: bool = False  # refused without looking at the credentials


class Authenticator:
    def __init__(
        self,
        directory: Directory,
        *,
        secret: bytes,
        settings: SipSettings,
        clock: Callable[[], float],
        failures: Counter[str],
        issuer: bytes = bytes(4),
    ) -> None:
        self.directory = directory
        self._secret = secret
        self._nonce_ttl = settings.nonce_ttl
        self._clock = clock
        self._issuer = issuer
        self.failures = failures  # by reason: exported as sipgw_sip_auth_failures_total
        self.throttle = AuthThrottle(
            max_failures=settings.auth_max_failures,
            max_failures_per_source=settings.auth_max_failures_per_source,
            max_failures_per_user=settings.auth_max_failures_per_user,
            backoff=settings.auth_backoff,
            backoff_max=settings.auth_backoff_max,
            window=settings.auth_failure_window,
            clock=clock,
        )
        # One verifier per tenant accepts every algorithm we implement; challenges are
        # issued per peer profile (see _challenger), all with the same secret and realm.
        self._verifiers = {
            tenant.id: DigestServer(
                tenant.realm,
                secret,
                nonce_ttl=self._nonce_ttl,
                algorithms=("SHA-256", "MD5"),
                issuer=issuer,
            )
            for tenant in directory.tenants
        }
        self._challengers: dict[tuple[str, tuple[str, ...]], DigestServer] = {}
        self._realms = {tenant.realm for tenant in directory.tenants}

    def _challenger(
        self, req: Request, tenant: Tenant, source: Source, claimed: str | None,
        location: Location | None,
    ) -> DigestServer:  # fmt: skip
        """The challenge a peer gets depends on its profile: which algorithms, in which order.

        The claimed user (To of a REGISTER, From otherwise) names the profile, else the
        phone's User-Agent or its registration's chooses one (ua_profiles.py). Before the
        peer has proved anything this only chooses among algorithms we accept anyway.
        """
        user = self.directory.user(tenant, claimed) if claimed else None

        def bindings() -> list[Binding]:
            if location is None or user is None:
                return []
            return location.bindings(tenant.id, user.extension, self._clock())

        profile = self.directory.phones.for_message(tenant, user, req, source, bindings)
        algorithms = profile.digest_algorithms
        key = (tenant.id, algorithms)
        server = self._challengers.get(key)
        if server is None:
            server = DigestServer(
                tenant.realm,
                self._secret,
                nonce_ttl=self._nonce_ttl,
                algorithms=algorithms,
                issuer=self._issuer,
            )
            self._challengers[key] = server
        return server

    def check(
        self, req: Request, tenant: Tenant, source: Source, *, registrar: bool,
        location: Location | None = None,
    ) -> AuthOutcome:  # fmt: skip
        """Authenticate ``req`` against ``tenant``: the user, or the response to send.

        ``registrar`` selects Authorization/401 (a registrar is a UAS) over
        Proxy-Authorization/407. ``location``: where the claimed user's registrations
        are, whose User-Agent chooses the challenge when ``req`` has none.
        """
        server = self._verifiers[tenant.id]
        claimed_uri = req.to.uri if registrar else req.from_.uri
        claimed_user = getattr(claimed_uri, "user", None)
        credentials_header = "Authorization" if registrar else "Proxy-Authorization"
        challenge_header = "WWW-Authenticate" if registrar else "Proxy-Authenticate"
        challenge_status = 401 if registrar else 407

        def challenge(stale: bool = False) -> AuthOutcome:
            # Chosen only when a challenge is sent: a valid credential costs no look-up.
            challenger = self._challenger(req, tenant, source, claimed_user, location)
            headers = tuple(
                (challenge_header, value) for value in challenger.challenge(stale=stale)
            )
            return AuthOutcome(status=challenge_status, headers=headers)

        def ha1(username: str, algorithm: str) -> str | None:
            user = tenant.user_by_username(username)
            return user.ha1(algorithm) if user is not None else None

        for value in req.get_all(credentials_header):
            fields = self._fields(value)
            if fields.get("realm") != tenant.realm:
                continue  # credentials for another hop's realm (RFC 3261 §22.3)
            claimed = self.directory.user(tenant, fields.get("username", ""))
            who = claimed.username if claimed is not None else None
            where = source_bucket(source.remote[0])
            wait = self.throttle.wait(who, where)
            if wait:
                # No credential check at all: guessing faster buys nothing.
                self.failures["throttled"] += 1
                return AuthOutcome(
                    status=403,
                    reason="Too many failed authentications",
                    headers=(("Retry-After", str(math.ceil(wait))),),
                    throttled=True,
                )
            if not self._uri_matches(fields.get("uri"), req):
                result = AuthResult(False, None, False, "uri mismatch", who)
            else:
                result = server.verify_fields(fields, req.method, ha1)
            if result.ok and result.username is not None:
                user = self.directory.user(tenant, result.username)
                if user is not None:
                    self.throttle.succeeded(user.username, where)
                    return AuthOutcome(user=user)
            if result.stale:
                return challenge(stale=True)
            self._failed(tenant, who, where, result.reason)
            return challenge()
        return challenge()

    def _failed(self, tenant: Tenant, user: str | None, source: str, reason: str) -> None:
        self.throttle.failed(user, source)
        label = reason.replace(" ", "_") if reason in _FAILURE_LABELS else "malformed"
        self.failures[label] += 1
        # The claimed name only when it is a user of ours: an unknown one may be a
        # password typed in the wrong field. Never the response or the nonce.
        log.warning(
            "sip digest authentication failed",
            extra={
                "tenant": tenant.id,
                "user": user or "(unknown)",
                "source": source,
                "reason": label,
            },
        )

    @staticmethod
    def _uri_matches(uri: str | None, req: Request) -> bool:
        """The digest names the resource requested (RFC 7616 §3.4.6), so a captured
        credential cannot be replayed for another destination."""
        if uri is None or uri == req.uri_raw:
            return uri is not None
        try:
            return parse_uri(uri).equivalent(req.uri)
        except SIPParseError:
            return False

    @staticmethod
    def _fields(value: str) -> dict[str, str]:
        try:
            return parse_credentials(value)
        except ValueError:
            return {}

    def consumed_headers(self, req: Request) -> list[str]:
        """Credentials for our realms are ours alone: never forward them to the next hop."""
        values = req.get_all("Proxy-Authorization")
        if values and all(self._fields(v).get("realm") in self._realms for v in values):
            return ["Proxy-Authorization"]
        return []
