"""No SIP is sent to our own Redis, whichever way it is deployed.

What an attacker gains without this: a REGISTER (or a Route, a Via) naming a Redis
node as its address makes the gateway write SIP text into Redis' port; Redis reads
text lines as commands (the classic cross-protocol attack). The destination policy
refuses every configured Redis endpoint: the one server, every cluster seed node, every
sentinel; and every node a cluster or Sentinel names at run time, once the runtime has
read it (`add_services`, fed by runtime/redis_topology.py: tests/unit/test_redis_topology.py
for the watcher, tests/security/test_redis_topology.py against real deployments).
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


def test_nodes_learnt_at_run_time_are_refused_as_the_configured_ones() -> None:
    """A replica, a master after a failover: elsewhere and on this machine, aimed at
    directly or as a flow (a Via's sent-by, a phone's own address), in every form."""
    refusing = policy(with_redis(RedisSettings(cluster_nodes=SEEDS[:1])))
    learnt = [("10.1.0.7", 7006), ("127.0.0.1", 7007), ("2001:db8::7", 7008)]
    for host, port in learnt:
        assert refusing.refusal(host, port, flow=True) is None  # not known yet
    refusing.add_services(learnt)
    for host, port in [*learnt, ("::ffff:10.1.0.7", 7006), ("[2001:db8::7]", 7008)]:
        assert refusing.refusal(host, port) == "own_service", (host, port)
        assert refusing.refusal(host, port, flow=True) == "own_service", (host, port)
    assert refusing.contact_refusal("127.0.0.1", 7007, "127.0.0.1") == "own_service"
    assert refusing.refusal("192.0.2.10", 7007, flow=True) == "own_service"  # ours too
    # The same hosts' other ports, and the seed's, are as before.
    assert refusing.refusal("10.1.0.7", 5060) is None
    assert refusing.refusal(*SEEDS[0]) == "own_service"


def test_what_was_learnt_stays_refused_and_a_name_is_resolved() -> None:
    resolved: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        resolved.append((host, port))
        return ["10.3.0.5"]

    refusing = DestinationPolicy(services=[], resolve=resolve)
    refusing.add_services([("10.3.0.4", 6379)])
    refusing.add_services([("redis-7.internal", 6380)])  # nothing drops the first
    assert resolved == [("redis-7.internal", 6380)]
    assert refusing.refusal("10.3.0.4", 6379) == "own_service"
    assert refusing.refusal("10.3.0.5", 6380) == "own_service"
