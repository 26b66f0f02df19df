"""Summary, table, Markdown and plot of the soak scenario (bench/soak.py). Pure:
a document in, text and a PNG out; bench/report.py dispatches here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SOAK = "soak"
Doc = dict[str, Any]


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}".replace(",", " ")


def rss_growth(samples: Sequence[Mapping[str, Any]], warmup_s: float) -> dict[str, Any]:
    """RSS at the first sample past the warm-up, the largest after it, and the growth
    between them (a fraction; None without two such samples)."""
    after = [s for s in samples if s["t_s"] >= warmup_s and s.get("rss_kib")]
    if len(after) < 2:
        return {"rss_kib_after_warmup": None, "rss_kib_max": None, "rss_growth": None}
    base = after[0]["rss_kib"]
    top = max(s["rss_kib"] for s in after)
    return {"rss_kib_after_warmup": base, "rss_kib_max": top,
            "rss_growth": round((top - base) / base, 4)}  # fmt: skip


def summarize_soak(doc: Doc) -> Doc:
    sip = doc.get("sip") or {}
    samples = doc.get("samples") or []
    warmup = (doc.get("method") or {}).get("warmup_s", 60.0)
    gc = [s["gc_pause_max_s"] for s in samples if s.get("gc_pause_max_s") is not None]
    final_gc = (doc.get("gateway") or {}).get("gc_pause_max_s")
    if final_gc is not None:
        gc.append(final_gc)
    gc_cpu = [s["gc_pause_cpu_max_s"] for s in samples if s.get("gc_pause_cpu_max_s") is not None]
    final_cpu = (doc.get("gateway") or {}).get("gc_pause_cpu_max_s")
    if final_cpu is not None:
        gc_cpu.append(final_cpu)
    bus = [s["bus_lag_s"] for s in samples if s.get("bus_lag_s") is not None]
    events = doc.get("events") or {}
    doc["summary"] = {
        "error": doc.get("error"),
        "duration_s": sip.get("duration_s"),
        "rate": doc.get("rate"),
        "max_clean_rate": doc.get("max_clean_rate"),
        "max_clean_rate_source": doc.get("max_clean_rate_source"),
        "attempted": sip.get("attempted"),
        "failed": sip.get("failed"),
        "clean": sip.get("clean"),
        "unclean_reasons": sip.get("unclean_reasons", []),
        "achieved_rate": sip.get("achieved_rate"),
        "response_ms": sip.get("response_ms"),
        "cpu_ms_per_call": sip.get("cpu_ms_per_call"),
        **rss_growth(samples, warmup),
        "warmup_s": warmup,
        "gc_pause_max_ms": round(1000 * max(gc), 2) if gc else None,
        "gc_pause_cpu_max_ms": round(1000 * max(gc_cpu), 2) if gc_cpu else None,
        "bus_lag_max_s": max(bus) if bus else None,
        "events_received": events.get("received"),
        "events_missing": events.get("missing"),
        "event_lag_ms": events.get("lag"),
        "gateway_exit_code": (doc.get("gateway") or {}).get("exit_code"),
        "source": None,  # the file, when the summary reads an earlier soak
    }
    return doc


def soak_table(doc: Doc) -> str:
    s = doc["summary"]
    if s["error"] or s["duration_s"] is None:
        return f"**{doc['title']}**\n\nNot run: {s['error'] or 'no figures'}"
    lag = s["event_lag_ms"] or {}
    growth = s["rss_growth"]
    verdict = "clean" if s["clean"] else "UNCLEAN: " + "; ".join(s["unclean_reasons"])
    rows = [
        ("rate", f"{s['rate']} calls/s = 60 % of {s['max_clean_rate']} "
                 f"({s['max_clean_rate_source']})"),
        ("duration", f"{s['duration_s']:.0f} s, {s['attempted']} calls, "
                     f"{s['failed']} failed; {verdict}"),
        ("achieved, response p50 / p99", f"{_fmt(s['achieved_rate'], 0)}/s, "
         f"{_fmt((s['response_ms'] or {}).get('p50'), 0)} / "
         f"{_fmt((s['response_ms'] or {}).get('p99'), 0)} ms"),
        ("CPU per call", f"{_fmt(s['cpu_ms_per_call'], 3)} ms"),
        ("RSS after the warm-up → max", f"{_fmt(s['rss_kib_after_warmup'], 0)} → "
         f"{_fmt(s['rss_kib_max'], 0)} KiB "
         f"({_fmt(None if growth is None else 100 * growth, 1)} %; warm-up {s['warmup_s']:.0f} s)"),
        ("longest GC pause", f"{_fmt(s['gc_pause_max_ms'], 1)} ms"
         + ("" if s["gc_pause_max_ms"] is not None else " (not exported by the gateway)")
         + ("" if s.get("gc_pause_cpu_max_ms") is None
            else f" wall clock; {_fmt(s['gc_pause_cpu_max_ms'], 1)} ms of CPU")),
        ("events (call.offered)", f"{s['events_received']} received, "
         f"{s['events_missing']} missing"),
        ("event lag (arrival - occurred_at)", f"p50 {_fmt(lag.get('p50_ms'), 2)}, p99 "
         f"{_fmt(lag.get('p99_ms'), 2)}, max {_fmt(lag.get('max_ms'), 2)} ms; bus lag max "
         f"{_fmt(s['bus_lag_max_s'], 3)} s"),
    ]  # fmt: skip
    lines = [f"**{doc['title']}**", "", "| figure | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def soak_markdown(doc: Doc, images: Sequence[Path]) -> list[str]:
    lines = [f"## {doc['scenario']}", "", soak_table(doc), ""]
    for path in images:
        lines += [f"![{path.stem}]({path.name})", ""]
    lines += [f"Wall time of the scenario: {doc.get('wall_time_s')} s.", ""]
    return lines


def plot_soak(doc: Doc, prefix: Path) -> list[Path]:
    """RSS and event lag (p99 per sample window) over time."""
    samples = doc.get("samples") or []
    if not samples:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = [s["t_s"] for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), dpi=110, sharex=True)
    top.plot(ts, [s["rss_kib"] / 1024 for s in samples], marker=".")
    top.axvline(doc["summary"]["warmup_s"], linestyle=":", color="grey", label="warm-up")
    top.set_ylabel("gateway RSS (MiB)")
    top.legend()
    top.grid(True, alpha=0.3)
    lag = [(s["t_s"], s["event_lag"]["p99_ms"]) for s in samples
           if s.get("event_lag", {}).get("p99_ms") is not None]  # fmt: skip
    if lag:
        xs, ys = zip(*lag, strict=True)
        bottom.plot(xs, ys, marker=".", color="C1")
    bottom.set_ylabel("event lag p99 (ms)")
    bottom.set_xlabel("seconds into the soak")
    bottom.grid(True, alpha=0.3)
    top.set_title(f"soak: {doc.get('rate')} calls/s")
    fig.tight_layout()
    path = prefix.with_name(f"{prefix.name}-over-time.png")
    fig.savefig(path)
    plt.close(fig)
    return [path]
