"""Summary, table, Markdown and plot of the redis-cluster scenario (bench/cluster.py):
one standalone Redis and a 3-master cluster, 1 and 2 gateway nodes, side by side. Pure:
a document in, text and a PNG out; bench/report.py dispatches here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .report_events import _pyplot

CLUSTER = "redis-cluster"
# Counters of the gateways that mean they lost events on their own side.
LOSS_METRICS = ("sipgw_events_dropped", "sipgw_subscriber_overflows", "sipgw_subscriber_resyncs")

Doc = dict[str, Any]


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}".replace(",", " ")


def _per_call_ms(cpu_s: float | None, calls: int) -> float | None:
    return None if cpu_s is None or not calls else round(cpu_s * 1000 / calls, 3)


def _row(setup: Mapping[str, Any], step: Mapping[str, Any]) -> dict[str, Any]:
    lat = step["latency"]
    sip = step["sip"]
    return {
        "deployment": setup["deployment"],
        "nodes": setup["nodes_count"],
        "label": setup["label"],
        "rate": step["rate"],
        "calls_placed": step["calls_placed"],
        "offered_received": step["offered_received"],
        "events_received": step["events_received"],
        "events_expected": step["events_expected"],
        "missing": step["missing"],
        "events_per_s": step["events_per_s"],
        "p50_ms": lat["p50_ms"],
        "p99_ms": lat["p99_ms"],
        "max_ms": lat["max_ms"],
        "calls_failed": sip["failed"],
        "retransmissions": sip["retransmissions"],
        "gateway_cpu_ms_per_call": _per_call_ms(step.get("gateway_cpu_s"), step["calls_placed"]),
        "redis_cpu_ms_per_call": _per_call_ms(step.get("redis_cpu_s"), step["calls_placed"]),
    }


def _setup_findings(setup: Mapping[str, Any]) -> list[str]:
    label = setup["label"]
    out = []
    for step in setup.get("steps", []):
        if step.get("skipped"):
            continue
        at = f"{label}, {step['rate']} calls/s"
        if step["missing"]:
            out.append(
                f"{at}: {step['missing']} of {step['calls_placed']} calls had no "
                f"call.offered at the subscriber {step.get('drain_s', '?')} s after the last "
                "call ended"
            )
        short = step["events_expected"] - step["events_received"]
        if short > 0:
            out.append(
                f"{at}: {short} of the {step['events_expected']} events the gateways wrote "
                "to Redis did not reach the subscriber"
            )
        for name, what in (("duplicates", "duplicate events"), ("unmatched", "unmatched events")):
            if step.get(name):
                out.append(f"{at}: {step[name]} {what}")
        if step["sip"]["failed"]:
            out.append(f"{at}: {step['sip']['failed']} calls failed (sipp)")
        counters = step.get("gateway_counters") or {}
        lost = {k: v for k, v in counters.items() if k in LOSS_METRICS and v}
        if lost:
            out.append(f"{at}: the gateways counted " + ", ".join(
                f"{v:.0f} {k}" for k, v in lost.items()))  # fmt: skip
    before, after = setup.get("masters_before"), setup.get("masters_after")
    if before and after and before != after:
        out.append(f"{label}: the masters changed during the run (a failover): {before} → {after}")
    for i, node in enumerate(setup.get("nodes") or []):
        log = node.get("log") or {}
        if log.get("errors") or log.get("warnings"):
            top = "; ".join(t["message"] for t in log.get("top", [])[:3])
            out.append(
                f"{label}: node {'AB'[i] if i < 2 else i} logged {log.get('warnings', 0)} "
                f"warnings and {log.get('errors', 0)} errors (most frequent: {top})"
            )
        if node.get("exit_code") not in (0, None):
            out.append(f"{label}: node {'AB'[i] if i < 2 else i} exited {node['exit_code']}")
    return out


def summarize_cluster(doc: Doc) -> Doc:
    rows, findings, errors, skipped = [], [], [], []
    for setup in doc.get("setups", []):
        if setup.get("skipped"):
            skipped.append(f"{setup['label']}: {setup['skipped']}")
            continue
        if setup.get("error"):
            errors.append(f"{setup['label']}: {setup['error']}")
        for step in setup.get("steps", []):
            if step.get("skipped"):
                skipped.append(f"{setup['label']}, {step['rate']} calls/s: {step['skipped']}")
            else:
                rows.append(_row(setup, step))
        findings += _setup_findings(setup)
    if doc.get("error"):
        errors.append(doc["error"])
    doc["summary"] = {
        "rows": rows,
        "calls_placed": sum(r["calls_placed"] for r in rows),
        "offered_received": sum(r["offered_received"] for r in rows),
        "events_received": sum(r["events_received"] for r in rows),
        "events_expected": sum(r["events_expected"] for r in rows),
        "findings": findings,
        "errors": errors,
        "skipped": skipped,
    }
    return doc


def cluster_table(doc: Doc) -> str:
    s = doc["summary"]
    lines = [
        f"**{doc['title']}**",
        "",
        "| Redis | gateway nodes | calls/s offered | events/s delivered | events delivered / "
        "expected | call.offered p50 ms | p99 ms | max ms | gateway CPU ms/call | Redis CPU "
        "ms/call | calls failed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    # By rate first, so each rate's four setups stand side by side.
    for r in sorted(s["rows"], key=lambda r: r["rate"]):
        lines.append(
            f"| {r['deployment']} | {r['nodes']} | {r['rate']} | {_fmt(r['events_per_s'], 0)} | "
            f"{r['events_received']} / {r['events_expected']} | {_fmt(r['p50_ms'], 2)} | "
            f"{_fmt(r['p99_ms'], 2)} | {_fmt(r['max_ms'], 2)} | "
            f"{_fmt(r['gateway_cpu_ms_per_call'], 2)} | {_fmt(r['redis_cpu_ms_per_call'], 3)} | "
            f"{r['calls_failed']} |"
        )
    lines += [
        "",
        f"Events delivered: {s['events_received']} of the {s['events_expected']} the gateways "
        f"wrote to Redis; call.offered for {s['offered_received']} of {s['calls_placed']} calls "
        "placed. Events/s: every event the subscriber on node A got (a call writes four: "
        "call.offered, call.delivered, call.established, call.cleared) over the seconds "
        "from the step's first INVITE to its last event; it follows the offered rate while "
        "everything keeps up.",
    ]
    return "\n".join(lines)


def cluster_markdown(doc: Doc, images: Sequence[Path]) -> list[str]:
    s = doc["summary"]
    lines = [f"## {doc['scenario']}", "", cluster_table(doc), ""]
    lines += [f"- FINDING: {f}" for f in s["findings"]]
    lines += [f"- ERROR {e.splitlines()[0]} (more in the JSON)" for e in s["errors"]]
    lines += [f"- Skipped: {x}" for x in s["skipped"]]
    lines.append("")
    for path in images:
        lines += [f"![{path.stem}]({path.name})", ""]
    over = doc.get("over_budget_s") or 0
    share = max(0.0, doc.get("budget_s") or 0.0)
    lines += [
        f"Wall time of the scenario: {doc.get('wall_time_s')} s (its share of the time "
        f"budget: {share:.0f} s{f', exceeded by {over:.0f} s' if over >= 0.5 else ''}).",
        "",
    ]
    return lines


def plot_cluster(doc: Doc, prefix: Path) -> list[Path]:
    """p50 and p99 (bars) and max (dash) per offered rate and setup, log scale."""
    rows = sorted(doc["summary"]["rows"], key=lambda r: r["rate"])
    if not rows:
        return []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    width = 0.35
    xs = list(range(len(rows)))
    for i, key in enumerate(("p50_ms", "p99_ms")):
        values = [r[key] or 0 for r in rows]
        bars = ax.bar([x + (i - 0.5) * width for x in xs], values, width, label=key[:3])
        ax.bar_label(bars, labels=[f"{v:.0f}" if v >= 100 else f"{v:.1f}" for v in values],
                     fontsize=6.5, padding=1)  # fmt: skip
    ax.scatter([x + width / 2 for x in xs], [r["max_ms"] or 0 for r in rows], marker="_", s=200,
               color="k", label="max", zorder=3)  # fmt: skip
    ax.set_xticks(xs, [f"{r['rate']}/s\n{r['deployment']}\n{r['nodes']} node"
                       f"{'s' if r['nodes'] > 1 else ''}" for r in rows], fontsize=7)  # fmt: skip
    ax.set_yscale("log")
    ax.set_ylabel("INVITE sent → call.offered at the subscriber (ms, log)")
    ax.set_title(f"{CLUSTER}: one Redis vs a 3-master cluster, 1 and 2 gateway nodes")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = prefix.with_name(f"{prefix.name}-latency.png")
    fig.savefig(path)
    plt.close(fig)
    return [path]
