"""Summaries of a scenario's JSON document: headline table, Markdown, PNG plots.

The summary added to each document (``doc["summary"]``):

- per implementation: the max clean rate of every repetition and their median, min and
  max; the figures at the *common rate*;
- the common rate: the highest offered rate that was clean in every repetition of every
  implementation (so CPU per call and response times are compared at the same load,
  below everyone's limit); if there is none, the lowest rate offered;
- ratios sipgw / each Kamailio configuration: max clean rate (higher is better for
  sipgw when > 1) and CPU per call at the common rate (lower is better when < 1).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

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
        }
        rows.append(row)
    doc["summary"] = {
        "common_rate": rate,
        "common_rate_clean_everywhere": clean_everywhere,
        "rows": rows,
        "ratios": ratios(rows),
    }
    return doc


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


def ratios(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """sipgw / each Kamailio row."""
    ours = next((r for r in rows if r["implementation"] == "sipgw"), None)
    if ours is None:
        return []
    out = []
    for ref in rows:
        if ref["implementation"] != "kamailio":
            continue
        out.append(
            {
                "reference": ref["label"],
                "max_clean_rate": _ratio(
                    ours["max_clean_rate"]["median"], ref["max_clean_rate"]["median"]
                ),
                "cpu_ms_per_call": _ratio(
                    ours["cpu_ms_per_call_at_common_rate"], ref["cpu_ms_per_call_at_common_rate"]
                ),
            }
        )
    return out


# -- text -----------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


def headline_table(doc: Doc) -> str:
    """Markdown table (also readable as plain text on stdout)."""
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
        lines.append(
            f"- sipgw / {r['reference']}: max clean rate x {_fmt(r['max_clean_rate'], 2)}, "
            f"CPU per call x {_fmt(r['cpu_ms_per_call'], 2)}"
        )
    return "\n".join(lines)


def markdown(docs: list[Doc], images: Mapping[str, list[Path]]) -> str:
    first = docs[0]
    m = first["machine"]
    v = first["versions"]
    lines = [
        f"# sipgw benchmark {'(quick) ' if first['quick'] else ''}— {first['started_at']}",
        "",
        f"Machine: {m['cores']} cores, {m['cpu_model']}, {m['memory_kib'] // 1024} MiB, "
        f"Linux {m['kernel']}, load at start {' '.join(m['loadavg_at_start'])}. "
        f"Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
        "Max clean rate: highest offered rate with < 0.1 % failed, ≤ 1 % retransmissions, "
        "median response ≤ 100 ms, ≥ 90 % of the offered rate achieved and every call "
        "created; stepping stops at the "
        "first unclean step. CPU = user+system time of the implementation's process tree. "
        "sipgw challenges only the REGISTER (the trunk is trusted by address); the "
        "Kamailio reference does no authentication at all. sipp runs on the same "
        "cores: a bench CPU share near 100 % at the first unclean step means the machine, "
        "not the proxy, may have set the limit; proxy cores near 1.0 means a "
        "single-threaded proxy was CPU-bound. See bench/README.md.",
        "",
    ]
    for doc in docs:
        lines += [f"## {doc['scenario']}", "", headline_table(doc), ""]
        for row in doc["summary"]["rows"]:
            for reasons in row["first_unclean_reasons"][:1]:
                lines.append(f"- {row['label']} first unclean step: {'; '.join(reasons)}")
            if row["log_warnings"] or row["log_errors"] or row["log_other"]:
                lines.append(
                    f"- {row['label']} logged {row['log_warnings']} warnings, "
                    f"{row['log_errors']} errors and {row['log_other']} lines outside its "
                    "log format (see the JSON: repetitions[].log.top)"
                )
            killed = sum(1 for code in row["exit_codes"] if code is not None and code < 0)
            if killed:
                lines.append(
                    f"- {row['label']} did not exit after SIGTERM in {killed} of "
                    f"{len(row['exit_codes'])} runs (killed; slowest stop "
                    f"{_fmt(row['stop_s_max'], 1)} s)"
                )
            for err in row["errors"]:
                summary_line = err.splitlines()[0] if err else ""
                lines.append(f"- {row['label']}: {summary_line} (more in the JSON)")
        lines.append("")
        for path in images.get(doc["scenario"], []):
            lines += [f"![{path.stem}]({path.name})", ""]
        lines.append(f"Wall time of the scenario: {doc['wall_time_s']} s.")
        lines.append("")
    return "\n".join(lines)


# -- plots ----------------------------------------------------------------------------------


def plot(doc: Doc, prefix: Path) -> list[Path]:
    """Achieved vs offered rate, CPU ms per call vs rate, response time p99 vs rate."""
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
        ax.legend()
        if key == "latency":
            ax.set_yscale("symlog", linthresh=10)
        fig.tight_layout()
        path = prefix.with_name(f"{prefix.name}-{key}.png")
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths
