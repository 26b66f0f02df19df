"""Summaries, Markdown and plots of the two event scenarios (invite-event-latency and
fan-out); bench/report.py dispatches to them. Pure: documents in, text and PNGs out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

LATENCY = "invite-event-latency"
FANOUT = "fan-out"
KINDS = ("hit", "miss")
PLURAL = {"hit": "hits", "miss": "misses"}
PERCENTILES = ("p50_ms", "p95_ms", "p99_ms")
# Counters of the gateway that mean it lost events on its own side.
LOSS_METRICS = ("sipgw_events_dropped", "sipgw_subscriber_overflows", "sipgw_subscriber_resyncs")

Doc = dict[str, Any]


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}".replace(",", " ")


def _skipped(parts: Sequence[Mapping[str, Any]], name: str) -> list[str]:
    """ "<name>: <why>" of each skipped step or level (`name` is formatted with it)."""
    return [f"{name.format(**p)}: {p['skipped']}" for p in parts if p.get("skipped")]


def _common(doc: Doc) -> dict[str, Any]:
    """What both scenarios report the same way: errors, skips, the gateway's log and its
    own loss counters."""
    gw = doc.get("gateway") or {}
    log = gw.get("log") or {}
    losses = {k: v for k, v in (gw.get("metrics_before_stop") or {}).items()
              if k in LOSS_METRICS and v}  # fmt: skip
    errors = [doc["error"]] if doc.get("error") else []
    return {
        "errors": errors,
        "skipped": doc.get("skipped"),
        "gateway_log_warnings": log.get("warnings", 0),
        "gateway_log_errors": log.get("errors", 0),
        "gateway_log_top": [t["message"] for t in log.get("top", [])[:3]],
        "gateway_exit_code": gw.get("exit_code"),
        "gateway_losses": losses,
    }


# -- invite-event-latency ----------------------------------------------------------------------


def summarize_latency(doc: Doc) -> Doc:
    rows, findings = [], []
    for step in doc.get("steps", []):
        if step.get("skipped"):
            continue
        sip = step["sip"]
        if not sip["clean"]:
            findings.append(
                f"{step['rate']} calls/s: the calls were not clean ("
                + "; ".join(sip["unclean_reasons"])
                + ")"
            )
        for name, what in (("duplicates", "duplicate events"), ("unmatched", "unmatched events")):
            if step.get(name):
                findings.append(f"{step['rate']} calls/s: {step[name]} {what}")
        counters = step.get("gateway_counters") or {}
        if counters.get("sipgw_subscriber_overflows"):
            findings.append(
                f"{step['rate']} calls/s: the gateway cut the subscriber off "
                f"{counters['sipgw_subscriber_overflows']:.0f} times (sipgw.overflow, close "
                "4008: its queue of the tenant's events was full); it resumed with since, "
                "so the replayed events count, late"
            )
        for kind in KINDS:
            k = step["kinds"][kind]
            lat = k["latency"]
            wrong = {s: n for s, n in k["lookup"].items() if s != kind}
            rows.append({
                "rate": step["rate"], "kind": kind, "placed": k["placed"],
                "received": k["received"], "missing": k["missing"],
                **{key: lat[key] for key in (*PERCENTILES, "max_ms", "mean_ms")},
                "lookup": k["lookup"], "segments_p50": k["segments_p50"],
                "calls_clean": sip["clean"], "achieved_rate": sip["achieved_rate"],
            })  # fmt: skip
            if k["missing"]:
                findings.append(
                    f"{step['rate']} calls/s, {PLURAL[kind]}: {k['missing']} of {k['placed']} "
                    f"calls had no call.offered at the subscriber {step.get('drain_s', '?')} s "
                    "after the last call ended"
                )
            if wrong:
                findings.append(
                    f"{step['rate']} calls/s, {PLURAL[kind]}: look-ups that did not answer "
                    f"{kind!r}: {wrong} (pending: not within the budget, 20 ms; error: Redis "
                    "failed, or too many in flight)"
                )
            if k["caller_mismatch"]:
                findings.append(
                    f"{step['rate']} calls/s, {PLURAL[kind]}: {k['caller_mismatch']} events named "
                    "another caller than the one sent"
                )
    common = _common(doc)
    findings += [f"the gateway counted {v:.0f} {k}" for k, v in common["gateway_losses"].items()]
    doc["summary"] = {
        "rows": rows,
        "calls_placed": sum(r["placed"] for r in rows),
        "events_received": sum(r["received"] for r in rows),
        "skipped_steps": _skipped(doc.get("steps", []), "{rate} calls/s"),
        "findings": findings,
        **common,
    }
    return doc


def latency_table(doc: Doc) -> str:
    s = doc["summary"]
    lines = [
        f"**{doc['title']}**",
        "",
        "| calls/s | caller | events / calls | p50 ms | p95 ms | p99 ms | max ms | "
        "look-up answers | the calls (proxied-calls criteria) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in s["rows"]:
        answers = ", ".join(f"{k} {v}" for k, v in sorted(r["lookup"].items()))
        clean = "clean" if r["calls_clean"] else "UNCLEAN"
        lines.append(
            f"| {r['rate']} | {r['kind']} | {r['received']} / {r['placed']} | "
            f"{_fmt(r['p50_ms'], 2)} | {_fmt(r['p95_ms'], 2)} | {_fmt(r['p99_ms'], 2)} | "
            f"{_fmt(r['max_ms'], 2)} | {answers} | {clean}, {_fmt(r['achieved_rate'], 0)}/s |"
        )
    lines += [
        "",
        f"Events received: {s['events_received']} of {s['calls_placed']} calls placed.",
    ]
    return "\n".join(lines)


def _segments_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "Where the time goes (medians, ms; the stream id has a 1 ms resolution):",
        "",
        "| calls/s | caller | INVITE → gateway saw it | → Redis stream | → subscriber |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        seg = r["segments_p50"]
        lines.append(
            f"| {r['rate']} | {r['kind']} | {_fmt(seg['sip_to_gateway_ms'], 2)} | "
            f"{_fmt(seg['gateway_to_stream_ms'], 2)} | {_fmt(seg['stream_to_subscriber_ms'], 2)} |"
        )
    return lines


def _notes(s: Mapping[str, Any]) -> list[str]:
    lines = [f"- FINDING: {f}" for f in s["findings"]]
    lines += [f"- ERROR {e.splitlines()[0]} (more in the JSON)" for e in s["errors"]]
    if s["skipped"]:
        lines.append(f"- Skipped: {s['skipped']}")
    if s["gateway_log_warnings"] or s["gateway_log_errors"]:
        top = "; ".join(s["gateway_log_top"])
        lines.append(
            f"- sipgw logged {s['gateway_log_warnings']} warnings and "
            f"{s['gateway_log_errors']} errors (most frequent: {top})"
        )
    return lines


def _wall_line(doc: Doc) -> str:
    over = doc.get("over_budget_s") or 0
    share = max(0.0, doc.get("budget_s") or 0.0)
    return (
        f"Wall time of the scenario: {doc.get('wall_time_s')} s (its share of the time budget: "
        f"{share:.0f} s{f', exceeded by {over:.0f} s' if over >= 0.5 else ''})."
    )


def latency_markdown(doc: Doc, images: Sequence[Path]) -> list[str]:
    s = doc["summary"]
    lines = [f"## {doc['scenario']}", "", latency_table(doc), ""]
    if s["rows"]:
        lines += [*_segments_table(s["rows"]), ""]
    lines += _notes(s)
    lines += [f"- Skipped (--quick), {x}" for x in s["skipped_steps"]]
    lines.append("")
    for path in images:
        lines += [f"![{path.stem}]({path.name})", ""]
    lines += [_wall_line(doc), ""]
    return lines


# -- fan-out -------------------------------------------------------------------------------------


def summarize_fanout(doc: Doc) -> Doc:
    rows, findings = [], []
    for lv in doc.get("levels", []):
        if lv.get("skipped") or lv.get("error"):
            continue
        connect = lv["connect"]
        n = lv["subscribers_live"]
        conn_s = connect["connect_s"]
        rows.append({
            "label": lv["label"], "subscribers": lv["subscribers"], "deflate": lv["deflate"],
            "live": n, "refused": connect["failed"], "connect_errors": connect["errors"],
            "connect_s": conn_s, "connects_per_s": round(n / conn_s, 1) if conn_s else None,
            "calls": lv["calls_placed"], "deliveries": lv["deliveries"],
            "deliveries_expected": lv["deliveries_expected"], "missing": lv["missing"],
            "from_invite": lv["from_invite"], "from_publish": lv["from_publish"],
            "spread_ms": lv["spread_ms"], "rss_per_subscriber_kib": lv["rss_per_subscriber_kib"],
            "rss_kib_connected": lv["rss_kib_connected"],
            "rss_kib_after_calls": lv["rss_kib_after_calls"],
            "gateway_cpu_ms_per_connect": _per(lv["gateway_cpu_connect_s"] * 1000, n),
            "gateway_cpu_ms_per_call": _per(lv["gateway_cpu_s"] * 1000, lv["calls_placed"], 1),
            "teardown_s": lv["teardown_s"], "extensions": connect["extensions"],
        })  # fmt: skip
        if connect["failed"]:
            findings.append(
                f"{lv['label']}: {connect['failed']} subscriptions never became live "
                f"(refusals and errors, a 503 retried up to 3 times: {connect['errors']})"
            )
        elif connect["errors"]:
            findings.append(
                f"{lv['label']}: every subscription became live, some only when tried again "
                f"(refusals and errors: {connect['errors']})"
            )
        if lv["missing"]:
            findings.append(
                f"{lv['label']}: {lv['missing']} of {lv['deliveries_expected']} deliveries missing"
            )
        for name in ("duplicates", "unmatched"):
            if lv.get(name):
                findings.append(f"{lv['label']}: {lv[name]} {name} events")
        if lv["teardown_s"] is None:
            findings.append(f"{lv['label']}: the gateway still counted subscribers after they left")
    _marginal_cpu(rows)
    common = _common(doc)
    findings += [f"the gateway counted {v:.0f} {k}" for k, v in common["gateway_losses"].items()]
    levels = doc.get("levels", [])
    doc["summary"] = {
        "rows": rows,
        "rss_kib_baseline": doc.get("rss_kib_baseline"),
        "floor": doc.get("floor"),
        "skipped_levels": _skipped(levels, "{label}"),
        "level_errors": [f"{lv['label']}: {lv['error']}" for lv in levels if lv.get("error")],
        "findings": findings,
        **common,
    }
    return doc


# /proc counts CPU in 10 ms ticks: below this many subscribers a per-subscription figure
# is mostly rounding.
MIN_FOR_PER_SUBSCRIBER = 100


def _per(total: float, count: int, floor: int = MIN_FOR_PER_SUBSCRIBER) -> float | None:
    return round(total / count, 3) if count >= floor else None


def _marginal_cpu(rows: list[dict[str, Any]]) -> None:
    """The gateway's CPU per call beyond the 1-subscriber level's, per extra subscriber
    (µs): what delivering one event to one more subscriber costs (with the heartbeats of
    the idle subscriptions meanwhile, and the other events of each call that every
    subscription's queue takes before its type filter)."""
    base = next((r for r in rows if r["live"] == 1 and r["deflate"]), None)
    base_ms = base["gateway_cpu_ms_per_call"] if base else None
    for r in rows:
        per_call = r["gateway_cpu_ms_per_call"]
        r["gateway_cpu_us_per_extra_subscriber"] = (
            round(1000 * (per_call - base_ms) / (r["live"] - 1), 1)
            if base_ms is not None and per_call is not None and r["live"] >= MIN_FOR_PER_SUBSCRIBER
            else None
        )


def fanout_table(doc: Doc) -> str:
    s = doc["summary"]
    lines = [
        f"**{doc['title']}**",
        "",
        "| subscribers | live (refused) | connected in s | deliveries | "
        "INVITE → arrival p50 / p99 / max ms | publish → arrival p50 / p99 / max ms | "
        "first → last subscriber ms (median) | gateway RSS per subscriber KiB | "
        "gateway RSS MiB |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in s["rows"]:
        fi, fp = r["from_invite"], r["from_publish"]
        lines.append(
            f"| {r['label']} | {r['live']} ({r['refused']}) | {_fmt(r['connect_s'])} | "
            f"{r['deliveries']} / {r['deliveries_expected']} | "
            f"{_fmt(fi['p50_ms'], 2)} / {_fmt(fi['p99_ms'], 2)} / {_fmt(fi['max_ms'], 2)} | "
            f"{_fmt(fp['p50_ms'], 2)} / {_fmt(fp['p99_ms'], 2)} / {_fmt(fp['max_ms'], 2)} | "
            f"{_fmt(r['spread_ms']['median'], 2)} | {_fmt(r['rss_per_subscriber_kib'])} | "
            f"{_fmt(r['rss_kib_connected'] / 1024, 0)} |"
        )
    base = s["rss_kib_baseline"]
    if base:
        lines += ["", f"Gateway RSS with no subscriber: {_fmt(base / 1024, 0)} MiB."]
    return "\n".join(lines)


def fanout_markdown(doc: Doc, images: Sequence[Path]) -> list[str]:
    s = doc["summary"]
    lines = [f"## {doc['scenario']}", "", fanout_table(doc), ""]
    lines += _notes(s)
    lines += [f"- Skipped, {x}" for x in s["skipped_levels"]]
    lines += [f"- ERROR at {x.splitlines()[0]} (more in the JSON)" for x in s["level_errors"]]
    for r in s["rows"]:
        lines.append(
            f"- {r['label']}: {_fmt(r['connects_per_s'], 0)} subscriptions/s, gateway CPU "
            f"{_fmt(r['gateway_cpu_ms_per_connect'], 2)} ms per subscription, "
            f"{_fmt(r['gateway_cpu_ms_per_call'], 1)} ms per call (~"
            f"{_fmt(r['gateway_cpu_us_per_extra_subscriber'], 0)} µs per subscriber beyond "
            f"the first), gone {_fmt(r['teardown_s'])} s after the clients left; "
            f"extensions: {', '.join(r['extensions']) or 'none'}"
        )
    floor = s.get("floor") or {}
    if floor.get("cpu_us_per_socket_median") is not None:
        lines.append(
            f"- The floor: a bare uvloop process writing one {floor['frame_bytes']}-byte frame "
            f"to each of {floor['connections']} loopback sockets spends "
            f"{_fmt(floor['cpu_us_per_socket_median'], 1)} µs of CPU per socket (median of "
            f"{floor['rounds']} rounds; fastest {_fmt(floor['cpu_us_per_socket_min'], 1)}): "
            "one send() each, which on loopback also runs the receiver's TCP input "
            "(bench/fanout_floor.py)"
        )
    elif floor.get("error"):
        lines.append(f"- The floor (bench/fanout_floor.py) failed: {floor['error']}")
    lines.append("")
    for path in images:
        lines += [f"![{path.stem}]({path.name})", ""]
    lines += [_wall_line(doc), ""]
    return lines


# -- plots -----------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    return plt


def plot_latency(doc: Doc, prefix: Path) -> list[Path]:
    """p50/p95/p99 (bars) and max (dash) per rate, hits and misses side by side, log scale."""
    rows = doc["summary"]["rows"]
    if not rows:
        return []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    groups = [(r["rate"], r["kind"]) for r in rows]
    width = 0.25
    xs = list(range(len(groups)))
    for i, key in enumerate(PERCENTILES):
        values = [r[key] or 0 for r in rows]
        bars = ax.bar([x + (i - 1) * width for x in xs], values, width, label=key[:3])
        ax.bar_label(bars, labels=[f"{v:.0f}" if v >= 100 else f"{v:.1f}" for v in values],
                     fontsize=6.5, padding=1)  # fmt: skip
    # The max over the p99 bar it bounds.
    ax.scatter([x + width for x in xs], [r["max_ms"] or 0 for r in rows], marker="_", s=200,
               color="k", label="max", zorder=3)  # fmt: skip
    ax.set_xticks(xs, [f"{rate}/s\n{kind}" for rate, kind in groups])
    ax.set_yscale("log")
    ax.set_ylabel("INVITE sent → call.offered at the subscriber (ms, log)")
    ax.set_title(f"{LATENCY}: per offered rate and recognition answer")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = prefix.with_name(f"{prefix.name}-latency.png")
    fig.savefig(path)
    plt.close(fig)
    return [path]


def plot_fanout(doc: Doc, prefix: Path) -> list[Path]:
    """Delivery latency (from the INVITE and from the publish) vs subscribers, log-log; the
    gateway's RSS per subscriber."""
    rows = doc["summary"]["rows"]
    if not rows:
        return []
    plt = _pyplot()
    paths = []
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    main = [r for r in rows if r["deflate"]]
    for n, (field, what) in enumerate((("from_invite", "INVITE"), ("from_publish", "publish"))):
        for key, style in (("p50_ms", "-"), ("p99_ms", "--"), ("max_ms", ":")):
            pts = [(r["live"], r[field][key]) for r in main if r[field][key] is not None]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, linestyle=style, marker="o", color=f"C{n}",
                        label=f"{what} → arrival {key[:3]}")  # fmt: skip
    for r in rows:
        if not r["deflate"]:  # the comparison level: same N, no compression
            ax.scatter([r["live"]] * 2, [r["from_invite"]["p50_ms"], r["from_invite"]["p99_ms"]],
                       marker="x", s=60, color="C2", zorder=3,
                       label=f"{r['label']}: INVITE → arrival p50, p99")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("subscribers of the tenant")
    ax.set_ylabel("ms (log)")
    ax.set_title(f"{FANOUT}: delivery of one call.offered to every subscriber")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = prefix.with_name(f"{prefix.name}-delivery.png")
    fig.savefig(path)
    plt.close(fig)
    paths.append(path)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    values = [r["rss_per_subscriber_kib"] or 0 for r in rows]
    bars = ax.bar(range(len(rows)), values, color=["C0" if r["deflate"] else "C1" for r in rows])
    ax.bar_label(bars, labels=[f"{v:.0f}" for v in values], fontsize=8, padding=1)
    ax.set_xticks(range(len(rows)), [r["label"].replace(" (", "\n(") for r in rows])
    ax.set_xlabel("subscribers (orange: the clients offered no permessage-deflate)")
    ax.set_ylabel("gateway RSS per subscriber (KiB)")
    ax.set_title(f"{FANOUT}: (RSS with N subscribers - RSS with none) / N")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    path = prefix.with_name(f"{prefix.name}-rss.png")
    fig.savefig(path)
    plt.close(fig)
    paths.append(path)
    return paths
