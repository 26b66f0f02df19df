"""Look-ups the router needs, built once from configuration.

Tenants own SIP domains, users (extensions with digest credentials), DIDs and trunks.
Domain and user look-ups are the configuration's own; this adds what routing needs on
top: DIDs matched by their digits across tenants, and trunk source rules parsed once
instead of on every request. Read-only after start; a reload builds a new ``Directory``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from gateway.config import Profile, Settings, Tenant, Trunk, User
from gateway.config.syntax import IPNetwork, parse_match
from gateway.proxy.ua_profiles import PhoneProfiles
from gateway.transport.addresses import canonical_ip, ip_address_of, strip_brackets


def digits_key(number: str) -> str:
    """Compare numbers by their digits: ``+31 20-123`` and ``3120123`` are one key.

    Full E.164 normalization with the tenant's region belongs to recognition; a DID
    as the trunk sends it is matched here on its digits only.
    """
    return "".join(ch for ch in number if ch.isdigit())


@dataclass(frozen=True, slots=True)
class _SourceRule:
    network: IPNetwork
    port: int | None
    tenant: Tenant
    trunk: Trunk


class TrunkHealth(Protocol):
    """Who knows whether a trunk answers (the OPTIONS prober, gateway/proxy/prober.py)."""

    def is_down(self, tenant: str, trunk: str) -> bool: ...


class Directory:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Set by the OPTIONS prober when it starts; None: every trunk counts as up.
        self.health: TrunkHealth | None = None
        self._dids: dict[str, tuple[Tenant, str]] = {}
        # The loader refuses overlapping match entries, so the first rule that matches
        # is the only one.
        self._source_rules: list[_SourceRule] = []
        self.trunk_for_source = functools.lru_cache(maxsize=16_384)(self._match_source)
        # The profile of a phone whose user names none (by its User-Agent).
        self.phones = PhoneProfiles(settings.profiles)
        # Where trunks are reached (their host and port as configured).
        self._trunk_targets: set[tuple[str, int]] = set()
        for tenant in settings.tenants:
            for did in tenant.dids:
                self._dids[digits_key(did.number)] = (tenant, did.extension)
            for trunk in tenant.trunks:
                self._trunk_targets.add((strip_brackets(trunk.host).lower(), trunk.port))
                for entry in trunk.match:
                    network, port = parse_match(entry)
                    self._source_rules.append(_SourceRule(network, port, tenant, trunk))

    def profile(self, name: str) -> Profile | None:
        return self.settings.profiles.get(name)

    @property
    def tenants(self) -> Iterable[Tenant]:
        return self.settings.tenants

    def tenant_for_domain(self, host: str) -> Tenant | None:
        return self.settings.tenant_by_domain(host)

    def tenant_for_domain_or_default(self, host: str) -> Tenant | None:
        return self.settings.tenant_for_domain(host)

    @staticmethod
    def user(tenant: Tenant, name: str) -> User | None:
        """A user by SIP username or by extension."""
        return tenant.user_by_username(name) or tenant.user_by_extension(name)

    def did(self, number: str) -> tuple[Tenant, str] | None:
        key = digits_key(number)
        return self._dids.get(key) if key else None

    def _match_source(self, host: str, port: int) -> tuple[Tenant, Trunk] | None:
        """The trunk a message from ``host:port`` comes from (``trunk_for_source``,
        memoized: asked for every message by the flood guard, trust and routing)."""
        addr = ip_address_of(host)
        if addr is None:
            return None
        for rule in self._source_rules:
            if addr in rule.network and (rule.port is None or rule.port == port):
                return rule.tenant, rule.trunk
        return None

    def is_trunk_address(self, host: str, port: int) -> bool:
        """``host:port`` is a configured trunk: where one is reached or sends from."""
        key = (strip_brackets(host).lower(), port)
        if key in self._trunk_targets:
            return True
        canonical = canonical_ip(key[0])
        if canonical is None:
            return False
        return (canonical, port) in self._trunk_targets or (
            self.trunk_for_source(canonical, port) is not None
        )

    @staticmethod
    def outbound_trunks(tenant: Tenant) -> tuple[Trunk, ...]:
        """The trunks a user's call to a number may leave through, in file order."""
        return tuple(trunk for trunk in tenant.trunks if trunk.outbound)

    def outbound_trunk(self, tenant: Tenant) -> Trunk | None:
        """The first outbound trunk that is not down. When every one is down, the first
        anyway: a probe can be wrong (OPTIONS filtered, a far end that answers INVITE
        only), and trying costs less than refusing every call."""
        candidates = self.outbound_trunks(tenant)
        health = self.health
        if health is not None:
            for trunk in candidates:
                if not health.is_down(tenant.id, trunk.name):
                    return trunk
        return candidates[0] if candidates else None
