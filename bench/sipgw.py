"""The sipgw process under test: its own TOML config on free ports, log level WARNING,
and its own Redis (redis-server without persistence, like the docker compose file).

The config mirrors the integration tests' (tests/integration/gateway.py) in what the
calls need: tenant "acme", user 201 with the legacy-md5 profile (sipp 3.6 answers only
an MD5 challenge), DID +31201234567 → 201, and a trunk trusted by the UAC's source
address (127.0.0.1, any port: the UAC sends each call from a socket of its own) so the
INVITEs are not challenged. It listens on UDP only (the scenarios are UDP; no TLS
certificate needed) and the trunk's OPTIONS probing is off, so the only SIP traffic is
the benchmark's.

`SipgwTarget(workers=2)` is the label ``sipgw-2w``: ``[node] workers = 2`` and
``worker_port_step = 0`` (docs/workers.md): `sipgw run` is then a supervisor whose two
worker processes share the SIP port (SO_REUSEPORT); the kernel spreads the flows (source
address and port) over them. The CPU measured is the whole tree: supervisor and workers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from . import procstat
from .ports import free_port
from .process import Managed
from .targets import DID, DOMAIN, EXTENSION, LogSummary, Target, summarize, wait_sip_ready

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "Pass-201-word!"  # bench-only; the gateway keeps only its HA1 hashes
# Workers other than 0 send their counters to worker 0 once a second (docs/workers.md).
COUNTER_PUSH_S = 1.2


def render_events(events: Mapping[str, int | float] | None) -> str:
    """An ``[events]`` table (the gateway's subscription limits), or nothing."""
    if not events:
        return ""
    lines = "".join(f"{key} = {value}\n" for key, value in events.items())
    return f"\n[events]\n{lines}"


# The UAC's address: the trunk is trusted by it, whatever the source port.
UAC_HOST = "127.0.0.1"


def render_node(sip_port: int, workers: int = 1) -> str:
    """The ``[node]`` table: one process, or `workers` under a supervisor with free own
    ports (``worker_port_step = 0``: fine on loopback, docs/workers.md)."""
    lines = f'[node]\nname = "bench-{sip_port}"\n'
    if workers > 1:
        lines += f"workers = {workers}\nworker_port_step = 0\n"
    return lines


def render_config(
    sip_port: int,
    http_port: int,
    trunk_port: int,
    redis_url: str,
    *,
    events: Mapping[str, int | float] | None = None,
    workers: int = 1,
    redis_keys: str | None = None,
) -> str:
    """The bench gateway's TOML; `events` overrides settings of its ``[events]`` table
    (the fan-out scenario raises ``max_subscribers_per_tenant``); `workers` > 1 runs
    that many worker processes; `redis_keys` replaces ``url = redis_url`` in ``[redis]``
    (a cluster's ``cluster_nodes``)."""
    preamble = (
        '# Written by bench/sipgw.py for one benchmark repetition.\ndefault_tenant = "acme"\n'
    )
    head = textwrap.dedent(
        f"""
        [sip]
        listen = ["udp:127.0.0.1:{sip_port}"]
        auth_secret = "bench-secret-0123456789abcdef"

        [http]
        listen = "127.0.0.1:{http_port}"

        [redis]
        {redis_keys or f'url = "{redis_url}"'}

        [log]
        level = "WARNING"
        format = "json"
        """
    )
    head = f"{preamble}\n{render_node(sip_port, workers)}{head}"
    tenant = textwrap.dedent(
        f"""
        [[tenants]]
        id = "acme"
        name = "Acme"
        domains = ["{DOMAIN}", "127.0.0.1"]
        region = "NL"

        [[tenants.users]]
        username = "{EXTENSION}"
        extension = "{EXTENSION}"
        display_name = "Bench UAS"
        password = "{PASSWORD}"
        profile = "legacy-md5"

        [[tenants.dids]]
        number = "{DID}"
        extension = "{EXTENSION}"

        # The far end is never called in these scenarios. The UAC sends from its
        # address, from a port per call (sipp -t un): trusted by address alone.
        [[tenants.trunks]]
        name = "carrier"
        host = "127.0.0.1"
        port = {trunk_port}
        transport = "udp"
        match = ["{UAC_HOST}"]
        options_interval = 0
        """
    )
    return head + render_events(events) + tenant


def start_redis(workdir: Path) -> tuple[Managed, int]:
    """A private redis-server without persistence (as in production: the event streams
    are a buffer, not a store), on a free port; returns once it answers PING."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (Debian package redis-server)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port(udp=False)
    argv = [
        binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
        "--appendonly", "no", "--dir", str(workdir), "--loglevel", "warning",
    ]  # fmt: skip
    proc = Managed("redis", argv, cwd=workdir, log_path=workdir / "redis.log")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc, port
        except OSError:
            pass
        if not proc.running:
            break
        time.sleep(0.05)
    proc.stop(grace=1)
    raise RuntimeError(f"redis-server did not start:\n{proc.log_text()[-2000:]}")


class SipgwTarget(Target):
    impl = "sipgw"
    notes = (
        "one Python process (asyncio + uvloop); its own Redis (call events are written to "
        "the tenant stream); digest auth on REGISTER only, the INVITEs come from a trunk "
        "trusted by source address"
    )
    # On SIGTERM sipgw drains: up to 10 s while requests are pending (a step that lost
    # calls leaves INVITEs nobody will answer before Timer C), then stops its parts,
    # ~2.5 s more. Past 25 s it is killed, and the results say so. (With workers, the
    # supervisor forwards the SIGTERM and they drain at the same time.)
    budget_priority = 0  # the product: its searches keep their time first
    stop_grace_s = 25.0
    expected_stop_s = 13.0
    # Without pending requests (OPTIONS are answered at once): ~1.5-2.5 s, up to ~7 s
    # after a long step.
    expected_idle_stop_s = 3.0

    def __init__(self, workers: int = 1) -> None:
        super().__init__()
        self.workers = workers
        if workers > 1:
            self.notes = (
                f"a supervisor and {workers} worker processes (asyncio + uvloop) sharing the "
                "SIP port (SO_REUSEPORT: the kernel spreads the flows over them), "
                "registrations shared through Redis; " + self.notes.split("; ", 1)[1]
            )
        self.http_port = 0
        self.register_auth = (EXTENSION, PASSWORD)
        self.register_domain = DOMAIN
        self.redis: Managed | None = None
        self.config = Path()

    def config_text(self, sip_port: int, http_port: int, trunk_port: int, redis_url: str) -> str:
        """The TOML the gateway runs with (a subclass adds sections)."""
        return render_config(sip_port, http_port, trunk_port, redis_url, workers=self.workers)

    @property
    def url(self) -> str:
        """Base URL of its HTTP API."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def aux_pids(self) -> list[int]:
        return [self.redis.pid] if self.redis is not None else []

    def start(self, workdir: Path) -> None:
        self.workdir = workdir
        self.redis, redis_port = start_redis(workdir / "redis")
        self.start_gateway(workdir, f"redis://127.0.0.1:{redis_port}/0")

    def start_gateway(self, workdir: Path, redis_url: str) -> None:
        """The gateway alone, on `redis_url` (or what its `config_text` names)."""
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.sip_port = free_port()
        self.http_port = free_port(udp=False)
        self.uac_port = free_port()
        self.config = workdir / "sipgw.toml"
        ports = (self.sip_port, self.http_port, free_port())
        self.config.write_text(self.config_text(*ports, redis_url))
        argv = [
            sys.executable, "-m", "gateway.cli", "run",
            "--config", str(self.config),
            "--state-dir", str(workdir / "state"),
            "--quiet",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = Managed("sipgw", argv, cwd=REPO, log_path=workdir / "sipgw.log", env=env)
        wait_sip_ready(self, timeout=20)
        if self.workers > 1:
            self.wait_workers_ready(timeout=20)

    def wait_workers_ready(self, timeout: float) -> None:
        """Return once every worker has bound the SIP port and worker 0 has every
        worker's counters (so each is past its start): one answering is not enough, the
        kernel would send the flows of a worker not yet bound to the others."""
        deadline = time.monotonic() + timeout
        while True:
            bound = procstat.udp_port_socket_count(self.sip_port)
            up = sum(self.worker_metrics().get("sipgw_worker_up", {}).values())
            if bound >= self.workers and up >= self.workers:
                return
            if time.monotonic() > deadline or not self.alive():
                raise RuntimeError(
                    f"{self.label}: {bound} of {self.workers} workers bound the SIP port, "
                    f"{up:.0f} reported to worker 0 within {timeout}s"
                )
            time.sleep(0.1)

    def worker_metrics(self) -> dict[str, dict[str, float]]:
        """Worker 0's /metrics: requests taken in per worker, the workers up, transport
        events (relayed_to_worker, bad_envelope); {} when it does not answer."""
        try:
            with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            return {}
        return {
            name: parse_labelled(text, name, label)
            for name, label in (
                ("sipgw_worker_up", "worker"),
                ("sipgw_worker_requests_total", "worker"),
                ("sipgw_transport_events_total", "event"),
            )
        }

    def turn_counters(self) -> dict[str, Any]:
        """How the kernel spread the turn's requests over the workers (from /metrics;
        the other workers send their counters to worker 0 each second, so with workers
        this waits a little over a second first)."""
        if self.workers == 1:
            return {}  # one process: nothing to spread
        time.sleep(COUNTER_PUSH_S)
        found = self.worker_metrics()
        if not found:
            return {}
        requests = found.get("sipgw_worker_requests_total", {})
        total = sum(requests.values())
        return {
            "worker_requests": requests,
            "worker_request_shares": {
                w: round(n / total, 4) for w, n in requests.items()
            } if total else {},
            "workers_up": found.get("sipgw_worker_up", {}),
            "transport_events": found.get("sipgw_transport_events_total", {}),
        }  # fmt: skip

    def stop(self) -> int | None:
        try:
            return super().stop()
        finally:
            if self.redis is not None:  # after the gateway: it flushes events on stop
                self.redis.stop(grace=5)

    def wait_http_ready(self, timeout: float) -> None:
        """Return once /readyz answers 200 (the directory is loaded, Redis reachable)."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline or not self.alive():
                raise RuntimeError(f"sipgw's HTTP API did not become ready within {timeout}s")
            time.sleep(0.1)

    def ready(self) -> bool:
        try:
            url = f"{self.url}/readyz"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return int(resp.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_summary(self) -> LogSummary:
        return summarize(parse_json_log(self.proc.log_text() if self.proc else ""))

    def version(self) -> str:
        try:
            return metadata.version("sipgw")
        except metadata.PackageNotFoundError:
            return "unknown"


def parse_labelled(text: str, sample: str, label: str) -> dict[str, float]:
    """`label`'s value -> value of each `sample` line of Prometheus text, e.g.
    ``sipgw_worker_requests_total{worker="1"} 1234.0`` -> {"1": 1234.0}."""
    out: dict[str, float] = {}
    name, key = re.escape(sample), re.escape(label)
    pattern = re.compile(rf'^{name}\{{[^}}]*\b{key}="([^"]*)"[^}}]*\}}\s+(\S+)')
    for line in text.splitlines():
        m = pattern.match(line)
        if m:
            try:
                out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
            except ValueError:
                continue
    return out


def parse_json_log(text: str) -> list[tuple[str, str]]:
    """(level, message) of the warning-or-worse records of sipgw's JSON log. A line that
    is not JSON was printed around the logging setup (a library's warning on stderr):
    level "other", except a traceback's first line, which is an error."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            level = "error" if line.startswith("Traceback") else "other"
            out.append((level, line.strip()[:200]))
            continue
        if not isinstance(record, dict):
            out.append(("other", line.strip()[:200]))
            continue
        level = str(record.get("level", "")).lower()
        if level in ("warning", "error", "critical"):
            out.append((level, str(record.get("msg", ""))[:200]))
    return out
