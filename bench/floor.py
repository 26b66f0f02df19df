"""The Python floor of the OPTIONS scenario: a bare uvloop responder (goal 2 of issue #12).

``python -m bench.floor --port P`` binds UDP 127.0.0.1:P and answers every OPTIONS from a
template: the status line ``SIP/2.0 200 OK``, the request's Via, From, To, Call-ID and
CSeq lines copied as they came (a To tag added: RFC 3261 §8.2.6.2), ``Content-Length: 0``.
Anything else (another method, a response, garbage) is ignored. This is what a Python
process cannot do with less work: one datagram in, one out, no parsing beyond finding
the lines to copy. sipgw's CPU per OPTIONS is held to ≤ 2x this (bench/goals.py).

The answer is what sipp's ``options_uac.xml`` wants (a 200 matched by Call-ID and sent
back to the socket the request came from: sipp ``-t un`` has one socket per request), so
sipp counts each request as a successful call, as it does with a proxy.

`FloorTarget` is the bench's side: the responder as an implementation under test in the
``options`` scenario only (label ``uvloop-floor``).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import signal
import socket
import sys
from importlib import metadata
from pathlib import Path
from typing import cast

from .ports import free_port
from .process import Managed
from .targets import LogSummary, Target, summarize, wait_sip_ready

# Header lines copied into the answer (RFC 3261 §8.2.6.2: Via, From, To, Call-ID, CSeq),
# full and compact forms (§7.3.3), lower-cased.
COPIED = frozenset({b"via", b"v", b"from", b"f", b"to", b"t", b"call-id", b"i", b"cseq"})
TO = frozenset({b"to", b"t"})
# The socket buffers sipgw asks for (bench/README.md: the same for every implementation).
SOCKET_BUFFER = 4 * 1024 * 1024


def answer(datagram: bytes, to_tag: bytes) -> bytes | None:
    """The 200 for an OPTIONS request, or None for anything else."""
    if not datagram.startswith(b"OPTIONS "):
        return None
    head = datagram.split(b"\r\n\r\n", 1)[0]
    out = [b"SIP/2.0 200 OK"]
    for line in head.split(b"\r\n")[1:]:
        name = line.split(b":", 1)[0].strip().lower()
        if name in COPIED:
            if name in TO and b";tag=" not in line:
                line += b";tag=" + to_tag
            out.append(line)
    out.append(b"Content-Length: 0\r\n\r\n")
    return b"\r\n".join(out)


class Responder(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.to_tag = secrets.token_hex(4).encode()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDPTransport is a DatagramTransport in all but its base class.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
        reply = answer(data, self.to_tag)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    sock.bind((host, port))
    return sock


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    transport, _ = await loop.create_datagram_endpoint(Responder, sock=bind(host, port))
    try:
        await stop.wait()
    finally:
        transport.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    import uvloop

    uvloop.run(serve(args.host, args.port))
    return 0


# -- the bench's side ---------------------------------------------------------------------


class FloorTarget(Target):
    """The responder under test: one process, one socket, OPTIONS only."""

    impl = "uvloop-floor"
    workers = 1
    notes = (
        "python -m bench.floor: a uvloop DatagramProtocol answering each OPTIONS from a "
        "template (Via, From, To, Call-ID, CSeq copied, To tag added); the Python floor"
    )
    scenarios = frozenset({"options"})
    # Its figures hardly vary (a few µs per datagram): one search and no sustained check
    # keep the 20-minute budget for the implementations under study.
    max_repetitions = 1
    sustained_check = False
    start_s = 1.0  # measured ~0.3 s to answer, then the 0.5 s idle sample
    stop_grace_s = 5.0
    expected_stop_s = 0.3
    expected_idle_stop_s = 0.3

    def start(self, workdir: Path) -> None:
        self.workdir = workdir
        self.sip_port = free_port()
        self.uac_port = free_port()
        argv = [sys.executable, "-m", "bench.floor", "--port", str(self.sip_port)]
        repo = Path(__file__).resolve().parents[1]
        self.proc = Managed(self.label, argv, cwd=repo, log_path=workdir / "floor.log")
        wait_sip_ready(self, timeout=10)

    def log_summary(self) -> LogSummary:
        # It logs nothing; a traceback on its output is an error.
        text = self.proc.log_text() if self.proc else ""
        return summarize([("error" if "Traceback" in line else "other", line[:200])
                          for line in text.splitlines() if line.strip()])  # fmt: skip

    def version(self) -> str:
        try:
            return f"uvloop {metadata.version('uvloop')}"
        except metadata.PackageNotFoundError:
            return "uvloop not installed"


if __name__ == "__main__":
    raise SystemExit(main())
