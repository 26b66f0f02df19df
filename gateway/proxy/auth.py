"""Digest authentication of phones (RFC 3261 §22, RFC 8760), one realm per tenant.

Trunks are trusted by source address and never challenged; phones prove who they are
on every out-of-dialog request. The nonce is stateless (HMAC of a timestamp), so any
node sharing ``auth_secret`` can verify what another issued.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import Tenant, User
from gateway.proxy.directory import Directory
from gateway.sip.digest import DigestServer, parse_credentials
from gateway.sip.message import Request


@dataclass(frozen=True, slots=True)
class AuthOutcome:
    user: User | None = None
    status: int = 0  # 401/407 to challenge, 403 to refuse
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


class Authenticator:
    def __init__(self, directory: Directory, *, secret: bytes, nonce_ttl: float) -> None:
        self.directory = directory
        self._secret = secret
        self._nonce_ttl = nonce_ttl
        # One verifier per tenant accepts every algorithm we implement; challenges are
        # issued per peer profile (see _challenger), all with the same secret and realm.
        self._verifiers = {
            tenant.id: DigestServer(
                tenant.realm, secret, nonce_ttl=nonce_ttl, algorithms=("SHA-256", "MD5")
            )
            for tenant in directory.tenants
        }
        self._challengers: dict[tuple[str, tuple[str, ...]], DigestServer] = {}
        self._realms = {tenant.realm for tenant in directory.tenants}

    def _challenger(self, tenant: Tenant, claimed: str | None) -> DigestServer:
        """The challenge a peer gets depends on its profile: which algorithms, in which order.

        The claimed user (To of a REGISTER, From otherwise) names the profile; before the
        peer has proved anything this only chooses among algorithms we accept anyway.
        """
        algorithms: tuple[str, ...] = ("SHA-256", "MD5")
        user = self.directory.user(tenant, claimed) if claimed else None
        if user is not None:
            profile = self.directory.settings.profiles.get(user.profile)
            if profile is not None:
                algorithms = profile.digest_algorithms
        key = (tenant.id, algorithms)
        server = self._challengers.get(key)
        if server is None:
            server = DigestServer(
                tenant.realm, self._secret, nonce_ttl=self._nonce_ttl, algorithms=algorithms
            )
            self._challengers[key] = server
        return server

    def check(self, req: Request, tenant: Tenant, *, registrar: bool) -> AuthOutcome:
        """Authenticate ``req`` against ``tenant``: the user, or the response to send.

        ``registrar`` selects Authorization/401 (a registrar is a UAS) over
        Proxy-Authorization/407.
        """
        server = self._verifiers[tenant.id]
        claimed_uri = req.to.uri if registrar else req.from_.uri
        challenger = self._challenger(tenant, getattr(claimed_uri, "user", None))
        credentials_header = "Authorization" if registrar else "Proxy-Authorization"
        challenge_header = "WWW-Authenticate" if registrar else "Proxy-Authenticate"
        challenge_status = 401 if registrar else 407

        def challenge(stale: bool = False) -> AuthOutcome:
            headers = tuple(
                (challenge_header, value) for value in challenger.challenge(stale=stale)
            )
            return AuthOutcome(status=challenge_status, headers=headers)

        def ha1(username: str, algorithm: str) -> str | None:
            user = tenant.user_by_username(username)
            return user.ha1(algorithm) if user is not None else None

        for value in req.get_all(credentials_header):
            if self._realm_of(value) != tenant.realm:
                continue  # credentials for another hop's realm (RFC 3261 §22.3)
            result = server.verify(value, req.method, ha1)
            if result.ok and result.username is not None:
                user = self.directory.user(tenant, result.username)
                if user is not None:
                    return AuthOutcome(user=user)
            if result.stale:
                return challenge(stale=True)
            return challenge()
        return challenge()

    @staticmethod
    def _realm_of(value: str) -> str | None:
        try:
            return parse_credentials(value).get("realm")
        except ValueError:
            return None

    def consumed_headers(self, req: Request) -> list[str]:
        """Credentials for our realms are ours alone: never forward them to the next hop."""
        values = req.get_all("Proxy-Authorization")
        if values and all(self._realm_of(v) in self._realms for v in values):
            return ["Proxy-Authorization"]
        return []
