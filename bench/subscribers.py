"""A WebSocket subscriber process of the event scenarios: ``python -m bench.subscribers``.

It opens N subscriptions to the gateway's ``/v1/events`` (the bearer token in the
environment, ``SIPGW_BENCH_TOKEN``, never on the command line), at most C handshakes at a
time, each waiting for its ``sipgw.ready``; then writes a status file (how many are live,
why the others failed) and records every event that arrives until SIGTERM.

The arrival time is ``time.time_ns()`` (CLOCK_REALTIME, the clock of sipp's message
trace) taken once per read, as soon as the bytes reach this process and before any
parsing; events are parsed and written by a flusher every 100 ms, so the harness can
follow the count while a step runs. One line per event, tab-separated::

    subscriber  arrival_ns  type  sip_call_id  seq  occurred_at  calling_number  lookup_status

Control messages (``sipgw.heartbeat``, ``sipgw.overflow``, …) are only counted, in the
final status. It behaves as a client must (``sipgw watch`` does the same):

- a subscription the gateway cuts off for reading too slowly (close code 4008, reason
  ``overflow since=<seq>``) is resumed with ``since=<seq>``: the events replayed then
  arrive late, they are not lost;
- a handshake refused with 503 (``Retry-After``) is tried again, up to 3 times; every
  refusal is counted.

The client is a minimal one on raw asyncio transports (RFC 6455 §4.1 handshake, frames
parsed by hand, the server's pings answered, a close echoed), a few µs per message, so
one process keeps up with 10 000 subscriptions and leaves the other core to the
gateway. (The ``websockets`` library took ~40 µs per message: with 10 000 subscribers
its processes competed with the gateway and capped the fan-out's p99.) It offers
permessage-deflate as a default client does (off with ``--compression none``) and
fails the handshake, counted, should a server accept it: it cannot inflate. It sends
no keep-alive pings of its own.

Many connections need many file descriptors: the soft RLIMIT_NOFILE is raised to the hard
limit first. The harness starts several of these processes for thousands of
subscribers (each holds a share) and stops them with SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import resource
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

TOKEN_ENV = "SIPGW_BENCH_TOKEN"
SUBPROTOCOL = "sipgw.json.v1"
FLUSH_S = 0.1
READY_TIMEOUT_S = 30.0
CLOSE_OVERFLOW = 4008  # the gateway cut a subscription off: resume with since
MAX_RESUMES = 1000  # per process: a bound, not an expectation
RETRIES = 3  # of a handshake refused with 503
MAX_RETRY_WAIT_S = 5.0
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3


def raise_nofile(needed: int | None = None) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (or to `needed` if lower); the
    limits after. Children inherit them (the gateway the harness starts, these workers)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if needed is None or hard == resource.RLIM_INFINITY else min(hard, needed)
    if needed is None or want > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def event_line(subscriber: int, arrival_ns: int, message: dict[str, Any]) -> str:
    """One output line for an event (tabs and newlines in values would break it: none
    of these fields may hold them, but they are replaced to be safe)."""
    calling = message.get("calling") or {}
    lookup = message.get("lookup") or {}
    cells = (
        str(subscriber),
        str(arrival_ns),
        str(message.get("type", "")),
        str(message.get("sip_call_id", "")),
        str(message.get("seq", "")),
        str(message.get("occurred_at", "")),
        str(calling.get("number_e164") or calling.get("number_raw") or ""),
        str(lookup.get("status", "")),
    )
    return "\t".join(c.replace("\t", " ").replace("\n", " ") for c in cells) + "\n"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically: the harness never reads half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


class Recorder:
    """Arrivals kept raw until the flusher parses and writes them."""

    def __init__(self, out: TextIO, first_index: int) -> None:
        self.out = out
        self.first_index = first_index
        self.pending: list[tuple[int, int, str | bytes]] = []
        self.controls: Counter[str] = Counter()
        self.events = 0
        self.bad = 0

    def add(self, subscriber: int, message: str | bytes, arrival_ns: int | None = None) -> None:
        stamp = time.time_ns() if arrival_ns is None else arrival_ns
        self.pending.append((subscriber, stamp, message))

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        for subscriber, arrival, raw in pending:
            try:
                message = json.loads(raw)
                kind = str(message.get("type", ""))
            except (ValueError, AttributeError):
                self.bad += 1
                continue
            if kind.startswith("sipgw."):
                self.controls[kind] += 1
                continue
            self.events += 1
            self.out.write(event_line(self.first_index + subscriber, arrival, message))
        self.out.flush()


def retry_delay(status: int, retry_after: str | None) -> float | None:
    """Seconds to wait before trying a refused handshake again, as a client should:
    503 (the gateway could not check the token in time) after its Retry-After (at most
    5 s); None for anything else (401, 403, 429 are answers, not hiccups)."""
    if status != 503:
        return None
    try:
        return min(MAX_RETRY_WAIT_S, max(0.1, float(retry_after or 1)))
    except ValueError:
        return 1.0


class ClientError(Exception):
    """A handshake refused or broken; `counted` names it in the status, `retry_s` says
    when to try again (None: not at all)."""

    def __init__(self, counted: str, retry_s: float | None = None) -> None:
        super().__init__(counted)
        self.counted = counted
        self.retry_s = retry_s


def handshake_request(url: str, token: str, key: str, deflate: bool) -> bytes:
    """The client's opening handshake (RFC 6455 §4.1), with our subprotocol and token."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        f"Sec-WebSocket-Protocol: {SUBPROTOCOL}",
        f"Authorization: Bearer {token}",
    ]
    if deflate:  # what a default client offers (the server may decline)
        lines.append("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def parse_response(head: bytes, key: str) -> str:
    """The server's handshake answer: its Sec-WebSocket-Extensions if it accepted (101
    with the right accept key), else ClientError with the status (503: its Retry-After)."""
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        raise ClientError("bad handshake response") from None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if status != 101:
        raise ClientError(f"HTTP {status}", retry_delay(status, headers.get("retry-after")))
    if headers.get("sec-websocket-accept") != accept_key(key):
        raise ClientError("bad Sec-WebSocket-Accept")
    extensions = headers.get("sec-websocket-extensions", "")
    if extensions:
        # The gateway declines compression; frames with RSV1 could not be read here.
        raise ClientError(f"extension accepted, not supported by this client: {extensions}")
    return extensions


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame (FIN set, masked as §5.3 requires; payloads here are small)."""
    mask = os.urandom(4)
    n = len(payload)
    head = (
        bytes([0x80 | opcode, 0x80 | n])
        if n < 126
        else bytes([0x80 | opcode, 0xFE]) + n.to_bytes(2, "big")
    )
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big") if n else 0
    masked = (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big") if n else b""
    return head + mask + masked


def parse_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Complete server frames at the start of `buf` (removed from it): (opcode, payload).
    Server frames are never masked (§5.1); the gateway does not fragment its messages."""
    frames = []
    pos, end = 0, len(buf)
    while end - pos >= 2:
        opcode, n = buf[pos] & 0x0F, buf[pos + 1] & 0x7F
        head = 2
        if n == 126:
            if end - pos < 4:
                break
            n, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
        elif n == 127:
            if end - pos < 10:
                break
            n, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
        if end - pos < head + n:
            break
        frames.append((opcode, bytes(buf[pos + head : pos + head + n])))
        pos += head + n
    del buf[:pos]
    return frames


class Subscription(asyncio.Protocol):
    """One WebSocket subscription on a raw transport: the handshake, then frames parsed by
    hand. An arrival is stamped once per read, before any parsing."""

    __slots__ = ("buf", "closed", "index", "key", "opened", "session", "transport")

    def __init__(self, session: Session, index: int, key: str) -> None:
        self.session = session
        self.index = index
        self.key = key
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] | None = None  # until sipgw.ready
        self.closed: asyncio.Future[tuple[int | None, str]] = (
            asyncio.get_running_loop().create_future()
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        buf = self.buf
        buf += data
        if self.opened is not None and not self.opened.done() and self.key:
            head, sep, _ = bytes(buf).partition(b"\r\n\r\n")
            if not sep:
                return
            del buf[: len(head) + 4]
            try:
                parse_response(head, self.key)
            except ClientError as err:
                self.opened.set_exception(err)
                return
            self.key = ""
        for opcode, payload in parse_frames(buf):
            if opcode in (1, 2):
                if self.opened is not None and not self.opened.done():
                    self._first(payload)
                else:
                    self.session.recorder.add(self.index, payload, now)
            elif opcode == 9:  # ping: pong with its payload (§5.5.3)
                self._write(client_frame(10, payload))
            elif opcode == 8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                reason = payload[2:].decode("utf-8", "replace")
                self._write(client_frame(8, payload[:2]))  # the echo (§5.5.1)
                self._end(code, reason)

    def _first(self, payload: bytes) -> None:
        assert self.opened is not None
        try:
            kind = json.loads(payload).get("type")
        except (ValueError, AttributeError):
            kind = "unparsable"
        if kind == "sipgw.ready":
            self.opened.set_result(None)
        else:
            self.opened.set_exception(ClientError(f"first message {kind}"))

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _end(self, code: int | None, reason: str) -> None:
        if not self.closed.done():
            self.closed.set_result((code, reason))
        if self.opened is not None and not self.opened.done():
            self.opened.set_exception(ClientError(f"before ready: closed {code}"))
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(None, "")


async def _open(session: Session, index: int, url: str) -> Subscription | None:
    """One subscription, live (its sipgw.ready received); None if it failed. A 503 is
    tried again after its Retry-After, up to RETRIES times; every refusal is counted."""
    for attempt in range(RETRIES + 1):
        try:
            return await _attempt(session, index, url)
        except ClientError as err:
            session.errors[err.counted] += 1
            if err.retry_s is None or attempt == RETRIES:
                return None
            session.errors["retried"] += 1
            await asyncio.sleep(err.retry_s)
        except (OSError, TimeoutError) as err:
            session.errors[type(err).__name__] += 1
            return None
    return None


async def _attempt(session: Session, index: int, url: str) -> Subscription:
    parts = urlsplit(url)
    key = base64.b64encode(os.urandom(16)).decode()
    loop = asyncio.get_running_loop()
    sub = Subscription(session, index, key)
    sub.opened = loop.create_future()
    transport, _ = await loop.create_connection(
        lambda: sub, parts.hostname or "127.0.0.1", parts.port or 80
    )
    transport.write(handshake_request(url, session.token, key, session.deflate))
    try:
        await asyncio.wait_for(asyncio.shield(sub.opened), READY_TIMEOUT_S)
    except BaseException:
        transport.abort()
        raise
    return sub


def resume_cursor(code: int | None, reason: str) -> str | None:
    """The ``since`` to resume from after the gateway cut a subscription off for reading
    too slowly (close code 4008, reason ``overflow since=<seq>``); None: do not resume."""
    prefix = "overflow since="
    if code != CLOSE_OVERFLOW or not reason.startswith(prefix):
        return None
    seq = reason[len(prefix) :].strip()
    return seq if seq and seq != "None" else None


def with_since(url: str, since: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}since={since}"


@dataclass
class Session:
    """What every subscription of this process shares."""

    url: str
    token: str
    deflate: bool
    recorder: Recorder
    errors: Counter[str] = field(default_factory=Counter)
    closes: Counter[str] = field(default_factory=Counter)
    resumes: int = 0
    live: dict[int, Subscription] = field(default_factory=dict)  # subscriber -> its socket


async def _follow(index: int, sub: Subscription | None, session: Session) -> None:
    """Wait for each end of the subscription; after a 4008 cut-off, resume with ``since``
    as a client must (``sipgw watch`` does the same), so the events replayed count, late,
    not missing."""
    while sub is not None:
        session.live[index] = sub
        code, reason = await sub.closed
        session.closes[f"closed {code or 'abnormally'}"] += 1
        since = resume_cursor(code, reason)
        if since is None or session.resumes >= MAX_RESUMES:
            return
        session.resumes += 1
        sub = await _open(session, index, with_since(session.url, since))


async def _flusher(recorder: Recorder) -> None:
    while True:
        await asyncio.sleep(FLUSH_S)
        recorder.flush()


async def run(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    with args.out.open("w", encoding="utf-8") as out:
        session = Session(
            url=args.url,
            token=os.environ.get(TOKEN_ENV, ""),
            deflate=args.compression == "deflate",
            recorder=Recorder(out, args.first_index),
        )
        status = await _connect_all(session, args.connections, args.concurrency)
        followers = [
            asyncio.create_task(_follow(i, sub, session)) for i, sub in list(session.live.items())
        ]
        flusher = asyncio.create_task(_flusher(session.recorder))
        write_json(args.status, status)
        await stop.wait()
        for task in [*followers, flusher]:
            task.cancel()
        await asyncio.gather(*followers, flusher, return_exceptions=True)
        session.recorder.flush()
    for sub in session.live.values():
        if sub.transport is not None:
            sub.transport.abort()  # no close handshake: 10 000 of them would take a while
    status.update(
        events=session.recorder.events,
        controls=dict(session.recorder.controls),
        closes=dict(session.closes),
        resumes=session.resumes,
        errors=dict(session.errors),
        unparsable=session.recorder.bad,
        done=True,
    )
    write_json(args.status, status)
    return 0


async def _connect_all(session: Session, connections: int, concurrency: int) -> dict[str, Any]:
    """Open every subscription, `concurrency` handshakes at a time; the status."""
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int) -> Subscription | None:
        async with gate:
            return await _open(session, index, session.url)

    t0 = time.monotonic()
    opened = await asyncio.gather(*(one(i) for i in range(connections)))
    session.live = {i: sub for i, sub in enumerate(opened) if sub is not None}
    return {
        "pid": os.getpid(),
        "connections": connections,
        "connected": len(session.live),
        "failed": connections - len(session.live),
        "errors": dict(session.errors),
        "connect_s": round(time.monotonic() - t0, 3),
        "extensions": [""] if session.live else [],  # any accepted one fails the handshake
        "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.subscribers", description=__doc__)
    p.add_argument("--url", required=True, help="ws://host:port/v1/events?…")
    p.add_argument("--connections", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=50, help="handshakes in flight")
    p.add_argument(
        "--compression",
        choices=("deflate", "none"),
        default="deflate",
        help="offer permessage-deflate (the websockets default) or not",
    )
    p.add_argument("--first-index", type=int, default=0, help="number of the first subscriber")
    p.add_argument("--out", type=Path, required=True, help="the arrivals, one line each")
    p.add_argument("--status", type=Path, required=True, help="JSON status file")
    args = p.parse_args(argv)
    raise_nofile()
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # as `sipgw run` does
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
