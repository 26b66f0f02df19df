"""The invite-event-latency scenario: from the INVITE leaving sipp to its ``call.offered``
arriving at a WebSocket subscriber of the Events API.

The call flow is proxied-calls' (bench/scenarios.py): the sipp UAC is the trunk and calls
the DID, the gateway routes it to extension 201 where a sipp UAS registered. The
differences: every call has its own caller number (``uac_callers.xml``, an injection
file), alternately one the tenant's contact index holds (a recognition **hit**: loaded
beforehand through ``POST /v1/contacts:batch`` with a sync token) and one it does not (a
**miss**), so hits and misses share each step's load and conditions, and no look-up is
answered from the node's cache (each number is looked up once). One subscriber (``python
-m bench.subscribers``, a token of user 201 from `sipgw token create`, ``type=call.offered``)
stays connected for the whole scenario.

Both ends are stamped on this machine's CLOCK_REALTIME: sipp's short message trace
(``-trace_shortmsg``) gives the time of each INVITE (gettimeofday() just after sendto()
returned, µs), the subscriber the time its ``call.offered`` arrived (time.time_ns() when
the client library handed it over). They are matched by Call-ID (the event's
``sip_call_id``). The latency includes the look-up: ``call.offered`` waits for it up to
the tenant's budget (20 ms, the default). The event's ``occurred_at`` (when the gateway
saw the INVITE) and its stream id (when Redis appended it, ms) split it into three parts.

An event that never arrives is counted (``missing``), never silently dropped. The pure
parts (callers, matching, figures) are tested in tests/unit/test_bench_latency.py.
"""

from __future__ import annotations

import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import SCHEMA, procstat, recognition
from .eventsapi import (
    EVENT_TYPE,
    Arrival,
    EventsGateway,
    SubscriberPool,
    call_number,
    counter_deltas,
    create_token,
    latency_ms,
    load_contacts,
    median_ms,
    metrics,
    parse_invites,
    subscriber_token,
    versions,
)
from .process import Managed
from .scenarios import Plan, ProxiedCalls, _figures, _measure_uac, _wait_bound
from .sipgw import render_config
from .sipp import SippCommand, read_counts, sipp_binary
from .steps import Criteria, StepFigures, judge
from .targets import DID, EXTENSION

NAME = "invite-event-latency"
TITLE = "INVITE sent → call.offered at a WebSocket subscriber (recognition hits and misses)"
KINDS = ("hit", "miss")
SOURCE = "bench-latency"
HOLD_MS = 100
SETTLE_S = 0.5  # after a step, so the next starts on a quiet gateway
DRAIN_S = 10.0  # longest wait for the events once the UAC has ended
# Rough costs on the 2-core bench machine, for --quick's time check.
EST_SETUP_S = 8.0  # gateway, tokens, REGISTER, contacts, subscriber; and the stop
EST_STEP_OVERHEAD_S = 3.0  # sipp start, the call hold and BYE, waiting, settling


@dataclass(frozen=True)
class Step:
    rate: int  # calls/s
    duration_s: float
    workers: int = 1  # sipgw's worker processes ([node] workers)

    @property
    def calls(self) -> int:
        return max(2, round(self.rate * self.duration_s))

    def estimate_s(self) -> float:
        return self.duration_s + EST_STEP_OVERHEAD_S


# A longer step at the lowest rate, so each (rate, kind) has 250+ samples for its p99.
# 300 calls/s (one process) and 1000 calls/s with 2 workers are goal 4's (bench/goals.py);
# the 2-worker step has a gateway of its own (`[node] workers = 2`), started after the
# one-process steps. 500 calls/s was above what one process proxied cleanly on the
# 2-core bench machine (proxied-calls: ~400/s), and is kept as the reference
# figure; 1000 calls/s in one process (seconds of lag, calls failing) made way for the
# 2-worker step within the scenario's time. --quick stays at 300: an overloaded step
# leaves INVITEs unanswered, and the gateway then drains 10 s on SIGTERM, which --quick
# cannot afford; nor a second gateway.
STEPS_FULL = (Step(100, 5.0), Step(300, 2.0), Step(500, 2.0), Step(1000, 2.0, workers=2))
STEPS_QUICK = (Step(100, 2.0), Step(300, 2.0))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- pure helpers ---------------------------------------------------------------------------


def kind_of_call(number: int) -> str:
    """sipp's call N takes line N of the injection file: odd calls are hits, even misses."""
    return KINDS[(number - 1) % 2]


def caller_numbers(calls: int, first_serial: int) -> list[str]:
    """One distinct Dutch mobile number per call, in E.164: ``+3161…`` for hits (loaded in
    the contact index), ``+3165…`` for misses (never loaded), alternating as
    `kind_of_call` says. Serials continue across steps, so no number repeats."""
    prefix = {"hit": "1", "miss": "5"}
    return [f"+316{prefix[kind_of_call(i + 1)]}{first_serial + i:07d}" for i in range(calls)]


def injection_file(numbers: Sequence[str]) -> str:
    """sipp's -inf: SEQUENTIAL, one call per line, the number as [field0]."""
    return "SEQUENTIAL\n" + "".join(f"{n};\n" for n in numbers)


def hits_of(numbers: Sequence[str]) -> list[str]:
    return [n for i, n in enumerate(numbers) if kind_of_call(i + 1) == "hit"]


def _segments(first: Sequence[tuple[int, Arrival]]) -> dict[str, float | None]:
    """Medians of the three parts of the latency (ms): INVITE sent → the gateway saw it
    (``occurred_at``), → Redis appended the event (stream id, ms resolution: ±0.5 ms),
    → the subscriber got it."""
    to_gateway, to_stream, to_subscriber = [], [], []
    for sent, a in first:
        published = a.published_ms
        if a.occurred_at_us is not None:
            to_gateway.append(a.occurred_at_us - sent)
            if published is not None:
                to_stream.append(published * 1000 + 500 - a.occurred_at_us)
        if published is not None:
            to_subscriber.append(a.arrival_us - (published * 1000 + 500))
    return {
        "sip_to_gateway_ms": median_ms(to_gateway),
        "gateway_to_stream_ms": median_ms(to_stream),
        "stream_to_subscriber_ms": median_ms(to_subscriber),
    }


def step_figures(
    sent: dict[str, int], arrivals: Sequence[Arrival], numbers: Sequence[str]
) -> dict[str, Any]:
    """Match the step's events to its INVITEs by Call-ID; the figures per kind.

    `sent`: Call-ID → INVITE time (µs); `numbers[N-1]`: the caller of sipp's call N.
    An event of a Call-ID not sent in this step is `unmatched`; a second event of the
    same Call-ID a `duplicate` (the first one counts).
    """
    first: dict[str, Arrival] = {}
    duplicates = unmatched = 0
    for a in arrivals:
        if a.type != EVENT_TYPE or a.sip_call_id not in sent:
            unmatched += 1
        elif a.sip_call_id in first:
            duplicates += 1
        else:
            first[a.sip_call_id] = a
    kinds: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        placed = [cid for cid in sent if _kind(cid) == kind]
        got = [(sent[cid], first[cid]) for cid in placed if cid in first]
        mismatched = sum(1 for cid in placed if cid in first and
                         first[cid].calling != _number(numbers, cid))  # fmt: skip
        kinds[kind] = {
            "placed": len(placed),
            "received": len(got),
            "missing": len(placed) - len(got),
            "latency": latency_ms([a.arrival_us - t for t, a in got]),
            "segments_p50": _segments(got),
            "lookup": dict(Counter(a.lookup or "none" for _, a in got)),
            "caller_mismatch": mismatched,
        }
    return {
        "calls_placed": len(sent),
        "events_received": len(first),
        "missing": len(sent) - len(first),
        "duplicates": duplicates,
        "unmatched": unmatched,
        "kinds": kinds,
    }


def _kind(sip_call_id: str) -> str:
    number = call_number(sip_call_id)
    return kind_of_call(number) if number is not None else "unknown"


def _number(numbers: Sequence[str], sip_call_id: str) -> str | None:
    n = call_number(sip_call_id)
    return numbers[(n - 1) % len(numbers)] if n is not None and numbers else None


def no_time(quick: bool, estimate_s: float, left_s: float) -> str | None:
    """Why a step is skipped (None: run it). Only --quick skips; a full run measures every
    step and reports how long it took."""
    if quick and estimate_s > left_s:
        return f"time budget: ~{estimate_s:.0f} s needed, {max(left_s, 0):.0f} s left"
    return None


# -- the harness side --------------------------------------------------------------------------


@dataclass
class Context:
    gw: EventsGateway
    pool: SubscriberPool
    uas_port: int
    workdir: Path
    serial: int = 0  # of the next caller number


def _sip_figures(figures: StepFigures) -> dict[str, Any]:
    """What the calls themselves did (the proxied-calls criteria), for context."""
    data = figures.to_json()
    keep = (
        "attempted", "successful", "failed", "failed_fraction", "retransmissions",
        "retrans_fraction", "achieved_rate", "response_ms", "cpu_s", "aux_cpu_s", "wall_s",
        "proxy_cores", "loadgen_cpu_s", "udp_rcvbuf_errors", "proxy_socket_drops", "clean",
        "unclean_reasons",
    )  # fmt: skip
    return {k: data[k] for k in keep}


@dataclass
class Placed:
    """What placing one step's calls gave: sipp's figures (judged by the proxied-calls
    criteria), when each INVITE left, how long the events took to come in."""

    sip: StepFigures
    sent: dict[str, int]
    wait_s: float
    uac_argv: list[str]
    uas_argv: list[str]


def place_calls(ctx: Context, step: Step, step_dir: Path, inf: Path) -> Placed:
    """A fresh UAS, the UAC with a caller per call and its message trace; then wait for
    the calls' events (up to DRAIN_S) before the UAS goes."""
    trace = step_dir / "invites.tsv"
    plan = Plan(step_duration_s=step.duration_s, hold_ms=HOLD_MS)
    uas = SippCommand(
        scenario="uas", workdir=step_dir / "uas", local_port=ctx.uas_port, service=EXTENSION,
        calls=step.calls, timeout_s=plan.step_timeout_s() + 10,
    )  # fmt: skip
    uas.workdir.mkdir(parents=True)
    uas_proc = Managed("sipp-uas", uas.argv(sipp_binary()), cwd=uas.workdir, log_path=uas.log_path)
    try:
        _wait_bound(uas_proc, ctx.uas_port)
        uac = SippCommand(
            scenario="uac_callers", workdir=step_dir / "uac", remote=ctx.gw.remote,
            local_port=ctx.gw.uac_port, service=DID, calls=step.calls, rate=step.rate,
            limit=plan.limit(step.rate), hold_ms=HOLD_MS, timeout_s=plan.step_timeout_s(),
            recv_timeout_ms=plan.recv_timeout_ms, rtt=True, keys={"domain": "127.0.0.1"},
            extra=["-inf", str(inf), "-trace_shortmsg", "-shortmessage_file", str(trace)],
        )  # fmt: skip
        uac_proc, uac_exit, window = _measure_uac(ctx.gw, uac, plan, "sipp-uac")
        sent = parse_invites(trace.read_text(errors="replace") if trace.exists() else "")
        t0 = time.monotonic()
        ctx.pool.wait_for(ctx.pool.taken + len(sent), DRAIN_S)
        wait_s = time.monotonic() - t0
        uas_exit = uas_proc.wait(2.0) or uas_proc.stop(grace=2, sig=signal.SIGUSR1)
    finally:
        uas_proc.stop(grace=1)
    figures = _figures(
        rate=step.rate, plan=plan, messages_per_call=ProxiedCalls.messages_per_call,
        uac=uac, uac_proc=uac_proc, uac_exit=uac_exit, uac_counts=read_counts(uac.stats_path),
        window=window, target=ctx.gw, uas_counts=read_counts(uas.stats_path),
        uas_proc=uas_proc, uas_exit=uas_exit,
    )  # fmt: skip
    return Placed(judge(figures, Criteria()), sent, wait_s, uac_proc.argv, uas_proc.argv)


def run_step(ctx: Context, step: Step) -> dict[str, Any]:
    """One rate: its callers, its calls, their events matched; the gateway's counters."""
    numbers = caller_numbers(step.calls, ctx.serial)
    ctx.serial += step.calls
    step_dir = ctx.workdir / f"step-{step.rate:05d}-{step.workers}w"
    step_dir.mkdir(parents=True)
    inf = step_dir / "callers.csv"
    inf.write_text(injection_file(numbers))
    before = metrics(ctx.gw)
    placed = place_calls(ctx, step, step_dir, inf)
    record: dict[str, Any] = {
        "rate": step.rate,
        "workers": step.workers,
        "duration_s": step.duration_s,
        "requested": step.calls,
        **step_figures(placed.sent, ctx.pool.take(), numbers),
        "wait_s": round(placed.wait_s, 2),
        "drain_s": DRAIN_S,
        "uac_argv": placed.uac_argv,
        "uas_argv": placed.uas_argv,
        "sip": _sip_figures(placed.sip),
        "gateway_counters": counter_deltas(before, metrics(ctx.gw)),
    }
    time.sleep(SETTLE_S)
    return record


def _step_line(rec: dict[str, Any]) -> str:
    parts = []
    for kind in KINDS:
        k = rec["kinds"][kind]
        lat = k["latency"]
        parts.append(
            f"{kind} {k['received']}/{k['placed']} p50 {lat['p50_ms']} p99 {lat['p99_ms']} "
            f"max {lat['max_ms']} ms"
        )
    sip = "clean" if rec["sip"]["clean"] else "UNCLEAN: " + "; ".join(rec["sip"]["unclean_reasons"])
    workers = f" ({rec['workers']} workers)" if rec.get("workers", 1) > 1 else ""
    return f"   {rec['rate']:5d} calls/s{workers}: " + ", ".join(parts) + f" (calls {sip})"


class Gateway(EventsGateway):
    """The event scenarios' gateway with `workers` worker processes (a supervisor and
    its workers sharing the SIP port, as proxied-calls' sipgw-2w; worker 0 serves the
    Events API, the others' events reach it through Redis)."""

    def __init__(self, workers: int = 1) -> None:
        super().__init__()
        self.workers = workers

    def config_text(self, sip_port: int, http_port: int, trunk_port: int, redis_url: str) -> str:
        base = render_config(sip_port, http_port, trunk_port, redis_url, workers=self.workers)
        return base + recognition.RECOGNITION_TOML


def phases(steps: Sequence[Step]) -> list[tuple[int, list[Step]]]:
    """The steps grouped by the gateway they need (its workers), in the order given:
    each group gets a gateway of its own."""
    groups: list[tuple[int, list[Step]]] = []
    for step in steps:
        if groups and groups[-1][0] == step.workers:
            groups[-1][1].append(step)
        else:
            groups.append((step.workers, [step]))
    return groups


def _setup(gw: EventsGateway, workdir: Path, steps: Sequence[Step], doc: dict[str, Any]) -> Context:
    """Gateway, tokens, the hit numbers in the contact index, the UAS registered, the
    subscriber connected."""
    gw.start(workdir / "gateway")
    doc["commands"]["sipgw"] = gw.argv
    doc["gateway"]["config"] = gw.config.read_text()
    sync_token, argv = create_token(gw)
    doc["commands"]["sync_token"] = argv
    token, argv = subscriber_token(gw)
    doc["commands"]["subscriber_token"] = argv
    serial, hits = 0, []
    for step in steps:  # the same numbers run_step will use
        hits += hits_of(caller_numbers(step.calls, serial))
        serial += step.calls
    doc["contacts"] = load_contacts(gw, sync_token, hits, SOURCE)
    calls = ProxiedCalls()
    calls.prepare(gw, workdir, Plan(step_duration_s=1.0, hold_ms=HOLD_MS))
    pool = SubscriberPool(gw.events_url(), token, 1, workdir / "subscriber")
    try:
        doc["subscriber"] = pool.start(timeout=30)
        doc["commands"]["subscriber"] = pool.argv
        if doc["subscriber"]["connected"] != 1:
            raise RuntimeError(f"the subscriber did not connect: {doc['subscriber']['errors']}")
    except BaseException:
        pool.stop()
        raise
    return Context(gw, pool, calls.uas_port, workdir)


def _teardown(gw: EventsGateway, ctx: Context | None, doc: dict[str, Any]) -> None:
    if ctx is not None:
        doc["subscriber"] = ctx.pool.stop()
    gw_doc = doc["gateway"]
    gw_doc["metrics_before_stop"] = metrics(gw) if gw.alive() else {}
    gw_doc["alive_until_stop"] = gw.alive()
    gw_doc["exit_code"] = gw.stop()
    gw_doc["stop_s"] = gw.stop_s
    gw_doc["log"] = gw.log_summary().to_json() if gw.proc else None


def run(quick: bool, budget_s: float, workroot: Path) -> dict[str, Any]:
    """The whole scenario; one JSON-ready document (see bench/README.md)."""
    from .runner import utc_now

    started = utc_now()
    t0 = time.monotonic()
    deadline = t0 + budget_s
    steps = STEPS_QUICK if quick else STEPS_FULL
    workdir = workroot / NAME
    workdir.mkdir(parents=True, exist_ok=True)
    _log(f"== {NAME}: {TITLE} (budget {budget_s:.0f} s)")
    doc: dict[str, Any] = {
        "schema": SCHEMA, "scenario": NAME, "title": TITLE, "unit": "ms", "quick": quick,
        "started_at": started.isoformat(), "budget_s": round(budget_s, 1),
        "method": _method(steps), "commands": {}, "gateway": {}, "steps": [], "error": None,
    }  # fmt: skip
    try:
        skip = no_time(quick, EST_SETUP_S + steps[0].estimate_s(), budget_s)
        if skip:
            doc["skipped"] = skip
            _log(f"   skipped, {skip}")
        else:
            for workers, group in phases(steps):
                # The one-process gateway's records stay where they always were
                # (doc["gateway"], doc["subscriber"], …); another gets its own part.
                part = (
                    doc
                    if workers == 1
                    else doc.setdefault(f"gateway_{workers}w", {"commands": {}, "gateway": {}})
                )
                _run_phase(quick, deadline, Gateway(workers), workdir / f"{workers}w", group,
                           part, doc["steps"])  # fmt: skip
    except Exception as err:
        doc["error"] = f"{type(err).__name__}: {err}"
        doc["traceback"] = traceback.format_exc()
        _log(f"   ERROR {err}")
    wall = time.monotonic() - t0
    first: dict[str, Any] = next((s for s in doc["steps"] if "uac_argv" in s), {})
    doc["commands"]["uac_first_step"] = first.get("uac_argv")
    doc["commands"]["uas_first_step"] = first.get("uas_argv")
    doc.update(
        finished_at=utc_now().isoformat(),
        wall_time_s=round(wall, 1),
        over_budget_s=round(max(0.0, wall - budget_s), 1),
        machine=procstat.machine_info(),
        versions=versions(),
    )
    return doc


def _run_phase(
    quick: bool,
    deadline: float,
    gw: Gateway,
    workdir: Path,
    steps: Sequence[Step],
    part: dict[str, Any],
    records: list[dict[str, Any]],
) -> None:
    """One gateway (`part` gets its commands, config, contacts, subscriber, exit) and its
    steps (appended to `records`); the gateway is stopped whatever happens."""
    ctx: Context | None = None
    try:
        ctx = _setup(gw, workdir, steps, part)
        for step in steps:
            skip = no_time(quick, step.estimate_s() + 4, deadline - time.monotonic())
            if skip:
                _log(f"   {step.rate} calls/s: skipped, {skip}")
                records.append({"rate": step.rate, "workers": step.workers, "skipped": skip})
                continue
            rec = run_step(ctx, step)
            _log(_step_line(rec))
            records.append(rec)
    finally:
        _teardown(gw, ctx, part)


def _method(steps: Sequence[Step]) -> dict[str, Any]:
    return {
        "steps": [
            {"rate": s.rate, "duration_s": s.duration_s, "calls": s.calls, "workers": s.workers}
            for s in steps
        ],
        "hold_ms": HOLD_MS,
        "kinds": "alternating per call: odd calls a caller in the contact index (hit), even "
        "calls one that is not (miss); every number used once",
        "call_flow": "sipp UAC (trunk, uac_callers.xml) → sipgw → sipp UAS registered as 201; "
        "the DID rings 201",
        "subscriber": f"1 WebSocket subscription, token of user {EXTENSION}, "
        f"type={EVENT_TYPE}, websockets client, permessage-deflate as negotiated",
        "latency": "subscriber arrival (time.time_ns()) minus INVITE sent (sipp -trace_shortmsg, "
        "gettimeofday() after sendto()), matched by Call-ID; nearest-rank percentiles",
        "segments": "medians: INVITE → occurred_at (gateway saw it) → stream id (Redis, ms "
        "resolution, taken as its middle) → arrival",
        "drain_s": DRAIN_S,
        "recognition_budget_ms": 20,
    }
