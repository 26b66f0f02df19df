"""The SIP hot path in one process, without sockets: what a proxied call costs the
proxy and the call tracker, repeatable to a few per cent on a noisy machine.

    .venv/bin/python -m bench.hotpath                 # 20 000 calls, µs per call
    .venv/bin/python -m bench.hotpath --profile out   # cProfile stats to `out`

Each call is the bench's proxied call (bench/scenarios/uac.xml through the proxy to
uas.xml): INVITE, 100, 180, 200, ACK, BYE, 200, the same octets sipp sends, fed to
`Proxy.receive` with a transport that only keeps what it is given. The clock moves
1 ms per call and the timers fire as they fall due, as in the gateway, so transaction
state is kept and freed as at 1 000 calls/s. Only `Proxy.receive` and the timers are
timed (process CPU); building the peers' messages is not. The sockets (about 9 µs per
datagram received and answered, bench/floor.py) and the event bus are not included:
`python -m bench.profile` measures the whole gateway.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from gateway import native
from gateway.calls.events import CallEvent
from gateway.calls.tracker import CallTracker
from gateway.config import Settings, load_settings
from gateway.gc_pauses import YOUNG_INTERVAL, tune_gc
from gateway.proxy.core import Proxy
from gateway.proxy.location import Binding
from gateway.proxy.observe import Observed
from gateway.sip.message import Request, Response
from gateway.stats import Counters
from gateway.transport.addresses import Listen, Source, Target

from .sipgw import render_config
from .targets import DID, DOMAIN, EXTENSION

PROXY = ("127.0.0.1", 5060)
UAS = ("127.0.0.1", 6000)
UAC_HOST = "127.0.0.1"
CALLER = "+31612345678"
SDP = (
    "v=0\r\no=sipp 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\nm=audio 6004 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


class Recorder:
    """The transport: keeps the last datagram sent to each port."""

    listening = [Listen("udp", *PROXY)]

    def __init__(self) -> None:
        self.last: dict[int, bytes] = {}
        self.count = 0

    def send(self, data: bytes, target: Target, on_error: Callable[[], None] | None = None) -> None:
        self.last[target.port] = data
        self.count += 1

    def local_port(self, transport: str, version: int = 4) -> int:
        return PROXY[1]

    def supports(self, transport: str) -> bool:
        return transport == "udp"

    def add_alias(self, conn_id: int, host: str, port: int) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _lines(*lines: str, body: str = "") -> bytes:
    return ("\r\n".join((*lines, f"Content-Length: {len(body)}", "", "")) + body).encode()


_VIA_RR = re.compile(rb"^(?:Via|Record-Route): [^\r]*\r\n", re.M)
_HEADER = {name: re.compile(rb"^" + name + rb": ([^\r]*)\r\n", re.M) for name in
           (b"From", b"To", b"Call-ID", b"CSeq", b"Record-Route")}  # fmt: skip


def _header(data: bytes, name: bytes) -> str:
    found = _HEADER[name].search(data)
    assert found is not None, (name, data)
    return found.group(1).decode()


def _answer(request: bytes, status: str, to_tag: str, body: str = "") -> bytes:
    """The UAS's response: Vias and Record-Route copied as sipp's [last_*] does."""
    copied = b"".join(_VIA_RR.findall(request)).decode()
    lines = [f"SIP/2.0 {status}", copied.rstrip("\r\n")]
    lines += [f"From: {_header(request, b'From')}", f"To: {_header(request, b'To')};tag={to_tag}"]
    lines += [f"Call-ID: {_header(request, b'Call-ID')}", f"CSeq: {_header(request, b'CSeq')}"]
    lines.append(f"Contact: <sip:{EXTENSION}@{UAS[0]}:{UAS[1]};transport=UDP>")
    if body:
        lines.append("Content-Type: application/sdp")
    return _lines(*lines, body=body)


class Bench:
    def __init__(self, settings: Settings, *, tracker: bool = True) -> None:
        self.clock = Clock()
        self.transport = Recorder()
        self.events = 0
        self.tracker = CallTracker(settings.node.name, clock=self.clock) if tracker else None
        self.proxy = Proxy(
            settings,
            transport=self.transport,
            counters=Counters(),
            clock=self.clock,
            auth_secret=b"bench-secret-0123456789abcdef",
            observer=self._observe,
        )
        self.proxy.location.replace("acme", EXTENSION, [Binding(
            f"sip:{EXTENSION}@{UAS[0]}:{UAS[1]}", 1.0, 10**9, "reg", 1,
            Source("udp", UAS, PROXY, None), False,
        )])  # fmt: skip
        self.uas = Source("udp", UAS, PROXY, None)

    def _observe(self, msg: Request | Response, info: Observed) -> None:
        if self.tracker is not None:
            events: list[CallEvent] = self.tracker.observe(msg, info)
            self.events += len(events)

    def call(self, n: int) -> float:
        """One call; returns the CPU seconds spent in the proxy."""
        uac_port = 20000 + n % 2000
        uac = Source("udp", (UAC_HOST, uac_port), PROXY, None)
        tag = f"{n}SIPpTag00{n}"
        call_id = f"{n}-4242@127.0.0.1"
        head = (f'From: "{CALLER}" <sip:{CALLER}@{DOMAIN}>;tag={tag}', f"Call-ID: {call_id}")
        invite = _lines(
            f"INVITE sip:{DID}@{DOMAIN} SIP/2.0",
            f"Via: SIP/2.0/UDP {UAC_HOST}:{uac_port};branch=z9hG4bK-{n}-1-inv1",
            head[0], f"To: <sip:{DID}@{DOMAIN}>", head[1], "CSeq: 1 INVITE",
            f"Contact: <sip:{CALLER}@{UAC_HOST}:{uac_port};transport=UDP>",
            "Max-Forwards: 70", "Subject: sipgw test call", "User-Agent: sipp",
            "Content-Type: application/sdp", body=SDP,
        )  # fmt: skip
        receive, last, cpu = self.proxy.receive, self.transport.last, time.process_time
        t0 = cpu()
        receive(invite, uac)
        spent = cpu() - t0
        forwarded = last[UAS[1]]
        ringing = _answer(forwarded, "180 Ringing", f"uas{n}")
        ok = _answer(forwarded, "200 OK", f"uas{n}", SDP)
        t0 = cpu()
        receive(ringing, self.uas)
        receive(ok, self.uas)
        spent += cpu() - t0
        answered = last[uac_port]
        to = _header(answered, b"To")
        routes = _header(answered, b"Record-Route")
        in_dialog = (f"Route: {routes}", head[0], f"To: {to}", head[1])
        ack = _lines(
            f"ACK sip:{EXTENSION}@{UAS[0]}:{UAS[1]};transport=UDP SIP/2.0",
            f"Via: SIP/2.0/UDP {UAC_HOST}:{uac_port};branch=z9hG4bK-{n}-2-ack",
            *in_dialog, "CSeq: 1 ACK", "Max-Forwards: 70",
        )  # fmt: skip
        bye = _lines(
            f"BYE sip:{EXTENSION}@{UAS[0]}:{UAS[1]};transport=UDP SIP/2.0",
            f"Via: SIP/2.0/UDP {UAC_HOST}:{uac_port};branch=z9hG4bK-{n}-3-bye",
            *in_dialog, "CSeq: 2 BYE", "Max-Forwards: 70",
        )  # fmt: skip
        t0 = cpu()
        receive(ack, uac)
        receive(bye, uac)
        spent += cpu() - t0
        bye_ok = _answer(last[UAS[1]], "200 OK", f"uas{n}")
        t0 = cpu()
        receive(bye_ok, self.uas)
        self.clock.now += 0.001
        deadline = self.proxy.next_deadline()
        if deadline is not None and deadline <= self.clock.now:
            self.proxy.fire_timers(self.clock.now)
        if n % EXPIRE_EVERY == 0 and self.tracker is not None:
            self.tracker.expire(self.clock.now)  # the gateway's once-a-second sweep
        if n % COLLECT_EVERY == 0 and not gc.isenabled():
            gc.collect(1)  # the gateway's collect_young, on this clock
        return spent + cpu() - t0


def settings() -> Settings:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sipgw.toml"
        path.write_text(render_config(PROXY[1], 8080, 5090, "redis://127.0.0.1:1/0"))
        return load_settings(path, env={})


BATCH = 1000
# Calls between two sweeps of the tracker (app.py's `_expire_calls`, once a second).
EXPIRE_EVERY = 1000
# Calls between two collections: `gc_pauses.YOUNG_INTERVAL` at the clock's 1 000 calls/s.
COLLECT_EVERY = round(YOUNG_INTERVAL * 1000)


# Calls before the timed ones: past 32 s of the clock (64*T1, the longest transaction
# timers), so that every kind of transaction is expiring while calls are timed, as in
# a gateway that has run for a while (before that, a call costs ~15 % less).
WARMUP = 34000


def run(calls: int, *, tracker: bool = True, warmup: int = WARMUP) -> tuple[list[float], Bench]:
    """CPU seconds per call of each batch of `BATCH` calls, after `warmup` calls. On a
    shared machine the fastest batches are the figure: noise only ever adds."""
    bench = Bench(settings(), tracker=tracker)
    tune_gc()  # as the gateway does once started
    for n in range(warmup):
        bench.call(n)
    batches = []
    for start in range(warmup, warmup + calls, BATCH):
        spent = sum(bench.call(n) for n in range(start, start + BATCH))
        batches.append(spent / BATCH)
    return batches, bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--no-tracker", action="store_true", help="the proxy alone")
    parser.add_argument("--profile", type=Path, help="write cProfile stats here")
    args = parser.parse_args(argv)
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        batches, bench = run(args.calls, tracker=not args.no_tracker)
        profiler.disable()
        profiler.dump_stats(args.profile)
    else:
        batches, bench = run(args.calls, tracker=not args.no_tracker)
    ordered = sorted(batches)
    best = sum(ordered[:3]) / len(ordered[:3])
    print(
        f"{1e6 * best:.1f} µs of CPU per proxied call in the proxy"
        f"{'' if args.no_tracker else ' and the call tracker'} (the 3 fastest of "
        f"{len(batches)} batches of {BATCH}; median {1e6 * ordered[len(ordered) // 2]:.1f}); "
        f"{bench.events} events, {bench.transport.count} datagrams sent; SIP core "
        f"{native.status().describe()}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
