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
    # The gateway never runs a full collection (gc_pauses.tune_gc): whatever
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


async def test_the_gateway_collects_young_objects_on_a_clock_and_never_the_old() -> None:
    # CPython's own trigger is off once the gateway runs (gc_pauses.tune_gc): a
    # collection of the young and middle generations every YOUNG_INTERVAL instead, and
    # never a full one.
    import asyncio
    import contextlib

    from gateway.gc_pauses import collect_young, gc_auto, tune_gc

    counters = Counters()
    meter = GcPauses(counters)
    tune_gc()
    meter.install()
    task = asyncio.create_task(collect_young(0.01))
    try:
        assert not gc.isenabled()
        garbage = [[] for _ in range(5_000)]
        for item in garbage:
            item.append(item)
        del garbage, item  # far past the default young threshold: no automatic collection
        assert counters.gc_pause_seconds.count == 0
        for _ in range(500):  # bounded: 5 s at most
            if counters.gc_collections["1"] >= 3:
                break
            await asyncio.sleep(0.01)  # the clock the collector runs on
        assert counters.gc_collections["1"] >= 3
        assert counters.gc_collections["0"] == counters.gc_collections["2"] == 0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        meter.remove()
        gc_auto()
    assert gc.isenabled()
