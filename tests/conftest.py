"""Fixtures of general use for every test suite (unit, integration, peers, e2e)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest

from tests.peers import ports
from tests.peers.process import in_ci, kill_leftovers


@pytest.fixture
def free_udp_port() -> Callable[[], int]:
    """Call it to get a free loopback UDP port (not handed out again soon)."""
    return ports.free_udp_port


@pytest.fixture
def free_tcp_port() -> Callable[[], int]:
    """Call it to get a free loopback TCP port (not handed out again soon)."""
    return ports.free_tcp_port


@pytest.fixture
def free_port() -> Callable[..., int]:
    """Call it to get a loopback port free for both UDP and TCP (a SIP listener)."""
    return ports.free_port


@pytest.fixture(autouse=True)
def _no_leftover_peers() -> Iterator[None]:
    """Every peer process a test started must be stopped by it; kill (and report) any
    that is still running afterwards, so one test's leak never breaks the next ones."""
    yield
    leaked = kill_leftovers()
    if leaked:
        pytest.fail(f"test left peer processes running (killed now): {', '.join(leaked)}")


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A throw-away redis-server on 127.0.0.1 (free port, no persistence) for the whole
    session; yields its URL, e.g. redis://127.0.0.1:23456/0."""
    binary = shutil.which("redis-server")
    if binary is None:
        if in_ci():
            pytest.fail("redis-server is not installed; CI must install it")
        pytest.skip("redis-server is not installed")
    port = ports.free_tcp_port()
    workdir = tempfile.TemporaryDirectory(prefix="redis-")
    proc = subprocess.Popen(
        [
            binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
            "--appendonly", "no", "--dir", workdir.name, "--protected-mode", "yes",
            "--loglevel", "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while not _redis_ping(port):
            if proc.poll() is not None:
                out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                pytest.fail(f"redis-server exited with {proc.returncode}:\n{out}")
            if time.monotonic() > deadline:
                pytest.fail("redis-server did not answer PING within 10 s")
            time.sleep(0.02)  # no event to await from a foreign process: bounded polling
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
        workdir.cleanup()
