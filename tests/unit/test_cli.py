"""The `sipgw` command as an operator runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def sipgw(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], cwd=REPO, capture_output=True, text=True,
        timeout=60, check=False, env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_check_config_of_the_embedded_demo() -> None:
    result = sipgw("check-config")
    assert result.returncode == 0, result.stderr
    assert "configuration OK (<embedded" in result.stdout
    assert "tenant demo: 3 users, 1 DIDs, 1 trunks" in result.stdout


def test_check_config_of_the_example_file() -> None:
    example = str(REPO / "examples" / "sipgw.toml")
    # Its EXAMPLE ONLY passwords are public: it listens on 0.0.0.0, so it is refused...
    result = sipgw("check-config", "--config", example)
    assert result.returncode == 2
    assert "sip.listen[0]: this configuration, which holds a published password" in result.stderr
    assert "Change-Me" not in result.stderr
    # ...until each is replaced, as its comment says, through the environment.
    own = {
        "SIPGW_TENANTS__0__USERS__0__PASSWORD": "Own-pass-201!",
        "SIPGW_TENANTS__0__USERS__1__PASSWORD": "Own-pass-202!",
        "SIPGW_TENANTS__1__USERS__0__PASSWORD": "Own-pass-1001!",
    }
    result = sipgw("check-config", "--config", example, env=own)
    assert result.returncode == 0, result.stderr


def test_a_config_error_names_the_key_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[sip]\nt1 = -1\n')
    result = sipgw("check-config", "--config", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "sipgw: configuration error: sip.t1: must be a positive number, got -1"
    )


def test_an_environment_override_error_names_the_variable() -> None:
    result = sipgw("check-config", env={"SIPGW_SIP__T1": "-1"})
    assert result.returncode == 2
    assert "SIPGW_SIP__T1 (sip.t1)" in result.stderr


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    result = sipgw("check-config", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert "nope.toml" in result.stderr
    assert "Traceback" not in result.stderr


def test_version() -> None:
    result = sipgw("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("sipgw ")


def test_the_admin_commands_say_where_they_looked_for_redis_without_a_password() -> None:
    from gateway.cli.admin import _redis_place
    from gateway.config import RedisSettings

    one = RedisSettings(url="redis://ops:pw-secret@10.0.0.9:6390/2")
    assert _redis_place(one) == "Redis at redis://ops:***@10.0.0.9:6390/2"
    cluster = RedisSettings(
        cluster_nodes=(("10.1.0.1", 7000), ("10.1.0.2", 7001)), password="pw-secret"
    )
    assert _redis_place(cluster) == "the Redis Cluster (seed nodes 10.1.0.1:7000, 10.1.0.2:7001)"
    sentinel = RedisSettings(
        sentinel_service="main", sentinels=(("10.2.0.1", 26379),), sentinel_password="pw-secret"
    )
    assert _redis_place(sentinel) == "Redis master 'main' (sentinels 10.2.0.1:26379)"
