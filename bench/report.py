"""Summaries of a scenario's JSON document: headline table, Markdown, PNG plots.

The summary added to each document (``doc["summary"]``):

- per implementation: the max clean rate of every repetition and their median, min and
  max; the figures at the *common rate*;
- the common rate: the highest offered rate that was clean in every repetition of every
  implementation (so CPU per call and response times are compared at the same load,
  below everyone's limit); if there is none, the lowest rate offered;
- ratios sipgw / each Kamailio configuration: max clean rate (higher is better for
  sipgw when > 1) and CPU per call at the common rate (lower is better when < 1).

The scenarios of fixed work (recognition here; invite-event-latency and fan-out in
bench/report_events.py; redis-cluster in bench/report_cluster.py) have their own summary,
table, section and plots: `FIXED`.
"""

from __future__ import annotations

import signal
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from . import report_cluster, report_events, report_soak
from .steps import spread

Doc = dict[str, Any]


def _repetitions(impl: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Repetitions that ran (not skipped, no error before the first step)."""
    return [
        r for r in impl["repetitions"] if r.get("steps") and r.get("max_clean_rate") is not None
    ]


def _step_at(rep: Mapping[str, Any], rate: int) -> Mapping[str, Any] | None:
    return next((s for s in rep["steps"] if s["offered_rate"] == rate), None)


def common_rate(doc: Doc) -> tuple[int | None, bool]:
    """(rate, clean everywhere?) — see the module docstring."""
    reps = [r for impl in doc["implementations"] for r in _repetitions(impl)]
    if not reps:
        return None, False
    for rate in sorted(doc["method"]["rates"], reverse=True):
        steps = [_step_at(r, rate) for r in reps]
        if all(s is not None and s["clean"] for s in steps):
            return rate, True
    measured = [s["offered_rate"] for r in reps for s in r["steps"]]
    return (min(measured) if measured else None), False


def _median(values: Iterable[float | None]) -> float | None:
    data = [float(v) for v in values if v is not None]
    return statistics.median(data) if data else None


def _first_unclean(rep: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return next((s for s in rep["steps"] if not s["clean"]), None)


def summarize(doc: Doc) -> Doc:
    if doc["scenario"] in FIXED:
        return FIXED[doc["scenario"]].summarize(doc)
    rate, clean_everywhere = common_rate(doc)
    cores = doc["machine"].get("cores") or 1
    rows = []
    for impl in doc["implementations"]:
        reps = _repetitions(impl)
        runs = [*impl["repetitions"], *([impl["sustained"]] if impl.get("sustained") else [])]
        max_rates = [r["max_clean_rate"] for r in reps]
        at_common = [s for r in reps if rate is not None and (s := _step_at(r, rate))]
        unclean = [s for r in reps if (s := _first_unclean(r))]
        row = {
            "label": impl["label"],
            "sustained": _sustained_row(impl.get("sustained")),
            "idle_cores": _median(r.get("idle_cores") for r in reps),
            "cpu_ms_per_call_net_at_common_rate": _median(
                _net_cpu_ms(s, r.get("idle_cores"))
                for r in reps
                if rate is not None and (s := _step_at(r, rate))
            ),
            "implementation": impl["implementation"],
            "workers": impl["workers"],
            "repetitions_run": len(reps),
            "max_clean_rates": max_rates,
            "max_clean_rate": spread(max_rates),
            # No repetition met an unclean step (every rate clean, or out of time): the
            # implementation's limit is above what was offered.
            "max_clean_is_lower_bound": bool(reps)
            and all(all(s["clean"] for s in r["steps"]) for r in reps),
            "common_rate": rate,
            "cpu_ms_per_call_at_common_rate": _median(s["cpu_ms_per_call"] for s in at_common),
            "aux_cpu_ms_per_call_at_common_rate": _median(
                1000 * s.get("aux_cpu_s", 0.0) / s["successful"]
                for s in at_common
                if s["successful"]
            ),
            "response_ms_p50_at_common_rate": _median(s["response_ms"]["p50"] for s in at_common),
            "response_ms_p99_at_common_rate": _median(s["response_ms"]["p99"] for s in at_common),
            # Was the proxy CPU-bound where it failed? (1.0 = one core fully busy.)
            "proxy_cores_at_first_unclean_step": _median(s["proxy_cores"] for s in unclean),
            # Proxy + both sipps as a share of all cores: near 1.0 the machine, not the
            # proxy, may have set the limit (sipp shares the cores with the proxy).
            "bench_cpu_share_at_first_unclean_step": _median(
                (s["cpu_s"] + s["loadgen_cpu_s"]) / (s["wall_s"] * cores) for s in unclean
            ),
            "udp_rcvbuf_errors_at_first_unclean_step": _median(
                s["udp_rcvbuf_errors"] for s in unclean
            ),
            "proxy_socket_drops_at_first_unclean_step": _median(
                s.get("proxy_socket_drops") for s in unclean
            ),
            "first_unclean_reasons": [s["unclean_reasons"] for s in unclean],
            "log_warnings": sum(r.get("log", {}).get("warnings", 0) for r in runs),
            "log_errors": sum(r.get("log", {}).get("errors", 0) for r in runs),
            "log_other": sum(r.get("log", {}).get("other", 0) for r in runs),
            # Exit codes after SIGTERM (-9: it did not stop within the grace period) and
            # how long stopping took.
            "exit_codes": [r.get("exit_code") for r in runs if "exit_code" in r],
            "stop_s_max": max(
                (r["stop_s"] for r in runs if r.get("stop_s") is not None), default=None
            ),
            "errors": [r["error"] for r in impl["repetitions"] if r.get("error")],
            **_worker_spread(runs),
        }
        rows.append(row)
    doc["summary"] = {
        "common_rate": rate,
        "common_rate_clean_everywhere": clean_everywhere,
        "rows": rows,
        "ratios": ratios(rows),
    }
    return doc


def _worker_spread(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """With workers: how the kernel spread the requests (each worker's share, median
    over the runs) and how many messages a worker handed to another (envelopes)."""
    counters = [r["counters"] for r in runs if r.get("counters")]
    if not counters:
        return {}
    workers = sorted({w for c in counters for w in c.get("worker_request_shares", {})}, key=int)
    events: dict[str, float] = {}
    for c in counters:
        for name, value in c.get("transport_events", {}).items():
            events[name] = events.get(name, 0.0) + value
    return {
        "worker_request_shares": {
            w: _median(c.get("worker_request_shares", {}).get(w) for c in counters) for w in workers
        },
        "worker_requests_total": sum(sum(c.get("worker_requests", {}).values()) for c in counters),
        "transport_events": events,
    }


def _net_cpu_ms(step: Mapping[str, Any], idle_cores: float | None) -> float | None:
    """CPU per call without the implementation's idle CPU (timers, housekeeping)."""
    if idle_cores is None or not step["successful"]:
        return None
    net = float(step["cpu_s"]) - idle_cores * float(step["wall_s"])
    return round(1000 * max(net, 0.0) / int(step["successful"]), 4)


def _sustained_row(rec: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not rec:
        return None
    if rec.get("skipped") or not rec.get("steps"):
        return {"rate": rec.get("rate"), "skipped": rec.get("skipped") or rec.get("error")}
    step = rec["steps"][0]
    return {
        "rate": rec["rate"],
        "duration_s": step["duration_s"],
        "clean": step["clean"],
        "failed_fraction": step["failed_fraction"],
        "retrans_fraction": step["retrans_fraction"],
        "achieved_rate": step["achieved_rate"],
        "response_ms_p50": step["response_ms"]["p50"],
        "response_ms_p99": step["response_ms"]["p99"],
        "response_ms_max": step["response_ms"]["max"],
        "cpu_ms_per_call": step["cpu_ms_per_call"],
        "pss_kib": step["pss_kib"],
        "unclean_reasons": step["unclean_reasons"],
    }


def _sustained_cell(row: Mapping[str, Any]) -> str:
    sus = row.get("sustained")
    if not sus:
        return "not run"
    if "skipped" in sus:
        return f"skipped ({sus['skipped']})"
    verdict = "clean" if sus["clean"] else "UNCLEAN"
    return (
        f"{verdict} @ {sus['rate']} ({sus['duration_s']:.0f} s), p99 "
        f"{_fmt(sus['response_ms_p99'])} ms, failed {sus['failed_fraction']:.2%}"
    )


def _cpu_cell(row: Mapping[str, Any]) -> str:
    cell = _fmt(row["cpu_ms_per_call_at_common_rate"], 3)
    aux = row.get("aux_cpu_ms_per_call_at_common_rate")
    return f"{cell} (+{aux:.3f} redis)" if aux else cell


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def ratio_pairs(
    rows: Sequence[Mapping[str, Any]],
) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """(ours, reference) pairs: sipgw (one process) / each Kamailio configuration and /
    the uvloop floor (options); sipgw with N workers / Kamailio with N workers, and /
    sipgw in one process (what the workers bring)."""
    ours = [r for r in rows if r["implementation"] == "sipgw"]
    kamailio = [r for r in rows if r["implementation"] == "kamailio"]
    floor = [r for r in rows if r["implementation"] == "uvloop-floor"]
    single = next((r for r in ours if r["workers"] == 1), None)
    pairs = []
    for row in ours:
        if row["workers"] == 1:
            pairs += [(row, ref) for ref in (*kamailio, *floor)]
        else:
            pairs += [(row, ref) for ref in kamailio if ref["workers"] == row["workers"]]
            if single is not None:
                pairs.append((row, single))
    return pairs


BOUND_PREFIX = {"upper": "≤ ", "lower": "≥ "}


def _bound(ours: Mapping[str, Any], ref: Mapping[str, Any]) -> str | None:
    """What the rate ratio is when a search never met an unclean step (its max clean
    rate is a lower bound): "upper" (only the reference's is), "lower" (only ours), or
    "unknown" (both); None when both are measured limits."""
    ours_low, ref_low = ours.get("max_clean_is_lower_bound"), ref.get("max_clean_is_lower_bound")
    if ours_low and ref_low:
        return "unknown"
    return "upper" if ref_low else "lower" if ours_low else None


def ratios(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """max clean rate and CPU per call at the common rate, ours / reference."""
    return [
        {
            "label": ours["label"],
            "reference": ref["label"],
            "max_clean_rate": _ratio(
                ours["max_clean_rate"]["median"], ref["max_clean_rate"]["median"]
            ),
            "cpu_ms_per_call": _ratio(
                ours["cpu_ms_per_call_at_common_rate"], ref["cpu_ms_per_call_at_common_rate"]
            ),
            "max_clean_rate_bound": _bound(ours, ref),
        }
        for ours, ref in ratio_pairs(rows)
    ]


# -- text -----------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


def headline_table(doc: Doc) -> str:
    """Markdown table (also readable as plain text on stdout)."""
    if doc["scenario"] in FIXED:
        return FIXED[doc["scenario"]].table(doc)
    s = doc["summary"]
    rate = s["common_rate"]
    unit = doc["unit"]
    note = "" if s["common_rate_clean_everywhere"] else " (not clean everywhere)"
    lines = [
        f"**{doc['title']}**",
        "",
        f"| implementation | workers | max clean {unit} median [min-max] | "
        "sustained at the median max clean rate | "
        f"CPU ms/call @ {rate}{note} | response p50 / p99 ms @ {rate} | "
        "first unclean step: proxy cores / bench CPU share / UDP drops (at the proxy) |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for row in s["rows"]:
        mc = row["max_clean_rate"]
        cores = row["proxy_cores_at_first_unclean_step"]
        share = row["bench_cpu_share_at_first_unclean_step"]
        drops = row["udp_rcvbuf_errors_at_first_unclean_step"]
        at_proxy = row["proxy_socket_drops_at_first_unclean_step"]
        at_limit = (
            "none"
            if cores is None
            else f"{cores:.2f} / {share:.0%} / {drops:.0f} ({_fmt(at_proxy)})"
        )
        bound = "≥ " if row.get("max_clean_is_lower_bound") else ""
        lines.append(
            f"| {row['label']} | {row['workers']} | {bound}{_fmt(mc['median'])} "
            f"[{_fmt(mc['min'])}-{_fmt(mc['max'])}] (n={row['repetitions_run']}) | "
            f"{_sustained_cell(row)} | "
            f"{_cpu_cell(row)} | "
            f"{_fmt(row['response_ms_p50_at_common_rate'])} / "
            f"{_fmt(row['response_ms_p99_at_common_rate'])} | {at_limit} |"
        )
    lines.append("")
    for r in s["ratios"]:
        bound = r.get("max_clean_rate_bound")
        rate = BOUND_PREFIX.get(bound or "", "") + _fmt(r["max_clean_rate"], 2)
        if bound == "unknown":
            rate += " (both are lower bounds)"
        lines.append(
            f"- {r.get('label', 'sipgw')} / {r['reference']}: max clean rate x {rate}, "
            f"CPU per call x {_fmt(r['cpu_ms_per_call'], 2)}"
        )
    return "\n".join(lines)


def markdown(docs: list[Doc], images: Mapping[str, list[Path]], goals: str | None = None) -> str:
    """The run's summary; `goals` (bench/goals.py's table) goes first, under the header."""
    first = docs[0]
    m = first["machine"]
    v: dict[str, str] = {}
    for doc in docs:  # the fixed-work scenarios have their own (redis-server, websockets)
        v.update(doc["versions"])
    step_docs = [d for d in docs if d["scenario"] not in FIXED]
    lines = [
        f"# sipgw benchmark {'(quick) ' if first['quick'] else ''}— {first['started_at']}",
        "",
        f"Machine: {m['cores']} cores, {m['cpu_model']}, {m['memory_kib'] // 1024} MiB, "
        f"Linux {m['kernel']}, load at start {' '.join(m['loadavg_at_start'])}. "
        f"Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
    ]
    if goals:
        lines += ["## Goals", "", goals, ""]
    if step_docs:
        lines += [
            "Max clean rate: highest offered rate with < 0.1 % failed, ≤ 1 % retransmissions, "
            "median response ≤ 100 ms, ≥ 90 % of the offered rate achieved and every call "
            "created; stepping stops at the "
            "first unclean step. CPU = user+system time of the implementation's process tree. "
            "sipgw challenges only the REGISTER (the trunk is trusted by address); the "
            "Kamailio reference does no authentication at all. sipp runs on the same "
            "cores: a bench CPU share near 100 % at the first unclean step means the machine, "
            "not the proxy, may have set the limit; proxy cores near 1.0 means a "
            "single-threaded proxy was CPU-bound (2.0: two workers, the whole machine). "
            "See bench/README.md.",
            "",
        ]
    for doc in step_docs:
        lines += [f"## {doc['scenario']}", "", f"Transport: {transport_line(doc)}.", ""]
        lines += [headline_table(doc), ""]
        for row in doc["summary"]["rows"]:
            for reasons in row["first_unclean_reasons"][:1]:
                lines.append(f"- {row['label']} first unclean step: {'; '.join(reasons)}")
            if row["log_warnings"] or row["log_errors"] or row["log_other"]:
                lines.append(
                    f"- {row['label']} logged {row['log_warnings']} warnings, "
                    f"{row['log_errors']} errors and {row['log_other']} lines outside its "
                    "log format (see the JSON: repetitions[].log.top)"
                )
            killed = sum(1 for code in row["exit_codes"] if code == -9)
            if killed:
                lines.append(
                    f"- {row['label']} did not exit after SIGTERM in {killed} of "
                    f"{len(row['exit_codes'])} runs (killed; slowest stop "
                    f"{_fmt(row['stop_s_max'], 1)} s)"
                )
            other = [c for c in row["exit_codes"] if c is not None and c < 0 and c != -9]
            if other:
                names = ", ".join(sorted({_signal_name(-c) for c in other}))
                lines.append(
                    f"- {row['label']} ended on a signal ({names}) after SIGTERM in "
                    f"{len(other)} of {len(row['exit_codes'])} runs, not killed by the harness"
                )
            if row.get("worker_request_shares"):
                shares = ", ".join(
                    f"worker {w} {share:.1%}"
                    for w, share in row["worker_request_shares"].items()
                    if share is not None
                )
                relayed = row["transport_events"].get("relayed_to_worker", 0)
                lines.append(
                    f"- {row['label']}: SIP requests per worker (median over the runs): "
                    f"{shares}; handed to another worker: {relayed:.0f} of "
                    f"{row['worker_requests_total']:.0f}"
                )
            for err in row["errors"]:
                summary_line = err.splitlines()[0] if err else ""
                lines.append(f"- {row['label']}: {summary_line} (more in the JSON)")
        lines.append("")
        for path in images.get(doc["scenario"], []):
            lines += [f"![{path.stem}]({path.name})", ""]
        lines.append(f"Wall time of the scenario: {doc['wall_time_s']} s.")
        lines.append("")
    for doc in docs:  # after the step scenarios, in the order they ran
        if doc["scenario"] in FIXED:
            lines += FIXED[doc["scenario"]].markdown(doc, images.get(doc["scenario"], []))
    return "\n".join(lines)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def transport_line(doc: Doc) -> str:
    """The load generator's transport, from the method (older documents: one socket)."""
    return str(doc["method"].get("transport", "UDP, one socket per sipp (-t u1)"))


# -- plots ----------------------------------------------------------------------------------


def plot(doc: Doc, prefix: Path) -> list[Path]:
    """Achieved vs offered rate, CPU ms per call vs rate, response time p99 vs rate (the
    scenarios of fixed work: their own, see `FIXED`)."""
    if doc["scenario"] in FIXED:
        return FIXED[doc["scenario"]].plot(doc, prefix)
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    unit = doc["unit"]
    charts: list[tuple[str, str, Callable[[Mapping[str, Any]], float | None]]] = [
        ("rate", "achieved " + unit, lambda s: s["achieved_rate"]),
        ("cpu", "CPU ms per call", lambda s: s["cpu_ms_per_call"]),
        ("latency", "response time p99 (ms)", lambda s: s["response_ms"]["p99"]),
    ]
    paths = []
    for key, ylabel, value in charts:
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
        top, low = 0.0, float("inf")
        for n, impl in enumerate(doc["implementations"]):
            color = f"C{n}"
            for i, rep in enumerate(_repetitions(impl)):
                pts = [(s["offered_rate"], value(s)) for s in rep["steps"] if value(s) is not None]
                if not pts:
                    continue
                xs, ys = zip(*pts, strict=True)
                top, low = max(top, *xs), min(low, *xs)
                ax.plot(
                    xs,
                    ys,
                    marker="o",
                    color=color,
                    alpha=0.8,
                    linewidth=1.2,
                    label=impl["label"] if i == 0 else None,
                )
                unclean = [
                    (s["offered_rate"], value(s))
                    for s in rep["steps"]
                    if not s["clean"] and value(s) is not None
                ]
                if unclean:
                    ux, uy = zip(*unclean, strict=True)
                    ax.scatter(ux, uy, marker="x", s=70, color=color, zorder=3)
        if key == "rate" and top:
            ax.plot([low, top], [low, top], linestyle=":", color="grey", label="offered")
        # Rates span two decades (sipgw's hundreds, Kamailio's thousands).
        ax.set_xscale("log")
        if key == "rate":
            ax.set_yscale("log")
        ax.set_xlabel("offered " + unit)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{doc['scenario']}: {ylabel} (x = unclean step)")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        if key == "latency":
            ax.set_yscale("symlog", linthresh=10)
        fig.tight_layout()
        path = prefix.with_name(f"{prefix.name}-{key}.png")
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


# -- the recognition scenario ---------------------------------------------------------------

RECOGNITION = "recognition"
LOOKUP_KINDS = {
    "cache_hit": "local cache hit: Recognizer.cached()",
    "redis_hit": "Redis hit: Recognizer.lookup(), cache off",
    "miss": "miss: Recognizer.lookup(), number not held",
    "redis_hit_concurrent": "Redis hit, 100 look-ups in flight",
}
SHORT_KIND = {
    "cache_hit": "cache hit",
    "redis_hit": "Redis hit",
    "miss": "miss",
    "redis_hit_concurrent": "Redis hit\n100 in flight",
}
SYNC_RUNS = ("initial", "delta", "unchanged")
_PERCENTILES = ("p50_us", "p95_us", "p99_us")


def _sync_run_row(run: Mapping[str, Any]) -> dict[str, Any]:
    rep = run.get("report") or {}
    return {
        "wall_s": run.get("wall_s"),
        "rows_per_s": run.get("rows_per_s"),
        "batches": rep.get("batches"),
        "numbers_sent": run.get("numbers_sent"),
        "expected_sent": (run.get("expected_upserts") or 0) + (run.get("expected_deletes") or 0),
        "upserts_sent": rep.get("upserts_sent"),
        "deletes_sent": rep.get("deletes_sent"),
        "sipgw_cpu_s": run.get("sipgw_cpu_s"),
        "redis_cpu_s": run.get("redis_cpu_s"),
        "client_cpu_s": run.get("client_cpu_s"),
        "summary_line": run.get("summary_line"),
        "exit_code": run.get("exit_code"),
    }


def summarize_recognition(doc: Doc) -> Doc:
    """The headline figures of the recognition scenario (``doc["summary"]``)."""
    lk = doc.get("lookups") or {}
    kinds = lk.get("kinds") or {}
    lookups = []
    for kind, label in LOOKUP_KINDS.items():
        found = kinds.get(kind)
        if found:
            figures = ("count", *_PERCENTILES, "max_us", "mean_us", "lookups_per_s")
            lookups.append({"kind": kind, "label": label, **{k: found.get(k) for k in figures}})
    memory = lk.get("memory") or {}
    sync = doc.get("sync") or {}
    sizes = []
    for size in sync.get("sizes", []):
        runs = {r["kind"]: r for r in size.get("runs", [])}
        row: dict[str, Any] = {
            "rows": size["rows"],
            "numbers": size.get("numbers"),
            "wall_s": size.get("wall_s"),
            "over_budget": size.get("over_budget"),
            "skipped": size.get("skipped"),
            "error": size.get("error"),
            "checks_failed": [c["check"] for c in size.get("checks", []) if not c["ok"]],
        }
        for kind in SYNC_RUNS:
            row[kind] = _sync_run_row(runs[kind]) if kind in runs else None
        sizes.append(row)
    errors = [f"look-ups: {lk['error']}"] if lk.get("error") else []
    skipped = [f"look-ups: {lk['skipped']}"] if lk.get("skipped") else []
    if sync.get("skipped"):
        skipped.append(f"sync: {sync['skipped']}")
    skipped += [f"sync of {z['rows']} rows: {z['skipped']}" for z in sync.get("sizes", [])
                if z.get("skipped")]  # fmt: skip
    if sync.get("error"):
        errors.append(f"sync: {sync['error']}")
    errors += [f"sync of {s['rows']} rows: {s['error']}" for s in sizes if s["error"]]
    log = sync.get("log") or {}
    doc["summary"] = {
        "lookups": lookups,
        "contacts": lk.get("contacts"),
        "bytes_per_contact": memory.get("bytes_per_contact"),
        "contacts_hash_bytes_per_contact": memory.get("contacts_hash_bytes_per_contact"),
        "source_set_bytes_per_contact": memory.get("source_set_bytes_per_contact"),
        "load_contacts_per_s": (lk.get("load") or {}).get("contacts_per_s"),
        "sync_cli": sync.get("sync_cli"),
        "sync": sizes,
        "sipgw_log_warnings": log.get("warnings", 0),
        "sipgw_log_errors": log.get("errors", 0),
        "sipgw_exit_code": sync.get("exit_code"),
        "errors": errors,
        "skipped": skipped,
    }
    return doc


def _num(value: float | None, digits: int = 0) -> str:
    """A figure with thin thousands separators: 1 049 877, 12.5; "-" for none."""
    if value is None:
        return "-"
    return f"{value:,.{digits}f}".replace(",", " ")


def _run_cell(run: Mapping[str, Any] | None, *, sent: bool = False) -> str:
    if run is None:
        return "-"
    cell = f"{_fmt(run['wall_s'], 1)} s, {_num(run['rows_per_s'])} rows/s"
    if sent:
        verdict = "ok" if run["numbers_sent"] == run["expected_sent"] else "MISMATCH"
        cell += (
            f", {_num(run['numbers_sent'])} numbers sent "
            f"({_num(run['expected_sent'])} changed: {verdict})"
        )
    return cell


def recognition_table(doc: Doc) -> str:
    """The look-up and sync tables of the recognition scenario (Markdown)."""
    s = doc["summary"]
    lines = [
        f"**{doc['title']}**",
        "",
        f"| look-up ({_num(s['contacts'])} contacts in Redis) | count | p50 µs | p95 µs | "
        "p99 µs | max µs | look-ups/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in s["lookups"]:
        lines.append(
            f"| {row['label']} | {_num(row['count'])} | {_num(row['p50_us'], 1)} | "
            f"{_num(row['p95_us'], 1)} | {_num(row['p99_us'], 1)} | {_num(row['max_us'], 1)} | "
            f"{_num(row['lookups_per_s'])} |"
        )
    if s["bytes_per_contact"] is not None:
        lines += [
            "",
            f"Redis memory: {_fmt(s['bytes_per_contact'])} bytes per contact (INFO "
            f"used_memory after loading, minus before; the contacts hash "
            f"{_fmt(s['contacts_hash_bytes_per_contact'])} and the source's number set "
            f"{_fmt(s['source_set_bytes_per_contact'])} by MEMORY USAGE). Loaded at "
            f"{_num(s['load_contacts_per_s'])} contacts/s (ContactIndex.apply, batches of 1000).",
        ]
    if s["sync"]:
        lines += [
            "",
            "| `sipgw sync` of a CSV | numbers | initial: time, rows/s (batches; sipgw / "
            "client CPU s) | 1 % changed: time, rows/s, numbers sent | nothing changed |",
            "| ---: | ---: | --- | --- | --- |",
        ]
        for size in s["sync"]:
            if size.get("skipped"):
                lines.append(f"| {_num(size['rows'])} rows | - | skipped: {size['skipped']} | | |")
                continue
            first = size["initial"]
            extra = (
                f" ({_num(first['batches'])}; {_fmt(first['sipgw_cpu_s'], 1)} / "
                f"{_fmt(first['client_cpu_s'], 1)})"
                if first
                else ""
            )
            lines.append(
                f"| {_num(size['rows'])} rows | {_num(size['numbers'])} | "
                f"{_run_cell(first)}{extra} | {_run_cell(size['delta'], sent=True)} | "
                f"{_run_cell(size['unchanged'])} |"
            )
    return "\n".join(lines)


def recognition_markdown(doc: Doc, images: Sequence[Path]) -> list[str]:
    """The recognition section of the summary Markdown."""
    s = doc["summary"]
    lines = [f"## {doc['scenario']}", "", recognition_table(doc), ""]
    for err in s["errors"]:
        lines.append(f"- ERROR {err.splitlines()[0] if err else ''} (more in the JSON)")
    for part in s.get("skipped", []):
        lines.append(f"- Skipped (--quick), {part}")
    for size in s["sync"]:
        for check in size["checks_failed"]:
            lines.append(f"- {_num(size['rows'])} rows: CHECK FAILED: {check}")
    if s["sipgw_log_warnings"] or s["sipgw_log_errors"]:
        lines.append(
            f"- sipgw logged {s['sipgw_log_warnings']} warnings and {s['sipgw_log_errors']} "
            "errors during the syncs (see the JSON: sync.log.top)"
        )
    if s["sync_cli"]:
        lines.append(f"- The sync command: {s['sync_cli']}; its summaries:")
        for size in s["sync"]:
            for kind in SYNC_RUNS:
                run = size.get(kind)
                if run and run["summary_line"]:
                    lines.append(f"  - {_num(size['rows'])} rows, {kind}: `{run['summary_line']}`")
    lines.append("")
    for path in images:
        lines += [f"![{path.stem}]({path.name})", ""]
    over = doc.get("over_budget_s") or 0
    lines.append(
        f"Wall time of the scenario: {doc['wall_time_s']} s (its share of the time budget: "
        f"{_fmt(doc.get('budget_s'))} s{f', exceeded by {over:.0f} s' if over else ''})."
    )
    for size in s["sync"]:
        if size.get("wall_s") is not None:
            late = " (past the scenario's share: measured anyway)" if size["over_budget"] else ""
            lines.append(
                f"The {_num(size['rows'])}-row sync (CSV, initial, delta and unchanged runs) "
                f"took {size['wall_s']} s{late}."
            )
    lines.append("")
    return lines


def plot_recognition(doc: Doc, prefix: Path) -> list[Path]:
    """Look-up latency p50/p95/p99 (bars) and max (marker) per kind, log scale; the sync
    times per size and run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = doc["summary"]
    paths = []
    rows = s["lookups"]
    if rows:
        fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
        width = 0.25
        xs = range(len(rows))
        for i, key in enumerate(_PERCENTILES):
            values = [r[key] or 0 for r in rows]
            bars = ax.bar([x + (i - 1) * width for x in xs], values, width, label=key[:3])
            ax.bar_label(bars, labels=[f"{v:.0f}" if v >= 10 else f"{v:.1f}" for v in values],
                         fontsize=7, padding=1)  # fmt: skip
        ax.scatter(list(xs), [r["max_us"] or 0 for r in rows], marker="_", s=300, color="k",
                   label="max", zorder=3)  # fmt: skip
        ax.set_xticks(list(xs), [SHORT_KIND.get(r["kind"], r["kind"]) for r in rows])
        ax.set_yscale("log")
        ax.set_ylabel("latency (µs, log scale)")
        ax.set_title(f"recognition: look-up latency, {_num(s['contacts'])} contacts in Redis")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = prefix.with_name(f"{prefix.name}-latency.png")
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    sizes = [z for z in s["sync"] if any(z.get(k) for k in SYNC_RUNS)]
    if sizes:
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
        width = 0.25
        for i, kind in enumerate(SYNC_RUNS):
            values = [(z[kind] or {}).get("wall_s") or 0 for z in sizes]
            bars = ax.bar([x + (i - 1) * width for x in range(len(sizes))], values, width,
                          label={"delta": "1 % changed"}.get(kind, kind))  # fmt: skip
            ax.bar_label(bars, labels=[f"{v:.1f}" for v in values], fontsize=7, padding=1)
        ax.set_xticks(range(len(sizes)), [f"{_num(z['rows'])} rows" for z in sizes])
        ax.set_ylabel("wall time of `sipgw sync` (s)")
        ax.set_title("recognition: sync of a generated CSV")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = prefix.with_name(f"{prefix.name}-sync.png")
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


# -- the scenarios of fixed work ----------------------------------------------------------------


class Section(NamedTuple):
    """How a scenario of fixed work is summarized and shown."""

    summarize: Callable[[Doc], Doc]
    table: Callable[[Doc], str]
    markdown: Callable[[Doc, Sequence[Path]], list[str]]
    plot: Callable[[Doc, Path], list[Path]]


FIXED: dict[str, Section] = {
    report_events.LATENCY: Section(
        report_events.summarize_latency,
        report_events.latency_table,
        report_events.latency_markdown,
        report_events.plot_latency,
    ),
    report_events.FANOUT: Section(
        report_events.summarize_fanout,
        report_events.fanout_table,
        report_events.fanout_markdown,
        report_events.plot_fanout,
    ),
    RECOGNITION: Section(
        summarize_recognition, recognition_table, recognition_markdown, plot_recognition
    ),
    report_cluster.CLUSTER: Section(
        report_cluster.summarize_cluster,
        report_cluster.cluster_table,
        report_cluster.cluster_markdown,
        report_cluster.plot_cluster,
    ),
    report_soak.SOAK: Section(
        report_soak.summarize_soak,
        report_soak.soak_table,
        report_soak.soak_markdown,
        report_soak.plot_soak,
    ),
}
