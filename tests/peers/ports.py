"""Free loopback ports for test peers.

Ports are picked at random from a range below the kernel's ephemeral range (so an outgoing
connection of some other test cannot grab them between "checked free" and "bound by the
peer"), checked by binding them, and never handed out twice by this process.
"""

from __future__ import annotations

import random
import socket
import threading
from collections import OrderedDict

# Below the Linux default ephemeral range (32768-60999) and above the well-known ports.
_LOW, _HIGH = 20000, 32000

_lock = threading.Lock()
# Recently handed-out ports are not handed out again; the oldest are forgotten after a while
# so a long session does not run out.
_handed_out: OrderedDict[int, None] = OrderedDict()
_REMEMBER = 3000
_rng = random.Random()


def _take(block: range) -> None:
    for p in block:
        _handed_out[p] = None
    while len(_handed_out) > _REMEMBER:
        _handed_out.popitem(last=False)


def _can_bind(port: int, kind: int, host: str) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as s:
        if kind == socket.SOCK_STREAM:
            # Same option the peers use for their listeners: a socket in TIME_WAIT on this
            # port must not make us think it is taken, nor the reverse.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _is_free(port: int, *, udp: bool, tcp: bool, host: str) -> bool:
    if port in _handed_out or not _LOW <= port < _HIGH:
        return False
    if udp and not _can_bind(port, socket.SOCK_DGRAM, host):
        return False
    return not (tcp and not _can_bind(port, socket.SOCK_STREAM, host))


def free_ports(
    count: int = 1,
    *,
    udp: bool = True,
    tcp: bool = True,
    span: int = 1,
    host: str = "127.0.0.1",
) -> list[int]:
    """Return `count` free ports; each port p has p..p+span-1 free as well (baresip binds
    p+1 too, so use span=2 for it, and keep the next instance further away)."""
    result: list[int] = []
    with _lock:
        for _ in range(20000):
            if len(result) == count:
                return result
            base = _rng.randrange(_LOW, _HIGH - span)
            block = range(base, base + span)
            if all(_is_free(p, udp=udp, tcp=tcp, host=host) for p in block):
                _take(block)
                result.append(base)
    raise RuntimeError(f"no {count} free port(s) with span {span} found on {host}")


def free_port(*, udp: bool = True, tcp: bool = True, span: int = 1, host: str = "127.0.0.1") -> int:
    """One port free for UDP and TCP (a SIP listener often takes both)."""
    return free_ports(1, udp=udp, tcp=tcp, span=span, host=host)[0]


def free_udp_port(host: str = "127.0.0.1") -> int:
    return free_port(udp=True, tcp=False, host=host)


def free_tcp_port(host: str = "127.0.0.1") -> int:
    return free_port(udp=False, tcp=True, host=host)


def free_rtp_range(size: int = 20, host: str = "127.0.0.1") -> tuple[int, int]:
    """An even-aligned UDP port range [start, start+size) that is free now, for RTP/RTCP."""
    with _lock:
        for _ in range(20000):
            base = _rng.randrange(_LOW, _HIGH - size) & ~1
            block = range(base, base + size)
            if all(_is_free(p, udp=True, tcp=False, host=host) for p in block):
                _take(block)
                return base, base + size
    raise RuntimeError(f"no free RTP range of {size} ports found on {host}")
