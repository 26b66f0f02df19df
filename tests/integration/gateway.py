"""Run a real sipgw process for integration tests: free ports, its own config, clean stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.peers.ports import free_port
from tests.peers.tls import make_self_signed

REPO = Path(__file__).resolve().parents[2]

PASSWORDS = {
    "201": "Pass-201-word!",
    "202": "Pass-202-word!",
    "203": "Pass-203-word!",
    "204": "Pass-204-word!",
    "205": "Pass-205-word!",
    "206": "Pass-206-word!",
}
# sipp (201, 202) reads only the first digest challenge and knows only MD5.
PROFILES = {
    "201": "legacy-md5",
    "202": "legacy-md5",
    "203": "pjsua",
    "204": "pjsua",
    "205": "linphone",
    "206": "baresip",
}
DOMAIN = "acme.test"
DID = "+31201234567"


@dataclass
class GatewayPorts:
    sip: int = field(default_factory=free_port)
    tls: int = field(default_factory=lambda: free_port(udp=False))
    http: int = field(default_factory=lambda: free_port(udp=False))
    # The trunk's far end (where calls to numbers go) and a second source address the
    # trunk may send from (sipp's UAC), both trusted as the trunk.
    trunk: int = field(default_factory=free_port)
    trunk_src: int = field(default_factory=free_port)


def render_config(
    ports: GatewayPorts,
    workdir: Path,
    extra_sip: str = "",
    *,
    trunk_transport: str = "udp",
    trunk_match: list[str] | None = None,
    log_level: str = "INFO",
) -> str:
    pair = make_self_signed(workdir, name="sipgw")
    cert, key = pair.cert, pair.key
    users = "\n".join(
        f"""
[[tenants.users]]
username = "{user}"
extension = "{user}"
display_name = "Phone {user}"
password = "{password}"
profile = "{PROFILES[user]}"
"""
        for user, password in PASSWORDS.items()
    )
    return (
        textwrap.dedent(
            f"""
default_tenant = "acme"

[node]
name = "it-{ports.sip}"

[sip]
listen = ["udp:127.0.0.1:{ports.sip}", "tcp:127.0.0.1:{ports.sip}", "tls:127.0.0.1:{ports.tls}"]
tls_cert = "{cert}"
tls_key = "{key}"
auth_secret = "integration-secret-0123456789"
{extra_sip}

[http]
listen = "127.0.0.1:{ports.http}"

[log]
level = "{log_level}"
format = "json"

[[tenants]]
id = "acme"
name = "Acme"
domains = ["{DOMAIN}", "127.0.0.1"]
region = "NL"
"""
        )
        + users
        + textwrap.dedent(
            f"""
[[tenants.dids]]
number = "{DID}"
extension = "201"

[[tenants.trunks]]
name = "carrier"
host = "127.0.0.1"
port = {ports.trunk}
transport = "{trunk_transport}"
match = {json.dumps(trunk_match or [f"127.0.0.1:{ports.trunk}", f"127.0.0.1:{ports.trunk_src}"])}
"""
        )
    )


class GatewayProcess:
    def __init__(
        self,
        workdir: Path,
        ports: GatewayPorts | None = None,
        extra_sip: str = "",
        **options: object,
    ) -> None:
        self.workdir = workdir
        self.ports = ports or GatewayPorts()
        self.config = workdir / "sipgw.toml"
        self.config.write_text(render_config(self.ports, workdir, extra_sip, **options))  # type: ignore[arg-type]
        self.log_path = workdir / "sipgw.log"
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def sip_uri(self) -> str:
        return f"sip:127.0.0.1:{self.ports.sip}"

    async def start(self, timeout: float = 15.0) -> GatewayProcess:
        log = self.log_path.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.cli",
            "run",
            "--config",
            str(self.config),
            "--state-dir",
            str(self.workdir / "state"),
            "--quiet",
            stdout=log,
            stderr=log,
            env=env,
            cwd=str(REPO),
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.proc.returncode is not None:
                raise RuntimeError(f"sipgw exited with {self.proc.returncode}:\n{self.log_tail()}")
            if await self.ready():
                return self
            await asyncio.sleep(0.05)
        await self.stop()
        raise RuntimeError(f"sipgw not ready after {timeout}s:\n{self.log_tail()}")

    async def ready(self) -> bool:
        status, _ = await self.http_get("/readyz")
        return status == 200

    async def http_get(self, path: str) -> tuple[int, bytes]:
        def fetch() -> tuple[int, bytes]:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.ports.http}{path}", timeout=2
                ) as resp:
                    return resp.status, resp.read()
            except urllib.error.HTTPError as err:
                return err.code, err.read()
            except OSError:
                return 0, b""

        return await asyncio.to_thread(fetch)

    async def metrics(self) -> str:
        status, body = await self.http_get("/metrics")
        assert status == 200
        return body.decode()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def log_records(self) -> list[dict[str, object]]:
        records = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records

    def errors(self) -> list[dict[str, object]]:
        """Log records at error level or above: a healthy run has none."""
        return [r for r in self.log_records() if r.get("level") in ("error", "critical")]

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)

    async def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode
