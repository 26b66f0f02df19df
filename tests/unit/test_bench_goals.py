"""The goals table of the bench (bench/goals.py): met, not met and not measured, from
synthetic results shaped like the summarized documents. Nothing is started here."""

from __future__ import annotations

import copy
import json
from typing import Any

from bench import goals
from bench.goals import GOALS, MET, NOT_MEASURED, NOT_MET, Part, combine, evaluate

Doc = dict[str, Any]


def _row(label: str, impl: str, workers: int, cpu_ms: float, rate: int = 400,
         *, lower_bound: bool = False, sustained: dict[str, Any] | None = None) -> Doc:  # fmt: skip
    return {
        "label": label, "implementation": impl, "workers": workers, "repetitions_run": 3,
        "cpu_ms_per_call_at_common_rate": cpu_ms,
        "max_clean_rate": {"median": rate, "min": rate, "max": rate},
        "max_clean_is_lower_bound": lower_bound, "sustained": sustained,
    }  # fmt: skip


def _sustained(rate: int, clean: bool, duration_s: float = 34.0) -> Doc:
    return {"rate": rate, "duration_s": duration_s, "clean": clean}


def _step_doc(name: str, rows: list[Doc], common: int, duration_s: float = 2.0) -> Doc:
    return {
        "scenario": name, "machine": {"clock_ticks_per_s": 100},
        "method": {"rates": [100, 400, 1600, 2000, 8000], "step_duration_s": duration_s},
        "summary": {"common_rate": common, "common_rate_clean_everywhere": True, "rows": rows},
    }  # fmt: skip


def _kinds(p50: float, p99: float) -> Doc:
    return {k: {"latency": {"p50_ms": p50, "p99_ms": p99}} for k in ("hit", "miss")}


def _latency_step(rate: int, workers: int, p50: float, p99: float, missing: int = 0) -> Doc:
    return {
        "rate": rate, "workers": workers, "kinds": _kinds(p50, p99), "missing": missing,
        "calls_placed": 600, "events_received": 600 - missing, "sip": {"clean": True},
    }  # fmt: skip


def _good() -> list[Doc]:
    """Every goal met."""
    calls = _step_doc("proxied-calls", [
        _row("sipgw", "sipgw", 1, 0.30, 2000, sustained=_sustained(2000, True)),
        _row("sipgw-2w", "sipgw", 2, 0.35, 4000, sustained=_sustained(4000, True)),
        _row("kamailio-1w", "kamailio", 1, 0.12, 8000, lower_bound=True),
        _row("kamailio-2w", "kamailio", 2, 0.13, 8000, lower_bound=True),
    ], 2000)  # fmt: skip
    options = _step_doc("options", [
        _row("sipgw", "sipgw", 1, 0.020, 16000),
        _row("kamailio-1w", "kamailio", 1, 0.010, 32000, lower_bound=True),
        _row("uvloop-floor", "uvloop-floor", 1, 0.012, 32000, lower_bound=True),
    ], 16000, duration_s=1.0)  # fmt: skip
    latency = {"scenario": "invite-event-latency", "steps": [
        _latency_step(100, 1, 0.5, 2.0),
        _latency_step(300, 1, 0.8, 4.0),
        _latency_step(1000, 2, 3.0, 15.0),
    ]}  # fmt: skip
    fanout = {"scenario": "fan-out", "summary": {"rows": [
        {"subscribers": 1000, "deflate": True, "live": 1000},
        {"subscribers": 10000, "deflate": True, "live": 10000, "deliveries": 20000,
         "deliveries_expected": 20000, "from_publish": {"p99_ms": 120.0},
         "gateway_cpu_us_per_extra_subscriber": 4.0, "rss_per_subscriber_kib": 18.0},
    ], "floor": {"connections": 10000, "cpu_us_per_socket_median": 3.5,
                 "cpu_us_per_socket_min": 3.1}}}  # fmt: skip
    soak = {"scenario": "soak", "summary": {
        "error": None, "duration_s": 600.0, "rate": 1200, "max_clean_rate": 2000,
        "failed": 0, "rss_growth": 0.02, "gc_pause_max_ms": 12.0, "clean": True,
        "event_lag_ms": {"p99_ms": 4.0, "max_ms": 9.0}, "source": None,
    }}  # fmt: skip
    return [calls, options, latency, fanout, soak]


def _status(docs: list[Doc]) -> dict[str, str]:
    return {v.key: v.status for v in evaluate(docs)}


def test_the_bars_are_the_issues_numbers() -> None:
    bars = {g.key: dict(g.bars) for g in GOALS}
    assert [g.key for g in GOALS] == ["G1", "G2", "G3", "G4", "G5", "G6"]
    assert bars["G1"] == {"max_ratio": 3.0}
    assert bars["G2"] == {"max_ratio_kamailio": 3.0, "max_ratio_floor": 2.0}
    assert bars["G3"]["baseline"] * bars["G3"]["factor"] == 1600 and bars["G3"]["sustain_s"] == 34
    assert bars["G4"] == {"rate": 300, "p50_ms": 1.0, "p99_ms": 5.0, "rate_2w": 1000,
                          "p99_ms_2w": 20.0}  # fmt: skip
    assert bars["G5"] == {"subscribers": 10000, "p99_ms": 150.0, "cpu_us": 5.0, "rss_kib": 20.0}
    assert bars["G6"]["duration_s"] == 600 and bars["G6"]["rate_fraction"] == 0.6
    assert (bars["G6"]["gc_pause_ms"], bars["G6"]["rss_growth"], bars["G6"]["failed"]) == (
        20.0,
        0.05,
        0,
    )


def test_every_goal_met() -> None:
    verdicts = evaluate(_good())
    assert [v.status for v in verdicts] == [MET] * 6
    g1 = verdicts[0]
    assert "sipgw 0.300 / kamailio-1w 0.120 ms = x2.50" in g1.measured
    assert "sipgw-2w 0.350 / kamailio-2w 0.130 ms = x2.69" in g1.measured
    assert "at 2000 calls/s, the common rate" in g1.notes
    g2 = verdicts[1]
    assert "sipgw 20.0 / uvloop-floor 12.0 µs = x1.67" in g2.measured
    # one /proc tick (10 ms) over a 1 s step of 16 000 requests
    assert "CPU resolution ±0.6 µs per call (one /proc tick per step)" in g2.notes
    assert any(n.startswith("workers = 2: sipgw-2w 4000") for n in verdicts[2].notes)
    assert "300 calls/s: p50 0.80 ms, p99 4.00 ms, 600/600 events" in verdicts[3].measured
    assert any("each of 10000 loopback sockets: 3.5 µs per socket" in n for n in verdicts[4].notes)
    table = goals.table(verdicts)
    assert "| G1 CPU per proxied call | sipgw 0.300 / kamailio-1w" in table
    assert table.rstrip().endswith("6 of 6 goals met.")
    json.dumps([v.to_json() for v in verdicts])


def test_each_goal_missed() -> None:
    docs = _good()
    calls, options, latency, fanout, soak = docs
    calls["summary"]["rows"][1]["cpu_ms_per_call_at_common_rate"] = 1.2  # sipgw-2w x9.2
    options["summary"]["rows"][0]["cpu_ms_per_call_at_common_rate"] = 0.025  # x2.08 the floor
    calls["summary"]["rows"][0]["sustained"] = _sustained(2000, False)  # does not hold
    latency["steps"][1] = _latency_step(300, 1, 0.8, 4.0, missing=1)  # one event lost
    fanout["summary"]["rows"][1]["rss_per_subscriber_kib"] = 58.0
    soak["summary"]["failed"] = 3
    verdicts = {v.key: v for v in evaluate(docs)}
    assert {k: v.status for k, v in verdicts.items()} == dict.fromkeys(verdicts, NOT_MET)
    assert "sustained UNCLEAN @ 2000 for 34 s" in verdicts["G3"].measured
    # Kamailio's ratio is within its bar: the floor's alone misses G2.
    assert "x2.50" in verdicts["G2"].measured and "x2.08" in verdicts["G2"].measured
    assert "599/600 events" in verdicts["G4"].measured


def test_below_the_rate_bar_is_not_met_and_a_clean_low_ladder_is_not_measured() -> None:
    docs = _good()
    row = docs[0]["summary"]["rows"][0]
    row.update(max_clean_rate={"median": 600, "min": 400, "max": 600},
               sustained=_sustained(600, True))  # fmt: skip
    assert _status(docs)["G3"] == NOT_MET
    row["max_clean_is_lower_bound"] = True  # every rate offered was clean
    assert _status(docs)["G3"] == NOT_MEASURED


def test_a_short_sustained_check_cannot_meet_g3() -> None:
    docs = _good()
    row = docs[0]["summary"]["rows"][0]
    row["sustained"] = _sustained(2000, True, duration_s=8.0)  # --quick
    v = next(v for v in evaluate(docs) if v.key == "G3")
    assert v.status == NOT_MEASURED and any("asks 34 s" in n for n in v.notes)
    row["sustained"] = _sustained(2000, False, duration_s=8.0)
    assert _status(docs)["G3"] == NOT_MET


def test_nothing_run_is_not_measured() -> None:
    verdicts = evaluate([])
    assert [v.status for v in verdicts] == [NOT_MEASURED] * 6
    assert verdicts[5].notes == ("no soak result (python -m bench --scenario soak)",)
    assert goals.table(verdicts).rstrip().endswith("0 of 6 goals met.")


def test_parts_missing_from_a_run_are_not_measured() -> None:
    docs = _good()
    calls, options, latency, fanout, soak = docs
    calls["summary"]["rows"] = calls["summary"]["rows"][:1] + calls["summary"]["rows"][2:3]
    options["summary"]["rows"] = options["summary"]["rows"][:2]  # no floor in the run
    latency["steps"] = latency["steps"][:2]  # --quick: no 2-worker step
    fanout["summary"]["rows"] = fanout["summary"]["rows"][:1]  # --quick: up to 1000
    soak["summary"]["gc_pause_max_ms"] = None  # the gateway exports no GC pauses
    verdicts = {v.key: v for v in evaluate(docs)}
    statuses = {k: v.status for k, v in verdicts.items()}
    assert statuses == {**dict.fromkeys(verdicts, NOT_MEASURED), "G3": MET}
    assert not any(n.startswith("workers = 2") for n in verdicts["G3"].notes)
    assert "sipgw-2w, kamailio-2w not in the run" in verdicts["G1"].measured
    assert "uvloop-floor not in the run" in verdicts["G2"].measured
    assert "1000 calls/s, 2 workers: no step" in verdicts["G4"].measured
    assert any("sipgw_gc_pause_seconds" in n for n in verdicts["G6"].notes)


def test_a_part_missed_outweighs_a_part_not_measured() -> None:
    assert combine([Part("a", False), Part("b", None)]) == NOT_MET
    assert combine([Part("a", True), Part("b", None)]) == NOT_MEASURED
    assert combine([Part("a", True), Part("b", True)]) == MET
    assert combine([]) == NOT_MEASURED
    docs = _good()
    sipgw = docs[0]["summary"]["rows"][0]
    # sipgw x6 of this Kamailio; no 2-worker pair in the run
    docs[0]["summary"]["rows"] = [sipgw, _row("kamailio-1w", "kamailio", 1, 0.05)]
    assert _status(docs)["G1"] == NOT_MET


def test_a_short_soak_is_not_measured_unless_it_already_failed() -> None:
    docs = _good()
    docs[4]["summary"]["duration_s"] = 60.0
    assert _status(docs)["G6"] == NOT_MEASURED
    docs[4]["summary"]["rss_growth"] = 0.2  # not judged: the heap may still be warming up
    assert _status(docs)["G6"] == NOT_MEASURED
    docs[4]["summary"]["failed"] = 1
    assert _status(docs)["G6"] == NOT_MET


def test_a_soak_result_given_apart_is_used_and_the_runs_own_wins() -> None:
    docs = _good()
    soak = docs.pop()
    assert _status(docs)["G6"] == NOT_MEASURED
    assert {v.key: v.status for v in evaluate(docs, soak)}["G6"] == MET
    failed = copy.deepcopy(soak)
    failed["summary"]["failed"] = 1
    assert {v.key: v.status for v in evaluate([*docs, soak], failed)}["G6"] == MET
