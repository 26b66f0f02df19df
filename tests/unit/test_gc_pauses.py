"""GC pauses are timed from gc.callbacks and exported (issue #12, goal 6)."""

from __future__ import annotations

import gc

from gateway.gc_pauses import GcPauses
from gateway.stats import Counters
from tests.unit.test_metrics import gauges, scrape


def test_each_collection_is_timed_and_counted_by_generation() -> None:
    counters = Counters()
    meter = GcPauses(counters)
    meter.install()
    meter.install()  # once only
    try:
        garbage = [[] for _ in range(20_000)]
        for item in garbage:
            item.append(item)  # cycles: only the collector frees them
        del garbage, item
        gc.collect()
    finally:
        meter.remove()
    assert meter not in gc.callbacks
    assert counters.gc_collections["2"] >= 1
    assert counters.gc_pause_seconds.count == sum(counters.gc_collections.values())
    assert 0 < counters.gc_pause_max_seconds <= counters.gc_pause_seconds.sum


def test_workers_pauses_add_up_and_the_longest_wins() -> None:
    mine, theirs = Counters(), Counters()
    mine.gc_pause_seconds.observe(0.003)
    mine.gc_pause_max_seconds = 0.003
    theirs.gc_pause_seconds.observe(0.040)
    theirs.gc_pause_max_seconds = 0.040
    theirs.gc_collections["2"] += 1
    mine.merge(theirs.snapshot())
    assert mine.gc_pause_seconds.count == 2
    assert mine.gc_pause_max_seconds == 0.040
    families = scrape(mine, gauges())
    assert families["sipgw_gc_pause_max_seconds"] == [({}, 0.040)]
    counts = {lb.get("le"): v for lb, v in families["sipgw_gc_pause_seconds"] if "le" in lb}
    assert counts["0.005"] == 1 and counts["0.05"] == 2
    assert ({"generation": "2"}, 1.0) in families["sipgw_gc_collections"]
