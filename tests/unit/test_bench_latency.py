"""The pure parts of the bench's invite-event-latency scenario (bench/latency.py), of what
it shares with fan-out (bench/eventsapi.py, bench/subscribers.py) and of its report
section; the time budget of the whole run. Nothing is started here."""

from __future__ import annotations

import json
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

from bench import SCHEMA, eventsapi, latency, report, subscribers
from bench.eventsapi import (
    Arrival,
    call_number,
    counter_deltas,
    epoch_us,
    latency_ms,
    merge_status,
    parse_arrival,
    parse_invites,
    parse_metrics,
    rfc3339_us,
    seq_ms,
)
from bench.latency import (
    STEPS_FULL,
    STEPS_QUICK,
    Step,
    caller_numbers,
    hits_of,
    injection_file,
    kind_of_call,
    step_figures,
)
from bench.sipgw import render_config
from bench.subscribers import event_line, resume_cursor, retry_delay, with_since

# -- sipp's short message trace -------------------------------------------------------------

TRACE = (
    "2026-11-22\t09:24:09.677345\t1795339449.677345\tS\t1-19208@127.0.0.1\tCSeq:1 INVITE\t"
    "INVITE sip:+31201234567@127.0.0.1 SIP/2.0\n"
    "2026-11-22\t09:24:09.678001\t1795339449.678001\tR\t1-19208@127.0.0.1\tCSeq:1 INVITE\t"
    "SIP/2.0 100 Trying\n"
    "2026-11-22\t09:24:09.777171\t1795339449.777171\tS\t2-19208@127.0.0.1\tCSeq:1 INVITE\t"
    "INVITE sip:+31201234567@127.0.0.1 SIP/2.0\n"
    # a retransmission keeps the first time
    "2026-11-22\t09:24:10.277171\t1795339450.277171\tS\t2-19208@127.0.0.1\tCSeq:1 INVITE\t"
    "INVITE sip:+31201234567@127.0.0.1 SIP/2.0\n"
    "2026-11-22\t09:24:09.880000\t1795339449.880000\tS\t1-19208@127.0.0.1\tCSeq:1 ACK\t"
    "ACK sip:201@127.0.0.1:5070 SIP/2.0\n"
    "2026-11-22\t09:24:09.9"  # cut by a kill
)


def test_parse_invites_takes_each_calls_first_invite_sent() -> None:
    assert parse_invites(TRACE) == {
        "1-19208@127.0.0.1": 1795339449677345,
        "2-19208@127.0.0.1": 1795339449777171,
    }
    assert parse_invites("") == {}


def test_epoch_us_is_exact() -> None:
    assert epoch_us("1795339449.677345") == 1795339449677345
    assert epoch_us("1795339449.5") == 1795339449500000
    assert epoch_us("1795339449") == 1795339449000000
    assert epoch_us("17953x") is None
    assert epoch_us("1.2.3") is None


def test_call_number_from_sipps_call_id() -> None:
    assert call_number("17-19208@127.0.0.1") == 17
    assert call_number("abc@host") is None


# -- callers ------------------------------------------------------------------------------------


def test_callers_alternate_hits_and_misses_and_never_repeat() -> None:
    first = caller_numbers(4, 0)
    second = caller_numbers(4, 4)
    assert first == ["+31610000000", "+31650000001", "+31610000002", "+31650000003"]
    assert [kind_of_call(n) for n in (1, 2, 3, 4)] == ["hit", "miss", "hit", "miss"]
    assert not set(first) & set(second)
    assert all(len(n) == 12 and n.startswith("+316") for n in first + second)
    assert hits_of(first) == ["+31610000000", "+31610000002"]


def test_injection_file_is_sequential_one_call_per_line() -> None:
    assert injection_file(["+31610000000", "+31650000001"]) == (
        "SEQUENTIAL\n+31610000000;\n+31650000001;\n"
    )


def test_steps_cover_the_rates_asked_for() -> None:
    # Goal 4 (bench/goals.py): 300 calls/s in one process, 1000 calls/s with 2 workers.
    assert [(s.rate, s.workers) for s in STEPS_FULL] == [(100, 1), (300, 1), (500, 1), (1000, 2)]
    assert [(s.rate, s.workers) for s in STEPS_QUICK] == [(100, 1), (300, 1)]
    assert latency.phases(STEPS_FULL) == [(1, list(STEPS_FULL[:3])), (2, [STEPS_FULL[3]])]
    assert Step(1000, 2.0).calls == 2000
    assert Step(100, 0.001).calls == 2  # at least one hit and one miss


# -- arrivals and matching ------------------------------------------------------------------------


def _event(
    cid: str, calling: str, lookup: str = "hit", seq: str = "1795339449680-0"
) -> dict[str, Any]:
    return {
        "v": 1, "type": "call.offered", "sip_call_id": cid, "seq": seq,
        "occurred_at": "2026-11-22T09:24:09.678345Z",
        "calling": {"number_raw": calling, "number_e164": calling},
        "lookup": {"status": lookup, "cache": "miss"},
    }  # fmt: skip


def test_an_event_line_round_trips_through_parse_arrival() -> None:
    line = event_line(7, 1795339449683345123, _event("1-9@127.0.0.1", "+31610000000"))
    assert line.count("\t") == 7 and line.endswith("\n")
    a = parse_arrival(line)
    assert a == Arrival(
        subscriber=7, arrival_us=1795339449683345, type="call.offered",
        sip_call_id="1-9@127.0.0.1", seq="1795339449680-0",
        occurred_at_us=1795339449678345, calling="+31610000000", lookup="hit",
    )  # fmt: skip
    assert a.published_ms == 1795339449680
    assert parse_arrival("garbage\n") is None
    # no lookup (an internal call), no calling party: empty cells, still one line
    bare = parse_arrival(event_line(0, 5, {"type": "call.offered"}))
    assert bare is not None and bare.lookup == "" and bare.occurred_at_us is None


def test_time_helpers() -> None:
    assert rfc3339_us("2026-11-22T09:24:09.000001Z") == 1795339449000001
    assert rfc3339_us("2026-11-22T09:24:09Z") == 1795339449000000
    assert rfc3339_us("not a time") is None
    assert rfc3339_us("2026-11-22T09:24:09") is None  # no zone: not the gateway's format
    assert seq_ms("1795339449680-3") == 1795339449680
    assert seq_ms("") is None


def _arrival(cid: str, at_us: int, calling: str, lookup: str, subscriber: int = 0) -> Arrival:
    return Arrival(subscriber, at_us, "call.offered", cid, "1000-0", 1_000_500, calling, lookup)


def test_step_figures_match_by_call_id_per_kind() -> None:
    numbers = caller_numbers(4, 0)
    sent = {f"{n}-1@127.0.0.1": 1_000_000 + n for n in (1, 2, 3, 4)}
    arrivals = [
        _arrival("1-1@127.0.0.1", 1_004_001, numbers[0], "hit"),  # 4 ms
        _arrival("2-1@127.0.0.1", 1_003_002, numbers[1], "miss"),  # 3 ms
        _arrival("2-1@127.0.0.1", 1_009_002, numbers[1], "miss"),  # a duplicate
        _arrival("3-1@127.0.0.1", 1_030_003, numbers[3], "pending"),  # 30 ms, wrong caller
        _arrival("9-1@127.0.0.1", 1_000_000, "+31600000000", "miss"),  # not ours
        # call 4 (a miss) never arrives
    ]
    f = step_figures(sent, arrivals, numbers)
    assert (f["calls_placed"], f["events_received"], f["missing"]) == (4, 3, 1)
    assert (f["duplicates"], f["unmatched"]) == (1, 1)
    hit, miss = f["kinds"]["hit"], f["kinds"]["miss"]
    assert (hit["placed"], hit["received"], hit["missing"]) == (2, 2, 0)
    assert (miss["placed"], miss["received"], miss["missing"]) == (2, 1, 1)
    assert hit["latency"]["p50_ms"] == 4.0 and hit["latency"]["max_ms"] == 30.0
    assert miss["latency"] == {"count": 1, "p50_ms": 3.0, "p95_ms": 3.0, "p99_ms": 3.0,
                               "max_ms": 3.0, "mean_ms": 3.0}  # fmt: skip
    assert hit["lookup"] == {"hit": 1, "pending": 1}
    assert hit["caller_mismatch"] == 1 and miss["caller_mismatch"] == 0
    seg = miss["segments_p50"]
    # sent at 1 000 002 µs, seen at 1 000 500, stream id 1000 ms (1 000 500 µs), arrived
    # at 1 003 002
    assert seg == {"sip_to_gateway_ms": 0.498, "gateway_to_stream_ms": 0.0,
                   "stream_to_subscriber_ms": 2.502}  # fmt: skip


def test_latency_ms_is_nearest_rank_with_microsecond_precision() -> None:
    s = latency_ms([i * 1000 for i in range(1, 101)])
    assert s == {"count": 100, "p50_ms": 50.0, "p95_ms": 95.0, "p99_ms": 99.0,
                 "max_ms": 100.0, "mean_ms": 50.5}  # fmt: skip
    assert latency_ms([1234])["p99_ms"] == 1.234
    assert latency_ms([])["p50_ms"] is None


# -- the gateway side ------------------------------------------------------------------------------


def test_metrics_are_summed_over_labels_and_counters_named_total() -> None:
    text = (
        "# HELP sipgw_events_published Events written to Redis\n"
        "sipgw_events_published_total 12.0\n"
        "sipgw_events_published_created 1.7e9\n"
        'sipgw_events_dropped_total{reason="queue_full"} 2.0\n'
        'sipgw_events_dropped_total{reason="buffer_full"} 1.0\n'
        "sipgw_subscribers 3.0\n"
    )
    names = ("sipgw_events_published", "sipgw_events_dropped", "sipgw_subscribers", "x")
    assert parse_metrics(text, names) == {
        "sipgw_events_published": 12.0, "sipgw_events_dropped": 3.0,
        "sipgw_subscribers": 3.0, "x": 0.0,
    }  # fmt: skip
    before = {"sipgw_events_published": 10.0, "sipgw_subscribers": 9.0}
    after = {"sipgw_events_published": 25.0, "sipgw_subscribers": 1.0}
    assert counter_deltas(before, after) == {
        "sipgw_events_published": 15.0,
        "sipgw_subscribers": 1.0,  # a gauge: as it is
    }


def test_the_gateway_config_gets_an_events_table_when_asked() -> None:
    plain = tomllib.loads(render_config(5060, 8080, 5080, "redis://127.0.0.1:6400/0"))
    assert "events" not in plain
    raised = tomllib.loads(
        render_config(5060, 8080, 5080, "redis://x", events={"max_subscribers_per_tenant": 10100})
    )
    assert raised["events"] == {"max_subscribers_per_tenant": 10100}
    assert raised["tenants"][0]["id"] == "acme"  # the tenant still follows, whole
    gw = eventsapi.EventsGateway(events={"max_subscribers_per_tenant": 300})
    text = gw.config_text(5060, 8080, 5080, "redis://127.0.0.1:6400/0")
    config = tomllib.loads(text)
    assert config["events"]["max_subscribers_per_tenant"] == 300
    assert config["tenants"][0]["recognition"]["fields"] == ["name", "company", "crm_id"]


# -- the subscriber process ---------------------------------------------------------------------


def test_a_subscriber_resumes_only_after_an_overflow_cut_off() -> None:
    assert resume_cursor(4008, "overflow since=1795339449680-0") == "1795339449680-0"
    assert resume_cursor(4008, "overflow since=None") is None
    assert resume_cursor(1001, "gateway shutting down") is None
    assert resume_cursor(None, "") is None
    assert with_since("ws://h/v1/events?type=call.offered", "5-0") == (
        "ws://h/v1/events?type=call.offered&since=5-0"
    )
    assert with_since("ws://h/v1/events", "5-0") == "ws://h/v1/events?since=5-0"


def test_only_a_503_handshake_is_retried_after_its_retry_after() -> None:
    assert retry_delay(503, "5") == 5.0
    assert retry_delay(503, "60") == subscribers.MAX_RETRY_WAIT_S
    assert retry_delay(503, None) == 1.0
    assert retry_delay(503, "soon") == 1.0
    assert retry_delay(429, "5") is None  # the subscriber limit: an answer, not a hiccup
    assert retry_delay(401, None) is None


def test_recorder_writes_events_and_counts_control_messages(tmp_path: Path) -> None:
    out = (tmp_path / "a.tsv").open("w")
    rec = subscribers.Recorder(out, first_index=100)
    rec.add(0, json.dumps(_event("1-1@h", "+31610000000")))
    rec.add(1, json.dumps({"type": "sipgw.heartbeat", "last_seq": None}))
    rec.add(1, b"\xff not json")
    rec.flush()
    out.close()
    lines = (tmp_path / "a.tsv").read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("100\t")
    assert rec.events == 1 and rec.controls == Counter({"sipgw.heartbeat": 1}) and rec.bad == 1


def test_statuses_of_subscriber_processes_merge() -> None:
    a = {"connections": 2, "connected": 2, "failed": 0, "errors": {}, "connect_s": 1.5,
         "extensions": ["permessage-deflate"], "nofile": [20000, 20000], "events": 4,
         "controls": {"sipgw.heartbeat": 1}, "resumes": 1}  # fmt: skip
    b = {"connections": 3, "connected": 2, "failed": 1, "errors": {"HTTP 503": 2, "retried": 1},
         "connect_s": 2.5, "extensions": ["permessage-deflate"], "events": 6,
         "controls": {"sipgw.heartbeat": 2}, "closes": {"closed 4008": 1}}  # fmt: skip
    m = merge_status([a, b])
    assert (m["processes"], m["connections"], m["connected"], m["failed"]) == (2, 5, 4, 1)
    assert m["errors"] == {"HTTP 503": 2, "retried": 1}
    assert m["controls"] == {"sipgw.heartbeat": 3} and m["closes"] == {"closed 4008": 1}
    assert (m["connect_s"], m["events"], m["resumes"]) == (2.5, 10, 1)
    assert m["extensions"] == ["permessage-deflate"] and m["nofile"] == [20000, 20000]


def test_tail_hands_out_complete_lines_only(tmp_path: Path) -> None:
    path = tmp_path / "x.tsv"
    tail = eventsapi._Tail(path)
    assert tail.lines() == []  # not there yet
    path.write_text("a\tb\nc\t")
    assert tail.lines() == ["a\tb"]
    with path.open("a") as f:
        f.write("d\ne\n")
    assert tail.lines() == ["c\td", "e"]
    assert tail.lines() == []


def test_pool_shares_connections_between_processes(tmp_path: Path) -> None:
    pool = eventsapi.SubscriberPool("ws://x", "t", 10_000, tmp_path, workers=4)
    assert pool._shares() == [2500] * 4
    assert eventsapi.SubscriberPool("ws://x", "t", 7, tmp_path, workers=3)._shares() == [3, 2, 2]
    assert eventsapi.SubscriberPool("ws://x", "t", 1, tmp_path, workers=4).workers == 1


def test_vmrss_is_read_from_proc_status() -> None:
    assert eventsapi.parse_vmrss_kib("Name:\tpython\nVmRSS:\t  68476 kB\nVmSwap: 0 kB\n") == 68476
    assert eventsapi.parse_vmrss_kib("Name:\tzombie\n") == 0


# -- the document and its report -------------------------------------------------------------------


def _kind(placed: int, received: int, p50: float, lookup: dict[str, int]) -> dict[str, Any]:
    return {
        "placed": placed, "received": received, "missing": placed - received,
        "latency": {"count": received, "p50_ms": p50, "p95_ms": p50 * 2, "p99_ms": p50 * 3,
                    "max_ms": p50 * 4, "mean_ms": p50},
        "segments_p50": {"sip_to_gateway_ms": 0.9, "gateway_to_stream_ms": 3.4,
                         "stream_to_subscriber_ms": 1.3},
        "lookup": lookup, "caller_mismatch": 0,
    }  # fmt: skip


def _sip(clean: bool) -> dict[str, Any]:
    return {
        "attempted": 600, "successful": 600 if clean else 500, "failed": 0 if clean else 100,
        "failed_fraction": 0.0, "retransmissions": 0, "retrans_fraction": 0.0,
        "achieved_rate": 100.0 if clean else 280.0, "response_ms": {}, "cpu_s": 3.0,
        "aux_cpu_s": 0.2, "wall_s": 6.1, "proxy_cores": 0.5, "loadgen_cpu_s": 0.4,
        "udp_rcvbuf_errors": 0, "proxy_socket_drops": 0, "clean": clean,
        "unclean_reasons": [] if clean else ["failed 100/600 = 16.667% (limit < 0.1%)"],
    }  # fmt: skip


def _doc() -> dict[str, Any]:
    return {
        "schema": SCHEMA, "scenario": latency.NAME, "title": latency.TITLE, "unit": "ms",
        "quick": False, "started_at": "2026-11-22T09:33:32+00:00",
        "finished_at": "2026-11-22T09:34:16+00:00", "wall_time_s": 44.0, "budget_s": 45.0,
        "over_budget_s": 0.0, "error": None,
        "machine": {"cores": 2, "cpu_model": "AMD EPYC", "memory_kib": 24_000_000,
                    "kernel": "6.18", "loadavg_at_start": ["1.0", "0.7", "0.6"]},
        "versions": {"python": "3.11.7", "sipp": "SIPp v3.6.1", "websockets": "17.4"},
        "method": latency._method(STEPS_FULL),
        "gateway": {"exit_code": 0, "stop_s": 12.6,
                    "log": {"warnings": 0, "errors": 0, "other": 0, "top": []},
                    "metrics_before_stop": {"sipgw_subscriber_overflows": 1.0,
                                            "sipgw_events_dropped": 0.0}},
        "steps": [
            {"rate": 100, "duration_s": 6.0, "requested": 600, "calls_placed": 600,
             "events_received": 600, "missing": 0, "duplicates": 0, "unmatched": 0,
             "drain_s": 10.0, "sip": _sip(True), "gateway_counters": {},
             "kinds": {"hit": _kind(300, 300, 5.8, {"hit": 300}),
                       "miss": _kind(300, 300, 5.4, {"miss": 299, "pending": 1})}},
            {"rate": 500, "duration_s": 3.0, "requested": 1500, "calls_placed": 1500,
             "events_received": 1499, "missing": 1, "duplicates": 0, "unmatched": 0,
             "drain_s": 10.0, "sip": _sip(False),
             "gateway_counters": {"sipgw_subscriber_overflows": 1.0},
             "kinds": {"hit": _kind(750, 749, 3466.0, {"pending": 749}),
                       "miss": _kind(750, 750, 3470.0, {"pending": 750})}},
            {"rate": 1000, "skipped": "time budget: ~7 s needed, 3 s left"},
        ],
    }  # fmt: skip


def test_latency_summary_rows_and_findings() -> None:
    doc = report.summarize(_doc())
    s = doc["summary"]
    assert [(r["rate"], r["kind"]) for r in s["rows"]] == [
        (100, "hit"),
        (100, "miss"),
        (500, "hit"),
        (500, "miss"),
    ]
    assert (s["calls_placed"], s["events_received"]) == (2100, 2099)
    row = s["rows"][0]
    assert (row["p50_ms"], row["p99_ms"], row["max_ms"]) == (5.8, 5.8 * 3, 5.8 * 4)
    text = " | ".join(s["findings"])
    assert "500 calls/s, hits: 1 of 750 calls had no call.offered" in text
    assert "cut the subscriber off 1 times" in text
    assert "500 calls/s: the calls were not clean" in text
    assert "100 calls/s, misses: look-ups that did not answer 'miss': {'pending': 1}" in text
    assert "the gateway counted 1 sipgw_subscriber_overflows" in text
    assert s["skipped_steps"] == ["1000 calls/s: time budget: ~7 s needed, 3 s left"]
    json.dumps(doc)  # JSON all the way down


def test_latency_table_and_markdown(tmp_path: Path) -> None:
    doc = report.summarize(_doc())
    table = report.headline_table(doc)
    assert (
        "| 100 | hit | 300 / 300 | 5.80 | 11.60 | 17.40 | 23.20 | hit 300 | clean, 100/s |" in table
    )
    assert "| 500 | hit | 749 / 750 | 3 466.00 |" in table
    assert "Events received: 2099 of 2100 calls placed." in table
    png = tmp_path / "x-invite-event-latency-latency.png"
    md = report.markdown([doc], {latency.NAME: [png]})
    assert "## invite-event-latency" in md
    assert "| 100 | hit | 0.90 | 3.40 | 1.30 |" in md  # where the time goes
    assert "- FINDING: 500 calls/s, hits: 1 of 750 calls" in md
    assert f"![{png.stem}]({png.name})" in md
    assert "Wall time of the scenario: 44.0 s (its share of the time budget: 45 s)." in md
    assert "Max clean rate:" not in md  # the step scenarios' preamble is not needed


def test_latency_plot_is_written(tmp_path: Path) -> None:
    doc = report.summarize(_doc())
    paths = report.plot(doc, tmp_path / "run-invite-event-latency")
    assert [p.name for p in paths] == ["run-invite-event-latency-latency.png"]
    assert paths[0].stat().st_size > 1000


def test_an_empty_or_failed_run_still_reports() -> None:
    raw = _doc()
    raw["steps"] = []
    raw["error"] = "RuntimeError: sipgw token create failed (1): no such tenant\nmore"
    doc = report.summarize(raw)
    assert doc["summary"]["rows"] == [] and doc["summary"]["errors"]
    assert report.plot(doc, Path("/nonexistent/x")) == []
    md = report.markdown([doc], {})
    assert "- ERROR RuntimeError: sipgw token create failed (1): no such tenant (more" in md


def test_quick_skips_what_does_not_fit_and_a_full_run_never_does() -> None:
    assert latency.no_time(True, 9.0, 4.0) == "time budget: ~9 s needed, 4 s left"
    assert latency.no_time(True, 9.0, 40.0) is None
    assert latency.no_time(False, 900.0, -5.0) is None


# -- the whole run ----------------------------------------------------------------------------


def _step_searches_s(name: str, quick: bool, steps: dict[str, int], reps: int) -> float:
    """What a step scenario needs by the harness' own estimates (start, step cost,
    stops, the sustained checks' reserve), each implementation's search offering `steps`
    rates."""
    from dataclasses import replace

    from bench.runner import QUICK_SUSTAINED, TARGETS, turn_start_s
    from bench.scenarios import SCENARIOS

    scenario = SCENARIOS[name]
    plan = scenario.plan(quick)
    targets = {label: t for label, make in TARGETS.items() if name in (t := make()).scenarios}
    stop = {
        label: t.expected_stop(scenario.leaves_requests_pending) for label, t in targets.items()
    }
    searches = sum(
        min(reps, t.max_repetitions or reps)
        * (turn_start_s(scenario, t) + steps[label] * plan.step_cost_s() + stop[label])
        for label, t in targets.items()
    )
    sustain_s = scenario.sustain_s(quick)
    sustained = [label for label, t in targets.items()
                 if t.sustained_check and (not quick or label in QUICK_SUSTAINED)]  # fmt: skip
    sustain_cost = replace(plan, step_duration_s=sustain_s).step_cost_s()
    reserve = sum(sustain_cost + scenario.start_s + 1.5 + stop[label] for label in sustained)
    reserve = reserve if sustain_s else 0.0
    return searches + reserve


def test_all_runs_the_event_scenarios_before_recognition_within_the_budget() -> None:
    from bench.__main__ import ALL, BUDGET_FULL_S, BUDGET_QUICK_S, SHARES, SHARES_QUICK, parse_args
    from bench.runner import TARGETS
    from bench.scenarios import SCENARIOS

    assert ALL == (
        "proxied-calls", "options", "invite-event-latency", "fan-out", "recognition",
        "redis-cluster",
    )  # fmt: skip
    assert set(SHARES) == set(SHARES_QUICK) == set(ALL)
    assert list(TARGETS) == ["sipgw", "sipgw-2w", "kamailio-1w", "kamailio-2w", "uvloop-floor"]
    calls, options = SCENARIOS["proxied-calls"], SCENARIOS["options"]
    # --quick: every implementation offers the whole short ladder, sipgw gets its short
    # sustained check, and the step searches leave time for the fixed-work scenarios
    # (no weight: they run in what is left), by the harness' own estimates at least the
    # latency scenario's set-up and first step (goal 4's 300 calls/s follows in the ~15 s
    # the estimates overstate the searches by: the quick run measured ~125 s of them).
    every_rate = dict.fromkeys(TARGETS, len(calls.rates(True)))
    quick_calls = _step_searches_s("proxied-calls", True, every_rate, 1)
    quick_options = _step_searches_s("options", True, dict.fromkeys(TARGETS, 3), 1)
    assert BUDGET_QUICK_S * SHARES_QUICK["proxied-calls"] / sum(SHARES_QUICK.values()) > (
        quick_calls
    )
    first_latency_step = latency.EST_SETUP_S + STEPS_QUICK[0].estimate_s()
    assert quick_calls + quick_options < BUDGET_QUICK_S - first_latency_step
    assert all(SHARES_QUICK[n] == 0 for n in ALL[2:])
    # Full, when every scenario uses its whole share (in order, as __main__ shares).
    shares, left, weights = {}, BUDGET_FULL_S, sum(SHARES.values())
    for name in ALL:
        shares[name] = left * SHARES[name] / weights
        left -= shares[name]
        weights -= SHARES[name]
    # 3 repetitions: sipgw up to its unclean 800/s step (5 rates), sipgw-2w to 2000/s
    # (8), each Kamailio the whole ladder; the four sustained checks (34 s, 10 s); the
    # uvloop floor (options only) one search of the whole ladder, no sustained check.
    full_calls = _step_searches_s(
        "proxied-calls", False,
        {"sipgw": 5, "sipgw-2w": 8, "kamailio-1w": len(calls.rates(False)),
         "kamailio-2w": len(calls.rates(False))}, 3,
    )  # fmt: skip
    full_options = _step_searches_s(
        "options", False,
        {"sipgw": 4, "sipgw-2w": 5, "kamailio-1w": len(options.rates(False)),
         "kamailio-2w": len(options.rates(False)), "uvloop-floor": len(options.rates(False))},
        3,
    )  # fmt: skip
    assert shares["proxied-calls"] >= full_calls and shares["options"] >= full_options
    assert calls.sustain_s(False) > 32  # past 64 x T1: a transaction's state lifetime
    # The fixed-work scenarios' shares hold what they usually take (45-60 s with goal
    # 4's steps, 55-70 s), recognition at least its shortest run (160-260 s); each is
    # measured whole even past its share.
    assert shares["invite-event-latency"] >= 45 and shares["fan-out"] >= 59
    assert shares["recognition"] >= 160
    assert shares["redis-cluster"] >= 55  # four setups, two steps each: ~60 s
    assert BUDGET_FULL_S <= 1225  # under 21 minutes with start-up and the report
    for name in ("invite-event-latency", "fan-out", "redis-cluster"):
        assert parse_args(["--scenario", name, "--quick"]).scenario == name


def test_the_caller_per_call_scenario_is_uac_with_the_caller_from_the_injection_file() -> None:
    from bench.sipp import scenario_path

    def body(name: str) -> str:
        """The scenario after its opening <scenario …> tag."""
        text = scenario_path(name).read_text()
        return text[text.index(">", text.index("<scenario")) :]

    assert "[caller]" not in body("uac_callers")
    assert body("uac_callers") == body("uac").replace("[caller]", "[field0]")
