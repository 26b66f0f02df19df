"""sipp (SIPp 3.6.1) as the load generator: command lines, and its output files.

Every sipp the bench starts binds 127.0.0.1 (-i, -mi), its own free control port (-cp:
the default 8888 collides between instances) and media port (-mp), never reads stdin
(-nostdin), and writes into its own directory:
  stats.csv   -trace_stat, one ';'-separated row per -fd seconds and a final row;
              columns ending in (C) are cumulative, (P) periodic.
  *_rtt.csv   -trace_rtt: one row per call and response-time marker (rtd="true" in the
              scenario): "Date_ms;response_time_ms;rtd_no". Date_ms is the time since
              sipp started; both have sipp's 1 ms clock resolution.
  errors.log  -trace_err: unexpected messages.
The same socket buffer size (-buff_size) is given to every sipp, whichever proxy is
under test.

Transport: a UAC that plays the trunk sends each call from a socket of its own (`-t un`,
at most `MAX_SOCKET` sockets, then sipp shares them between calls), so its calls are
many flows (source address and port) and a proxy whose workers share the port with
SO_REUSEPORT gets them spread over its workers by the kernel; with `-t u1` every call
would be one flow, served by one worker. The UAS, a registered phone, keeps one socket.
"""

from __future__ import annotations

import csv
import io
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .ports import free_port

SCENARIOS = Path(__file__).with_name("scenarios")
# Asked of the kernel for each sipp socket; Linux caps it at net.core.rmem_max/wmem_max.
BUFF_SIZE = 1 << 20
# -t un: one socket per call, at most this many open at once (then calls share them,
# round robin). sipp's default, 50000, is refused where RLIMIT_NOFILE is lower (20 000
# on the bench machine): "Maximum number of open sockets (50000) should be less than the
# maximum number of open files (20000)". 2000 flows are plenty for the kernel's hash.
MAX_SOCKET = 2000
PER_CALL = "un"  # -t: one socket per call
ONE_SOCKET = "u1"  # -t: one socket for everything


def scenario_path(name: str) -> Path:
    path = SCENARIOS / f"{name}.xml"
    if not path.is_file():
        raise FileNotFoundError(f"no bench scenario {name!r} in {SCENARIOS}")
    return path


def sipp_binary() -> str:
    path = shutil.which("sipp")
    if path is None:
        raise RuntimeError("sipp is not installed (Debian package sip-tester)")
    return path


@dataclass
class SippCommand:
    """One sipp invocation; `argv()` renders it, with the harness' fixed options."""

    scenario: str
    workdir: Path
    remote: str | None = None  # host:port of the proxy (None for a UAS)
    local_port: int | None = None
    service: str | None = None  # -s: the Request-URI user
    calls: int | None = None  # -m
    rate: int | None = None  # -r (calls per second)
    limit: int | None = None  # -l (concurrent calls)
    hold_ms: int | None = None  # -d (the scenario's <pause/>)
    timeout_s: float | None = None  # -timeout (global, with -timeout_error)
    recv_timeout_ms: int | None = None  # -recv_timeout (per message: a lost call fails)
    rtt: bool = False  # -trace_rtt
    auth: tuple[str, str] | None = None  # -au/-ap
    keys: Mapping[str, str] = field(default_factory=dict)
    extra: Sequence[str] = ()
    transport: str = ONE_SOCKET  # -t u1, or un (with -max_socket MAX_SOCKET)
    control_port: int = field(default_factory=lambda: free_port(udp=True, tcp=True))
    media_port: int = field(default_factory=lambda: free_port(udp=True, tcp=False, span=4))

    @property
    def stats_path(self) -> Path:
        return self.workdir / "stats.csv"

    @property
    def log_path(self) -> Path:
        return self.workdir / "sipp.log"

    def argv(self, binary: str = "sipp") -> list[str]:
        argv = [binary, "-sf", str(scenario_path(self.scenario))]
        if self.remote:
            argv.append(self.remote)
        argv += ["-t", self.transport]
        if self.transport == PER_CALL:
            argv += ["-max_socket", str(MAX_SOCKET)]
        argv += ["-i", "127.0.0.1", "-mi", "127.0.0.1"]
        if self.local_port is not None:
            argv += ["-p", str(self.local_port)]
        argv += ["-cp", str(self.control_port), "-mp", str(self.media_port), "-nostdin"]
        argv += ["-buff_size", str(BUFF_SIZE)]
        if self.service is not None:
            argv += ["-s", self.service]
        if self.calls is not None:
            argv += ["-m", str(self.calls)]
        if self.rate is not None:
            argv += ["-r", str(self.rate)]
        if self.limit is not None:
            argv += ["-l", str(self.limit)]
        if self.hold_ms is not None:
            argv += ["-d", str(self.hold_ms)]
        if self.auth is not None:
            argv += ["-au", self.auth[0], "-ap", self.auth[1]]
            if "domain" in self.keys and "register" in self.scenario:
                # The digest uri must be the Request-URI (sip:[domain]), not sipp's
                # default, the remote address.
                argv += ["-auth_uri", self.keys["domain"]]
        if self.timeout_s is not None:
            argv += ["-timeout", f"{max(1, math.ceil(self.timeout_s))}s", "-timeout_error"]
        if self.recv_timeout_ms is not None:
            argv += ["-recv_timeout", str(self.recv_timeout_ms)]
        argv += ["-trace_stat", "-stf", str(self.stats_path), "-fd", "1"]
        argv += ["-trace_err", "-error_file", str(self.workdir / "errors.log")]
        if self.rtt:
            argv += ["-trace_rtt", "-rtt_freq", str(rtt_freq(self.calls))]
        for key, value in self.keys.items():
            argv += ["-key", key, value]
        argv += list(self.extra)
        return argv


def rtt_freq(calls: int | None, most: int = 200) -> int:
    """sipp -rtt_freq: it writes the response times every that many calls, and the
    calls after the last multiple never (sipp 3.6.1 has no final dump): a divisor of
    `calls`, so that every call's response time is written."""
    return math.gcd(calls, most) if calls else most


# -- the stat CSV -------------------------------------------------------------------------


def parse_stat_csv(text: str) -> list[dict[str, str]]:
    """Rows of a -trace_stat file as dicts (header → value); blank columns dropped."""
    rows = list(csv.reader(io.StringIO(text), delimiter=";"))
    if not rows:
        return []
    header = rows[0]
    return [
        {k: v for k, v in zip(header, row, strict=False) if k}
        for row in rows[1:]
        if any(cell.strip() for cell in row)
    ]


def stat_int(row: Mapping[str, str], column: str) -> int:
    try:
        return int(float(row.get(column, "0") or 0))
    except ValueError:
        return 0


def hms_to_ms(value: str) -> float:
    """sipp's "hh:mm:ss:microseconds" (response time, call length) in milliseconds."""
    try:
        h, m, s, us = (int(x) for x in value.split(":"))
    except ValueError:
        return math.nan
    return ((h * 60 + m) * 60 + s) * 1000 + us / 1000


@dataclass(frozen=True)
class SippCounts:
    """Cumulative counters of one sipp run (its stat file's last row)."""

    created: int = 0
    successful: int = 0
    failed: int = 0
    retransmissions: int = 0
    failed_unexpected: int = 0
    failed_timeouts: int = 0  # recv timeouts and max UDP retransmissions
    dead_call_messages: int = 0
    out_of_call_messages: int = 0
    mean_response_ms: float = math.nan

    @classmethod
    def from_row(cls, row: Mapping[str, str]) -> SippCounts:
        return cls(
            created=stat_int(row, "TotalCallCreated"),
            successful=stat_int(row, "SuccessfulCall(C)"),
            failed=stat_int(row, "FailedCall(C)"),
            retransmissions=stat_int(row, "Retransmissions(C)"),
            failed_unexpected=stat_int(row, "FailedUnexpectedMessage(C)"),
            failed_timeouts=stat_int(row, "FailedTimeoutOnRecv(C)")
            + stat_int(row, "FailedMaxUDPRetrans(C)"),
            dead_call_messages=stat_int(row, "DeadCallMsgs(C)"),
            out_of_call_messages=stat_int(row, "OutOfCallMsgs(C)"),
            mean_response_ms=hms_to_ms(row.get("ResponseTime1(C)", "")),
        )


def read_counts(path: Path) -> SippCounts:
    try:
        rows = parse_stat_csv(path.read_text(errors="replace"))
    except OSError:
        return SippCounts()
    return SippCounts.from_row(rows[-1]) if rows else SippCounts()


# -- the response-time CSV ----------------------------------------------------------------


@dataclass(frozen=True)
class RttSample:
    at_ms: float  # when the response arrived, since sipp started
    rt_ms: float  # response time: request sent → marked response received


def parse_rtt_csv(text: str, rtd: int = 1) -> list[RttSample]:
    """Samples of one response-time marker from a -trace_rtt file (header skipped,
    malformed lines ignored: sipp may be killed mid-line)."""
    samples = []
    for line in text.splitlines():
        parts = line.strip().split(";")
        if len(parts) < 3:
            continue
        try:
            at, rt, no = float(parts[0]), float(parts[1]), int(parts[2])
        except ValueError:
            continue  # the header, or a cut line
        if no == rtd:
            samples.append(RttSample(at, rt))
    return samples


def read_rtt(workdir: Path) -> list[RttSample]:
    samples: list[RttSample] = []
    for path in sorted(workdir.glob("*_rtt.csv")):
        samples += parse_rtt_csv(path.read_text(errors="replace"))
    return samples


def achieved_rate(samples: Sequence[RttSample]) -> float:
    """Answered calls per second while the step ran at full speed.

    Counted between the 10th and the 90th percentile of the answer times: answers
    arrive at the rate the chain really sustains, whatever rate sipp was asked for, and
    the middle 80 % is not stretched by one late answer at the very end (one stall of
    the proxy just before the last call would otherwise pass for a throughput deficit;
    latency is judged by the retransmission criterion). Under 20 answers: first to last.
    """
    times = sorted(s.at_ms for s in samples)
    n = len(times)
    if n < 2:
        return 0.0
    lo, hi = (round(0.1 * (n - 1)), round(0.9 * (n - 1))) if n >= 20 else (0, n - 1)
    span_s = (times[hi] - times[lo]) / 1000
    return (hi - lo) / span_s if span_s > 0 else 0.0
