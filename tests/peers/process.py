"""Asyncio subprocess helpers shared by the peer drivers.

`PeerProcess` starts a program, reads its stdout and stderr line by line into one ordered
log (never blocking the event loop), lets a driver wait for a line or for its own parsed
event with a timeout, writes lines to its stdin, and stops it with SIGTERM and then
SIGKILL. Every failure message carries the tail of what the peer printed (and of any log
files the driver registered), so a failing test shows what the peer saw.

Every started process is also recorded in a module-level registry; `kill_leftovers()`
(called by an autouse fixture in tests/conftest.py and at interpreter exit) SIGKILLs any
that a test forgot to stop, whatever happened to the event loop that started it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

_T = TypeVar("_T")
_PR_SET_PDEATHSIG = 1
_prctl: Callable[..., int] | None
try:
    # resolved once here: the preexec_fn below must not import or look anything up
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover - not Linux/glibc
    _prctl = None


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL if the test process dies (e.g. killed by a
    timeout), so no peer outlives a crashed pytest."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class PeerError(AssertionError):
    """A peer did not do what the test expected (timeout, early exit, error reply)."""


def in_ci() -> bool:
    """True under CI (env CI=true), where every peer must be installed: a missing one is
    a failure there, and a skip on a developer machine."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_binary(name: str) -> str:
    """Path of `name`; if missing, skip the test -- or fail it under CI (CI=true), where
    every peer is supposed to be installed."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name!r} is not installed (Debian: see DESIGN.md 'Real peers used in tests')"
        if in_ci():
            pytest.fail(f"{msg}; CI must install every peer")
        pytest.skip(msg)
    return path


@dataclass(slots=True)
class Line:
    seq: int
    stream: str  # "stdout" | "stderr"
    text: str
    at: float


@dataclass
class PeerProcess:
    name: str
    argv: list[str]
    proc: asyncio.subprocess.Process
    lines: list[Line] = field(default_factory=list)
    log_files: list[Path] = field(default_factory=list)
    on_stdout: Callable[[str], None] | None = None
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _readers: list[asyncio.Task[None]] = field(default_factory=list)
    _eof: int = 0
    max_lines: int = 50000
    long_lived: bool = False

    # -- lifecycle -------------------------------------------------------------------

    @classmethod
    async def start(
        cls,
        name: str,
        argv: Sequence[str],
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        stdin: bool = True,
        on_stdout: Callable[[str], None] | None = None,
        log_files: Sequence[Path] = (),
        long_lived: bool = False,
    ) -> PeerProcess:
        """Start `argv`. `long_lived=True` exempts it from the per-test leak check (for a
        process owned by a module/session-scoped fixture, which must stop it itself)."""
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=full_env,
            preexec_fn=_die_with_parent,
            start_new_session=True,  # a Ctrl-C in the terminal goes to pytest only
            limit=1 << 20,
        )
        self = cls(name=name, argv=list(argv), proc=proc, on_stdout=on_stdout,
                   long_lived=long_lived)
        self.log_files.extend(log_files)
        _registry[proc.pid] = self
        assert proc.stdout is not None and proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._read(proc.stdout, "stdout"), name=f"{name}-stdout"),
            asyncio.create_task(self._read(proc.stderr, "stderr"), name=f"{name}-stderr"),
        ]
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    async def stop(self, timeout: float = 5.0, *, sig: int = signal.SIGTERM) -> int:
        """Ask the process to exit (`sig`), SIGKILL it after `timeout`, reap it, and
        drain its output. Idempotent. Returns the exit code."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        await self._finish()
        return self.proc.returncode if self.proc.returncode is not None else -1

    async def wait_exit(self, timeout: float) -> int:
        """Wait for the process to exit on its own; PeerError (with logs) on timeout."""
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            raise PeerError(
                f"{self.name} did not exit within {timeout}s\n{self.describe()}"
            ) from None
        await self._finish()
        return self.proc.returncode if self.proc.returncode is not None else -1

    async def _finish(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        if self._readers:
            # Output is drained once the pipes reach EOF; a grandchild holding them open
            # must not hang us.
            _done, pending = await asyncio.wait(self._readers, timeout=2.0)
            for t in pending:
                t.cancel()
        _registry.pop(self.proc.pid, None)

    # -- output ----------------------------------------------------------------------

    async def _read(self, stream: asyncio.StreamReader, kind: str) -> None:
        try:
            while True:
                try:
                    raw = await stream.readline()
                except ValueError:  # a line longer than the limit: take what is there
                    raw = await stream.read(1 << 20)
                if not raw:
                    break
                text = raw.decode("utf-8", "replace").rstrip("\r\n")
                self.lines.append(Line(len(self.lines), kind, text, time.monotonic()))
                if len(self.lines) > self.max_lines:
                    # keep sequence numbers stable: drop the oldest text, not the entry
                    self.lines[len(self.lines) - self.max_lines - 1].text = ""
                if kind == "stdout" and self.on_stdout is not None:
                    self.on_stdout(text)
                async with self._changed:
                    self._changed.notify_all()
        finally:
            self._eof += 1
            async with self._changed:
                self._changed.notify_all()

    async def notify(self) -> None:
        """Wake waiters (drivers call it after updating state parsed from output)."""
        async with self._changed:
            self._changed.notify_all()

    async def wait_until(
        self,
        check: Callable[[], _T | None],
        timeout: float,
        what: str,
    ) -> _T:
        """Wait until `check()` returns something other than None (re-evaluated after
        every output line), or fail with PeerError carrying the logs after `timeout`
        or when the process exits first."""
        deadline = asyncio.get_running_loop().time() + timeout
        async with self._changed:
            while True:
                result = check()
                if result is not None:
                    return result
                if self._eof >= 2 and self.proc.returncode is not None:
                    raise PeerError(
                        f"{self.name} exited (code {self.proc.returncode}) while waiting "
                        f"for {what}\n{self.describe()}"
                    )
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    raise PeerError(
                        f"timeout after {timeout}s waiting for {what} from {self.name}\n"
                        f"{self.describe()}"
                    )
                # Wake up at least every 0.5 s, to notice the exit of a process whose
                # pipes are held open by something else.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))
                if self.proc.returncode is None and self._eof >= 2:
                    # both pipes closed: the process is exiting, let wait() reap it
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(self.proc.wait()), 0.2)

    async def wait_line(
        self,
        match: Callable[[str], bool] | str,
        timeout: float,
        *,
        start: int = 0,
        stream: str | None = "stdout",
    ) -> Line:
        """First line at or after index `start` (of `self.lines`) on `stream` (None: any)
        for which `match(text)` is true (a str means "contains"); PeerError on timeout."""
        pred = (lambda t: match in t) if isinstance(match, str) else match
        cursor = start

        def check() -> Line | None:
            nonlocal cursor
            while cursor < len(self.lines):
                line = self.lines[cursor]
                cursor += 1
                if (stream is None or line.stream == stream) and pred(line.text):
                    return line
            return None

        what = f"a line containing {match!r}" if isinstance(match, str) else "a matching line"
        return await self.wait_until(check, timeout, what)

    @property
    def mark(self) -> int:
        """Index of the next line: pass it as `start` to wait for output after now."""
        return len(self.lines)

    # -- input -----------------------------------------------------------------------

    def write_line(self, text: str) -> None:
        if self.proc.stdin is None or self.proc.stdin.is_closing():
            raise PeerError(f"{self.name}: stdin is closed\n{self.describe()}")
        self.proc.stdin.write(text.encode() + b"\n")

    async def send_line(self, text: str) -> None:
        self.write_line(text)
        assert self.proc.stdin is not None
        try:
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise PeerError(f"{self.name}: stdin broken ({exc})\n{self.describe()}") from exc

    # -- diagnostics -----------------------------------------------------------------

    def output(self, stream: str | None = None) -> str:
        return "\n".join(ln.text for ln in self.lines if stream is None or ln.stream == stream)

    def describe(self, tail: int = 60) -> str:
        parts = [f"--- {self.name} (pid {self.pid}, rc {self.proc.returncode}): {self.argv}"]
        shown = self.lines[-tail:]
        parts.extend(f"[{ln.stream}] {ln.text}" for ln in shown)
        for path in self.log_files:
            parts.append(f"--- tail of {path}")
            parts.append(tail_file(path, tail))
        return "\n".join(parts)


def tail_file(path: Path, lines: int = 60) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 200 * lines))
            data = fh.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(cannot read: {exc})"
    return "\n".join(data.splitlines()[-lines:])


_registry: dict[int, PeerProcess] = {}


def running_peers() -> list[PeerProcess]:
    return [p for p in _registry.values() if p.proc.returncode is None]


def kill_leftovers(*, include_long_lived: bool = False) -> list[str]:
    """SIGKILL every process started here and not stopped (except long-lived ones unless
    asked); return their descriptions. Synchronous and independent of any event loop
    (the test's loop may be closed already)."""
    killed = []
    for pid, peer in list(_registry.items()):
        if peer.long_lived and not include_long_lived:
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        else:
            killed.append(f"{peer.name} (pid {pid})")
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, 0)
        _registry.pop(pid, None)
    return killed


atexit.register(kill_leftovers, include_long_lived=True)
