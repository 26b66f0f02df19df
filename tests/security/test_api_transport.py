"""How the API's secrets travel: HTTPS/WSS refuse TLS below 1.2 (a real gateway, a real
TLS 1.1 client), and `sipgw watch` / `sipgw dial` refuse plain http:// or ws:// to any
host that is not the loopback."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from gateway.cli.watch import UnsafeURL, check_url
from gateway.config import ConfigError, load_settings
from tests.integration.conftest import GatewayFactory

REPO = Path(__file__).resolve().parents[2]
# The gateway's suites with CBC ones that TLS 1.1 can use, and OpenSSL's security level
# 0, which would let 1.1 through: only http.tls_min_version stands in its way.
WEAK_CIPHERS = 'tls_ciphers = "@SECLEVEL=0:ECDHE+AESGCM:ECDHE+AES"'


# Suites TLS 1.1 can use; the server accepts them (it is given them above), so a 1.1
# handshake with nothing else to offer fails only because of its version.
CBC_ONLY = "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:@SECLEVEL=0"


def handshake(port: int, version: ssl.TLSVersion, ciphers: str = CBC_ONLY) -> str:
    """Connect with TLS at most ``version``: the negotiated version, or why it failed."""
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1/TLSv1_1 are deprecated
        client.minimum_version = ssl.TLSVersion.TLSv1
        client.maximum_version = version
    # Security level 0: the client does offer 1.1, so a refusal is the server's.
    client.set_ciphers(ciphers)
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client.wrap_socket(raw) as tls,
        ):
            return str(tls.version())
    except (ssl.SSLError, OSError) as err:
        return f"refused: {err}"


async def test_https_refuses_tls_1_1(gateway_factory: GatewayFactory) -> None:
    gateway = await gateway_factory(http_tls=True, extra_sip=WEAK_CIPHERS)
    port = gateway.ports.http
    # The same suites over TLS 1.2 are accepted: the server can do them...
    assert await asyncio.to_thread(handshake, port, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    # ...but not over TLS 1.1 (nor 1.0): refused for the version alone.
    for old in (ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1):
        refused = await asyncio.to_thread(handshake, port, old)
        assert refused.startswith("refused:"), refused
    assert await asyncio.to_thread(handshake, port, ssl.TLSVersion.TLSv1_3, "ALL") == "TLSv1.3"
    # The gateway still serves: the refusals cost it nothing.
    assert await gateway.ready()


async def test_https_follows_a_raised_floor(
    gateway_factory: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """http.tls_min_version = "1.3" is obeyed (it used to be ignored by HTTPS)."""
    monkeypatch.setenv("SIPGW_HTTP__TLS_MIN_VERSION", "1.3")  # the gateway's environment
    gateway = await gateway_factory(http_tls=True)
    port = gateway.ports.http
    refused = await asyncio.to_thread(handshake, port, ssl.TLSVersion.TLSv1_2, "ALL")
    assert refused.startswith("refused:"), refused
    assert await asyncio.to_thread(handshake, port, ssl.TLSVersion.TLSv1_3, "ALL") == "TLSv1.3"


def test_http_tls_min_version_is_read(tmp_path: Path) -> None:
    file = tmp_path / "sipgw.toml"
    file.write_text('[http]\ntls_min_version = "1.3"\n')
    assert load_settings(file, env={}).http.tls_min_version == "1.3"
    file.write_text('[http]\ntls_min_version = "1.1"\n')
    with pytest.raises(ConfigError, match=r"^http\.tls_min_version: "):
        load_settings(file, env={})


# --- the command-line clients --------------------------------------------------------


def sipgw(*args: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], cwd=REPO, capture_output=True, text=True,
        timeout=60, check=False, env={"PATH": "/usr/bin:/bin", **env},
    )  # fmt: skip
    return result, time.monotonic() - started


@pytest.mark.parametrize(
    "url", ["http://192.0.2.10:8080", "ws://192.0.2.10:8080", "http://gw.example.net"]
)
@pytest.mark.parametrize("command", ["watch", "dial"])
def test_clients_refuse_plain_http_to_other_hosts(command: str, url: str) -> None:
    args = ["watch", "--url", url] if command == "watch" else ["dial", "201", "0612", "--url", url]
    # Both ways of authenticating: a token, and a password that login() would send.
    for env in ({"SIPGW_TOKEN": "t" * 43}, {"SIPGW_PASSWORD": "Some-pass-1!"}):
        extra = [] if "SIPGW_TOKEN" in env else ["--username", "201"]
        result, took = sipgw(*args, *extra, env=env)
        assert result.returncode == 2, result.stderr
        assert f"sipgw {command}: refusing {url.split(':')[0]}:// to " in result.stderr
        assert "use https://" in result.stderr
        # 192.0.2.0/24 (TEST-NET-1) never answers: a connection attempt would hang for
        # its 10 s timeout. Refused at once means nothing was tried.
        assert took < 8, took


def test_the_url_rule() -> None:
    for fine in (
        "http://127.0.0.1:8080", "http://[::1]:8080", "http://localhost:8080",
        "http://127.0.0.2", "https://gw.example.net", "wss://192.0.2.10:8443",
    ):  # fmt: skip
        check_url(fine)
    for bad in ("http://10.0.0.1", "ws://[2001:db8::1]:80", "ftp://127.0.0.1", "127.0.0.1:8080"):
        with pytest.raises(UnsafeURL):
            check_url(bad)
