"""The pure parts of the bench's redis-cluster scenario (bench/cluster.py) and of its
report section (bench/report_cluster.py). Nothing is started here."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from bench import cluster, report
from bench.cluster import (
    SETUPS,
    STEPS_FULL,
    STEPS_QUICK,
    Node,
    Setup,
    Step,
    add_counters,
    delivery_figures,
    miss_numbers,
    published,
    split_calls,
    sum_counts,
)
from bench.eventsapi import Arrival
from gateway.config import load_settings

SEEDS = [f"redis://127.0.0.1:{7000 + i}" for i in range(6)]


def test_the_setups_are_one_redis_then_the_cluster_each_with_1_and_2_nodes() -> None:
    assert [(s.deployment, s.nodes) for s in SETUPS] == [
        ("standalone", 1), ("standalone", 2), ("cluster", 1), ("cluster", 2),
    ]  # fmt: skip
    assert [s.label for s in SETUPS[:2]] == ["standalone, 1 node", "standalone, 2 nodes"]
    # A few minutes at most in the full bench, by the scenario's own estimates.
    assert sum(s.estimate_s(STEPS_FULL) for s in SETUPS) < 120
    assert cluster.no_time(True, SETUPS[3].estimate_s(STEPS_QUICK), 5.0) is not None
    assert cluster.no_time(False, SETUPS[3].estimate_s(STEPS_FULL), 0.0) is None


def test_a_step_is_split_evenly_over_the_nodes() -> None:
    assert split_calls(Step(400, 3.0), 1) == [(400, 1200)]
    assert split_calls(Step(400, 3.0), 2) == [(200, 600), (200, 600)]
    assert split_calls(Step(101, 3.0), 2) == [(51, 152), (50, 151)]
    assert sum(c for _, c in split_calls(Step(101, 3.0), 2)) == Step(101, 3.0).calls


def test_callers_are_distinct_misses_continuing_across_steps() -> None:
    first, second = miss_numbers(3, 0), miss_numbers(2, 3)
    assert first == ["+31650000000", "+31650000001", "+31650000002"]
    assert len(set(first + second)) == 5
    assert all(n.startswith("+3165") for n in first + second)  # never loaded: a miss


def _arrival(cid: str, us: int, seq: str, type_: str = "call.offered") -> Arrival:
    return Arrival(0, us, type_, cid, seq, None, "+31650000000", "miss")


def test_delivery_counts_every_event_once_and_times_call_offered_by_call_id() -> None:
    sent = {"1-9@h": 1_000_000, "2-9@h": 1_010_000, "1-8@h": 1_005_000, "3-9@h": 1_020_000}
    arrivals = [
        _arrival("1-9@h", 1_004_000, "1-0"),
        _arrival("1-8@h", 1_007_000, "1-1"),  # the other node's UAC: its own Call-IDs
        _arrival("1-9@h", 1_300_000, "2-0", "call.answered"),
        _arrival("1-9@h", 1_300_000, "2-0", "call.answered"),  # a replay: same stream id
        _arrival("2-9@h", 1_012_000, "2-1"),
        _arrival("7-7@h", 1_013_000, "2-2"),  # a call of no step
        _arrival("2-9@h", 2_000_000, "3-0", "call.ended"),
    ]
    fig = delivery_figures(sent, arrivals, expected=7)
    assert fig["calls_placed"] == 4 and fig["offered_received"] == 3 and fig["missing"] == 1
    assert fig["events_received"] == 6 and fig["events_expected"] == 7
    assert fig["duplicates"] == 1 and fig["unmatched"] == 1
    assert fig["types"] == {"call.offered": 4, "call.answered": 1, "call.ended": 1}
    assert fig["latency"]["count"] == 3
    assert fig["latency"]["p50_ms"] == 2.0 and fig["latency"]["max_ms"] == 4.0
    # 6 events from the first INVITE (1.000 s) to the last event (2.000 s).
    assert fig["delivery_span_s"] == 1.0 and fig["events_per_s"] == 6.0


def test_nothing_delivered_is_all_missing() -> None:
    fig = delivery_figures({"1-9@h": 1}, [], expected=4)
    assert fig["missing"] == 1 and fig["events_received"] == 0
    assert fig["events_per_s"] is None and fig["latency"]["p50_ms"] is None


def test_counters_of_the_nodes_add_up() -> None:
    before = [{"sipgw_events_published": 10.0}, {"sipgw_events_published": 5.0}]
    after = [{"sipgw_events_published": 410.0}, {"sipgw_events_published": 405.0}]
    assert published(before, after) == 800
    assert add_counters([{"a": 1.0, "b": 2.0}, {"a": 3.0}]) == {"a": 4.0, "b": 2.0}
    uacs = [{"created": 3, "successful": 3, "failed": 0, "retransmissions": 1},
            {"created": 2, "successful": 1, "failed": 1, "retransmissions": 0}]  # fmt: skip
    assert sum_counts(uacs) == {"created": 5, "successful": 4, "failed": 1, "retransmissions": 1}


def test_a_node_names_the_cluster_and_the_gateway_loads_it(tmp_path: Path) -> None:
    node = Node(f"cluster_nodes = {json.dumps(SEEDS)}")
    text = node.config_text(15060, 18080, 15070, "")
    assert tomllib.loads(text)["redis"] == {"cluster_nodes": SEEDS}
    path = tmp_path / "sipgw.toml"
    path.write_text(text)
    settings = load_settings(path, env={})
    assert settings.redis.cluster_nodes == tuple(("127.0.0.1", 7000 + i) for i in range(6))
    assert settings.tenants[0].recognition.fields == ("name", "company", "crm_id")
    standalone = Node('url = "redis://127.0.0.1:7000/0"').config_text(1, 2, 3, "")
    assert tomllib.loads(standalone)["redis"] == {"url": "redis://127.0.0.1:7000/0"}


# -- the report --------------------------------------------------------------------------------


def _step(rate: int, received: int, expected: int, p50: float, **extra: Any) -> dict[str, Any]:
    return {
        "rate": rate, "calls_placed": 400, "offered_received": 400 - extra.get("missing", 0),
        "missing": extra.get("missing", 0), "events_received": received,
        "events_expected": expected, "duplicates": 0, "unmatched": 0, "events_per_s": 1580.0,
        "latency": {"count": 400, "p50_ms": p50, "p95_ms": 9.0, "p99_ms": 12.5, "max_ms": 30.0,
                    "mean_ms": 4.0},
        "sip": {"created": 400, "successful": 400, "failed": 0, "retransmissions": 0},
        "gateway_cpu_s": 0.8, "redis_cpu_s": 0.12, "drain_s": 10.0,
        "gateway_counters": {"sipgw_events_dropped": 0.0},
    }  # fmt: skip


def _setup(deployment: str, nodes: int, **extra: Any) -> dict[str, Any]:
    setup = Setup(deployment, nodes)
    return {
        "deployment": deployment, "nodes_count": nodes, "label": setup.label, "error": None,
        "steps": [_step(200, 1600, 1600, 3.1), _step(400, 3200, 3200, 4.2)],
        "masters_before": ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"],
        "masters_after": ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"],
        "nodes": [{"exit_code": 0, "log": {"warnings": 0, "errors": 0, "top": []}}] * nodes,
        **extra,
    }  # fmt: skip


def _doc() -> dict[str, Any]:
    return {
        "scenario": cluster.NAME, "title": cluster.TITLE, "quick": False, "error": None,
        "started_at": "2026-12-07T20:00:00+00:00", "wall_time_s": 95.0, "budget_s": 100.0,
        "over_budget_s": 0.0, "versions": {"redis_server": "7.0.15"},
        "machine": {"cores": 2, "cpu_model": "AMD EPYC", "memory_kib": 24 * 1024 * 1024,
                    "kernel": "6.1", "loadavg_at_start": ["0.1", "0.1", "0.1"]},
        "setups": [_setup("standalone", 1), _setup("standalone", 2), _setup("cluster", 1),
                   _setup("cluster", 2)],
    }  # fmt: skip


def test_summary_rows_side_by_side_and_clean_runs_have_no_findings() -> None:
    doc = report.summarize(_doc())
    s = doc["summary"]
    assert len(s["rows"]) == 8 and not s["findings"] and not s["errors"]
    assert s["events_received"] == s["events_expected"] == 4 * (1600 + 3200)
    table = report.headline_table(doc)
    lines = [line for line in table.splitlines() if line.startswith("| ")][2:]
    # Each rate's four setups together: one Redis, then the cluster, 1 node then 2.
    assert [line.split(" | ")[:3] for line in lines[:4]] == [
        ["| standalone", "1", "200"], ["| standalone", "2", "200"],
        ["| cluster", "1", "200"], ["| cluster", "2", "200"],
    ]  # fmt: skip
    assert "| 1 580 | 1600 / 1600 | 3.10 | 12.50 | 30.00 | 2.00 | 0.300 | 0 |" in lines[0]


def test_losses_failovers_errors_and_skips_are_reported() -> None:
    raw = _doc()
    raw["setups"][2]["steps"][1] = _step(400, 3100, 3200, 4.0, missing=3)
    raw["setups"][3] = _setup("cluster", 2, masters_after=["127.0.0.1:1", "127.0.0.1:4",
                                                           "127.0.0.1:3"])  # fmt: skip
    warned = {"warnings": 2, "errors": 0, "top": [{"message": "shard down", "count": 2}]}
    raw["setups"][3]["nodes"] = [{"exit_code": 0, "log": warned}, {"exit_code": -9}]
    raw["setups"][1] = {"deployment": "standalone", "nodes_count": 2,
                        "label": "standalone, 2 nodes", "skipped": "time budget"}  # fmt: skip
    raw["setups"][0]["error"] = "RuntimeError: the subscriber did not connect"
    doc = report.summarize(raw)
    findings = "\n".join(doc["summary"]["findings"])
    assert "cluster, 1 node, 400 calls/s: 3 of 400 calls had no call.offered" in findings
    assert "100 of the 3200 events the gateways wrote to Redis did not reach" in findings
    assert "cluster, 2 nodes: the masters changed during the run (a failover)" in findings
    assert "node A logged 2 warnings" in findings and "node B exited -9" in findings
    md = report.markdown([doc], {})
    assert "- Skipped: standalone, 2 nodes: time budget" in md
    assert "- ERROR standalone, 1 node: RuntimeError: the subscriber did not connect" in md
    assert "## redis-cluster" in md


def test_the_plot_is_written(tmp_path: Path) -> None:
    doc = report.summarize(_doc())
    paths = report.plot(doc, tmp_path / "run-redis-cluster")
    assert [p.name for p in paths] == ["run-redis-cluster-latency.png"]
    assert paths[0].stat().st_size > 1000
    empty = report.summarize({**_doc(), "setups": []})
    assert report.plot(empty, tmp_path / "none") == []
