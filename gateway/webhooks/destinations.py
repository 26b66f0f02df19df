"""Where a webhook delivery may connect: the project's destination policy
(gateway/proxy/destinations.py), with the rules of a request a tenant admin aims.

A webhook URL is chosen by a tenant admin, so without rules it could make the gateway
POST into its own network (server-side request forgery): to Redis, to a cloud metadata
service, to an admin page on a private address. On top of the SIP policy (never our
own services, never a denied network, loopback only when allowed), private networks
are refused unless ``[webhooks] allow_private``, and loopback unless
``allow_loopback``. The check is made on every address a name resolves to, at every
connection, and the connection goes to the address checked (client.py): a DNS answer
that changes between the check and the connect cannot slip past it.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.config import Settings
from gateway.proxy.destinations import DestinationPolicy, service_endpoints
from gateway.transport.layer import resolve_host

# RFC 1918, shared address space (RFC 6598, carrier NAT), unique local IPv6 (RFC 4193).
PRIVATE_NETWORKS: tuple[str, ...] = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
)


class WebhookDestinations:
    """Decides whether a delivery may connect to an address (sans I/O once built)."""

    def __init__(
        self,
        settings: Settings,
        *,
        sip_ports: Callable[[], frozenset[int]] | None = None,
        resolve: Callable[[str, int], list[str]] = resolve_host,
    ) -> None:
        hooks = settings.webhooks
        self.allow_loopback = hooks.allow_loopback
        deny = tuple(settings.sip.deny_destinations)
        if not hooks.allow_private:
            deny += PRIVATE_NETWORKS
        configured = frozenset(spec.port for spec in settings.sip.listen if spec.port)
        sip = settings.sip
        self.policy = DestinationPolicy(
            services=service_endpoints(settings),
            sip_ports=sip_ports or (lambda: configured),
            deny=deny,
            local_hosts=[spec.host for spec in sip.listen] + [sip.advertise or ""],
            resolve=resolve,
        )

    def refusal(self, address: str, port: int) -> str | None:
        """Why a delivery may not connect to ``address:port`` (an IP literal), or None.
        ``flow``: loopback allowed as a configuration decision; our own services and
        denied networks stay refused whatever it says."""
        return self.policy.refusal(address, port, flow=self.allow_loopback)
