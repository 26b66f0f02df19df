"""The demo and any configuration with a published password stay on the loopback; plain
HTTP needs an opt-in beyond it. Refused at load: the process exits 2 naming the key,
before it binds or connects a single socket."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_settings
from gateway.config.exposure import PUBLISHED_PASSWORDS
from gateway.security.passwords import password_problem

REPO = Path(__file__).resolve().parents[2]

# Runs `sipgw run` with an audit hook (PEP 578) that reports every socket bind and
# connect on stderr, so the test sees whether the refused gateway touched the network.
_RUN_AUDITED = """
import sys
def hook(event, args):
    if event in ("socket.bind", "socket.connect"):
        sys.stderr.write(f"AUDIT {event} {args[1]!r}\\n")
sys.addaudithook(hook)
from gateway.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_gateway(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _RUN_AUDITED, "run", "--quiet", *args],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "SIPGW_REDIS__URL": "redis://127.0.0.1:1/0", **env},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"SIPGW_SIP__LISTEN": '["udp:0.0.0.0:5060"]', "SIPGW_SIP__ADVERTISE": "192.0.2.1"},
         "sip.listen[0]"),
        ({"SIPGW_SIP__LISTEN": '["udp:127.0.0.1:5060", "tcp:192.0.2.1:5060"]'},
         "sip.listen[1]"),
        ({"SIPGW_HTTP__LISTEN": "0.0.0.0:8080"}, "http.listen"),
        ({"SIPGW_HTTP__LISTEN": "[::]:8080"}, "http.listen"),
    ],
)  # fmt: skip
def test_the_demo_on_a_public_address_exits_without_opening_a_socket(
    env: dict[str, str], key: str
) -> None:
    result = run_gateway(env)
    assert result.returncode == 2, result.stderr
    assert f"({key}): the demo configuration, whose passwords are public, refuses a " in (
        result.stderr
    )
    assert "non-loopback listener" in result.stderr
    assert "AUDIT" not in result.stderr  # no socket bound, none connected
    assert not any(p in result.stderr for p in PUBLISHED_PASSWORDS)


def test_the_audit_hook_does_see_sockets() -> None:
    """The check above can fail: the same hook reports a bind made in its process."""
    code = _RUN_AUDITED.replace(
        "from gateway.cli import main", "import socket; socket.socket().bind(('127.0.0.1', 0))"
    ).replace("sys.exit(main(sys.argv[1:]))", "")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert "AUDIT socket.bind ('127.0.0.1', 0)" in result.stderr


def test_the_demo_on_the_loopback_loads() -> None:
    settings = load_settings(env={})
    assert settings.source.startswith("<embedded") and settings.tenants[0].id == "demo"


def write(tmp_path: Path, text: str) -> Path:
    file = tmp_path / "sipgw.toml"
    file.write_text(text)
    return file


TENANT = """
[[tenants]]
id = "t"
name = "T"
domains = ["t.example"]
[[tenants.users]]
username = "201"
extension = "201"
password = "{sip}"
api_password = "{api}"
"""


@pytest.mark.parametrize("published", sorted(PUBLISHED_PASSWORDS))
@pytest.mark.parametrize("field", ["sip", "api"])
def test_a_published_password_keeps_any_configuration_on_the_loopback(
    tmp_path: Path, published: str, field: str
) -> None:
    own = {"sip": "Own-sip-pass-1!", "api": "Own-api-pass-1!"}
    passwords = {**own, field: published}
    public = '[sip]\nlisten = ["udp:0.0.0.0:5060"]\nadvertise = "192.0.2.1"\n'
    file = write(tmp_path, public + TENANT.format(**passwords))
    with pytest.raises(ConfigError) as refused:
        load_settings(file, env={})
    key = "password" if field == "sip" else "api_password"
    assert str(refused.value) == (
        "sip.listen[0]: this configuration, which holds a published password "
        f'(tenants[0].users[0].{key}), refuses a non-loopback listener ("udp:0.0.0.0:5060"); '
        "set a password of your own"
    )
    # The same file with its own passwords, or on the loopback, loads.
    load_settings(write(tmp_path, public + TENANT.format(**own)), env={})
    load_settings(write(tmp_path, TENANT.format(**passwords)), env={})


def test_a_published_password_set_through_the_environment_counts(tmp_path: Path) -> None:
    text = '[http]\nlisten = "192.0.2.1:8443"\nallow_plain_http = true\n' + TENANT.format(
        sip="Own-sip-pass-1!", api="Own-api-pass-1!"
    )
    env = {"SIPGW_TENANTS__0__USERS__0__API_PASSWORD": "Demo-Admin-203!"}
    with pytest.raises(ConfigError) as refused:
        load_settings(write(tmp_path, text), env=env)
    assert str(refused.value).startswith(
        "http.listen: this configuration, which holds a published password "
        "(tenants[0].users[0].api_password)"
    )


# --- plain HTTP ------------------------------------------------------------------------


def test_plain_http_beyond_the_loopback_needs_an_opt_in(tmp_path: Path) -> None:
    public = '[http]\nlisten = "0.0.0.0:8080"\n'
    with pytest.raises(ConfigError) as refused:
        load_settings(write(tmp_path, public), env={})
    assert str(refused.value).startswith(
        'http.listen: plain HTTP on "0.0.0.0:8080", which is not the loopback, would carry '
        "passwords and tokens in clear text"
    )
    opted_in = load_settings(write(tmp_path, public + "allow_plain_http = true\n"), env={})
    assert opted_in.http.allow_plain_http and opted_in.http.scheme == "http"
    for loopback in ("127.0.0.1:8080", "[::1]:8080", "localhost:8080"):
        text = f'[http]\nlisten = "{loopback}"\n'
        assert not load_settings(write(tmp_path, text), env={}).http.allow_plain_http


# --- the list stays in step with the docs ---------------------------------------------

# Files whose text anyone can read: what they print as a password is public.
PUBLIC_FILES = [
    REPO / "README.md",
    REPO / "gateway" / "default.toml",
    REPO / "scripts" / "run-demo.sh",
    *sorted((REPO / "docs").glob("*.md")),
    *sorted(p for p in (REPO / "examples").rglob("*") if p.is_file()),
    *sorted(p for p in (REPO / "demo").rglob("*") if p.is_file()),
]
# Words of those files that pass the password rules but are no password.
NOT_PASSWORDS = {"Kamailio-1w", "Kamailio-2w"}
_WORD = re.compile(r"[^\s\"'`=,;()<>\[\]{}|]+")


def password_shaped_words() -> dict[str, list[str]]:
    """Every word of the public files that the API password rules would accept, minus
    URLs, paths and cipher strings: the candidates for a published password."""
    found: dict[str, list[str]] = {}
    for file in PUBLIC_FILES:
        for word in _WORD.findall(file.read_text(errors="replace")):
            if any(c in word for c in "/:%") or not 8 <= len(word) <= 64:
                continue
            if password_problem(word) is None:
                found.setdefault(word, []).append(str(file.relative_to(REPO)))
    return found


def test_every_published_password_is_in_the_list_and_the_list_holds_only_those() -> None:
    found = password_shaped_words()
    unlisted = {w: f for w, f in found.items() if w not in PUBLISHED_PASSWORDS | NOT_PASSWORDS}
    missing = json.dumps(unlisted)
    assert not unlisted, f"printed in the docs, missing from PUBLISHED_PASSWORDS: {missing}"
    stale = PUBLISHED_PASSWORDS - set(found)
    assert not stale, f"PUBLISHED_PASSWORDS no doc prints any more: {sorted(stale)}"
    # Every password key of the demo file is covered, whatever the word scan finds.
    demo = (REPO / "gateway" / "default.toml").read_text()
    for value in re.findall(r'^(?:api_)?password = "([^"]+)"', demo, re.MULTILINE):
        assert value in PUBLISHED_PASSWORDS
