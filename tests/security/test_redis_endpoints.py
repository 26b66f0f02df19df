"""No SIP is sent to our own Redis, whichever way it is deployed.

What an attacker gains without this: a REGISTER (or a Route, a Via) naming a Redis
node as its address makes the gateway write SIP text into Redis' port; Redis reads
text lines as commands (the classic cross-protocol attack). The destination policy
refuses every configured Redis endpoint: the one server, every cluster seed node, every
sentinel. A cluster's other nodes and the master a sentinel names are learnt at run
time: on the loopback the policy refuses them anyway (no loopback port but a flow's);
elsewhere they are the operator's network to keep apart (docs/security.md).
"""

from __future__ import annotations

import dataclasses

import pytest

from gateway.config import RedisSettings, Settings, load_settings
from gateway.proxy.destinations import DestinationPolicy, service_endpoints

SEEDS = (("10.1.0.1", 7000), ("10.1.0.2", 7001))
SENTINELS = (("10.2.0.1", 26379), ("10.2.0.2", 26380), ("10.2.0.3", 26381))


def with_redis(redis: RedisSettings) -> Settings:
    return dataclasses.replace(load_settings(env={}), redis=redis)


def policy(settings: Settings) -> DestinationPolicy:
    return DestinationPolicy(
        services=service_endpoints(settings),
        sip_ports=lambda: frozenset({5060}),
        local_hosts=["192.0.2.10"],
        is_peer=lambda host, port: False,
    )


@pytest.mark.parametrize(
    ("redis", "aimed_at"),
    [
        (RedisSettings(url="redis://10.0.0.9:6390/0"), [("10.0.0.9", 6390)]),
        (RedisSettings(cluster_nodes=SEEDS), list(SEEDS)),
        (RedisSettings(sentinel_service="main", sentinels=SENTINELS), list(SENTINELS)),
    ],
    ids=["one-server", "cluster-seeds", "sentinels"],
)
def test_sip_is_never_sent_to_a_configured_redis_endpoint(
    redis: RedisSettings, aimed_at: list[tuple[str, int]]
) -> None:
    refusing = policy(with_redis(redis))
    for host, port in aimed_at:
        assert refusing.refusal(host, port) == "own_service"
        assert refusing.refusal(host, port, flow=True) == "own_service"
    assert refusing.refusal("10.9.9.9", 5060) is None  # a phone elsewhere is fine
