"""The goals of issue #12, their bars, and how a run's results measure up to them.

`GOALS` is the one place the bars live, with the issue's numbers. `evaluate(docs)` reads
the (summarized) documents of one run, plus a soak result, and gives one `Verdict` per
goal: **met**, **not met** or **not measured** (the run did not produce the figure: a
scenario not run, a step skipped, a search whose max clean rate is only a lower bound
below the bar, a check shorter than the goal asks for). A part measured and missed makes
the goal "not met" even when another part is not measured. Pure: documents in, rows out.

Where each figure comes from:

- G1, G2: the step scenarios' summary rows, CPU per call at the common rate (the
  highest rate clean in every repetition of every implementation), the process tree's
  CPU only (sipgw's Redis apart, as in the issue's table);
- G3: sipgw's median max clean calls/s and its sustained check (and sipgw-2w's, shown);
- G4: the invite-event-latency steps (``steps[].kinds.{hit,miss}.latency``, ``missing``,
  ``workers``): the worse of hits and misses;
- G5: the fan-out summary row of 10 000 subscribers (``from_publish.p99_ms``,
  ``gateway_cpu_us_per_extra_subscriber``, ``rss_per_subscriber_kib``);
- G6: the soak document's summary (bench/soak.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Doc = Mapping[str, Any]

MET, NOT_MET, NOT_MEASURED = "met", "not met", "not measured"


@dataclass(frozen=True)
class Goal:
    key: str  # "G1" … "G6", the numbering
    title: str
    bars: Mapping[str, float]  # the numbers, named
    bar_text: str  # the bars as the summary shows them


GOALS: tuple[Goal, ...] = (
    Goal(
        "G1", "CPU per proxied call",
        {"max_ratio": 3.0},
        "≤ 3x Kamailio's, 1 and 2 workers (sipgw / kamailio-1w, sipgw-2w / kamailio-2w)",
    ),
    Goal(
        "G2", "CPU per OPTIONS",
        {"max_ratio_kamailio": 3.0, "max_ratio_floor": 2.0},
        "≤ 3x Kamailio's (kamailio-1w) and ≤ 2x the bare uvloop responder (uvloop-floor)",
    ),
    Goal(
        "G3", "max clean calls/s, 1 process",
        {"baseline": 400, "factor": 4, "sustain_s": 34},
        "≥ 4x the issue's 400 = 1600 calls/s, holding the 34 s sustained check",
    ),
    Goal(
        "G4", "INVITE → call.offered at a WebSocket subscriber, recognition on",
        {"rate": 300, "p50_ms": 1.0, "p99_ms": 5.0, "rate_2w": 1000, "p99_ms_2w": 20.0},
        "300 calls/s: p50 ≤ 1 ms, p99 ≤ 5 ms; 1000 calls/s, 2 workers: p99 ≤ 20 ms; "
        "every event delivered",
    ),
    Goal(
        "G5", "fan-out, one event to 10 000 subscribers",
        {"subscribers": 10000, "p99_ms": 150.0, "cpu_us": 5.0, "rss_kib": 20.0},
        "publish → arrival p99 ≤ 150 ms; ≤ 5 µs gateway CPU per subscriber per event; "
        "≤ 20 KiB RSS per idle subscriber",
    ),
    Goal(
        "G6", "soak, 10 minutes at 60 % of the max clean rate",
        {"duration_s": 600, "rate_fraction": 0.6, "gc_pause_ms": 20.0, "rss_growth": 0.05,
         "failed": 0},
        "600 s at 60 % of the max clean rate: longest GC pause ≤ 20 ms, RSS growth ≤ 5 % "
        "after warm-up, 0 failed calls",
    ),
)  # fmt: skip


@dataclass(frozen=True)
class Verdict:
    key: str
    title: str
    measured: str
    bar: str
    status: str  # MET, NOT_MET or NOT_MEASURED
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "goal": self.key, "title": self.title, "measured": self.measured,
            "bar": self.bar, "status": self.status, "notes": list(self.notes),
        }  # fmt: skip


@dataclass(frozen=True)
class Part:
    """One figure of a goal: what was measured, and whether it meets its bar (None: not
    measured)."""

    text: str
    ok: bool | None
    note: str = ""


def combine(parts: Sequence[Part]) -> str:
    """A goal is met when every part is; a part missed is "not met" whatever the rest."""
    if any(p.ok is False for p in parts):
        return NOT_MET
    if not parts or any(p.ok is None for p in parts):
        return NOT_MEASURED
    return MET


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _rows(doc: Doc | None) -> dict[str, Mapping[str, Any]]:
    if not doc or "summary" not in doc:
        return {}
    return {r["label"]: r for r in doc["summary"].get("rows", []) if "label" in r}


def _tick_note(doc: Doc, rate: int | None) -> str:
    """/proc counts CPU in clock ticks: what one tick is per call in one step at `rate`."""
    ticks = (doc.get("machine") or {}).get("clock_ticks_per_s") or 100
    duration = (doc.get("method") or {}).get("step_duration_s") or 1.0
    if not rate:
        return ""
    per_call_us = 1e6 / ticks / (rate * duration)
    return f"CPU resolution ±{per_call_us:.1f} µs per call (one /proc tick per step)"


def _cpu_ratio(doc: Doc, ours: str, ref: str, limit: float, unit: str = "ms") -> Part:
    rows = _rows(doc)
    a, b = rows.get(ours), rows.get(ref)
    if a is None or b is None:
        missing = ", ".join(x for x, r in ((ours, a), (ref, b)) if r is None)
        return Part(f"{ours} / {ref}: {missing} not in the run", None)
    cpu_a, cpu_b = a["cpu_ms_per_call_at_common_rate"], b["cpu_ms_per_call_at_common_rate"]
    if cpu_a is None or not cpu_b:
        return Part(f"{ours} / {ref}: no CPU figure at the common rate", None)
    scale, digits = (1000.0, 1) if unit == "µs" else (1.0, 3)
    ratio = cpu_a / cpu_b
    return Part(
        f"{ours} {_fmt(cpu_a * scale, digits)} / {ref} {_fmt(cpu_b * scale, digits)} {unit} "
        f"= x{ratio:.2f}",
        ratio <= limit,
    )


def _common_note(doc: Doc, unit: str) -> list[str]:
    s = doc["summary"]
    rate = s.get("common_rate")
    notes = [f"at {rate} {unit}, the common rate" + (
        "" if s.get("common_rate_clean_everywhere") else " (NOT clean everywhere)")]  # fmt: skip
    tick = _tick_note(doc, rate)
    return notes + ([tick] if tick else [])


def g1(goal: Goal, docs: Mapping[str, Doc]) -> Verdict:
    doc = docs.get("proxied-calls")
    if doc is None:
        return _unmeasured(goal, "proxied-calls not run")
    limit = goal.bars["max_ratio"]
    parts = [
        _cpu_ratio(doc, "sipgw", "kamailio-1w", limit),
        _cpu_ratio(doc, "sipgw-2w", "kamailio-2w", limit),
    ]
    return _verdict(goal, parts, [*_common_note(doc, "calls/s"), "ms per call, no Redis"])


def g2(goal: Goal, docs: Mapping[str, Doc]) -> Verdict:
    doc = docs.get("options")
    if doc is None:
        return _unmeasured(goal, "options not run")
    parts = [
        _cpu_ratio(doc, "sipgw", "kamailio-1w", goal.bars["max_ratio_kamailio"], "µs"),
        _cpu_ratio(doc, "sipgw", "uvloop-floor", goal.bars["max_ratio_floor"], "µs"),
    ]
    return _verdict(goal, parts, _common_note(doc, "requests/s"))


def _rate_text(row: Mapping[str, Any]) -> str:
    mc = row["max_clean_rate"]
    bound = "≥ " if row.get("max_clean_is_lower_bound") else ""
    spread = f"[{_fmt(mc['min'], 0)}-{_fmt(mc['max'], 0)}]"
    return f"{row['label']} {bound}{_fmt(mc['median'], 0)} {spread}"


def _sustained_text(sus: Mapping[str, Any] | None) -> str:
    if not sus:
        return "no sustained check"
    if "skipped" in sus:
        return f"sustained skipped ({sus['skipped']})"
    verdict = "clean" if sus["clean"] else "UNCLEAN"
    return f"sustained {verdict} @ {sus['rate']} for {sus['duration_s']:.0f} s"


def g3(goal: Goal, docs: Mapping[str, Doc]) -> Verdict:
    doc = docs.get("proxied-calls")
    rows = _rows(doc)
    row = rows.get("sipgw")
    if doc is None or row is None or not row.get("repetitions_run"):
        return _unmeasured(goal, "sipgw's proxied-calls search did not run")
    bar = goal.bars["baseline"] * goal.bars["factor"]
    median = row["max_clean_rate"]["median"]
    sus = row.get("sustained")
    text = f"{_rate_text(row)} calls/s, {_sustained_text(sus)}"
    notes = []
    top = max(doc["method"]["rates"])
    if median is None or median < bar:
        if row.get("max_clean_is_lower_bound"):
            ok = None
            notes.append(
                f"every step offered was clean (ladder top {top}, or the search ran out of "
                f"time): the limit lies higher, the bar of {bar:.0f} is not reached by the "
                "ladder"
            )
        else:
            ok = False
    elif not sus or "skipped" in sus:
        ok = None
        notes.append("no sustained check at that rate")
    elif sus["duration_s"] < goal.bars["sustain_s"]:
        ok = None if sus["clean"] else False
        notes.append(
            f"the sustained check lasted {sus['duration_s']:.0f} s (--quick), the goal asks "
            f"{goal.bars['sustain_s']:.0f} s"
        )
    else:
        ok = bool(sus["clean"])
    two = rows.get("sipgw-2w")
    if two is not None and two.get("repetitions_run"):
        sustained = _sustained_text(two.get("sustained"))
        notes.append(f"workers = 2: {_rate_text(two)} calls/s, {sustained}")
    return _verdict(goal, [Part(text, ok)], notes)


def _latency_step(doc: Doc, rate: float, workers: int) -> Mapping[str, Any] | None:
    for step in doc.get("steps", []):
        if step.get("rate") == rate and int(step.get("workers", 1)) == workers:
            return step if not step.get("skipped") else None
    return None


def _latency_part(
    doc: Doc, rate: float, workers: int, p50_bar: float | None, p99_bar: float
) -> Part:
    name = f"{rate:.0f} calls/s" + (f", {workers} workers" if workers > 1 else "")
    step = _latency_step(doc, rate, workers)
    if step is None:
        return Part(f"{name}: no step", None)
    kinds = step["kinds"].values()
    p50s = [k["latency"]["p50_ms"] for k in kinds]
    p99s = [k["latency"]["p99_ms"] for k in kinds]
    missing = int(step.get("missing", 0))
    if any(v is None for v in (*p50s, *p99s)):
        return Part(f"{name}: no events received ({missing} missing)", False if missing else None)
    p50, p99 = max(p50s), max(p99s)
    ok = p99 <= p99_bar and missing == 0 and (p50_bar is None or p50 <= p50_bar)
    calls = "" if step["sip"]["clean"] else ", the calls UNCLEAN"
    return Part(
        f"{name}: p50 {p50:.2f} ms, p99 {p99:.2f} ms, {step['events_received']}/"
        f"{step['calls_placed']} events{calls}",
        ok,
    )


def g4(goal: Goal, docs: Mapping[str, Doc]) -> Verdict:
    doc = docs.get("invite-event-latency")
    if doc is None:
        return _unmeasured(goal, "invite-event-latency not run")
    b = goal.bars
    parts = [
        _latency_part(doc, b["rate"], 1, b["p50_ms"], b["p99_ms"]),
        _latency_part(doc, b["rate_2w"], 2, None, b["p99_ms_2w"]),
    ]
    return _verdict(goal, parts, ["the worse of recognition hits and misses"])


def g5(goal: Goal, docs: Mapping[str, Doc]) -> Verdict:
    doc = docs.get("fan-out")
    if doc is None:
        return _unmeasured(goal, "fan-out not run")
    n = goal.bars["subscribers"]
    row = next(
        (r for r in doc.get("summary", {}).get("rows", [])
         if r.get("subscribers") == n and r.get("deflate")), None,
    )  # fmt: skip
    if row is None:
        return _unmeasured(goal, f"no level of {n:.0f} subscribers (--quick stops at 1000)")
    p99 = (row.get("from_publish") or {}).get("p99_ms")
    cpu = row.get("gateway_cpu_us_per_extra_subscriber")
    rss = row.get("rss_per_subscriber_kib")
    b = goal.bars
    parts = [
        Part(f"p99 {_fmt(p99, 1)} ms", None if p99 is None else p99 <= b["p99_ms"]),
        Part(f"{_fmt(cpu, 1)} µs CPU per subscriber", None if cpu is None else cpu <= b["cpu_us"]),
        Part(f"{_fmt(rss, 1)} KiB per subscriber", None if rss is None else rss <= b["rss_kib"]),
    ]
    notes = [f"{row['live']} live, {row['deliveries']}/{row['deliveries_expected']} deliveries"]
    floor = doc.get("summary", {}).get("floor") or {}
    if floor.get("cpu_us_per_socket_median") is not None:
        notes.append(
            f"the floor, a bare uvloop write to each of {floor['connections']} loopback "
            f"sockets: {_fmt(floor['cpu_us_per_socket_median'], 1)} µs per socket (median; "
            f"fastest round {_fmt(floor['cpu_us_per_socket_min'], 1)})"
        )
    return _verdict(goal, parts, notes)


def g6(goal: Goal, docs: Mapping[str, Doc]) -> Verdict:
    doc = docs.get("soak")
    if doc is None:
        return _unmeasured(goal, "no soak result (python -m bench --scenario soak)")
    s = doc.get("summary") or {}
    if s.get("error") or s.get("duration_s") is None:
        return _unmeasured(goal, f"the soak did not run: {s.get('error') or 'no figures'}")
    b = goal.bars
    duration, rate, max_rate = s["duration_s"], s.get("rate"), s.get("max_clean_rate")
    failed, growth, gc_ms = s.get("failed"), s.get("rss_growth"), s.get("gc_pause_max_ms")
    full = duration >= b["duration_s"]
    parts = [
        Part(f"{duration:.0f} s at {rate} calls/s (max clean {max_rate})", True if full else None),
        Part(f"failed {failed}", None if failed is None else failed <= b["failed"]),
        # A short soak's warm-up may end before the heap's steady state (a transaction's
        # state lives 32 s): its growth is shown, not judged.
        Part(f"RSS growth {_fmt(None if growth is None else growth * 100, 1)} %",
             None if growth is None or not full else growth <= b["rss_growth"]),
        Part(f"longest GC pause {_fmt(gc_ms, 1)} ms",
             None if gc_ms is None else gc_ms <= b["gc_pause_ms"]),
    ]  # fmt: skip
    notes = []
    if s.get("source"):
        notes.append(f"from {s['source']}")
    if gc_ms is None:
        notes.append("the gateway exports no GC pause metric (sipgw_gc_pause_seconds)")
    if s.get("clean") is False:
        notes.append("the calls were not clean: " + "; ".join(s.get("unclean_reasons", [])))
    lag = s.get("event_lag_ms") or {}
    if lag.get("p99_ms") is not None:
        notes.append(f"event lag p99 {lag['p99_ms']:.1f} ms, max {_fmt(lag.get('max_ms'), 1)} ms")
    return _verdict(goal, parts, notes)


def _unmeasured(goal: Goal, why: str) -> Verdict:
    return Verdict(goal.key, goal.title, "-", goal.bar_text, NOT_MEASURED, (why,))


def _verdict(goal: Goal, parts: Sequence[Part], notes: Sequence[str]) -> Verdict:
    measured = "; ".join(p.text for p in parts)
    extra = tuple(p.note for p in parts if p.note)
    return Verdict(goal.key, goal.title, measured, goal.bar_text, combine(parts),
                   (*notes, *extra))  # fmt: skip


EVALUATE: dict[str, Callable[[Goal, Mapping[str, Doc]], Verdict]] = {
    "G1": g1, "G2": g2, "G3": g3, "G4": g4, "G5": g5, "G6": g6,
}  # fmt: skip


def evaluate(docs: Sequence[Doc], soak: Doc | None = None) -> list[Verdict]:
    """One verdict per goal, from one run's summarized documents (and a soak result)."""
    by_name = {d["scenario"]: d for d in docs}
    if soak is not None:
        by_name.setdefault("soak", soak)
    return [EVALUATE[goal.key](goal, by_name) for goal in GOALS]


def table(verdicts: Sequence[Verdict]) -> str:
    """The goals table (Markdown, readable as text)."""
    lines = [
        "**Goals of issue #12**",
        "",
        "| goal | measured | bar | status |",
        "| --- | --- | --- | --- |",
    ]
    for v in verdicts:
        notes = f" ({'; '.join(v.notes)})" if v.notes else ""
        status = v.status.upper() if v.status == NOT_MET else v.status
        lines.append(f"| {v.key} {v.title} | {v.measured}{notes} | {v.bar} | {status} |")
    met = sum(1 for v in verdicts if v.status == MET)
    lines += ["", f"{met} of {len(verdicts)} goals met."]
    return "\n".join(lines)
