"""Look-ups the router needs, built once from configuration.

Tenants own SIP domains, users (extensions with digest credentials), DIDs and trunks.
Everything here is read-only after start; a reload builds a new ``Directory``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.config import Settings, Tenant, Trunk, User
from gateway.transport.addresses import strip_brackets


def digits_key(number: str) -> str:
    """Compare numbers by their digits: ``+31 20-123`` and ``3120123`` are one key.

    Full E.164 normalization with the tenant's region belongs to recognition; a DID
    as the trunk sends it is matched here on its digits only.
    """
    return "".join(ch for ch in number if ch.isdigit())


@dataclass(frozen=True, slots=True)
class _SourceRule:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    port: int | None
    tenant: Tenant
    trunk: Trunk


def _parse_match(rule: str, trunk: Trunk) -> tuple[str, int | None]:
    # "ip", "ip:port", "[v6]:port", "cidr"
    if rule.startswith("["):
        host, _, rest = rule[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    if rule.count(":") == 1:
        host, port = rule.split(":")
        return host, int(port)
    return rule, None


class Directory:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._by_domain: dict[str, Tenant] = {}
        self._users: dict[tuple[str, str], User] = {}
        self._dids: dict[str, tuple[Tenant, str]] = {}
        self._source_rules: list[_SourceRule] = []
        for tenant in settings.tenants:
            for domain in tenant.domains:
                self._by_domain[strip_brackets(domain).lower()] = tenant
            for user in tenant.users:
                self._users[tenant.id, user.username] = user
                self._users.setdefault((tenant.id, user.extension), user)
            for did in tenant.dids:
                self._dids[digits_key(did.number)] = (tenant, did.extension)
            for trunk in tenant.trunks:
                rules = trunk.match or (f"{trunk.host}:{trunk.port}",)
                for rule in rules:
                    host, port = _parse_match(rule, trunk)
                    try:
                        network = ipaddress.ip_network(strip_brackets(host), strict=False)
                    except ValueError:
                        continue  # a host name: matched at send time only
                    self._source_rules.append(_SourceRule(network, port, tenant, trunk))
        # Most specific rule first, so "ip:port" wins over a CIDR covering it.
        self._source_rules.sort(key=lambda r: (r.port is None, -r.network.prefixlen))
        self._default = (
            settings.tenant_by_id(settings.default_tenant) if settings.default_tenant else None
        )

    @property
    def tenants(self) -> Iterable[Tenant]:
        return self.settings.tenants

    def tenant_for_domain(self, host: str) -> Tenant | None:
        return self._by_domain.get(strip_brackets(host).lower())

    def tenant_for_domain_or_default(self, host: str) -> Tenant | None:
        return self.tenant_for_domain(host) or self._default

    def user(self, tenant: Tenant, name: str) -> User | None:
        """A user by SIP username or by extension."""
        return self._users.get((tenant.id, name))

    def did(self, number: str) -> tuple[Tenant, str] | None:
        key = digits_key(number)
        return self._dids.get(key) if key else None

    def trunk_for_source(self, host: str, port: int) -> tuple[Tenant, Trunk] | None:
        try:
            addr = ipaddress.ip_address(strip_brackets(host))
        except ValueError:
            return None
        for rule in self._source_rules:
            if addr in rule.network and (rule.port is None or rule.port == port):
                return rule.tenant, rule.trunk
        return None

    def outbound_trunk(self, tenant: Tenant) -> Trunk | None:
        for trunk in tenant.trunks:
            if trunk.outbound:
                return trunk
        return None
