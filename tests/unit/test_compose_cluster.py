"""docker/compose.cluster.yaml (2 gateway nodes, a 6-node Redis Cluster, a one-shot
cluster create) read without docker: its services, what each runs, the gateway configs it
mounts loaded with the gateway's own loader, and that names and ports agree.

There is no YAML parser in the project's environment; the file keeps to plain block
style (no anchors, no flow mappings), and `services` reads it by indentation: a service
is a line ``  name:`` under ``services:``, its block the lines indented below it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.config import load_settings

DOCKER = Path(__file__).resolve().parents[2] / "docker"
COMPOSE = DOCKER / "compose.cluster.yaml"
REDIS_NODES = [f"redis-{i}" for i in range(1, 7)]
GATEWAYS = {"sipgw-a": "gw-a", "sipgw-b": "gw-b"}  # service → [node] name
NODE_ARGS = (
    "--port 6379", "--cluster-enabled yes", '--save ""', "--appendonly no",
    '--requirepass "$$REDIS_PASSWORD"', '--masterauth "$$REDIS_PASSWORD"',
)  # fmt: skip


def services(text: str) -> dict[str, str]:
    """Service name → its block (the lines below it, as written)."""
    body = text.split("\nservices:\n", 1)[1]
    found: dict[str, str] = {}
    name = None
    for line in body.splitlines():
        head = re.fullmatch(r"  ([a-z0-9-]+):", line)
        if head:
            name = head.group(1)
            found[name] = ""
        elif name is not None and (line.startswith("    ") or not line.strip()):
            found[name] += line + "\n"
        elif line.strip() and not line.startswith("  #"):
            raise AssertionError(f"not inside a service: {line!r}")
    return found


def items(block: str, key: str) -> list[str]:
    """The ``- item`` lines under ``key:`` in a service's block."""
    match = re.search(rf"^    {key}:\n((?:      - .*\n)+)", block, re.M)
    assert match, f"no {key} list"
    return [line.strip()[2:].strip('"') for line in match.group(1).splitlines()]


def mapping(block: str, key: str) -> dict[str, str]:
    """``name: value`` lines directly under ``key:`` (values of nested maps: "")."""
    match = re.search(rf"^    {key}:\n((?:      .*\n)+)", block, re.M)
    assert match, f"no {key} mapping"
    out = {}
    for line in match.group(1).splitlines():
        pair = re.fullmatch(r"      ([A-Za-z0-9_-]+):\s*(.*)", line)
        if pair:
            out[pair.group(1)] = pair.group(2)
    return out


@pytest.fixture(scope="module")
def compose() -> dict[str, str]:
    return services(COMPOSE.read_text())


def test_the_services_are_six_redis_nodes_the_create_and_two_gateways(
    compose: dict[str, str],
) -> None:
    assert list(compose) == [*REDIS_NODES, "redis-cluster-create", *GATEWAYS]


def test_every_redis_node_is_a_cluster_node_without_persistence_behind_a_password(
    compose: dict[str, str],
) -> None:
    for name in REDIS_NODES:
        block = compose[name]
        assert "image: redis:7-bookworm" in block  # sharded pub/sub needs Redis 7
        for arg in NODE_ARGS:
            assert arg in block, (name, arg)
        assert mapping(block, "environment") == {
            "REDIS_PASSWORD": "${REDIS_PASSWORD:?set REDIS_PASSWORD}"
        }
        assert "ports:" not in block  # the cluster is reached on the compose network only


def test_the_create_waits_for_every_node_and_makes_three_masters_with_a_replica_each(
    compose: dict[str, str],
) -> None:
    block = compose["redis-cluster-create"]
    depends = re.findall(r"^      (redis-\d):\n        condition: (\S+)", block, re.M)
    assert depends == [(n, "service_healthy") for n in REDIS_NODES]
    assert f"for host in {' '.join(REDIS_NODES)}; do" in block
    assert "--cluster create $$nodes --cluster-replicas 1 --cluster-yes" in block
    assert 'restart: "no"' in block
    assert "REDISCLI_AUTH: ${REDIS_PASSWORD:?set REDIS_PASSWORD}" in block


def test_each_gateway_config_loads_and_names_the_six_nodes_in_cluster_mode(
    compose: dict[str, str],
) -> None:
    names = []
    for service, node_name in GATEWAYS.items():
        block = compose[service]
        (volume,) = items(block, "volumes")
        source, target, mode = volume.split(":")
        assert (target, mode) == ("/etc/sipgw/sipgw.toml", "ro")  # the image's SIPGW_CONFIG
        env = mapping(block, "environment")
        assert set(env) == {"SIPGW_REDIS__PASSWORD", "SIPGW_SIP__AUTH_SECRET"}
        # The overrides the compose file sets, with stand-in values: a misspelt key fails.
        stand_in = dict.fromkeys(env, "stand-in-value-0123456789")
        settings = load_settings(DOCKER / source, env=stand_in)
        assert settings.redis.cluster_nodes == tuple((n, 6379) for n in REDIS_NODES)
        assert settings.redis.password is not None and not settings.redis.tls
        assert settings.node.name == node_name
        names.append(settings.node.name)
        assert settings.sip.advertise == service  # its name on the compose network
        after = "redis-cluster-create:\n        condition: service_completed_successfully"
        assert after in block
        assert "dockerfile: docker/Dockerfile" in block and (DOCKER / "Dockerfile").is_file()
        # What the container publishes is what the config listens on.
        listens = {f"{spec.port}/{spec.transport}" for spec in settings.sip.listen}
        http = f"{settings.http.listen.rsplit(':', 1)[1]}/tcp"
        inside = {p.split(":")[1] for p in items(block, "ports")}
        assert inside == listens | {http}
    assert len(set(names)) == len(names)


def test_published_ports_do_not_collide(compose: dict[str, str]) -> None:
    published = [
        (p.split(":")[0], p.rpartition("/")[2] if "/" in p else "tcp")
        for service in GATEWAYS
        for p in items(compose[service], "ports")
    ]
    assert len(published) == len(set(published)) == 6


def test_the_parser_refuses_what_it_does_not_read() -> None:
    with pytest.raises(AssertionError, match="not inside a service"):
        services("name: x\nservices:\n  a:\n    image: x\nvolumes:\n")
