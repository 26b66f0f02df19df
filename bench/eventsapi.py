"""What the two event scenarios (invite-event-latency, fan-out) share.

- `EventsGateway`: bench/sipgw.py's gateway with the tenant's contact fields configured
  (as the recognition scenario's) and optional ``[events]`` settings; ready once SIP and
  HTTP (/readyz) answer.
- API tokens made with the CLI (`sipgw token create`), contacts written through the
  sync API (``POST /v1/contacts:batch``), the gateway's /metrics and its RSS (/proc).
- `SubscriberPool`: subscriber processes (``python -m bench.subscribers``) holding N
  WebSocket subscriptions between them; their arrivals, parsed.
- sipp's short message trace (``-trace_shortmsg``): when each INVITE left sipp.
- Latency summaries (nearest-rank percentiles, as everywhere in the bench).

Clocks: sipp stamps a message with gettimeofday() right after its sendto() returns; the
subscribers stamp an arrival with time.time_ns(); the gateway's ``occurred_at`` and Redis's
stream ids come from the same CLOCK_REALTIME of this one machine. A difference of two of
them is a latency on one clock, with no synchronization error.
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from . import recognition
from .process import Managed
from .runner import versions as runner_versions
from .sipgw import REPO, SipgwTarget, render_config
from .steps import percentile
from .subscribers import TOKEN_ENV
from .targets import EXTENSION

TENANT = recognition.TENANT
EVENT_TYPE = "call.offered"


class EventsGateway(SipgwTarget):
    """The bench gateway, with contact fields and ``[events]`` settings, HTTP ready."""

    notes = (
        "sipgw run with bench/sipgw.py's config, [tenants.recognition] fields name, company, "
        "crm_id (recognition budget 20 ms, the default), its own Redis"
    )

    def __init__(self, events: Mapping[str, int | float] | None = None) -> None:
        super().__init__()
        self.events = dict(events or {})

    def config_text(self, sip_port: int, http_port: int, trunk_port: int, redis_url: str) -> str:
        base = render_config(sip_port, http_port, trunk_port, redis_url, events=self.events)
        return base + recognition.RECOGNITION_TOML

    def start(self, workdir: Path) -> None:
        super().start(workdir)
        self.wait_http_ready(20)

    def events_url(self, event_type: str = EVENT_TYPE) -> str:
        """The WebSocket subscription URL, only `event_type` events."""
        return f"ws://127.0.0.1:{self.http_port}/v1/events?type={event_type}"


# -- the gateway's API and process ---------------------------------------------------------


def create_token(gw: SipgwTarget, *, user: str | None = None) -> tuple[str, list[str]]:
    """A token made with `sipgw token create`: for `user` (its role and extensions), or a
    sync token (contacts) when no user is given. (token, argv)."""
    who = ["--user", user] if user is not None else ["--sync"]
    argv = [
        *recognition.sipgw_cli(), "token", "create", "--tenant", TENANT, *who,
        "--config", str(gw.config),
    ]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO)
    token = out.stdout.strip()
    if out.returncode != 0 or not token or len(token.split()) != 1:
        raise RuntimeError(f"sipgw token create failed ({out.returncode}): {out.stderr[-1000:]}")
    return token, argv


def subscriber_token(gw: SipgwTarget) -> tuple[str, list[str]]:
    """A token of user 201 (role user): its subscriptions see extension 201's calls,
    where every bench call goes."""
    return create_token(gw, user=EXTENSION)


def load_contacts(
    gw: SipgwTarget, token: str, numbers: Sequence[str], source: str, batch: int = 5000
) -> dict[str, Any]:
    """Write one contact per number through ``POST /v1/contacts:batch`` (the sync API,
    `batch` items per request: the gateway's default maximum)."""
    t0 = time.monotonic()
    upserted = 0
    for start in range(0, len(numbers), batch):
        upserts = [
            {"number": n, "fields": {"name": f"Bench {i}", "company": "Bench B.V.",
                                     "crm_id": f"B-{i:07d}"}}
            for i, n in enumerate(numbers[start : start + batch], start)
        ]  # fmt: skip
        body = json.dumps({"tenant": TENANT, "source": source, "upserts": upserts}).encode()
        req = urllib.request.Request(
            f"{gw.url}/v1/contacts:batch",
            data=body,
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            upserted += int(json.loads(resp.read())["upserted"])
    if upserted != len(numbers):
        raise RuntimeError(f"the gateway upserted {upserted} of {len(numbers)} contacts")
    return {"contacts": upserted, "batch": batch, "seconds": round(time.monotonic() - t0, 2)}


def parse_metrics(text: str, names: Iterable[str]) -> dict[str, float]:
    """Sum of every sample of each metric `names` (all label sets) in Prometheus text; a
    counter's samples are named ``<name>_total``."""
    wanted = set(names)
    out = dict.fromkeys(wanted, 0.0)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        name = name.removesuffix("_total") if name not in wanted else name
        if name in wanted:
            try:
                out[name] += float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                continue
    return out


METRICS = (
    "sipgw_sip_transactions_active",  # server and client: what a drain on SIGTERM waits for
    "sipgw_subscribers",
    "sipgw_events_published",
    "sipgw_events_dropped",
    "sipgw_subscriber_overflows",
    "sipgw_subscriber_resyncs",
)


GAUGES = ("sipgw_subscribers", "sipgw_sip_transactions_active")


def counter_deltas(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """What the gateway's counters did in between; the gauges as they are after."""
    return {
        name: value if name in GAUGES else value - before.get(name, 0.0)
        for name, value in after.items()
    }


def metrics(gw: SipgwTarget) -> dict[str, float]:
    """The gateway's own counters that tell whether events were lost on its side."""
    try:
        with urllib.request.urlopen(f"{gw.url}/metrics", timeout=10) as resp:
            return parse_metrics(resp.read().decode(), METRICS)
    except OSError:
        return {}


def parse_vmrss_kib(status: str) -> int:
    """The VmRSS line of /proc/<pid>/status, in KiB (0 if absent)."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def rss_kib(pid: int) -> int:
    try:
        return parse_vmrss_kib(Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return 0


def versions() -> dict[str, str]:
    """The recognition scenario's list (Python, Redis, sipgw…) plus sipp and websockets."""
    found = {**runner_versions([]), **recognition.versions()}
    try:
        found["websockets"] = metadata.version("websockets")
    except metadata.PackageNotFoundError:
        found["websockets"] = "not installed"
    return found


# -- sipp's short message trace ---------------------------------------------------------------


def parse_invites(trace: str) -> dict[str, int]:
    """Call-ID → when its first INVITE left sipp (µs since the epoch), from a
    ``-trace_shortmsg`` file.

    Each line is ``date <TAB> time <TAB> epoch.µs <TAB> S|R <TAB> Call-ID <TAB> CSeq:… <TAB>
    first line``; sipp takes the time with gettimeofday() just after sendto() returned.
    A retransmitted INVITE keeps the first time; a cut last line is skipped.
    """
    sent: dict[str, int] = {}
    for line in trace.splitlines():
        cells = line.split("\t")
        if len(cells) < 7 or cells[3] != "S" or not cells[6].startswith("INVITE "):
            continue
        stamp = epoch_us(cells[2])
        if stamp is not None:
            sent.setdefault(cells[4], stamp)
    return sent


def epoch_us(text: str) -> int | None:
    """``"1795339449.677345"`` → 1795339449677345, exactly (no float rounding)."""
    whole, _, frac = text.strip().partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        return None
    return int(whole) * 1_000_000 + int((frac + "000000")[:6])


def call_number(sip_call_id: str) -> int | None:
    """sipp's call number from its Call-ID ``"<number>-<pid>@<ip>"``."""
    head = sip_call_id.split("-", 1)[0]
    return int(head) if head.isdigit() else None


# -- the subscribers' arrivals ------------------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    """One event at one subscriber (a line of bench/subscribers.py's output)."""

    subscriber: int
    arrival_us: int
    type: str
    sip_call_id: str
    seq: str
    occurred_at_us: int | None
    calling: str
    lookup: str

    @property
    def published_ms(self) -> int | None:
        """When Redis added it to the stream: the millisecond part of its id."""
        return seq_ms(self.seq)


def rfc3339_us(text: str) -> int | None:
    """``"2024-05-01T10:00:01.000123Z"`` → µs since the epoch."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    seconds = math.floor(moment.timestamp())
    return seconds * 1_000_000 + moment.microsecond


def seq_ms(seq: str) -> int | None:
    """A stream id ``"1714557601000-0"`` → 1714557601000 (Redis's clock, in ms)."""
    head = seq.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def parse_arrival(line: str) -> Arrival | None:
    cells = line.rstrip("\n").split("\t")
    if len(cells) != 8 or not cells[0].isdigit() or not cells[1].isdigit():
        return None
    return Arrival(
        subscriber=int(cells[0]),
        arrival_us=int(cells[1]) // 1000,
        type=cells[2],
        sip_call_id=cells[3],
        seq=cells[4],
        occurred_at_us=rfc3339_us(cells[5]) if cells[5] else None,
        calling=cells[6],
        lookup=cells[7],
    )


class _Tail:
    """New complete lines of a file that another process appends to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def lines(self) -> list[str]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        self.offset += len(data)
        data = self.partial + data
        complete, _, self.partial = data.rpartition(b"\n")
        return complete.decode(errors="replace").splitlines() if complete else []


def merge_status(statuses: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One status for all subscriber processes: counts added, error kinds merged, the
    slowest connect time."""
    merged: dict[str, Any] = {"processes": len(statuses)}
    for key in ("connections", "connected", "failed", "events", "unparsable", "resumes"):
        merged[key] = sum(int(s.get(key, 0)) for s in statuses)
    for key in ("errors", "controls", "closes"):
        total: Counter[str] = Counter()
        for s in statuses:
            total.update(s.get(key) or {})
        merged[key] = dict(total)
    merged["connect_s"] = max((float(s.get("connect_s", 0)) for s in statuses), default=0.0)
    merged["extensions"] = sorted({e for s in statuses for e in s.get("extensions", [])})
    merged["nofile"] = next((s["nofile"] for s in statuses if s.get("nofile")), None)
    return merged


class SubscriberPool:
    """`connections` subscriptions held by `workers` subscriber processes (a share each),
    with the bearer token in their environment."""

    def __init__(
        self,
        url: str,
        token: str,
        connections: int,
        workdir: Path,
        *,
        workers: int = 1,
        concurrency: int = 50,
        deflate: bool = True,
    ) -> None:
        self.url = url
        self.token = token
        self.connections = connections
        self.workdir = workdir
        self.workers = max(1, min(workers, connections))
        self.concurrency = concurrency
        self.deflate = deflate  # offer permessage-deflate (the client library's default)
        self.procs: list[Managed] = []
        self.tails: list[_Tail] = []
        self.arrivals: list[Arrival] = []
        self.taken = 0  # arrivals already handed out by take()

    def _shares(self) -> list[int]:
        base, extra = divmod(self.connections, self.workers)
        return [base + (1 if i < extra else 0) for i in range(self.workers)]

    def _status_path(self, i: int) -> Path:
        return self.workdir / f"subscribers-{i}.status.json"

    @property
    def argv(self) -> list[str]:
        return self.procs[0].argv if self.procs else []

    def start(self, timeout: float) -> dict[str, Any]:
        """Start the processes; return their merged status once every subscription is
        live or has failed (RuntimeError if a process dies or `timeout` passes)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, TOKEN_ENV: self.token, "PYTHONUNBUFFERED": "1"}
        first = 0
        for i, share in enumerate(self._shares()):
            out = self.workdir / f"subscribers-{i}.tsv"
            argv = [
                sys.executable, "-m", "bench.subscribers",
                "--url", self.url, "--connections", str(share),
                "--concurrency", str(self.concurrency), "--first-index", str(first),
                "--compression", "deflate" if self.deflate else "none",
                "--out", str(out), "--status", str(self._status_path(i)),
            ]  # fmt: skip
            log = self.workdir / f"subscribers-{i}.log"
            self.procs.append(Managed("subscribers", argv, cwd=REPO, log_path=log, env=env))
            self.tails.append(_Tail(out))
            first += share
        deadline = time.monotonic() + timeout
        while True:
            statuses = self._statuses()
            if len(statuses) == len(self.procs):
                return merge_status(statuses)
            dead = [p for p in self.procs if not p.running]
            if dead:
                raise RuntimeError(f"a subscriber process exited:\n{dead[0].log_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{len(statuses)} of {len(self.procs)} subscriber processes were ready "
                    f"within {timeout:.0f}s"
                )
            time.sleep(0.1)

    def _statuses(self) -> list[dict[str, Any]]:
        found = []
        for i in range(len(self.procs)):
            try:
                found.append(json.loads(self._status_path(i).read_text()))
            except (OSError, ValueError):
                continue
        return found

    def poll(self) -> int:
        """Read what arrived since the last poll; the number of arrivals so far."""
        for tail in self.tails:
            for line in tail.lines():
                arrival = parse_arrival(line)
                if arrival is not None:
                    self.arrivals.append(arrival)
        return len(self.arrivals)

    def wait_for(self, expected: int, timeout: float, quiet_s: float = 1.0) -> int:
        """Poll until `expected` arrivals (in all) or `timeout`, or nothing new came for
        `quiet_s` after the timeout's first half; the arrivals so far."""
        start = time.monotonic()
        last_change, count = start, self.poll()
        while count < expected:
            now = time.monotonic()
            if now - start > timeout or (now - start > timeout / 2 and now - last_change > quiet_s):
                break
            time.sleep(0.05)
            new = self.poll()
            if new != count:
                count, last_change = new, time.monotonic()
        return count

    def take(self) -> list[Arrival]:
        """The arrivals not taken before (those of the current step)."""
        self.poll()
        new = self.arrivals[self.taken :]
        self.taken = len(self.arrivals)
        return new

    def stop(self) -> dict[str, Any]:
        """SIGTERM to every process (they write what they hold and exit), then their
        final merged status, with the exit codes."""
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.stop(grace=10).returncode for proc in self.procs]
        self.poll()
        merged = merge_status(self._statuses())
        merged["exit_codes"] = codes
        return merged


# -- figures -------------------------------------------------------------------------------------


def latency_ms(samples_us: Sequence[float]) -> dict[str, float | int | None]:
    """Count, p50/p95/p99 (nearest rank), max and mean, in ms with µs precision."""

    def r(v: float | None) -> float | None:
        return None if v is None else round(v / 1000, 3)

    return {
        "count": len(samples_us),
        "p50_ms": r(percentile(samples_us, 50)),
        "p95_ms": r(percentile(samples_us, 95)),
        "p99_ms": r(percentile(samples_us, 99)),
        "max_ms": r(max(samples_us)) if samples_us else None,
        "mean_ms": r(statistics.fmean(samples_us)) if samples_us else None,
    }


def median_ms(samples_us: Sequence[float]) -> float | None:
    """The median of µs samples, in ms (None for none)."""
    return round(statistics.median(samples_us) / 1000, 3) if samples_us else None
