"""Run scenarios against every implementation and collect one JSON-ready document each.

For each repetition, the implementations take turns (sipgw, sipgw with 2 workers,
Kamailio 1 worker, Kamailio 2 workers, the uvloop floor in options, then again), so a
slow drift of the shared machine's load affects them alike instead of penalizing
whichever ran last. A target takes part only in the scenarios it declares (the floor:
options), and in at most its `max_repetitions` searches. Each turn
starts the implementation afresh, runs the step search, and stops it. Then each
implementation gets its sustained check (one long step at its median max clean rate, on
a fresh process).

The run has a time budget. The sustained checks' and the stops' time is kept back
first; each (repetition, implementation) turn gets a share of the rest by what its
implementation's search needs (`search_share`: sipgw's first when time is short); a
search that reaches its share stops stepping and says so (its max clean rate is then a
lower bound), so `--quick` stays under 3 minutes and a full run under 20 on a 2-core
machine, whatever the results.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from gateway import native

from . import SCHEMA, procstat
from .floor import FloorTarget
from .kamailio import KamailioTarget
from .scenarios import UAC_TRANSPORT, Plan, Scenario
from .sipgw import SipgwTarget
from .sipp import MAX_SOCKET, ONE_SOCKET, PER_CALL
from .steps import Criteria, StepFigures, search
from .targets import Target, supported

TARGETS: dict[str, Callable[[], Target]] = {
    "sipgw": SipgwTarget,
    "sipgw-2w": lambda: SipgwTarget(2),
    "kamailio-1w": lambda: KamailioTarget(1),
    "kamailio-2w": lambda: KamailioTarget(2),
    "uvloop-floor": FloorTarget,  # options only: the Python floor (bench/floor.py)
}


@dataclass(frozen=True)
class RunOptions:
    quick: bool
    repetitions: int
    scenarios: Sequence[str]
    targets: Sequence[str]
    budget_s: float  # the whole run, all scenarios
    step_duration_s: float | None = None  # None: the scenario's default
    hold_ms: int = 100
    keep_workdir: bool = False
    criteria: Criteria = field(default_factory=Criteria)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    for line in (out.stdout + out.stderr).splitlines():
        if line.strip():
            return line.strip()
    return "unknown"


def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions(targets: Sequence[Target]) -> dict[str, str]:
    found = {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "uvloop": _dist_version("uvloop"),
        "matplotlib": _dist_version("matplotlib"),
        "sipp": _first_line([shutil.which("sipp") or "sipp", "-v"]),
        # The gateways started by the bench inherit this process's SIPGW_NATIVE and
        # load the same build (make bench: SIPGW_NATIVE=1, compiled or an error).
        "sipgw_core": native.status().describe(),
    }
    for target in targets:
        found.setdefault(target.impl, target.version())
    return found


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _step_line(label: str, step: StepFigures, unit: str) -> str:
    rt = step.response_ms
    cpu = step.cpu_ms_per_call
    return (
        f"  {label:12} {step.offered_rate:6d} {unit}: ok {step.successful}/{step.attempted}, "
        f"retrans {step.retransmissions}, achieved {step.achieved_rate:7.1f}/s, "
        f"rt p50/p99 {rt['p50']}/{rt['p99']} ms, "
        f"cpu {'-' if cpu is None else f'{cpu:.3f}'} ms/call ({step.proxy_cores:.2f} cores), "
        f"udp drops {step.udp_rcvbuf_errors} ({step.proxy_socket_drops} at the proxy) "
        f"-> {'clean' if step.clean else 'UNCLEAN'}"
    )


IDLE_SAMPLE_S = 0.5
# --quick runs the sustained check for the product only: it is a smoke test, and three
# more starts, long steps and stops would not fit in its 3 minutes.
QUICK_SUSTAINED = ("sipgw",)


def run_turn(
    scenario: Scenario,
    target: Target,
    workdir: Path,
    opts: RunOptions,
    *,
    rates: Sequence[int],
    plan: Plan,
    deadline: float,
) -> dict[str, Any]:
    """Start the implementation, prepare, measure its idle CPU, step through `rates`
    until one is unclean (or the deadline), stop it. Never raises for a failed start or
    step: the error goes into the record, so one broken turn loses no other results."""
    record: dict[str, Any] = {"started_at": utc_now().isoformat(), "error": None}
    t0 = time.monotonic()
    try:
        target.start(workdir)
        record["command"] = target.argv
        record["sip_port"] = target.sip_port
        record["socket_buffers"] = procstat.socket_buffers(target.sip_port)
        scenario.prepare(target, workdir, plan)
        # Timers and housekeeping cost CPU with no traffic at all (Kamailio's timer
        # processes, sipgw's event loop): measured so per-call CPU at low rates can be
        # read net of it (cpu_s - idle_cores x wall_s).
        before = procstat.tree_cpu_seconds(target.pid)
        time.sleep(IDLE_SAMPLE_S)
        record["idle_cores"] = round(
            (procstat.tree_cpu_seconds(target.pid) - before) / IDLE_SAMPLE_S, 4
        )

        def step(rate: int) -> StepFigures:
            figures = scenario.run_step(target, workdir, rate, plan)
            if not target.alive():
                figures.detail["target_exited"] = True
            time.sleep(plan.settle_s)
            return figures

        result = search(
            rates,
            step,
            opts.criteria,
            deadline=deadline,
            step_cost_s=plan.step_cost_s(),
            on_step=lambda s: _log(_step_line(target.label, s, scenario.unit)),
        )
        record.update(result.to_json())
        record["search_s"] = round(time.monotonic() - t0, 1)  # start and steps, no stop
        if target.alive():
            record["counters"] = target.turn_counters()
        if not target.alive():
            record["error"] = f"{target.label} exited during the run"
    except Exception as err:
        record["error"] = f"{type(err).__name__}: {err}"
        record["traceback"] = traceback.format_exc()
        record.setdefault("max_clean_rate", None)
        record.setdefault("steps", [])
        _log(f"  {target.label}: ERROR {err}")
    finally:
        record["alive_until_stop"] = target.alive()
        record["exit_code"] = target.stop()
        record["stop_s"] = target.stop_s
        record["log"] = target.log_summary().to_json()
        record["finished_at"] = utc_now().isoformat()
    return record


def turn_order(targets: Mapping[str, Target], repetitions: int) -> list[tuple[int, str]]:
    """(repetition, label) in the order they run: within each repetition every target in
    turn, so drift in the machine's load hits them alike; a target with fewer
    repetitions (`max_repetitions`: the uvloop floor) drops out after its last."""
    return [
        (rep, label)
        for rep in range(repetitions)
        for label, target in targets.items()
        if rep < (target.max_repetitions or repetitions)
    ]


def turn_start_s(scenario: Scenario, target: Target) -> float:
    """What a turn takes before its first step: the scenario's estimate (start,
    registration, idle sample), or the target's own when it starts faster."""
    own = target.start_s
    return scenario.start_s if own is None else min(own, scenario.start_s)


def search_share(
    left_s: float,
    remaining: Sequence[str],
    needs: Mapping[str, float],
    priority: Mapping[str, int],
) -> float:
    """Search time of the next turn, `remaining[0]`, out of what is left for the searches
    (`left_s`), given what each implementation's search needs (`needs`, seconds).

    When there is enough, every remaining turn gets its need and the spare in proportion.
    When there is not, the turns of a higher `priority` (a lower number: sipgw's) keep
    their needs and the others share the rest in proportion to theirs: the Kamailio
    searches, which climb furthest, are cut short (their rates become lower bounds)
    before sipgw's are.
    """
    left_s = max(0.0, left_s)
    this = remaining[0]
    total = sum(needs[label] for label in remaining)
    if total <= left_s:
        return left_s * needs[this] / total if total > 0 else 0.0
    ahead = sum(needs[label] for label in remaining if priority[label] < priority[this])
    peers = sum(needs[label] for label in remaining if priority[label] == priority[this])
    return min(needs[this], max(0.0, left_s - ahead) * needs[this] / peers)


def _skipped(reason: str, **extra: Any) -> dict[str, Any]:
    return {"skipped": reason, "steps": [], "max_clean_rate": None, **extra}


def _median_rate(reps: list[dict[str, Any]]) -> int | None:
    rates = sorted(r["max_clean_rate"] for r in reps if r.get("max_clean_rate"))
    return rates[(len(rates) - 1) // 2] if rates else None  # lower median: a stepped rate


def run_scenario(
    scenario: Scenario, opts: RunOptions, budget_s: float, workroot: Path
) -> dict[str, Any]:
    """The step searches (all repetitions, implementations taking turns), then the
    sustained check of each implementation, within `budget_s`."""
    started = utc_now()
    plan = scenario.plan(opts.quick, opts.step_duration_s, opts.hold_ms)
    sustain_s = scenario.sustain_s(opts.quick)
    sustain_plan = replace(plan, step_duration_s=sustain_s)
    t0 = time.monotonic()
    end = t0 + budget_s
    labels, not_here = supported(opts.targets, TARGETS, scenario.name)
    for label, why in not_here.items():
        _log(f"  {label}: not in {scenario.name} ({why})")
    targets = {label: TARGETS[label]() for label in labels}
    impls: dict[str, dict[str, Any]] = {
        label: {
            "label": label,
            "implementation": t.impl,
            "workers": t.workers,
            "notes": t.notes,
            "repetitions": [],
            "sustained": None,
        }
        for label, t in targets.items()
    }

    def stop_s(label: str) -> float:
        return targets[label].expected_stop(scenario.leaves_requests_pending)

    # Time kept back for the sustained checks (start, register, idle sample, the step,
    # the workers' counters and a little slack, the stop).
    sustained = [
        label
        for label in labels
        if targets[label].sustained_check and (not opts.quick or label in QUICK_SUSTAINED)
    ]
    reserve = (
        sum(sustain_plan.step_cost_s() + scenario.start_s + 1.5 + stop_s(label)
            for label in sustained)
        if sustain_s
        else 0.0
    )  # fmt: skip
    rates = scenario.rates(opts.quick)
    # What each implementation's search needs: the whole ladder until one has run (or
    # when its last search was cut short by the budget), then what its last search took
    # and room for two more steps (the next search may climb further), unless it
    # offered every rate.
    needs = {
        label: turn_start_s(scenario, targets[label]) + len(rates) * plan.step_cost_s()
        for label in labels
    }
    priority = {label: targets[label].budget_priority for label in labels}
    turns = turn_order(targets, opts.repetitions)
    _log(f"== {scenario.name}: {scenario.title}")
    for done, (rep, label) in enumerate(turns):
        remaining = [lab for _, lab in turns[done:]]
        # The stops are kept out of the division: sipgw's drain after an unclean step
        # must not shorten its search.
        left = end - reserve - time.monotonic() - sum(stop_s(lab) for lab in remaining)
        share = search_share(left, remaining, needs, priority)
        if share < plan.step_cost_s() + 5:
            _log(f"  {label} repetition {rep + 1}: skipped, time budget exhausted")
            impls[label]["repetitions"].append(_skipped("time budget exhausted", repetition=rep))
            continue
        _log(f"-- {label}, repetition {rep + 1}/{opts.repetitions} (budget {share:.0f}s)")
        workdir = workroot / scenario.name / label / f"rep{rep}"
        workdir.mkdir(parents=True)
        record = run_turn(
            scenario, TARGETS[label](), workdir, opts,
            rates=rates, plan=plan, deadline=time.monotonic() + share,
        )  # fmt: skip
        record["repetition"] = rep
        record["search_budget_s"] = round(share, 1)
        impls[label]["repetitions"].append(record)
        cut = str(record.get("stop_reason", "")).startswith("time budget")
        if record.get("search_s") is not None and not cut and not record.get("error"):
            whole = len(record.get("steps", [])) == len(rates)
            needs[label] = record["search_s"] + (0.0 if whole else 2 * plan.step_cost_s())
        _log(
            f"   max clean {record.get('max_clean_rate')} {scenario.unit}: "
            f"{record.get('stop_reason', record.get('error'))}"
        )
    if sustain_s:
        # In the order given (sipgw first): if the searches overran the reserve, the
        # product's own check is the last to be dropped.
        for label in sustained:
            impls[label]["sustained"] = _sustain(
                scenario, label, impls[label]["repetitions"], opts, sustain_plan,
                workroot, deadline=end - stop_s(label),
            )  # fmt: skip
    return {
        "schema": SCHEMA,
        "scenario": scenario.name,
        "title": scenario.title,
        "unit": scenario.unit,
        "quick": opts.quick,
        "started_at": started.isoformat(),
        "finished_at": utc_now().isoformat(),
        "wall_time_s": round(time.monotonic() - t0, 1),
        "machine": procstat.machine_info(),
        "versions": versions(list(targets.values())),
        "method": {
            "rates": list(scenario.rates(opts.quick)),
            "step_duration_s": plan.step_duration_s,
            "sustain_duration_s": sustain_s,
            "hold_ms": plan.hold_ms if scenario.name == "proxied-calls" else None,
            "recv_timeout_ms": plan.recv_timeout_ms,
            "settle_s": plan.settle_s,
            "concurrent_limit": "sipp -l = max(50, rate)",
            "repetitions": opts.repetitions,
            "repetitions_per_target": {
                label: min(opts.repetitions, t.max_repetitions or opts.repetitions)
                for label, t in targets.items()
            },
            "sustained_targets": sustained if sustain_s else [],
            "targets_skipped": not_here,
            "messages_per_call": scenario.messages_per_call,
            "criteria": opts.criteria.to_json(),
            "transport": (
                f"UDP over loopback; the UAC sends each call (OPTIONS: each request) from a "
                f"socket of its own (sipp -t {UAC_TRANSPORT} -max_socket {MAX_SOCKET}), the "
                f"UAS and its REGISTER from one socket (-t {ONE_SOCKET}); the same for every "
                "implementation"
            ),
            "uac_transport": UAC_TRANSPORT,
            "uac_max_socket": MAX_SOCKET if UAC_TRANSPORT == PER_CALL else None,
            "uas_transport": ONE_SOCKET,
            "cpu": "user+system time of the implementation's process tree (/proc), "
            "from the UAC's start to its exit",
        },
        "commands": _commands(impls),
        "implementations": list(impls.values()),
    }


def _sustain(
    scenario: Scenario,
    label: str,
    reps: list[dict[str, Any]],
    opts: RunOptions,
    plan: Plan,
    workroot: Path,
    *,
    deadline: float,
) -> dict[str, Any]:
    """One long step at the implementation's median max clean rate, on a fresh process.

    Short steps end before a proxy reaches its steady state: a UDP transaction's state
    lives up to 64 x T1 = 32 s after it completes, so the heap, the timer wheel and (for
    a garbage-collected runtime) the collector's work keep growing for that long. A rate
    that is clean for 4 s and not for 40 s is not a rate to run in production.
    """
    rate = _median_rate(reps)
    if rate is None:
        return _skipped("no clean rate to sustain")
    if time.monotonic() + plan.step_cost_s() + scenario.start_s > deadline:
        _log(f"  {label} sustained: skipped, time budget exhausted")
        return _skipped("time budget exhausted", rate=rate)
    _log(f"-- {label}, sustained {plan.step_duration_s:.0f}s at {rate} {scenario.unit}")
    workdir = workroot / scenario.name / label / "sustained"
    workdir.mkdir(parents=True)
    record = run_turn(
        scenario, TARGETS[label](), workdir, opts, rates=[rate], plan=plan, deadline=deadline
    )
    record["rate"] = rate
    record["clean"] = bool(record.get("steps")) and record["steps"][0]["clean"]
    return record


def _commands(impls: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The exact command lines of the first repetition that ran, per implementation."""
    out: dict[str, Any] = {}
    for label, impl in impls.items():
        for rep in impl["repetitions"]:
            if rep.get("command"):
                steps = rep.get("steps") or [{}]
                detail = steps[0].get("detail", {}) if steps else {}
                out[label] = {
                    "proxy": rep["command"],
                    "uac_first_step": detail.get("uac_argv"),
                    "uas_first_step": detail.get("uas_argv"),
                }
                break
    return out


@contextlib.contextmanager
def workroot(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sipgw-bench-"))
    try:
        yield path
    finally:
        if keep:
            _log(f"work directory kept: {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)
