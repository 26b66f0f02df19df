"""The fan-out scenario: one ``call.offered`` delivered to N WebSocket subscribers of one
tenant, and what each subscriber costs the gateway in memory.

One gateway (``[events] max_subscribers_per_tenant`` raised above the largest N: the
default, 200 per node, would refuse the rest with 429), the proxied-calls call flow (sipp
UAC as the trunk → DID → extension 201, a sipp UAS registered as 201). For each level N:

1. N subscriptions (token of user 201, ``type=call.offered``) held by ⌈N / 10 000⌉
   subscriber processes (``python -m bench.subscribers``: raw sockets, a few µs per
   message, so one process keeps up with a fan-out on one core while the gateway has
   the other), at most 50 handshakes in flight per process; each waits for its
   ``sipgw.ready``;
2. the gateway's RSS (VmRSS of /proc/<pid>/status) 1 s later: RSS per subscriber =
   (RSS with N connected - RSS before the first level, with none) / N;
3. K single calls, one after the other (a fresh sipp UAC per call, ``-m 1``): each waits
   until every subscriber has the call's event (or a timeout) before the next;
4. per (subscriber, call): arrival - INVITE sent (sipp's short message trace,
   gettimeofday() after sendto()) and arrival - publish (the event's stream id: when Redis
   appended it, ms resolution, taken as the middle of its millisecond);
5. the subscribers stop (their sockets are closed without a close handshake) and the
   gateway's ``sipgw_subscribers`` gauge must come back to 0 before the next level.

Levels run in increasing order of memory so a level's RSS is not flattered by memory a
larger one freed but kept. Missing deliveries, refused subscriptions and the gateway's own
drop and overflow counters are reported, never hidden. The pure parts are tested in
tests/unit/test_bench_fanout.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import SCHEMA, procstat
from .eventsapi import (
    EVENT_TYPE,
    Arrival,
    EventsGateway,
    SubscriberPool,
    latency_ms,
    median_ms,
    metrics,
    parse_invites,
    rss_kib,
    subscriber_token,
    versions,
)
from .process import Managed
from .scenarios import CALLER, Plan, ProxiedCalls, _run_sipp, _wait_bound
from .sipp import SippCommand, sipp_binary
from .subscribers import raise_nofile
from .targets import DID, EXTENSION

NAME = "fan-out"
TITLE = "One call.offered delivered to N WebSocket subscribers of one tenant"
PER_PROCESS = 10_000  # subscriptions per subscriber process
CONCURRENCY = 50  # handshakes in flight per subscriber process
CALLS_QUICK = 3
CALLS_MIN, CALLS_MAX = 2, 5  # a full run: more calls where a level has few subscribers
CALLS_DELIVERIES = 3000  # a full run: about this many deliveries per level, within those
HOLD_MS = 100
SETTLE_S = 1.0  # after the connects, before the RSS is read
FD_MARGIN = 200  # descriptors the gateway needs besides its subscribers
# Rough costs on the 2-core bench machine (for --quick's time check): ~300 handshakes/s.
EST_SETUP_S = 8.0
CONNECTS_PER_S = 250.0


@dataclass(frozen=True)
class Level:
    subscribers: int
    deflate: bool = True  # the clients offer permessage-deflate (the library default)

    @property
    def label(self) -> str:
        return f"{self.subscribers}" + ("" if self.deflate else " (no deflate)")

    @property
    def processes(self) -> int:
        return math.ceil(self.subscribers / PER_PROCESS)

    def estimate_s(self, calls: int) -> float:
        return 3.0 + 2 * self.subscribers / CONNECTS_PER_S + calls * 0.8


# 1000 without permessage-deflate, before the same with it: what compression costs.
LEVELS_FULL = (Level(1), Level(100), Level(1000, deflate=False), Level(1000), Level(10_000))
LEVELS_QUICK = (Level(1), Level(100), Level(1000))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- pure helpers ---------------------------------------------------------------------------


def calls_for(subscribers: int, quick: bool) -> int:
    """Calls placed at a level (N x calls deliveries): --quick 3; a full run 5 at 1 and
    100 subscribers, 3 at 1000, 2 at 10 000 (each call a delivery per subscriber)."""
    if quick:
        return CALLS_QUICK
    return max(CALLS_MIN, min(CALLS_MAX, CALLS_DELIVERIES // max(1, subscribers)))


def delivery_figures(
    sent: dict[str, int], arrivals: Sequence[Arrival], subscribers: int
) -> dict[str, Any]:
    """Every (subscriber, call) delivery of the level's calls: counts and latencies.

    `sent`: Call-ID → INVITE time (µs); `subscribers`: how many were live. An event of
    another Call-ID is `unmatched`; a second one of the same (subscriber, call) a
    `duplicate` (the first counts).
    """
    first: dict[tuple[int, str], Arrival] = {}
    duplicates = unmatched = 0
    for a in arrivals:
        key = (a.subscriber, a.sip_call_id)
        if a.type != EVENT_TYPE or a.sip_call_id not in sent:
            unmatched += 1
        elif key in first:
            duplicates += 1
        else:
            first[key] = a
    from_invite: list[int] = []
    from_publish: list[int] = []
    by_call: dict[str, list[int]] = {cid: [] for cid in sent}
    for (_, cid), a in first.items():
        from_invite.append(a.arrival_us - sent[cid])
        by_call[cid].append(a.arrival_us)
        if a.published_ms is not None:
            from_publish.append(a.arrival_us - (a.published_ms * 1000 + 500))
    spreads = [max(t) - min(t) for t in by_call.values() if t]
    expected = subscribers * len(sent)
    return {
        "calls_placed": len(sent),
        "deliveries_expected": expected,
        "deliveries": len(first),
        "missing": expected - len(first),
        "duplicates": duplicates,
        "unmatched": unmatched,
        "from_invite": latency_ms(from_invite),
        "from_publish": latency_ms(from_publish),
        # first to last subscriber of one call: how long the fan-out itself takes
        "spread_ms": {"median": median_ms(spreads), "max": _ms(max(spreads, default=None))},
        "per_call": [
            {
                "sip_call_id": cid,
                "deliveries": len(t),
                "first_ms": _ms(min(t) - sent[cid]) if t else None,
                "last_ms": _ms(max(t) - sent[cid]) if t else None,
            }
            for cid, t in by_call.items()
        ],
    }


def _ms(us: float | None) -> float | None:
    return None if us is None else round(us / 1000, 3)


def per_subscriber_kib(rss_with: int, rss_without: int, subscribers: int) -> float | None:
    """(RSS with N connected - RSS with none) / N, in KiB."""
    if subscribers <= 0 or not rss_with or not rss_without:
        return None
    return round((rss_with - rss_without) / subscribers, 2)


def fd_shortfall(level: Level, nofile_soft: int) -> str | None:
    """Why the gateway cannot hold this many sockets (None: it can)."""
    need = level.subscribers + FD_MARGIN
    if need > nofile_soft:
        return f"RLIMIT_NOFILE {nofile_soft} < {need} descriptors the gateway needs"
    return None


def no_time(quick: bool, estimate_s: float, left_s: float) -> str | None:
    """Why a level is skipped (None: run it). Only --quick skips; a full run measures
    every level and reports how long it took."""
    if quick and estimate_s > left_s:
        return f"time budget: ~{estimate_s:.0f} s needed, {max(left_s, 0):.0f} s left"
    return None


# -- the harness side --------------------------------------------------------------------------


@dataclass
class Context:
    gw: EventsGateway
    token: str
    uas_port: int
    workdir: Path
    rss_baseline_kib: int = 0


def place_call(ctx: Context, workdir: Path) -> tuple[dict[str, int], list[str]]:
    """One call (a UAC of its own, -m 1, its message trace); Call-ID → INVITE time."""
    trace = workdir / "invites.tsv"
    plan = Plan(step_duration_s=0.1, hold_ms=HOLD_MS)
    uac = SippCommand(
        scenario="uac", workdir=workdir, remote=ctx.gw.remote, local_port=ctx.gw.uac_port,
        service=DID, calls=1, rate=100, hold_ms=HOLD_MS, timeout_s=plan.step_timeout_s(),
        recv_timeout_ms=plan.recv_timeout_ms, keys={"domain": "127.0.0.1", "caller": CALLER},
        extra=["-trace_shortmsg", "-shortmessage_file", str(trace)],
    )  # fmt: skip
    proc, _ = _run_sipp(uac, plan.step_timeout_s(), "sipp-uac")
    return parse_invites(trace.read_text(errors="replace") if trace.exists() else ""), proc.argv


def _wait_subscribers_gone(gw: EventsGateway, timeout: float) -> float | None:
    """Seconds until the gateway counts no subscriber (None: not within `timeout`)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if metrics(gw).get("sipgw_subscribers", -1) == 0:
            return round(time.monotonic() - t0, 2)
        time.sleep(0.2)
    return None


@contextlib.contextmanager
def uas(ctx: Context, workdir: Path, calls: int) -> Iterator[Managed]:
    """A sipp UAS on the registered port for `calls` calls, bound before it is used,
    stopped after (it also ends by itself once the calls are through)."""
    cmd = SippCommand(
        scenario="uas", workdir=workdir, local_port=ctx.uas_port, service=EXTENSION,
        calls=calls, timeout_s=60 + calls * 10,
    )  # fmt: skip
    workdir.mkdir(parents=True)
    proc = Managed("sipp-uas", cmd.argv(sipp_binary()), cwd=workdir, log_path=cmd.log_path)
    try:
        _wait_bound(proc, ctx.uas_port)
        yield proc
    finally:
        proc.stop(grace=1, sig=signal.SIGUSR1)


def _deliver(
    ctx: Context, pool: SubscriberPool, live: int, calls: int, workdir: Path
) -> dict[str, Any]:
    """K calls, one at a time, each waited for at every subscriber."""
    sent: dict[str, int] = {}
    argv: list[str] = []
    cpu0 = procstat.tree_cpu_seconds(ctx.gw.pid)
    t0 = time.monotonic()
    with uas(ctx, workdir / "uas", calls) as uas_proc:
        for k in range(calls):
            one, argv = place_call(ctx, workdir / f"call-{k}")
            sent.update(one)
            pool.wait_for(live * len(sent), timeout=10 + live / 500, quiet_s=2.0)
    return {
        "sent": sent,
        "uac_argv": argv,
        "uas_argv": uas_proc.argv,
        "calls_wall_s": round(time.monotonic() - t0, 2),
        "gateway_cpu_s": round(procstat.tree_cpu_seconds(ctx.gw.pid) - cpu0, 2),
    }


def run_level(ctx: Context, level: Level, calls: int) -> dict[str, Any]:
    """Connect N subscribers, read the RSS, deliver K calls' events, disconnect."""
    workdir = ctx.workdir / f"level-{level.subscribers}{'' if level.deflate else '-nodeflate'}"
    n = level.subscribers
    pool = SubscriberPool(
        ctx.gw.events_url(), ctx.token, n, workdir, workers=level.processes,
        concurrency=CONCURRENCY, deflate=level.deflate,
    )  # fmt: skip
    rec: dict[str, Any] = {"subscribers": n, "deflate": level.deflate, "label": level.label,
                           "processes": level.processes, "error": None}  # fmt: skip
    try:
        cpu0 = procstat.tree_cpu_seconds(ctx.gw.pid)
        rec["connect"] = pool.start(timeout=30 + n / 50)
        rec["subscriber_argv"] = pool.argv
        rec["gateway_cpu_connect_s"] = round(procstat.tree_cpu_seconds(ctx.gw.pid) - cpu0, 2)
        live = int(rec["connect"]["connected"])
        time.sleep(SETTLE_S)
        rec["rss_kib_connected"] = rss_kib(ctx.gw.pid)
        rec["gateway_subscribers"] = metrics(ctx.gw).get("sipgw_subscribers")
        calls_rec = _deliver(ctx, pool, live, calls, workdir)
        rec["rss_kib_after_calls"] = rss_kib(ctx.gw.pid)
        sent = calls_rec.pop("sent")
        rec.update(calls_rec)
        rec["subscribers_live"] = live
    finally:
        rec["subscribers_final"] = pool.stop()
    rec.update(delivery_figures(sent, pool.take(), live))
    rec["rss_kib_baseline"] = ctx.rss_baseline_kib
    rec["rss_per_subscriber_kib"] = per_subscriber_kib(
        rec["rss_kib_connected"], ctx.rss_baseline_kib, live
    )
    rec["teardown_s"] = _wait_subscribers_gone(ctx.gw, timeout=30 + n / 200)
    rec["metrics_after"] = metrics(ctx.gw)
    return rec


def _level_line(rec: dict[str, Any]) -> str:
    fi, fp = rec["from_invite"], rec["from_publish"]
    return (
        f"   {rec['label']:>18} subscribers: {rec['subscribers_live']} live "
        f"(connected in {rec['connect']['connect_s']:.1f} s), "
        f"{rec['deliveries']}/{rec['deliveries_expected']} delivered, from INVITE p50 "
        f"{fi['p50_ms']} p99 {fi['p99_ms']} max {fi['max_ms']} ms, from publish p50 "
        f"{fp['p50_ms']} p99 {fp['p99_ms']} ms; RSS {rec['rss_per_subscriber_kib']} KiB/subscriber"
    )


def _setup(gw: EventsGateway, workdir: Path, doc: dict[str, Any]) -> Context:
    """The gateway, a subscriber token, the UAS registered, a warm-up call; then the RSS
    with no subscriber."""
    gw.start(workdir / "gateway")
    doc["commands"]["sipgw"] = gw.argv
    doc["gateway"]["config"] = gw.config.read_text()
    token, argv = subscriber_token(gw)
    doc["commands"]["subscriber_token"] = argv
    calls = ProxiedCalls()
    calls.prepare(gw, workdir, Plan(step_duration_s=1.0, hold_ms=HOLD_MS))
    ctx = Context(gw, token, calls.uas_port, workdir)
    # The call path's own allocations belong to the baseline, not to the subscribers.
    with uas(ctx, workdir / "warm-up" / "uas", 1):
        place_call(ctx, workdir / "warm-up" / "uac")
    time.sleep(SETTLE_S)
    ctx.rss_baseline_kib = rss_kib(gw.pid)
    doc["rss_kib_baseline"] = ctx.rss_baseline_kib
    return ctx


def run(quick: bool, budget_s: float, workroot: Path) -> dict[str, Any]:
    """The whole scenario; one JSON-ready document (see bench/README.md)."""
    from .runner import utc_now

    started = utc_now()
    t0 = time.monotonic()
    deadline = t0 + budget_s
    levels = LEVELS_QUICK if quick else LEVELS_FULL
    workdir = workroot / NAME
    workdir.mkdir(parents=True, exist_ok=True)
    _log(f"== {NAME}: {TITLE} (budget {budget_s:.0f} s)")
    doc: dict[str, Any] = {
        "schema": SCHEMA, "scenario": NAME, "title": TITLE, "unit": "ms", "quick": quick,
        "started_at": started.isoformat(), "budget_s": round(budget_s, 1),
        "method": _method(levels, quick), "commands": {}, "gateway": {}, "levels": [],
        "error": None,
    }  # fmt: skip
    top = max(level.subscribers for level in levels)
    soft, hard = raise_nofile(top + FD_MARGIN + 1000)  # the gateway inherits it
    doc["nofile"] = {"soft": soft, "hard": hard}
    # The default (200 per node) would refuse the larger levels with 429.
    gw = EventsGateway(events={"max_subscribers_per_tenant": top + 100})
    try:
        smallest = levels[0]
        setup_s = EST_SETUP_S + smallest.estimate_s(calls_for(smallest.subscribers, quick))
        skip = no_time(quick, setup_s, budget_s)
        if skip:
            doc["skipped"] = skip
            _log(f"   skipped, {skip}")
        else:
            ctx = _setup(gw, workdir, doc)
            for level in levels:
                doc["levels"].append(_one_level(ctx, level, quick, deadline, soft))
            doc["floor"] = write_floor(top)
    except Exception as err:
        doc["error"] = f"{type(err).__name__}: {err}"
        doc["traceback"] = traceback.format_exc()
        _log(f"   ERROR {err}")
    finally:
        _teardown(gw, doc["gateway"])
    wall = time.monotonic() - t0
    first: dict[str, Any] = next((lv for lv in doc["levels"] if lv.get("uac_argv")), {})
    doc["commands"]["subscribers_first_level"] = first.get("subscriber_argv")
    doc["commands"]["uac_first_call"] = first.get("uac_argv")
    doc["commands"]["uas_first_level"] = first.get("uas_argv")
    doc.update(
        finished_at=utc_now().isoformat(),
        wall_time_s=round(wall, 1),
        over_budget_s=round(max(0.0, wall - budget_s), 1),
        machine=procstat.machine_info(),
        versions=versions(),
    )
    return doc


def _one_level(
    ctx: Context, level: Level, quick: bool, deadline: float, nofile: int
) -> dict[str, Any]:
    """A level, or why it was skipped; its errors are recorded, the next level runs."""
    calls = calls_for(level.subscribers, quick)
    skip = fd_shortfall(level, nofile) or no_time(
        quick, level.estimate_s(calls), deadline - time.monotonic()
    )
    if skip:
        _log(f"   {level.label} subscribers: skipped, {skip}")
        return {"subscribers": level.subscribers, "deflate": level.deflate,
                "label": level.label, "skipped": skip}  # fmt: skip
    try:
        rec = run_level(ctx, level, calls)
        _log(_level_line(rec))
        return rec
    except Exception as err:
        _log(f"   {level.label} subscribers: ERROR {err}")
        _wait_subscribers_gone(ctx.gw, timeout=30)  # the next level starts from none
        failed = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        return {"subscribers": level.subscribers, "deflate": level.deflate,
                "label": level.label, **failed}  # fmt: skip


def write_floor(connections: int) -> dict[str, Any]:
    """What writing one frame to `connections` loopback sockets costs a bare uvloop
    process (bench/fanout_floor.py): the floor of the gateway's CPU per subscriber."""
    argv = [sys.executable, "-m", "bench.fanout_floor", "--connections", str(connections)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=True)
        return {"argv": argv, **json.loads(done.stdout.strip().splitlines()[-1])}
    except (subprocess.SubprocessError, ValueError, IndexError) as err:
        return {"argv": argv, "error": f"{type(err).__name__}: {err}"}


def _teardown(gw: EventsGateway, gw_doc: dict[str, Any]) -> None:
    gw_doc["metrics_before_stop"] = metrics(gw) if gw.alive() else {}
    gw_doc["alive_until_stop"] = gw.alive()
    gw_doc["exit_code"] = gw.stop()
    gw_doc["stop_s"] = gw.stop_s
    gw_doc["log"] = gw.log_summary().to_json() if gw.proc else None


def _method(levels: Sequence[Level], quick: bool) -> dict[str, Any]:
    return {
        "levels": [
            {
                "subscribers": lv.subscribers,
                "deflate": lv.deflate,
                "processes": lv.processes,
                "calls": calls_for(lv.subscribers, quick),
            }
            for lv in levels
        ],
        "hold_ms": HOLD_MS,
        "subscriptions": f"token of user {EXTENSION}, type={EVENT_TYPE}, raw-socket client "
        f"(bench/subscribers.py; no client pings), {PER_PROCESS} per subscriber process, "
        f"{CONCURRENCY} handshakes in flight per process",
        "calls": "one at a time, a sipp UAC per call (-m 1); the next once every subscriber "
        "has the event (or a timeout)",
        "from_invite": "arrival at a subscriber (time.time_ns()) minus INVITE sent (sipp "
        "-trace_shortmsg, gettimeofday() after sendto()), per (subscriber, call)",
        "from_publish": "arrival minus the event's stream id (Redis's time of XADD, ms; taken "
        "as the middle of its millisecond)",
        "rss": "VmRSS of the gateway process 1 s after the level's subscribers are live, "
        "minus VmRSS before the first level (after a warm-up call), divided by N",
        "gateway_events_settings": "max_subscribers_per_tenant = largest level + 100; the "
        "rest default (subscriber_queue 1000, heartbeat 15 s)",
    }
