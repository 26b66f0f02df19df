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
    assert counters.gc_pause_cpu_max_seconds > 0


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


def test_proxied_calls_leave_no_cyclic_garbage() -> None:
    # The gateway never runs a full collection by itself (app.GC_THRESHOLDS): whatever
    # a call leaves in cycles would stay. Calls through the proxy and the call tracker,
    # every timer run out: the collector must find nothing to free.
    from bench import hotpath

    bench = hotpath.Bench(hotpath.settings())
    bench.call(0)
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        for n in range(1, 301):
            bench.call(n)
        bench.clock.now += 400  # past every transaction timer (64 x T1) and Timer C
        bench.proxy.fire_timers(bench.clock.now)
        assert bench.tracker is not None and bench.tracker.active_calls == 0
        assert bench.events == 301 * 4
        assert gc.collect() == 0
    finally:
        if was:
            gc.enable()


def test_the_gateway_never_starts_a_full_collection_by_itself() -> None:
    from gateway.app import GC_THRESHOLDS

    young, middle, old = GC_THRESHOLDS
    assert young <= 2_000 and middle <= 2  # small, frequent pauses
    assert old >= 10**8  # ~a full collection per 10^8 middle ones: never, in practice
