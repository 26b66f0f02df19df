"""Run a real sipgw process for integration tests: free ports, its own config and its
own Redis, clean stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.peers.ports import free_port
from tests.peers.tls import make_self_signed
from tests.redis_servers import SENTINEL_SERVICE, LocalCluster, LocalSentinel

REPO = Path(__file__).resolve().parents[2]

PASSWORDS = {
    "201": "Pass-201-word!",
    "202": "Pass-202-word!",
    "203": "Pass-203-word!",
    "204": "Pass-204-word!",
    "205": "Pass-205-word!",
    "206": "Pass-206-word!",
    "207": "Pass-207-word!",
}
# sipp (201, 202) reads only the first digest challenge and knows only MD5.
PROFILES = {
    "201": "legacy-md5",
    "202": "legacy-md5",
    "203": "pjsua",
    "204": "pjsua",
    "205": "linphone",
    "206": "baresip",
    "207": "no-refer-phone",  # a PJSIP phone click-to-dial must bridge, never REFER
}
API_PASSWORDS = {user: f"Api-{user}-secret!" for user in [*PASSWORDS, "301"]}
ADMIN = "203"
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


# A generous budget: under a loaded test machine a look-up may take longer than the
# production default of 20 ms, and tests counting events must not see an extra
# call.recognized. Tests of the budget itself pass their own section.
RECOGNITION = """
[tenants.recognition]
fields = ["name", "company", "crm_id"]
budget_ms = 1000
timeout_ms = 5000

[[tenants.recognition.screen_pop]]
name = "crm"
when = "hit"
url = "https://crm.example/contacts/{contact.crm_id}?call={call_id}"

[[tenants.recognition.screen_pop]]
name = "new-contact"
when = "miss"
url = "https://crm.example/new?phone={number}&name={display}"
"""


def render_config(
    ports: GatewayPorts,
    workdir: Path,
    extra_sip: str = "",
    *,
    trunk_transport: str = "udp",
    trunk_match: list[str] | None = None,
    log_level: str = "INFO",
    redis_url: str = "redis://127.0.0.1:1/0",
    redis_table: str | None = None,
    node: str | None = None,
    extra: str = "",
    subscriber_queue: int = 1000,
    recognition: str = RECOGNITION,
    http_tls: bool = False,
    trunk_extra: str = "options_interval = 0",
    more_trunks: str = "",
    workers: int = 1,
    profiles: dict[str, str | None] | None = None,
) -> str:
    # profiles: each user's `profile` (default PROFILES); None: the user names none and its
    # phone's User-Agent chooses (gateway/proxy/ua_profiles.py).
    # redis_table: the keys of [redis] instead of `url = redis_url` (a cluster, Sentinel:
    # `cluster_table`, `sentinel_table`).
    # trunk_extra: more keys of the "carrier" trunk. Its OPTIONS probing is off unless a
    # test asks for it: a sipp UAS playing the trunk would take a probe for a call it
    # does not expect. more_trunks: further [[tenants.trunks]] of tenant acme.
    pair = make_self_signed(workdir, name="sipgw")
    named = PROFILES if profiles is None else profiles
    users = "\n".join(
        f"""
[[tenants.users]]
username = "{user}"
extension = "{user}"
display_name = "Phone {user}"
password = "{password}"
{f'profile = "{named[user]}"' if named.get(user) else ""}
api_password = "{API_PASSWORDS[user]}"
role = "{"admin" if user == ADMIN else "user"}"
"""
        for user, password in PASSWORDS.items()
    )
    match = trunk_match or [f"127.0.0.1:{ports.trunk}", f"127.0.0.1:{ports.trunk_src}"]
    head = f"""
default_tenant = "acme"

[node]
name = "{node or f"it-{ports.sip}"}"
workers = {workers}

[sip]
listen = ["udp:127.0.0.1:{ports.sip}", "tcp:127.0.0.1:{ports.sip}", "tls:127.0.0.1:{ports.tls}"]
tls_cert = "{pair.cert}"
tls_key = "{pair.key}"
auth_secret = "integration-secret-0123456789"
{extra_sip}

[http]
listen = "127.0.0.1:{ports.http}"
{f'tls_cert = "{pair.cert}"' if http_tls else ""}
{f'tls_key = "{pair.key}"' if http_tls else ""}

[redis]
{redis_table or f'url = "{redis_url}"'}

[events]
heartbeat = 1.0
subscriber_queue = {subscriber_queue}

[log]
level = "{log_level}"
format = "json"
{extra}

[[tenants]]
id = "acme"
name = "Acme"
domains = ["{DOMAIN}", "127.0.0.1"]
region = "NL"
"""
    tail = f"""
{recognition}

[[tenants.dids]]
number = "{DID}"
extension = "201"

[[tenants.trunks]]
name = "carrier"
host = "127.0.0.1"
port = {ports.trunk}
transport = "{trunk_transport}"
match = {json.dumps(match)}
{trunk_extra}
{more_trunks}

# A second tenant: nothing of acme may ever reach it, and the reverse.
[[tenants]]
id = "globex"
name = "Globex"
domains = ["globex.test"]

[[tenants.users]]
username = "301"
extension = "301"
password = "Pass-301-word!"
api_password = "{API_PASSWORDS["301"]}"
role = "admin"
"""
    return textwrap.dedent(head) + users + textwrap.dedent(tail)


@dataclass
class RedisProcess:
    """A private redis-server without persistence."""

    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(cls, workdir: Path, port: int | None = None) -> RedisProcess:
        workdir.mkdir(parents=True, exist_ok=True)
        port = port or free_port(udp=False)
        proc = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return cls(proc, port)
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"redis-server did not start on port {port}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def cluster_table(cluster: LocalCluster) -> str:
    """``[redis]`` keys of a gateway on `cluster`: two seeds (it learns the rest)."""
    seeds = [f"redis://{node.address}" for node in cluster.nodes[:2]]
    return f"cluster_nodes = {json.dumps(seeds)}"


def sentinel_table(deployment: LocalSentinel) -> str:
    """``[redis]`` keys of a gateway on the master `deployment`'s sentinels name."""
    sentinels = json.dumps(deployment.addresses)
    return f'sentinel_service = "{SENTINEL_SERVICE}"\nsentinels = {sentinels}'


class GatewayProcess:
    def __init__(
        self,
        workdir: Path,
        ports: GatewayPorts | None = None,
        extra_sip: str = "",
        *,
        redis_url: str | None = None,
        redis_table: str | None = None,
        **options: Any,
    ) -> None:
        """`redis_url`: one server the gateway shares (None: a redis-server of its own);
        `redis_table`: the ``[redis]`` keys of a cluster or Sentinel instead
        (`cluster_table`, `sentinel_table`), and then `redis_url` is empty."""
        self.workdir = workdir
        self.ports = ports or GatewayPorts()
        self.redis: RedisProcess | None = None
        if redis_url is None and redis_table is None:
            # Its own Redis, so no test sees another test's tenant streams.
            self.redis = RedisProcess.start(workdir / "redis")
            redis_url = self.redis.url
        self.redis_url = redis_url or ""
        self.http_tls = bool(options.get("http_tls"))
        self.config = workdir / "sipgw.toml"
        config = render_config(
            self.ports, workdir, extra_sip, redis_url=self.redis_url, redis_table=redis_table,
            **options,
        )  # fmt: skip
        self.config.write_text(config)
        self.log_path = workdir / "sipgw.log"
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def sip_uri(self) -> str:
        return f"sip:127.0.0.1:{self.ports.sip}"

    @property
    def http_url(self) -> str:
        return f"{'https' if self.http_tls else 'http'}://127.0.0.1:{self.ports.http}"

    @property
    def ca_file(self) -> Path:
        """The self-signed certificate of the gateway's SIP and HTTPS listeners."""
        return self.workdir / "sipgw.crt"

    async def start(self, timeout: float = 15.0) -> GatewayProcess:
        log = self.log_path.open("ab")
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

    async def http_get(self, path: str, token: str | None = None) -> tuple[int, bytes]:
        return await self.http("GET", path, token=token)

    async def http(
        self, method: str, path: str, body: object = None, token: str | None = None
    ) -> tuple[int, bytes]:
        def fetch() -> tuple[int, bytes]:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            data = json.dumps(body).encode() if body is not None else None
            request = urllib.request.Request(
                self.http_url + path, data=data, headers=headers, method=method
            )
            context = ssl.create_default_context(cafile=self.ca_file) if self.http_tls else None
            try:
                with urllib.request.urlopen(request, timeout=5, context=context) as resp:
                    return resp.status, resp.read()
            except urllib.error.HTTPError as err:
                return err.code, err.read()
            except OSError:
                return 0, b""

        return await asyncio.to_thread(fetch)

    async def login(self, user: str, tenant: str | None = None) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        credentials = {"username": user, "password": API_PASSWORDS[user]}
        if tenant is not None:
            credentials["tenant"] = tenant
        while True:
            status, body = await self.http("POST", "/v1/auth/login", credentials)
            # 503 + Retry-After while the directory is still being seeded into Redis.
            if status != 503 or loop.time() > deadline:
                break
            await asyncio.sleep(0.1)
        assert status == 200, (status, body)
        return str(json.loads(body)["token"])

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
        try:
            return await self._stop(timeout)
        finally:
            if self.redis is not None:
                self.redis.stop()

    async def _stop(self, timeout: float) -> int | None:
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
