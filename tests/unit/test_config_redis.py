"""gateway.config [redis]: one server, a cluster or Sentinel; credentials and TLS for
every mode; one mode only, each bad combination named by its key; secrets masked."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, RedisSettings, Settings, load_settings


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    file = tmp_path / "sipgw.toml"
    file.write_text(text)
    return load_settings(file, env=env or {})


def error_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env)
    return str(info.value)


def test_without_a_redis_table_it_is_the_local_standalone_server(tmp_path: Path) -> None:
    redis = load(tmp_path, "").redis
    assert redis == RedisSettings()
    assert (redis.mode, redis.url, redis.tls) == ("standalone", "redis://127.0.0.1:6379/0", False)
    assert redis.endpoints == (("127.0.0.1", 6379),)


def test_a_rediss_url_is_tls_and_its_options_apply(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    redis = load(
        tmp_path,
        '[redis]\nurl = "rediss://cache:6380/1"\nusername = "gw"\npassword = "pw-one"\n'
        'tls_ca = "ca.pem"\ntls_verify = false\n',
    ).redis
    assert (redis.mode, redis.tls, redis.tls_verify) == ("standalone", True, False)
    assert redis.tls_ca == tmp_path / "ca.pem"
    assert (redis.username, redis.password) == ("gw", "pw-one")
    assert redis.endpoints == (("cache", 6380),)


def test_a_cluster_is_its_seed_nodes_with_one_set_of_credentials(tmp_path: Path) -> None:
    redis = load(
        tmp_path,
        '[redis]\ncluster_nodes = ["redis://10.0.0.1:7000", "redis://[::1]:7001", '
        '"redis://Node3"]\npassword = "cluster-pw"\n',
    ).redis
    assert redis.mode == "cluster"
    assert redis.cluster_nodes == (("10.0.0.1", 7000), ("::1", 7001), ("node3", 6379))
    assert redis.endpoints == redis.cluster_nodes
    assert (redis.tls, redis.password) == (False, "cluster-pw")


def test_rediss_seeds_make_a_tls_cluster(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("x")
    (tmp_path / "k.pem").write_text("x")
    redis = load(
        tmp_path,
        '[redis]\ncluster_nodes = ["rediss://a:7000", "rediss://b:7000"]\ntls = true\n'
        'tls_cert = "c.pem"\ntls_key = "k.pem"\n',
    ).redis
    assert (redis.mode, redis.tls) == ("cluster", True)
    assert (redis.tls_cert, redis.tls_key) == (tmp_path / "c.pem", tmp_path / "k.pem")


def test_sentinel_is_a_service_name_and_its_sentinels(tmp_path: Path) -> None:
    redis = load(
        tmp_path,
        '[redis]\nsentinel_service = "mymaster"\nsentinels = ["10.0.0.5:26379", "s2", '
        '"[fd00::7]:26380"]\nsentinel_password = "watch-pw"\npassword = "data-pw"\ntls = true\n',
    ).redis
    assert (redis.mode, redis.sentinel_service) == ("sentinel", "mymaster")
    assert redis.sentinels == (("10.0.0.5", 26379), ("s2", 26379), ("fd00::7", 26380))
    assert (redis.sentinel_password, redis.password, redis.tls) == ("watch-pw", "data-pw", True)
    assert redis.endpoints == redis.sentinels


def test_the_environment_can_name_a_cluster_or_sentinel(tmp_path: Path) -> None:
    cluster = load(
        tmp_path,
        "",
        {"SIPGW_REDIS__CLUSTER_NODES": '["redis://a:7000", "redis://b:7001"]',
         "SIPGW_REDIS__PASSWORD": "env-pw"},
    ).redis  # fmt: skip
    assert (cluster.cluster_nodes, cluster.password) == ((("a", 7000), ("b", 7001)), "env-pw")
    sentinel = load(
        tmp_path,
        "",
        {"SIPGW_REDIS__SENTINEL_SERVICE": "mymaster", "SIPGW_REDIS__SENTINELS": "s1:26379"},
    ).redis
    assert (sentinel.mode, sentinel.sentinels) == ("sentinel", (("s1", 26379),))


MODES = "[redis] names one server (url), a cluster (cluster_nodes) or Sentinel (sentinel_service and sentinels)"  # noqa: E501
ONLY_TLS = "only with TLS (a rediss:// url or cluster_nodes, or tls = true for Sentinel)"


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        (
            '[redis]\nurl = "redis://r"\ncluster_nodes = ["redis://a:7000"]\n',
            {},
            f"redis.cluster_nodes: cannot be combined with redis.url: {MODES}",
        ),
        (
            '[redis]\nurl = "redis://r"\n',
            {"SIPGW_REDIS__CLUSTER_NODES": "redis://a:7000"},
            "SIPGW_REDIS__CLUSTER_NODES (redis.cluster_nodes): cannot be combined with "
            f"redis.url: {MODES}",
        ),
        (
            '[redis]\ncluster_nodes = ["redis://a:7000"]\nsentinel_service = "m"\n',
            {},
            f"redis.sentinel_service: cannot be combined with redis.cluster_nodes: {MODES}",
        ),
        (
            '[redis]\nsentinel_service = "m"\n',
            {},
            "redis.sentinels: required with redis.sentinel_service",
        ),
        (
            '[redis]\nsentinels = ["s:26379"]\n',
            {},
            "redis.sentinel_service: required with redis.sentinels",
        ),
        (
            '[redis]\nsentinel_password = "x"\n',
            {},
            "redis.sentinel_password: only with Sentinel (sentinel_service and sentinels)",
        ),
        (
            '[redis]\ncluster_nodes = []\n',
            {},
            "redis.cluster_nodes: must list at least one node",
        ),
        (
            '[redis]\ncluster_nodes = ["redis://a:7000", "rediss://b:7000"]\n',
            {},
            "redis.cluster_nodes[1]: every node must have the same scheme (rediss:// is TLS)",
        ),
        (
            '[redis]\ncluster_nodes = ["redis://:node-pw@a:7000"]\n',
            {},
            "redis.cluster_nodes[0]: must not hold credentials: set redis.username and "
            "redis.password",
        ),
        (
            '[redis]\ncluster_nodes = ["redis://a:7000/3"]\n',
            {},
            'redis.cluster_nodes[0]: must be "redis://host[:port]" or "rediss://host[:port]" '
            '(a cluster has database 0 only), got "redis://a:7000/3"',
        ),
        (
            '[redis]\ncluster_nodes = ["http://:node-pw@a:7000"]\n',
            {},
            'redis.cluster_nodes[0]: must be "redis://host[:port]" or "rediss://host[:port]", '
            'got "http://:***@a:7000"',
        ),
        (
            '[redis]\nsentinel_service = "m"\nsentinels = ["s:port"]\n',
            {},
            'redis.sentinels[0]: port must be 0-65535, got "port"',
        ),
        (
            '[redis]\nurl = "redis://r"\ntls = true\n',
            {},
            "redis.tls: disagrees with redis.url (not rediss://): TLS is the URL's scheme, "
            "rediss:// for TLS",
        ),
        (
            '[redis]\ncluster_nodes = ["rediss://a:7000"]\ntls = false\n',
            {},
            "redis.tls: disagrees with redis.cluster_nodes (rediss://): TLS is the URL's "
            "scheme, rediss:// for TLS",
        ),
        ('[redis]\ntls_verify = false\n', {}, f"redis.tls_verify: {ONLY_TLS}"),
        (
            '[redis]\nsentinel_service = "m"\nsentinels = ["s"]\ntls_verify = false\n',
            {},
            f"redis.tls_verify: {ONLY_TLS}",
        ),
        (
            '[redis]\nurl = "redis://:in-url@r"\npassword = "again"\n',
            {},
            "redis.password: redis.url holds a password already: give it in one place",
        ),
        (
            '[redis]\nurl = "redis://someone@r"\nusername = "gw"\n',
            {},
            "redis.username: redis.url holds a username already: give it in one place",
        ),
        (
            '[redis]\npassword = "a\\r\\nSECRET"\n',
            {},
            "redis.password: must be non-empty text without control characters",
        ),
        ('[redis]\nclusternodes = []\n', {}, 'redis.clusternodes: unknown key (did you mean "cluster_nodes"?)'),  # noqa: E501
    ],
)
def test_a_bad_redis_table_is_refused_naming_the_key(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    assert error_of(tmp_path, text, env) == message


def test_a_tls_file_that_does_not_exist_or_comes_alone_is_refused(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("x")
    rediss = '[redis]\nurl = "rediss://r"\n'
    assert error_of(tmp_path, rediss + 'tls_ca = "nope.pem"\n') == (
        f"redis.tls_ca: file not found: {tmp_path / 'nope.pem'}"
    )
    assert error_of(tmp_path, rediss + 'tls_cert = "c.pem"\n') == (
        "redis.tls_key: required with redis.tls_cert"
    )
    assert error_of(tmp_path, '[redis]\ntls_ca = "c.pem"\n') == f"redis.tls_ca: {ONLY_TLS}"


def test_redis_passwords_never_show(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        '[redis]\nsentinel_service = "m"\nsentinels = ["s"]\nsentinel_password = "sentinel-pw-7"\n'
        'password = "data-pw-7"\n',
    )
    for shown in (repr(settings), str(settings), repr(settings.redis)):
        assert "sentinel-pw-7" not in shown and "data-pw-7" not in shown
    assert "password='***'" in repr(settings.redis)
    assert "sentinel_password='***'" in repr(settings.redis)
    assert "username=None" in repr(settings.redis)  # an unset secret shows as unset
