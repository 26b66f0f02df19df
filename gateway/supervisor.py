"""`sipgw run` with `[node] workers = N`: start N worker processes and look after them.

Each worker is `sipgw run` again, told its place by `SIPGW_WORKER_PLAN`
(transport/relay.py `WorkerPlan`): its index, the shared secret of the envelopes the
workers hand each other, and every worker's own ports. The supervisor owns no socket
and no event loop; it forwards SIGTERM/SIGINT (drain, then stop) and SIGUSR1 (drain)
to the workers, restarts a worker that dies on its own (at most `MAX_RESTARTS` in a
minute, then it gives up and stops the rest), and exits when all have exited.
Worker 0 serves HTTP (API, events, /metrics for all workers); every worker serves SIP.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from gateway.config import Settings
from gateway.transport.relay import PLAN_ENV, WorkerPlan

log = logging.getLogger("sipgw.supervisor")

MAX_RESTARTS = 5  # per worker per minute
STOP_GRACE = 30.0  # seconds the workers get to drain and stop before SIGKILL


def plan_ports(settings: Settings) -> tuple[tuple[int, ...], ...]:
    """Every worker's own port for each `sip.listen` entry."""
    step = settings.node.worker_port_step
    ports: list[tuple[int, ...]] = []
    for index in range(settings.node.workers):
        own = []
        for spec in settings.sip.listen:
            if step:
                own.append(spec.port + step * (index + 1))
            else:
                own.append(_free_port(spec.host, spec.transport))
        ports.append(tuple(own))
    return tuple(ports)


def _free_port(host: str, transport: str) -> int:
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    with socket.socket(family, kind) as sock:
        sock.bind((bare, 0))
        return int(sock.getsockname()[1])


class Supervisor:
    def __init__(self, settings: Settings, argv: list[str]) -> None:
        self.settings = settings
        self.argv = argv  # `sipgw run …` as given, for the workers
        self.count = settings.node.workers
        self.secret = secrets.token_bytes(32)
        self.ports = plan_ports(settings)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.restarts: dict[int, list[float]] = {i: [] for i in range(self.count)}
        self.stopping = False

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        signal.signal(signal.SIGUSR1, self._forward)
        for index in range(self.count):
            self._start(index)
        log.info("workers started", extra={"workers": self.count})
        status = 0
        while self.procs:
            pid, code = _wait_any()
            if pid < 0:
                break  # no child left to wait for
            found = next((i for i, p in self.procs.items() if p.pid == pid), None)
            if found is None:
                continue
            index = found
            del self.procs[index]
            exit_code = os.waitstatus_to_exitcode(code)
            if self.stopping:
                status = max(status, exit_code if exit_code > 0 else 0)
                continue
            log.error("worker exited", extra={"worker": index, "code": exit_code})
            if exit_code == 2:  # a configuration error: every restart would fail alike
                self._stop(signal.SIGTERM, None)
                status = 2
                continue
            if not self._may_restart(index):
                log.error("worker keeps dying: stopping", extra={"worker": index})
                self._stop(signal.SIGTERM, None)
                status = 1
                continue
            time.sleep(1.0)
            self._start(index)
        # The kill timer of _stop must not outlive the workers: a SIGALRM arriving while
        # the interpreter exits would end the supervisor "by a signal".
        signal.setitimer(signal.ITIMER_REAL, 0)
        return status

    def _start(self, index: int) -> None:
        plan = WorkerPlan(index, self.count, self.secret, self.ports)
        env = {**os.environ, PLAN_ENV: plan.to_env()}
        argv = list(self.argv)
        if index > 0 and "--quiet" not in argv:
            argv.append("--quiet")  # one banner: worker 0's (it knows the HTTP port)
        self.procs[index] = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", *argv], env=env, stdin=subprocess.DEVNULL
        )

    def _may_restart(self, index: int) -> bool:
        now = time.monotonic()
        recent = [t for t in self.restarts[index] if now - t < 60.0]
        recent.append(now)
        self.restarts[index] = recent
        return len(recent) <= MAX_RESTARTS

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            return
        self.stopping = True
        for proc in self.procs.values():
            _signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        signal.signal(signal.SIGALRM, lambda *_: self._kill_late(deadline))
        signal.setitimer(signal.ITIMER_REAL, 1.0, 1.0)

    def _kill_late(self, deadline: float) -> None:
        if time.monotonic() < deadline:
            return
        for proc in self.procs.values():
            _signal(proc, signal.SIGKILL)

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        for proc in self.procs.values():
            _signal(proc, signum)


def _signal(proc: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signum)


def _wait_any() -> tuple[int, int]:
    while True:
        try:
            return os.wait()
        except InterruptedError:
            continue
        except ChildProcessError:
            return -1, 0


def run_workers(settings: Settings, argv: list[str], state_dir: Path) -> int:
    state_dir.mkdir(parents=True, exist_ok=True)
    return Supervisor(settings, argv).run()
