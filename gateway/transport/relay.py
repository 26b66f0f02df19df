"""Worker processes on one host: who listens where, and messages handed between them.

With `[node] workers = N`, N processes share the SIP ports (SO_REUSEPORT: the kernel
spreads flows over them) and each also listens on **its own ports**, which it writes
into the Via and Record-Route it inserts. Responses and in-dialog requests therefore
come back to the worker that holds the transaction and the call. A few do not — a peer
answering to the address it sent to instead of the Via (RFC 3581 rport with a NAT'd
phone, sipp) lands on whichever worker the kernel picks —, and that worker hands the
datagram to its owner in an *envelope*: the original source address and the message,
authenticated with the workers' shared secret, sent to the owner's own port.

    envelope = MAGIC | HMAC-SHA256(secret, body)[:16] | body
    body     = len(header) as 2 bytes | header (JSON: transport, remote, local) | message

A SIP message never starts with a NUL byte, so an envelope is told apart at once; one
without the right MAC is dropped (a forged source address must not get in). The same
envelope with `STATS` in place of `MAGIC` carries a worker's counters to worker 0,
which serves /metrics for all of them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass

from gateway.transport.addresses import Source

__all__ = ["MAGIC", "PLAN_ENV", "STATS", "WorkerPlan", "open_stats", "seal_stats", "unwrap", "wrap"]

MAGIC = b"\x00SGW"
STATS = b"\x00SGS"
# Not SIPGW_*: those are configuration overrides (SIPGW_SIP__T1=…).
PLAN_ENV = "_SIPGW_WORKER_PLAN"
_MAC = 16


@dataclass(frozen=True)
class WorkerPlan:
    """This worker's place among its siblings (made by the supervisor, read from env).

    ``ports[i][j]`` is worker i's own port for the j-th `sip.listen` entry.
    """

    index: int
    count: int
    secret: bytes
    ports: tuple[tuple[int, ...], ...]

    @property
    def own_ports(self) -> tuple[int, ...]:
        return self.ports[self.index]

    def siblings(self) -> dict[int, int]:
        """Another worker's own port → that worker's index."""
        return {
            port: worker
            for worker, ports in enumerate(self.ports)
            if worker != self.index
            for port in ports
        }

    def all_ports(self) -> frozenset[int]:
        return frozenset(port for ports in self.ports for port in ports)

    def to_env(self) -> str:
        return json.dumps(
            {
                "index": self.index,
                "count": self.count,
                "secret": self.secret.hex(),
                "ports": [list(p) for p in self.ports],
            }
        )

    @classmethod
    def from_env(cls, text: str | None = None) -> WorkerPlan | None:
        raw = os.environ.get(PLAN_ENV) if text is None else text
        if not raw:
            return None
        data = json.loads(raw)
        return cls(
            index=int(data["index"]),
            count=int(data["count"]),
            secret=bytes.fromhex(data["secret"]),
            ports=tuple(tuple(int(p) for p in ports) for ports in data["ports"]),
        )


def _seal(secret: bytes, magic: bytes, body: bytes) -> bytes:
    return magic + hmac.new(secret, body, hashlib.sha256).digest()[:_MAC] + body


def _open(secret: bytes, magic: bytes, packet: bytes) -> bytes | None:
    if not packet.startswith(magic) or len(packet) < len(magic) + _MAC + 2:
        return None
    mac, body = packet[len(magic) : len(magic) + _MAC], packet[len(magic) + _MAC :]
    if not hmac.compare_digest(mac, hmac.new(secret, body, hashlib.sha256).digest()[:_MAC]):
        return None
    return body


def seal_stats(secret: bytes, stats: dict[str, object]) -> bytes:
    return _seal(secret, STATS, json.dumps(stats, separators=(",", ":")).encode())


def open_stats(secret: bytes, packet: bytes) -> dict[str, object] | None:
    body = _open(secret, STATS, packet)
    if body is None:
        return None
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def wrap(secret: bytes, source: Source, message: bytes) -> bytes:
    header = json.dumps(
        [source.transport, list(source.remote), list(source.local)], separators=(",", ":")
    ).encode()
    return _seal(secret, MAGIC, len(header).to_bytes(2, "big") + header + message)


def unwrap(secret: bytes, packet: bytes) -> tuple[Source, bytes] | None:
    """The original source and message, or None when the envelope is not genuine."""
    body = _open(secret, MAGIC, packet)
    if body is None:
        return None
    size = int.from_bytes(body[:2], "big")
    try:
        transport, remote, local = json.loads(body[2 : 2 + size])
        source = Source(
            str(transport), (str(remote[0]), int(remote[1])), (str(local[0]), int(local[1]))
        )
    except (ValueError, TypeError, IndexError):
        return None
    return source, body[2 + size :]
