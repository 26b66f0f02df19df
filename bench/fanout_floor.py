"""The floor of the fan-out scenario: what writing one frame to N loopback TCP sockets
costs a bare uvloop process (goal 5 of issue #12 puts the gateway's CPU per subscriber
per event at ≤ 5 µs).

    .venv/bin/python -m bench.fanout_floor --connections 10000 --frame-bytes 512

A uvloop server accepts N connections made by a child process (which only reads), then
writes the same bytes object to every transport, `--rounds` times, timing each round
in the server's own CPU time. One ``transport.write`` per socket is the least any
Python server can do per subscriber: Linux has no call that sends to many sockets. On
loopback the send also runs the receiving socket's TCP input in the sender's system
call, which a real network would move to the receiving host; so this floor is higher
here than on a network, and sipgw is read against it, side by side (bench/goals.py).

Prints one JSON object: the median and the minimum µs of CPU per socket per round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import selectors
import socket
import statistics
import sys
import time
from typing import cast

import uvloop

from .subscribers import raise_nofile


def _read_all(port: int, count: int, expected: int) -> None:
    """The child: `count` connections that read until `expected` bytes came on each."""
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    selector = selectors.DefaultSelector()
    left = {}
    for sock in sockets:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        left[sock] = expected
    deadline = time.monotonic() + 120
    while left and time.monotonic() < deadline:
        for key, _ in selector.select(1.0):
            sock = cast(socket.socket, key.fileobj)
            data = sock.recv(1 << 16)
            if sock in left:
                left[sock] -= len(data)
                if left[sock] <= 0 or not data:
                    del left[sock]
    os._exit(0 if not left else 1)


async def measure(connections: int, frame_bytes: int, rounds: int) -> list[float]:
    """µs of this process's CPU per socket, one figure per round."""
    loop = asyncio.get_running_loop()
    transports: list[asyncio.Transport] = []
    everyone = loop.create_future()

    class Server(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transports.append(cast(asyncio.Transport, transport))
            if len(transports) == connections and not everyone.done():
                everyone.set_result(None)

    server = await loop.create_server(Server, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    child = os.fork()
    if child == 0:
        _read_all(port, connections, frame_bytes * rounds)
    try:
        await asyncio.wait_for(everyone, 120)
        frame = b"x" * frame_bytes
        figures = []
        for _ in range(rounds):
            started = time.process_time()
            for transport in transports:
                transport.write(frame)
            figures.append((time.process_time() - started) / connections * 1e6)
            await asyncio.sleep(0.2)  # the reader drains before the next round
        return figures
    finally:
        _, status = await loop.run_in_executor(None, os.waitpid, child, 0)
        for transport in transports:
            transport.close()
        server.close()
        if status:
            print(f"fanout_floor: the reader did not get everything ({status})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout_floor", description=__doc__)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--frame-bytes", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args(argv)
    raise_nofile(2 * args.connections + 100)
    figures = uvloop.run(measure(args.connections, args.frame_bytes, args.rounds))
    print(json.dumps({
        "connections": args.connections,
        "frame_bytes": args.frame_bytes,
        "rounds": len(figures),
        "cpu_us_per_socket_median": round(statistics.median(figures), 2),
        "cpu_us_per_socket_min": round(min(figures), 2),
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
