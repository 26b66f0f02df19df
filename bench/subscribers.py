"""A WebSocket subscriber process of the event scenarios: ``python -m bench.subscribers``.

It opens N subscriptions to the gateway's ``/v1/events`` (the bearer token in the
environment, ``SIPGW_BENCH_TOKEN``, never on the command line), at most C handshakes at a
time, each waiting for its ``sipgw.ready``; then writes a status file (how many are live,
why the others failed) and records every event that arrives until SIGTERM.

The arrival time is ``time.time_ns()`` (CLOCK_REALTIME, the clock of sipp's message
trace) taken as soon as the client library hands the message over, before it is
parsed; events are parsed and written by a flusher every 100 ms, so the harness can
follow the count while a step runs. One line per event, tab-separated::

    subscriber  arrival_ns  type  sip_call_id  seq  occurred_at  calling_number  lookup_status

Control messages (``sipgw.heartbeat``, ``sipgw.overflow``, …) are only counted, in the
final status. It behaves as a client must (``sipgw watch`` does the same):

- a subscription the gateway cuts off for reading too slowly (close code 4008, reason
  ``overflow since=<seq>``) is resumed with ``since=<seq>``: the events replayed then
  arrive late, they are not lost;
- a handshake refused with 503 (``Retry-After``) is tried again, up to 3 times; every
  refusal is counted.

The client is the ``websockets`` library with its defaults, as ``sipgw watch`` uses it
(permessage-deflate offered, so the server may compress; off with ``--compression
none``), except that it sends no keep-alive pings of its own: the server's pings are
still answered.

Many connections need many file descriptors: the soft RLIMIT_NOFILE is raised to the hard
limit first. The harness starts several of these processes for thousands of
subscribers (each holds a share) and stops them with SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

TOKEN_ENV = "SIPGW_BENCH_TOKEN"
SUBPROTOCOL = "sipgw.json.v1"
FLUSH_S = 0.1
READY_TIMEOUT_S = 30.0
CLOSE_OVERFLOW = 4008  # the gateway cut a subscription off: resume with since
MAX_RESUMES = 1000  # per process: a bound, not an expectation
RETRIES = 3  # of a handshake refused with 503
MAX_RETRY_WAIT_S = 5.0


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

    def add(self, subscriber: int, message: str | bytes) -> None:
        self.pending.append((subscriber, time.time_ns(), message))

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


async def _open(url: str, token: str, deflate: bool, errors: Counter[str]) -> Any:
    """One subscription, live (its sipgw.ready received); None if it failed. A 503 is
    tried again after its Retry-After, up to RETRIES times; every refusal is counted."""
    for attempt in range(RETRIES + 1):
        ws, wait = await _attempt(url, token, deflate, errors)
        if ws is not None or wait is None or attempt == RETRIES:
            return ws
        errors["retried"] += 1
        await asyncio.sleep(wait)
    return None


async def _attempt(
    url: str, token: str, deflate: bool, errors: Counter[str]
) -> tuple[Any, float | None]:
    """One handshake: (the live subscription, None) or (None, a retry delay or None)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus, WebSocketException
    from websockets.typing import Subprotocol

    try:
        ws = await connect(
            url,
            subprotocols=[Subprotocol(SUBPROTOCOL)],
            additional_headers={"Authorization": f"Bearer {token}"},
            ping_interval=None,
            compression="deflate" if deflate else None,
            open_timeout=READY_TIMEOUT_S,
            close_timeout=1,
        )
    except InvalidStatus as err:
        status = err.response.status_code
        errors[f"HTTP {status}"] += 1
        return None, retry_delay(status, err.response.headers.get("Retry-After"))
    except (OSError, TimeoutError, WebSocketException) as err:
        errors[type(err).__name__] += 1
        return None, None
    try:
        first = json.loads(await asyncio.wait_for(ws.recv(), READY_TIMEOUT_S))
    except (OSError, TimeoutError, ValueError, WebSocketException) as err:
        errors[f"before ready: {type(err).__name__}"] += 1
        ws.transport.abort()
        return None, None
    if first.get("type") != "sipgw.ready":
        errors[f"first message {first.get('type')}"] += 1
        ws.transport.abort()
        return None, None
    return ws, None


def _extensions(ws: Any) -> str:
    """The extensions the server accepted (permessage-deflate or none)."""
    return str(ws.response.headers.get("Sec-WebSocket-Extensions", ""))


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
    live: dict[int, Any] = field(default_factory=dict)  # subscriber -> its current socket


async def _read(subscriber: int, ws: Any, session: Session) -> None:
    """Record what arrives; after a 4008 cut-off, resume with ``since`` as a client must
    (``sipgw watch`` does the same), so the events replayed count, late, not missing."""
    from websockets.exceptions import ConnectionClosed

    while ws is not None:
        session.live[subscriber] = ws
        try:
            async for message in ws:
                session.recorder.add(subscriber, message)
            code, reason = ws.close_code, ws.close_reason or ""
        except ConnectionClosed as err:
            code, reason = (err.rcvd.code, err.rcvd.reason) if err.rcvd else (None, "")
        session.closes[f"closed {code or 'abnormally'}"] += 1
        since = resume_cursor(code, reason)
        if since is None or session.resumes >= MAX_RESUMES:
            return
        session.resumes += 1
        ws = await _open(with_since(session.url, since), session.token, session.deflate,
                         session.errors)  # fmt: skip


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
        readers = [
            asyncio.create_task(_read(i, ws, session)) for i, ws in list(session.live.items())
        ]
        flusher = asyncio.create_task(_flusher(session.recorder))
        write_json(args.status, status)
        await stop.wait()
        for task in [*readers, flusher]:
            task.cancel()
        await asyncio.gather(*readers, flusher, return_exceptions=True)
        session.recorder.flush()
    for ws in session.live.values():
        ws.transport.abort()  # no close handshake: 10 000 of them would take a while
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

    async def one() -> Any:
        async with gate:
            return await _open(session.url, session.token, session.deflate, session.errors)

    t0 = time.monotonic()
    opened = await asyncio.gather(*(one() for _ in range(connections)))
    session.live = {i: ws for i, ws in enumerate(opened) if ws is not None}
    return {
        "pid": os.getpid(),
        "connections": connections,
        "connected": len(session.live),
        "failed": connections - len(session.live),
        "errors": dict(session.errors),
        "connect_s": round(time.monotonic() - t0, 3),
        "extensions": sorted({_extensions(ws) for ws in session.live.values()}),
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
