"""What an attack test checks: bytes that reached a place they must never reach, and
bytes that came back to the attacker.

- ``Canary``: a TCP and a UDP listener on one loopback port that record every byte
  they receive. An attack aimed at it passes only if the canary stays silent.
- ``Attacker``: a UDP socket that counts the bytes it sends and receives, for the
  amplification ratio.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field

from tests.peers.ports import free_port


@dataclass
class Canary:
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    received: list[tuple[str, bytes]] = field(default_factory=list)
    _tcp: socket.socket | None = None
    _udp: socket.socket | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def __aenter__(self) -> Canary:
        loop = asyncio.get_running_loop()
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind((self.host, self.port))
        self._udp.setblocking(False)
        self._tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._tcp.bind((self.host, self.port))
        self._tcp.listen(16)
        self._tcp.setblocking(False)
        self._tasks = [loop.create_task(self._udp_loop()), loop.create_task(self._tcp_loop())]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sock in (self._udp, self._tcp):
            if sock is not None:
                sock.close()

    @property
    def bytes(self) -> int:
        return sum(len(data) for _, data in self.received)

    @property
    def connections(self) -> int:
        return sum(1 for kind, _ in self.received if kind == "tcp-accept")

    def uri_host(self) -> str:
        return f"{self.host}:{self.port}"

    async def _udp_loop(self) -> None:
        assert self._udp is not None
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self._udp, 65535)
            self.received.append(("udp", data))

    async def _tcp_loop(self) -> None:
        assert self._tcp is not None
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self._tcp)
            # An accepted connection is a reach into the service, even without a byte.
            self.received.append(("tcp-accept", b""))
            self._tasks.append(loop.create_task(self._read(conn)))

    async def _read(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        try:
            while data := await loop.sock_recv(conn, 65535):
                self.received.append(("tcp", data))
        finally:
            conn.close()


class Attacker:
    """A UDP socket on a loopback address that counts what it sends and gets back."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.setblocking(False)
        self.sent = 0
        self.received = 0
        self.replies: list[bytes] = []

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()
        return host, port

    def send(self, data: bytes, to: tuple[str, int]) -> None:
        self.sent += len(data)
        self.sock.sendto(data, to)

    async def recv(self, timeout: float) -> bytes | None:
        """The next datagram, or None if none came within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        try:
            data = await asyncio.wait_for(loop.sock_recv(self.sock, 65535), timeout)
        except TimeoutError:
            return None
        self.received += len(data)
        self.replies.append(data)
        return data

    async def drain(self, quiet: float) -> list[bytes]:
        """Everything that arrives until ``quiet`` seconds pass without a datagram."""
        got: list[bytes] = []
        end = time.monotonic() + 60
        while time.monotonic() < end:
            data = await self.recv(quiet)
            if data is None:
                break
            got.append(data)
        return got

    def close(self) -> None:
        self.sock.close()
