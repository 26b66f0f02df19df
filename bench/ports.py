"""Free loopback ports for the processes the bench starts.

A port is picked at random below the kernel's ephemeral range (so an outgoing socket
of some other process cannot take it between our check and the peer's bind), checked
by binding it, and never handed out twice by this process.
"""

from __future__ import annotations

import random
import socket

# Below the Linux default ephemeral range (32768-60999), above the well-known ports.
# The test suite uses 20000-32000; the bench keeps apart so both can run at once.
_LOW, _HIGH = 12000, 19900
_handed_out: set[int] = set()
_rng = random.Random()


def _can_bind(port: int, kind: int, host: str) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(*, udp: bool = True, tcp: bool = True, span: int = 1, host: str = "127.0.0.1") -> int:
    """A port p such that p..p+span-1 are free for UDP and/or TCP on `host`.

    sipp binds its media port and the next ones (span 4); SIP listeners want UDP and TCP.
    """
    for _ in range(5000):
        base = _rng.randrange(_LOW, _HIGH - span)
        block = range(base, base + span)
        if any(p in _handed_out for p in block):
            continue
        if all(
            (not udp or _can_bind(p, socket.SOCK_DGRAM, host))
            and (not tcp or _can_bind(p, socket.SOCK_STREAM, host))
            for p in block
        ):
            _handed_out.update(block)
            return base
    raise RuntimeError(f"no free port block of {span} found on {host}")
