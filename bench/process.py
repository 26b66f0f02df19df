"""Start and stop the bench's child processes (proxies, sipp) without leaking any.

Every process is started in its own session (so a Ctrl-C in the terminal reaches only
the harness, which then stops its children in order), dies with the harness
(PR_SET_PDEATHSIG), and is recorded so that `stop_all()` can end whatever a failing
step left running. Stopping is SIGTERM (or the signal given), a grace period, SIGKILL,
then SIGKILL to the rest of its process group: Kamailio forks workers that must not
outlive it. Only processes started here are ever signalled, by id.

We reap children ourselves with wait4() so that the CPU time of a finished process
(sipp's user and system time) is known exactly, from its rusage.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1
try:
    _libc: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - not glibc
    _libc = None


def _die_with_parent() -> None:
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass
class Exit:
    returncode: int  # negative: killed by that signal
    cpu_s: float  # user + system seconds of the process and its reaped children


class Managed:
    """One child process, its argv and its log file (stdout and stderr together)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: Path,
        log_path: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # the harness runs no threads
        )
        self.pid = self.popen.pid
        self.exit: Exit | None = None
        _running[self.pid] = self

    @property
    def running(self) -> bool:
        return self.exit is None and self._reap(block=False) is None

    def _reap(self, *, block: bool) -> Exit | None:
        if self.exit is not None:
            return self.exit
        try:
            pid, status, rusage = os.wait4(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere: no rusage to report
            self._finish(Exit(self.popen.returncode or 0, 0.0))
            return self.exit
        if pid == 0:
            return None
        code = os.waitstatus_to_exitcode(status)
        self.popen.returncode = code  # so Popen never waits on the pid again
        self._finish(Exit(code, rusage.ru_utime + rusage.ru_stime))
        return self.exit

    def _finish(self, result: Exit) -> None:
        self.exit = result
        _running.pop(self.pid, None)
        self._log.close()

    def wait(self, timeout: float) -> Exit | None:
        """Wait up to `timeout` seconds for the process to end by itself."""
        deadline = time.monotonic() + timeout
        while True:
            result = self._reap(block=False)
            if result is not None or time.monotonic() >= deadline:
                return result
            time.sleep(0.02)

    def send_signal(self, sig: int) -> None:
        if self.exit is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def stop(self, grace: float = 5.0, sig: int = signal.SIGTERM) -> Exit:
        """`sig`, up to `grace` seconds, SIGKILL; then SIGKILL to what is left of its
        process group (workers a proxy forked). Always returns with the process reaped."""
        if self.exit is None:
            self.send_signal(sig)
            if self.wait(grace) is None:
                self.send_signal(signal.SIGKILL)
                self._reap(block=True)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # our own session: only our children
        assert self.exit is not None
        return self.exit

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


_running: dict[int, Managed] = {}


def stop_all(grace: float = 3.0) -> None:
    """Stop every process still running (most recent first: loaders before proxies)."""
    for proc in reversed(list(_running.values())):
        proc.stop(grace)
