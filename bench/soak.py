"""The soak scenario (goal 6 of issue #12): sipgw for 10 minutes at 60 % of its max clean
calls/s, watched over time.

``python -m bench --scenario soak [--duration S] [--max-clean-rate N]`` (not part of
``all``: ten minutes do not fit the 20-minute run). The max clean rate is the one given,
or measured first by one proxied-calls step search on a fresh sipgw (the same steps and
criteria as ``proxied-calls``). Then a fresh sipgw with the event scenarios' config
(bench/eventsapi.py: recognition on, its own Redis), one WebSocket subscriber of
``call.offered``, the sipp UAS registered as 201, and one sipp UAC placing the
proxied-calls call flow at the soak rate for the whole duration. Every `SAMPLE_S`
seconds the harness records the gateway's RSS and CPU, its /metrics (bus lag, active
transactions, GC pauses if exported), sipp's cumulative counters and the event lag of
the arrivals of that window (subscriber arrival minus the event's ``occurred_at``: how
far the event path trails SIP).

The whole run is judged by the proxied-calls criteria; the goal's figures (failed calls,
RSS growth after the warm-up, longest GC pause) are in bench/report_soak.py.
"""

from __future__ import annotations

import re
import signal
import sys
import time
import traceback
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import SCHEMA, procstat
from .eventsapi import (
    EVENT_TYPE,
    EventsGateway,
    SubscriberPool,
    latency_ms,
    rss_kib,
    subscriber_token,
    versions,
)
from .goals import GOALS
from .process import Managed
from .runner import RunOptions, run_turn, utc_now
from .scenarios import (
    SCENARIOS,
    UAC_TRANSPORT,
    Plan,
    ProxiedCalls,
    Ticker,
    _figures,
    _measure_uac,
    _wait_bound,
)
from .sipgw import SipgwTarget, parse_labelled
from .sipp import SippCommand, parse_stat_csv, read_counts, sipp_binary
from .steps import Criteria, judge
from .targets import DID, EXTENSION

NAME = "soak"
TITLE = "Soak: sipgw at 60 % of its max clean calls/s, watched over time"
G6 = next(g for g in GOALS if g.key == "G6")
RATE_FRACTION = G6.bars["rate_fraction"]
DURATION_S = G6.bars["duration_s"]
DURATION_QUICK_S = 60.0
SAMPLE_S = 10.0
# A UDP transaction's state may be kept 64 x T1 = 32 s after it completes: the heap grows
# that long at a steady rate. RSS growth is counted from the first sample past this.
WARMUP_S = 60.0
HOLD_MS = 100
DRAIN_S = 10.0


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- pure helpers ------------------------------------------------------------------------------


def soak_rate(max_clean_rate: int) -> int:
    return max(1, round(RATE_FRACTION * max_clean_rate))


def warmup_s(duration_s: float) -> float:
    """The warm-up: 60 s, or half of a shorter soak."""
    return min(WARMUP_S, duration_s / 2)


_GAUGE = re.compile(r"^sipgw_gc_pause_max_seconds(?:\{[^}]*\})?\s+(\S+)", re.MULTILINE)
_CPU_GAUGE = re.compile(r"^sipgw_gc_pause_cpu_max_seconds(?:\{[^}]*\})?\s+(\S+)", re.MULTILINE)


def gc_pause_cpu_max_s(metrics_text: str) -> float | None:
    """The longest GC pause in CPU time (``sipgw_gc_pause_cpu_max_seconds``): what the
    collector itself took, without the time the scheduler gave the core away."""
    gauges = [float(v) for v in _CPU_GAUGE.findall(metrics_text)]
    return max(gauges) if gauges else None


def gc_pause_max_s(metrics_text: str) -> float | None:
    """The longest GC pause the gateway reports: the gauge ``sipgw_gc_pause_max_seconds``
    (the largest over its label sets), else an upper bound from the histogram
    ``sipgw_gc_pause_seconds`` (the smallest bucket bound that holds every pause; +Inf:
    the largest finite bound). None: the gateway exports neither."""
    gauges = [float(v) for v in _GAUGE.findall(metrics_text)]
    if gauges:
        return max(gauges)
    buckets = parse_labelled(metrics_text, "sipgw_gc_pause_seconds_bucket", "le")
    if not buckets:
        return None
    total = buckets.get("+Inf", max(buckets.values()))
    bounds = sorted((float(le), n) for le, n in buckets.items() if le != "+Inf")
    for bound, count in bounds:
        if count >= total:
            return bound
    return bounds[-1][0] if bounds else None


def gauge(metrics_text: str, name: str) -> float | None:
    """The sum of a metric's samples (all label sets); None when absent."""
    found = re.findall(rf"^{re.escape(name)}(?:\{{[^}}]*\}})?\s+(\S+)", metrics_text, re.MULTILINE)
    return sum(float(v) for v in found) if found else None


def sipp_progress(stats_csv: str) -> dict[str, int]:
    """sipp's cumulative counters so far, from its -trace_stat file."""
    rows = parse_stat_csv(stats_csv)
    if not rows:
        return {}
    last = rows[-1]

    def n(column: str) -> int:
        try:
            return int(float(last.get(column, "0") or 0))
        except ValueError:
            return 0

    return {
        "created": n("TotalCallCreated"),
        "successful": n("SuccessfulCall(C)"),
        "failed": n("FailedCall(C)"),
        "retransmissions": n("Retransmissions(C)"),
    }


# -- the harness side --------------------------------------------------------------------------


@dataclass
class Watch:
    """The samples taken while the soak runs."""

    gw: SipgwTarget
    pool: SubscriberPool
    uac_stats: Path
    t0: float = field(default_factory=time.monotonic)
    samples: list[dict[str, Any]] = field(default_factory=list)
    lags_us: list[int] = field(default_factory=list)  # every event's, for the whole run
    call_ids: set[str] = field(default_factory=set)  # of the call.offered received

    def sample(self) -> None:
        text = metrics_text(self.gw)
        arrivals = [a for a in self.pool.take() if a.type == EVENT_TYPE]
        lags = [a.arrival_us - a.occurred_at_us for a in arrivals if a.occurred_at_us is not None]
        self.lags_us += lags
        self.call_ids.update(a.sip_call_id for a in arrivals)
        try:
            progress = sipp_progress(self.uac_stats.read_text(errors="replace"))
        except OSError:
            progress = {}
        self.samples.append({
            "t_s": round(time.monotonic() - self.t0, 1),
            "rss_kib": rss_kib(self.gw.pid),
            "cpu_s": round(procstat.tree_cpu_seconds(self.gw.pid), 2),
            "redis_cpu_s": round(sum(procstat.tree_cpu_seconds(p) for p in self.gw.aux_pids), 2),
            "bus_lag_s": gauge(text, "sipgw_bus_lag_seconds"),
            "transactions_active": gauge(text, "sipgw_sip_transactions_active"),
            "gc_pause_max_s": gc_pause_max_s(text),
            "gc_pause_cpu_max_s": gc_pause_cpu_max_s(text),
            "events": len(arrivals),
            "event_lag": latency_ms(lags),
            "sipp": progress,
        })  # fmt: skip


def metrics_text(gw: SipgwTarget) -> str:
    try:
        with urllib.request.urlopen(f"{gw.url}/metrics", timeout=5) as resp:
            return str(resp.read().decode())
    except OSError:
        return ""


def measure_max_rate(quick: bool, root: Path, deadline: float) -> dict[str, Any]:
    """One proxied-calls step search on a fresh sipgw (one process)."""
    scenario = SCENARIOS["proxied-calls"]
    opts = RunOptions(quick=quick, repetitions=1, scenarios=[NAME], targets=["sipgw"],
                      budget_s=deadline - time.monotonic())  # fmt: skip
    workdir = root / NAME / "search"
    workdir.mkdir(parents=True)
    _log("-- soak: the max clean rate, one proxied-calls search on sipgw")
    return run_turn(
        scenario, SipgwTarget(), workdir, opts, rates=scenario.rates(quick),
        plan=scenario.plan(quick), deadline=deadline,
    )  # fmt: skip


def soak_calls(
    gw: EventsGateway,
    pool: SubscriberPool,
    uas_port: int,
    rate: int,
    duration_s: float,
    workdir: Path,
) -> tuple[dict[str, Any], Watch]:
    """The UAS and the UAC for the whole duration, sampled; the judged figures."""
    plan = Plan(step_duration_s=duration_s, hold_ms=HOLD_MS)
    calls = plan.requested(rate)
    uas = SippCommand(
        scenario="uas", workdir=workdir / "uas", local_port=uas_port, service=EXTENSION,
        calls=calls, timeout_s=plan.step_timeout_s() + 10,
    )  # fmt: skip
    uas.workdir.mkdir(parents=True)
    uas_proc = Managed("sipp-uas", uas.argv(sipp_binary()), cwd=uas.workdir, log_path=uas.log_path)
    try:
        _wait_bound(uas_proc, uas_port)
        uac = SippCommand(
            scenario="uac", workdir=workdir / "uac", remote=gw.remote, local_port=gw.uac_port,
            service=DID, calls=calls, rate=rate, limit=plan.limit(rate), hold_ms=HOLD_MS,
            timeout_s=plan.step_timeout_s(), recv_timeout_ms=plan.recv_timeout_ms, rtt=True,
            keys={"domain": "127.0.0.1", "caller": "+31612345678"},
            transport=UAC_TRANSPORT,
        )  # fmt: skip
        watch = Watch(gw, pool, uac.stats_path)
        uac_proc, uac_exit, window = _measure_uac(
            gw, uac, plan, "sipp-uac", Ticker(SAMPLE_S, watch.sample)
        )
        pool.wait_for(pool.taken + calls, DRAIN_S)
        watch.sample()  # the events that came in after the last call
        uas_exit = uas_proc.wait(2.0) or uas_proc.stop(grace=2, sig=signal.SIGUSR1)
    finally:
        uas_proc.stop(grace=1)
    figures = judge(_figures(
        rate=rate, plan=plan, messages_per_call=ProxiedCalls.messages_per_call,
        uac=uac, uac_proc=uac_proc, uac_exit=uac_exit, uac_counts=read_counts(uac.stats_path),
        window=window, target=gw, uas_counts=read_counts(uas.stats_path),
        uas_proc=uas_proc, uas_exit=uas_exit,
    ), Criteria())  # fmt: skip
    return figures.to_json(), watch


def run(
    quick: bool,
    budget_s: float,
    root: Path,
    *,
    duration_s: float | None = None,
    max_clean_rate: int | None = None,
) -> dict[str, Any]:
    """The whole soak; one JSON-ready document (see bench/README.md)."""
    started = utc_now()
    t0 = time.monotonic()
    duration = duration_s or (DURATION_QUICK_S if quick else DURATION_S)
    doc: dict[str, Any] = {
        "schema": SCHEMA, "scenario": NAME, "title": TITLE, "unit": "calls/s", "quick": quick,
        "started_at": started.isoformat(), "budget_s": round(budget_s, 1), "error": None,
        "method": {
            "duration_s": duration, "rate_fraction": RATE_FRACTION, "sample_s": SAMPLE_S,
            "warmup_s": warmup_s(duration), "hold_ms": HOLD_MS, "drain_s": DRAIN_S,
            "criteria": Criteria().to_json(),
            "event_lag": "subscriber arrival (time.time_ns()) minus the event's occurred_at "
            "(the gateway saw the INVITE), per sample window",
            "gc_pause": "sipgw_gc_pause_max_seconds, or the sipgw_gc_pause_seconds histogram's "
            "smallest bucket holding every pause (an upper bound)",
        },
        "max_clean_rate": max_clean_rate, "max_clean_rate_source": "given",
        "search": None, "rate": None, "gateway": {}, "samples": [], "sip": None,
    }  # fmt: skip
    root = root / NAME
    root.mkdir(parents=True, exist_ok=True)
    gw = EventsGateway()
    pool: SubscriberPool | None = None
    try:
        if max_clean_rate is None:
            search = measure_max_rate(quick, root.parent, t0 + max(60.0, budget_s))
            doc["search"] = search
            doc["max_clean_rate_source"] = "measured"
            max_clean_rate = search.get("max_clean_rate") or 0
            doc["max_clean_rate"] = max_clean_rate
        if not max_clean_rate:
            raise RuntimeError("no clean rate: sipgw was not clean at the lowest step")
        rate = doc["rate"] = soak_rate(max_clean_rate)
        _log(f"-- soak: {rate} calls/s for {duration:.0f} s (60 % of {max_clean_rate})")
        gw.start(root / "gateway")
        doc["gateway"]["config"] = gw.config.read_text()
        token, _ = subscriber_token(gw)
        pool = SubscriberPool(gw.events_url(), token, 1, root / "subscriber")
        doc["subscriber"] = pool.start(timeout=30)
        calls = ProxiedCalls()
        calls.prepare(gw, root, Plan(step_duration_s=1.0, hold_ms=HOLD_MS))
        doc["sip"], watch = soak_calls(gw, pool, calls.uas_port, rate, duration, root)
        doc["samples"] = watch.samples
        placed = int(doc["sip"]["attempted"])
        doc["events"] = {
            "calls_placed": placed,
            "received": len(watch.call_ids),
            "missing": max(0, placed - len(watch.call_ids)),
            "lag": latency_ms(watch.lags_us),
        }
    except Exception as err:
        doc["error"] = f"{type(err).__name__}: {err}"
        doc["traceback"] = traceback.format_exc()
        _log(f"   ERROR {err}")
    finally:
        if pool is not None:
            doc["subscriber"] = pool.stop()
        gw_doc = doc["gateway"]
        text = metrics_text(gw) if gw.alive() else ""
        gw_doc["gc_pause_max_s"] = gc_pause_max_s(text)
        gw_doc["gc_pause_cpu_max_s"] = gc_pause_cpu_max_s(text)
        gw_doc["events_dropped"] = gauge(text, "sipgw_events_dropped_total")
        gw_doc["alive_until_stop"] = gw.alive()
        gw_doc["exit_code"] = gw.stop()
        gw_doc["stop_s"] = gw.stop_s
        gw_doc["log"] = gw.log_summary().to_json() if gw.proc else None
    doc.update(
        finished_at=utc_now().isoformat(),
        wall_time_s=round(time.monotonic() - t0, 1),
        machine=procstat.machine_info(),
        versions=versions(),
    )
    return doc
