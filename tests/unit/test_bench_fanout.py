"""The pure parts of the bench's fan-out scenario (bench/fanout.py) and of its report
section: delivery figures, memory per subscriber, levels, descriptors, the document.
Nothing is started here."""

from __future__ import annotations

import json
import resource
from pathlib import Path
from typing import Any

from bench import SCHEMA, fanout, report
from bench.eventsapi import Arrival
from bench.fanout import (
    LEVELS_FULL,
    LEVELS_QUICK,
    Level,
    calls_for,
    delivery_figures,
    fd_shortfall,
    per_subscriber_kib,
)
from bench.subscribers import raise_nofile


def _arrival(subscriber: int, cid: str, at_us: int, seq: str = "1000-0") -> Arrival:
    return Arrival(subscriber, at_us, "call.offered", cid, seq, None, "+31612345678", "miss")


def test_delivery_figures_over_every_subscriber_and_call() -> None:
    sent = {"1-1@h": 1_000_000, "1-2@h": 2_000_000}
    arrivals = [
        # call 1 at three subscribers: 2, 4 and 6 ms after the INVITE; published at 1000 ms
        _arrival(0, "1-1@h", 1_002_000),
        _arrival(1, "1-1@h", 1_004_000),
        _arrival(2, "1-1@h", 1_006_000),
        _arrival(1, "1-1@h", 1_009_000),  # a second copy at subscriber 1
        # call 2 reaches two of them (subscriber 2 never gets it)
        _arrival(0, "1-2@h", 2_010_000, seq="2000-0"),
        _arrival(1, "1-2@h", 2_020_000, seq="2000-0"),
        _arrival(0, "7-7@h", 2_030_000),  # an event of another call
    ]
    f = delivery_figures(sent, arrivals, subscribers=3)
    assert (f["calls_placed"], f["deliveries_expected"], f["deliveries"]) == (2, 6, 5)
    assert (f["missing"], f["duplicates"], f["unmatched"]) == (1, 1, 1)
    assert f["from_invite"] == {"count": 5, "p50_ms": 6.0, "p95_ms": 20.0, "p99_ms": 20.0,
                                "max_ms": 20.0, "mean_ms": 8.4}  # fmt: skip
    # publish = the middle of the stream id's millisecond (1000.5 ms, 2000.5 ms)
    assert f["from_publish"]["p50_ms"] == 5.5 and f["from_publish"]["max_ms"] == 19.5
    assert f["spread_ms"] == {"median": 7.0, "max": 10.0}  # 4 ms (call 1), 10 ms (call 2)
    assert f["per_call"] == [
        {"sip_call_id": "1-1@h", "deliveries": 3, "first_ms": 2.0, "last_ms": 6.0},
        {"sip_call_id": "1-2@h", "deliveries": 2, "first_ms": 10.0, "last_ms": 20.0},
    ]


def test_no_arrival_at_all_is_all_missing() -> None:
    f = delivery_figures({"1-1@h": 5}, [], subscribers=100)
    assert (f["deliveries"], f["missing"]) == (0, 100)
    assert f["from_invite"]["p50_ms"] is None and f["spread_ms"] == {"median": None, "max": None}
    assert f["per_call"] == [{"sip_call_id": "1-1@h", "deliveries": 0, "first_ms": None,
                              "last_ms": None}]  # fmt: skip


def test_rss_per_subscriber() -> None:
    assert per_subscriber_kib(1_714_184, 68_476, 10_000) == 164.57
    assert per_subscriber_kib(68_476, 68_476, 0) is None
    assert per_subscriber_kib(0, 68_476, 10) is None  # the process was gone


def test_levels_and_calls() -> None:
    assert [lv.subscribers for lv in LEVELS_FULL] == [1, 100, 1000, 1000, 10_000]
    assert [lv.deflate for lv in LEVELS_FULL] == [True, True, False, True, True]
    assert [lv.subscribers for lv in LEVELS_QUICK] == [1, 100, 1000]
    assert Level(10_000).processes == 1 and Level(10_001).processes == 2 and Level(1).processes == 1
    assert Level(1000, deflate=False).label == "1000 (no deflate)" and Level(5).label == "5"
    assert [calls_for(n, quick=False) for n in (1, 100, 1000, 10_000)] == [5, 5, 3, 2]
    assert {calls_for(n, quick=True) for n in (1, 100, 1000)} == {3}
    assert 40 < Level(10_000).estimate_s(3) < 100


def test_descriptors_the_gateway_needs() -> None:
    assert fd_shortfall(Level(10_000), 20_000) is None
    assert fd_shortfall(Level(10_000), 1024) == (
        "RLIMIT_NOFILE 1024 < 10200 descriptors the gateway needs"
    )


def test_raise_nofile_never_lowers_the_limits() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new_soft, new_hard = raise_nofile(16)
    assert new_hard == hard and new_soft >= soft


def test_quick_skips_what_does_not_fit_and_a_full_run_never_does() -> None:
    assert fanout.no_time(True, 50.0, 20.0) == "time budget: ~50 s needed, 20 s left"
    assert fanout.no_time(False, 500.0, -1.0) is None


# -- the document and its report -------------------------------------------------------------------


def _status(
    connected: int, failed: int = 0, errors: dict[str, int] | None = None
) -> dict[str, Any]:
    return {
        "processes": 1, "connections": connected + failed, "connected": connected,
        "failed": failed, "errors": errors or {}, "connect_s": max(0.05, connected / 250),
        "extensions": ["permessage-deflate"], "nofile": [20000, 20000], "events": 0,
        "controls": {}, "closes": {}, "resumes": 0, "unparsable": 0,
    }  # fmt: skip


def _level(n: int, p50: float, rss_per: float, *, deflate: bool = True, failed: int = 0,
           missing: int = 0) -> dict[str, Any]:  # fmt: skip
    live = n - failed
    lat = {"count": live * 3, "p50_ms": p50, "p95_ms": p50 * 2, "p99_ms": p50 * 3,
           "max_ms": p50 * 4, "mean_ms": p50}  # fmt: skip
    return {
        "subscribers": n, "deflate": deflate, "label": Level(n, deflate).label,
        "processes": Level(n).processes, "error": None,
        "connect": _status(live, failed, {"HTTP 503": failed} if failed else None),
        "gateway_cpu_connect_s": live * 0.004, "rss_kib_connected": 68_000 + int(rss_per * live),
        "rss_kib_after_calls": 69_000 + int(rss_per * live), "gateway_subscribers": live,
        "calls_wall_s": 1.5, "gateway_cpu_s": 0.015 + (live - 1) * 3 * 0.0003,
        "subscribers_live": live,
        "calls_placed": 3, "deliveries_expected": live * 3, "deliveries": live * 3 - missing,
        "missing": missing, "duplicates": 0, "unmatched": 0,
        "from_invite": lat, "from_publish": {**lat, "p50_ms": p50 - 2},
        "spread_ms": {"median": p50 / 2, "max": p50}, "per_call": [],
        "rss_kib_baseline": 68_000, "rss_per_subscriber_kib": rss_per, "teardown_s": 0.2,
    }  # fmt: skip


def _doc() -> dict[str, Any]:
    return {
        "schema": SCHEMA, "scenario": fanout.NAME, "title": fanout.TITLE, "unit": "ms",
        "quick": False, "started_at": "2026-11-22T09:34:26+00:00",
        "finished_at": "2026-11-22T09:35:59+00:00", "wall_time_s": 93.0, "budget_s": 90.0,
        "over_budget_s": 3.0, "error": None, "rss_kib_baseline": 68_000,
        "machine": {"cores": 2, "cpu_model": "AMD EPYC", "memory_kib": 24_000_000,
                    "kernel": "6.18", "loadavg_at_start": ["1.0", "0.7", "0.6"]},
        "versions": {"python": "3.11.7", "websockets": "17.4"},
        "method": fanout._method(LEVELS_FULL, quick=False),
        "gateway": {"exit_code": 0, "stop_s": 2.8,
                    "log": {"warnings": 0, "errors": 0, "other": 0, "top": []},
                    "metrics_before_stop": {"sipgw_events_dropped": 0.0}},
        "levels": [
            _level(1, 4.7, 212.0),
            _level(100, 12.9, 173.0),
            _level(1000, 53.6, 66.7, deflate=False),
            _level(1000, 80.8, 162.3),
            _level(10_000, 2052.0, 166.5, failed=54, missing=2),
            {"subscribers": 20_000, "deflate": True, "label": "20000",
             "skipped": "RLIMIT_NOFILE 1024 < 20200 descriptors the gateway needs"},
        ],
    }  # fmt: skip


def test_fanout_summary_rows_and_findings() -> None:
    doc = report.summarize(_doc())
    s = doc["summary"]
    assert [r["label"] for r in s["rows"]] == ["1", "100", "1000 (no deflate)", "1000", "10000"]
    big = s["rows"][-1]
    assert (big["live"], big["refused"], big["deliveries"], big["missing"]) == (9946, 54, 29836, 2)
    assert big["gateway_cpu_ms_per_connect"] == 4.0
    # CPU per call: 3 calls; the 1-subscriber level's is the base of the marginal cost
    one = s["rows"][0]
    assert (one["gateway_cpu_ms_per_connect"], one["gateway_cpu_ms_per_call"]) == (None, 5.0)
    assert big["gateway_cpu_ms_per_call"] == 2988.5  # 5 ms + 9945 x 0.3 ms
    assert big["gateway_cpu_us_per_extra_subscriber"] == 300.0
    assert one["gateway_cpu_us_per_extra_subscriber"] is None  # too few: tick rounding
    text = " | ".join(s["findings"])
    assert "10000: 54 subscriptions never became live" in text and "HTTP 503" in text
    assert s["rows"][1]["gateway_cpu_us_per_extra_subscriber"] == 300.0  # from 100 on
    assert "10000: 2 of 29838 deliveries missing" in text
    assert s["skipped_levels"] == [
        "20000: RLIMIT_NOFILE 1024 < 20200 descriptors the gateway needs"
    ]
    json.dumps(doc)


def test_fanout_table_and_markdown(tmp_path: Path) -> None:
    doc = report.summarize(_doc())
    table = report.headline_table(doc)
    assert "| 10000 | 9946 (54) | 39.8 | 29836 / 29838 | 2 052.00 / 6 156.00 / 8 208.00 |" in table
    assert "| 1000 (no deflate) | 1000 (0) |" in table
    assert "Gateway RSS with no subscriber: 66 MiB." in table
    png = tmp_path / "x-fan-out-rss.png"
    md = report.markdown([doc], {fanout.NAME: [png]})
    assert "## fan-out" in md and f"![{png.stem}]({png.name})" in md
    assert "- FINDING: 10000: 2 of 29838 deliveries missing" in md
    assert "- Skipped, 20000: RLIMIT_NOFILE" in md
    assert "exceeded by 3 s" in md


def test_the_write_floor_is_reported_beside_the_levels() -> None:
    doc = _doc()
    doc["floor"] = {"connections": 10000, "frame_bytes": 512, "rounds": 11,
                    "cpu_us_per_socket_median": 9.4, "cpu_us_per_socket_min": 8.1}  # fmt: skip
    md = report.markdown([report.summarize(doc)], {})
    assert "writing one 512-byte frame to each of 10000 loopback sockets spends 9.4 µs" in md
    failed = _doc()
    failed["floor"] = {"error": "TimeoutExpired: too slow"}
    assert "The floor (bench/fanout_floor.py) failed: TimeoutExpired" in report.markdown(
        [report.summarize(failed)], {}
    )


def test_the_write_floor_measures_a_real_uvloop_fan_out() -> None:
    found = fanout.write_floor(200)
    assert "error" not in found, found
    assert found["connections"] == 200 and found["rounds"] == 11
    assert 0 < found["cpu_us_per_socket_min"] <= found["cpu_us_per_socket_median"]


def test_fanout_plots_are_written(tmp_path: Path) -> None:
    doc = report.summarize(_doc())
    paths = report.plot(doc, tmp_path / "run-fan-out")
    assert [p.name for p in paths] == ["run-fan-out-delivery.png", "run-fan-out-rss.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_a_failed_level_is_reported_and_the_others_kept() -> None:
    raw = _doc()
    error = "RuntimeError: a subscriber process exited:\nTraceback"
    raw["levels"][1] = {"subscribers": 100, "deflate": True, "label": "100", "error": error}
    doc = report.summarize(raw)
    assert [r["label"] for r in doc["summary"]["rows"]][:2] == ["1", "1000 (no deflate)"]
    md = report.markdown([doc], {})
    assert "- ERROR at 100: RuntimeError: a subscriber process exited: (more in the JSON)" in md


def test_event_sections_follow_the_step_scenarios_in_run_order() -> None:
    from tests.unit.test_bench_latency import _doc as latency_doc

    docs = [report.summarize(latency_doc()), report.summarize(_doc())]
    md = report.markdown(docs, {})
    assert md.index("## invite-event-latency") < md.index("## fan-out")
    assert "websockets 17.4" in md.splitlines()[2]  # versions of every document


def test_refusals_that_a_retry_overcame_are_still_reported() -> None:
    raw = _doc()
    raw["levels"][3]["connect"]["errors"] = {"HTTP 503": 3, "retried": 3}
    text = " | ".join(report.summarize(raw)["summary"]["findings"])
    assert "1000: every subscription became live, some only when tried again" in text
