"""The pure parts of the bench's recognition scenario (bench/recognition.py and its
report section): percentiles, the generated contacts and their 1 % change, the mapping
file, output parsing, the summary, the Markdown section and the plots. Nothing is
started here."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from bench import SCHEMA, recognition, report
from bench.recognition import (
    HEADER,
    ChangeCounts,
    NumberPool,
    change_counts,
    change_rows,
    generate_rows,
    latency_summary,
    mapping_toml,
    numbers_of,
    parse_info,
    pool_for,
    summary_line,
    write_csv,
)
from gateway.cli.sync.mapping import load_mapping
from gateway.recognition.numbers import normalize


def test_latency_summary_is_nearest_rank_in_microseconds() -> None:
    samples = [i * 1000 for i in range(1, 101)]  # 1..100 µs
    s = latency_summary(samples)
    assert s == {
        "count": 100,
        "p50_us": 50.0,
        "p95_us": 95.0,
        "p99_us": 99.0,
        "max_us": 100.0,
        "mean_us": 50.5,
    }
    assert latency_summary([1234])["p99_us"] == 1.23  # two decimals
    assert latency_summary([]) == {
        "count": 0, "p50_us": None, "p95_us": None, "p99_us": None, "max_us": None,
        "mean_us": None,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "counts"),
    [
        (1_000_000, ChangeCounts(5000, 2500, 2500)),
        (100_000, ChangeCounts(500, 250, 250)),
        (10_000, ChangeCounts(50, 25, 25)),
        (10, ChangeCounts(1, 1, 1)),  # at least one of each
    ],
)
def test_change_counts_are_one_percent(rows: int, counts: ChangeCounts) -> None:
    assert change_counts(rows) == counts
    if rows >= 10_000:
        assert counts.rows == rows // 100


def test_numbers_are_distinct_dutch_numbers_in_national_format() -> None:
    pool = NumberPool(random.Random(1), mobiles=2000, landlines=2000)
    mobiles = [pool.mobile() for _ in range(2000)]
    landlines = [pool.landline() for _ in range(2000)]
    assert len(set(mobiles + landlines)) == 4000
    assert all(len(n) == 10 and n.startswith("06") for n in mobiles)
    assert all(len(n) == 10 and n[0] == "0" and n[1] != "6" for n in landlines)
    for text in mobiles[:50] + landlines[:50]:
        found = normalize(text, "NL")
        assert found.kind == "e164" and found.e164 == "+31" + text[1:]


def test_generated_rows_and_their_change_are_counted_exactly() -> None:
    rng = random.Random(7)
    pool = pool_for(20_000, rng)
    rows = generate_rows(20_000, rng, pool)
    seconds = sum(1 for r in rows if r[4])
    assert 0.03 * 20_000 < seconds < 0.07 * 20_000  # ~5 % with a second number
    assert sum(numbers_of(r) for r in rows) == 20_000 + seconds
    assert len({r[0] for r in rows}) == 20_000
    before = {r[3]: r for r in rows}

    change = change_rows(rows, rng, pool)
    assert change.counts == ChangeCounts(100, 50, 50)
    assert len(change.rows) == 20_000 - 50 + 50
    after = {r[3]: r for r in change.rows}
    edited = [r for m, r in after.items() if m in before and r != before[m]]
    added = [r for m, r in after.items() if m not in before]
    deleted = [r for m, r in before.items() if m not in after]
    assert (len(edited), len(added), len(deleted)) == (100, 50, 50)
    # An edit changes the name or the company, never the id or the numbers.
    for row in edited:
        old = before[row[3]]
        assert row[0] == old[0] and row[3:] == old[3:] and row[1:3] != old[1:3]
    assert change.upsert_numbers == sum(numbers_of(r) for r in edited + added)
    assert change.delete_numbers == sum(numbers_of(r) for r in deleted)
    assert change.numbers_after == sum(numbers_of(r) for r in change.rows)
    every = [n for r in change.rows for n in r[3:] if n]
    assert len(every) == len(set(every))  # no duplicate number: each row's numbers count


def test_csv_and_mapping_are_what_sipgw_sync_reads(tmp_path: Path) -> None:
    rng = random.Random(3)
    rows = generate_rows(10, rng, pool_for(10, rng))
    csv_path = tmp_path / "contacts.csv"
    assert write_csv(csv_path, rows) == csv_path.stat().st_size
    lines = csv_path.read_text().splitlines()
    assert lines[0] == ",".join(HEADER) and len(lines) == 11
    mapping_path = tmp_path / "mapping.toml"
    mapping_path.write_text(mapping_toml("crm-10", "http://127.0.0.1:18080", csv_path))
    mapping = load_mapping(mapping_path)
    assert (mapping.tenant, mapping.source, mapping.region) == ("acme", "crm-10", "NL")
    assert mapping.number_columns == ("mobile", "phone")
    assert dict(mapping.fields) == {"name": "name", "company": "company", "crm_id": "id"}
    assert tuple(dict(mapping.fields)) == recognition.FIELDS
    assert mapping.input.path == csv_path


def test_summary_line_and_info_parsing() -> None:
    log = (
        "sipgw sync: contacts.csv:3: phone: bad\n"
        "sipgw sync: 10 rows read, 0 skipped, 11 numbers (0 unchanged), 0 row problems; "
        "11 upserts and 0 deletes sent in 1 batches, 0.1 s\n"
    )
    assert summary_line(log) is not None and summary_line(log).endswith("0.1 s")  # type: ignore[union-attr]
    assert summary_line("nothing") is None
    info = parse_info("# Memory\r\nused_memory:1234\r\nused_memory_human:1.21K\r\n\r\n")
    assert info == {"used_memory": "1234", "used_memory_human": "1.21K"}


# -- the report section ---------------------------------------------------------------------


def _lat(p50: float) -> dict[str, Any]:
    return {"count": 20000, "p50_us": p50, "p95_us": p50 * 1.5, "p99_us": p50 * 2,
            "max_us": p50 * 10, "mean_us": p50 * 1.1}  # fmt: skip


def _run(kind: str, wall: float, rows: int, sent: int, expected: int) -> dict[str, Any]:
    return {
        "kind": kind, "wall_s": wall, "rows_per_s": round(rows / wall), "exit_code": 0,
        "sipgw_cpu_s": 1.5, "redis_cpu_s": 0.4, "client_cpu_s": 9.0,
        "summary_line": f"sipgw sync: {rows} rows read …",
        "report": {"batches": 105 if kind == "initial" else 2, "upserts_sent": sent,
                   "deletes_sent": 0},
        "numbers_sent": sent, "expected_upserts": expected, "expected_deletes": 0,
    }  # fmt: skip


def _doc() -> dict[str, Any]:
    return {
        "schema": SCHEMA, "scenario": "recognition", "title": "Caller recognition",
        "unit": "µs", "quick": False, "started_at": "2026-11-22T05:00:00+00:00",
        "wall_time_s": 300.0, "budget_s": 263.0, "over_budget_s": 37.0,
        "machine": {"cores": 2, "cpu_model": "X", "memory_kib": 1 << 20, "kernel": "6",
                    "loadavg_at_start": ["0.1", "0.2", "0.3"]},
        "versions": {"python": "3.11", "redis_server": "7.0.15"},
        "lookups": {
            "error": None, "contacts": 100000,
            "load": {"contacts_per_s": 80000},
            "memory": {"bytes_per_contact": 224.2, "contacts_hash_bytes_per_contact": 151.4,
                       "source_set_bytes_per_contact": 55.7},
            "kinds": {"cache_hit": _lat(4.0), "redis_hit": _lat(85.0), "miss": _lat(74.0),
                      "redis_hit_concurrent": {**_lat(8000.0), "lookups_per_s": 12000}},
        },
        "sync": {
            "error": None, "sync_cli": "sipgw sync", "exit_code": 0,
            "log": {"warnings": 0, "errors": 0},
            "sizes": [
                {"rows": 100000, "numbers": 104994, "wall_s": 25.0, "over_budget": False,
                 "error": None, "checks": [{"check": "delta: upserts sent", "ok": True}],
                 "runs": [_run("initial", 11.2, 100000, 104994, 104994),
                          _run("delta", 5.0, 100000, 1054, 1054),
                          _run("unchanged", 4.5, 100000, 0, 0)]},
                {"rows": 1000000, "numbers": 1049877, "wall_s": 210.0, "over_budget": True,
                 "error": "checks failed: delta: upserts sent",
                 "checks": [{"check": "delta: upserts sent", "ok": False}],
                 "runs": [_run("initial", 112.0, 1000000, 1049877, 1049877),
                          _run("delta", 41.6, 1000000, 10400, 10488)]},
            ],
        },
    }  # fmt: skip


def test_recognition_summary() -> None:
    doc = report.summarize(_doc())
    s = doc["summary"]
    assert [r["kind"] for r in s["lookups"]] == list(report.LOOKUP_KINDS)
    assert s["lookups"][3]["lookups_per_s"] == 12000 and s["lookups"][0]["p50_us"] == 4.0
    assert s["bytes_per_contact"] == 224.2
    small, big = s["sync"]
    assert small["delta"]["numbers_sent"] == small["delta"]["expected_sent"] == 1054
    assert big["unchanged"] is None and big["checks_failed"] == ["delta: upserts sent"]
    assert s["errors"] == ["sync of 1000000 rows: checks failed: delta: upserts sent"]
    json.dumps(doc)


def test_recognition_table_and_markdown(tmp_path: Path) -> None:
    doc = report.summarize(_doc())
    table = report.headline_table(doc)
    assert "| local cache hit: Recognizer.cached() | 20 000 | 4.0 | 6.0 | 8.0 | 40.0 | - |" in table
    assert "| Redis hit, 100 look-ups in flight | 20 000 | 8 000.0 |" in table
    assert "| 12 000 |" in table
    assert "224 bytes per contact" in table
    assert (
        "| 100 000 rows | 104 994 | 11.2 s, 8 929 rows/s (105; 1.5 / 9.0) | "
        "5.0 s, 20 000 rows/s, 1 054 numbers sent (1 054 changed: ok) | 4.5 s, 22 222 rows/s |"
    ) in table
    assert "10 400 numbers sent (10 488 changed: MISMATCH) | - |" in table
    md = report.markdown([doc], {"recognition": [tmp_path / "x-recognition-latency.png"]})
    assert md.startswith("# sipgw benchmark — ")
    assert "Max clean rate" not in md  # no step scenario in this run
    assert "redis_server 7.0.15" in md
    assert "- 1 000 000 rows: CHECK FAILED: delta: upserts sent" in md
    assert "![x-recognition-latency](x-recognition-latency.png)" in md
    assert "(its share of the time budget: 263 s, exceeded by 37 s)" in md
    assert "The 1 000 000-row sync (CSV, initial, delta and unchanged runs) took 210.0 s " in md
    assert "(past the scenario's share: measured anyway)" in md


def test_recognition_section_follows_the_step_scenarios() -> None:
    from tests.unit.test_bench_report import _doc as step_doc

    steps = report.summarize(step_doc())
    rec = report.summarize(_doc())
    md = report.markdown([rec, steps], {})
    assert md.index("## proxied-calls") < md.index("## recognition")
    assert "Max clean rate" in md


def test_recognition_plots_are_written(tmp_path: Path) -> None:
    doc = report.summarize(_doc())
    paths = report.plot(doc, tmp_path / "run-recognition")
    assert [p.name for p in paths] == ["run-recognition-latency.png", "run-recognition-sync.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_quick_skips_what_does_not_fit_and_a_full_run_never_does() -> None:
    assert recognition.no_time(True, 22.0, 10.0) == "time budget: ~22 s needed, 10 s left"
    assert recognition.no_time(True, 22.0, 30.0) is None
    assert recognition.no_time(False, 500.0, -5.0) is None
    assert 20 < recognition.sync_estimate_s(100_000) < 30


def test_skipped_parts_are_reported() -> None:
    raw = _doc()
    raw["quick"] = True
    raw["lookups"] = {"error": None, "skipped": "time budget: ~10 s needed, 4 s left"}
    raw["sync"]["sizes"][1] = {"rows": 1000000, "skipped": "time budget: ~222 s needed, 9 s left"}
    doc = report.summarize(raw)
    assert doc["summary"]["lookups"] == [] and doc["summary"]["errors"] == []
    assert doc["summary"]["skipped"] == [
        "look-ups: time budget: ~10 s needed, 4 s left",
        "sync of 1000000 rows: time budget: ~222 s needed, 9 s left",
    ]
    table = report.headline_table(doc)
    assert "| 1 000 000 rows | - | skipped: time budget: ~222 s needed, 9 s left | | |" in table
    md = report.markdown([doc], {})
    assert "- Skipped (--quick), look-ups: time budget: ~10 s needed, 4 s left" in md
