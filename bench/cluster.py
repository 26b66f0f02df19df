"""The redis-cluster scenario: events/s delivered and INVITE → ``call.offered`` latency
through one standalone Redis and through a Redis Cluster of 3 masters and 3 replicas,
each with 1 and with 2 gateway nodes, side by side in one run (issue #14).

A *setup* is one Redis deployment and its gateway nodes, started afresh:

- the deployment: one ``redis-server``, or the 6-node cluster of bench/redis_servers.py
  (``redis-cli --cluster create … --cluster-replicas 1``, every replica in sync before
  the first call), without persistence either way;
- 1 or 2 gateway nodes (`sipgw run`, one process each, bench/sipgw.py's config with
  the tenant's contact fields, ``[redis]`` naming the server's ``url`` or the six nodes
  as ``cluster_nodes``), each on its own SIP and HTTP ports, sharing the deployment as
  nodes of one site do;
- the sipp UAS registered as 201 through node A (node B finds it in the shared
  location), one WebSocket subscriber on node A (every event type, a token of user 201):
  with 2 nodes, the events of the calls through B reach it through Redis.

Each step offers one rate of proxied calls (the invite-event-latency call flow, a caller
per call that the contact index does not hold: a recognition miss, one look-up in Redis),
split evenly over the nodes: one sipp UAC per node, side by side. Each INVITE's time comes
from its UAC's message trace, each ``call.offered``'s from the subscriber; matched by
Call-ID. Events/s delivered = events of every type received (once each, by stream id) /
seconds from the first INVITE to the last event; expected = what the nodes wrote to Redis
over the step (``sipgw_events_published``). The CPU of the gateway nodes and of every
Redis process over the UACs' run is kept too.

An event that never arrives is counted (``missing``). The pure parts are tested in
tests/unit/test_bench_cluster.py.
"""

from __future__ import annotations

import json
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import SCHEMA, procstat, recognition
from .eventsapi import (
    EVENT_TYPE,
    Arrival,
    EventsGateway,
    SubscriberPool,
    counter_deltas,
    latency_ms,
    metrics,
    parse_invites,
    subscriber_token,
    versions,
)
from .latency import injection_file, no_time
from .process import Exit, Managed
from .redis_servers import LocalCluster, RedisServer
from .scenarios import Plan, ProxiedCalls, _wait_bound
from .sipgw import render_config
from .sipp import SippCommand, read_counts, sipp_binary
from .targets import DID, EXTENSION

NAME = "redis-cluster"
TITLE = (
    "Events/s and INVITE → call.offered through one Redis and a 3-master Redis Cluster, "
    "1 and 2 gateway nodes"
)
DEPLOYMENTS = ("standalone", "cluster")
NODE_COUNTS = (1, 2)
HOLD_MS = 100
SETTLE_S = 0.5  # after a step, so the next starts on a quiet gateway
DRAIN_S = 10.0  # longest wait for the events once the UACs have ended
# Redis's own default: the bench's nodes are starved of the CPU at times (2 shared cores,
# the gateways and sipp at full load), and a node failed over mid-step would measure the
# failover. The tests use 1 s, for quick failovers.
CLUSTER_NODE_TIMEOUT_MS = 15000
PUBLISHED = "sipgw_events_published"  # a node's events written to Redis
# Rough costs on the 2-core bench machine, for --quick's time check.
EST_SETUP_S = {"standalone": 6.0, "cluster": 10.0}  # deployment, nodes, token, REGISTER…
EST_NODE_S = 4.0  # each further gateway node: its start and its stop
EST_STEP_OVERHEAD_S = 3.0  # sipp start, the call hold and BYE, waiting, settling


@dataclass(frozen=True)
class Step:
    rate: int  # calls/s, over all the nodes
    duration_s: float

    @property
    def calls(self) -> int:
        return max(2, round(self.rate * self.duration_s))

    def estimate_s(self) -> float:
        return self.duration_s + EST_STEP_OVERHEAD_S


# 200 calls/s is within what one gateway process proxies cleanly on the 2-core bench
# machine (proxied-calls: 400-600/s in 2 s steps), 400/s near its limit: the second node
# can show there what it takes off the first, if the cores let it.
STEPS_FULL = (Step(200, 4.0), Step(400, 3.0))
STEPS_QUICK = (Step(100, 2.0),)


@dataclass(frozen=True)
class Setup:
    deployment: str  # "standalone" | "cluster"
    nodes: int  # gateway nodes

    @property
    def label(self) -> str:
        return f"{self.deployment}, {self.nodes} node{'s' if self.nodes > 1 else ''}"

    def estimate_s(self, steps: Sequence[Step]) -> float:
        return (
            EST_SETUP_S[self.deployment]
            + EST_NODE_S * (self.nodes - 1)
            + sum(s.estimate_s() for s in steps)
        )


# Single Redis first, then the cluster; within each, 1 node then 2.
SETUPS = tuple(Setup(d, n) for d in DEPLOYMENTS for n in NODE_COUNTS)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- pure helpers ---------------------------------------------------------------------------


def split_calls(step: Step, nodes: int) -> list[tuple[int, int]]:
    """(calls/s, calls) of each node's UAC: the step's load split evenly, the remainder
    to the first nodes."""
    out = []
    for i in range(nodes):
        rate = step.rate // nodes + (1 if i < step.rate % nodes else 0)
        calls = step.calls // nodes + (1 if i < step.calls % nodes else 0)
        out.append((rate, calls))
    return out


def miss_numbers(calls: int, first_serial: int) -> list[str]:
    """One distinct number per call that no contact holds (``+3165…``, as the
    invite-event-latency misses): each call's look-up goes to Redis, none to the cache."""
    return [f"+3165{first_serial + i:07d}" for i in range(calls)]


def delivery_figures(
    sent: dict[str, int], arrivals: Sequence[Arrival], expected: int
) -> dict[str, Any]:
    """One step's events at the subscriber. Every event counts for events/s: received
    over the seconds from the first INVITE to the last event, against `expected` (what
    the gateways wrote to Redis over the step); one with a stream id seen before is a
    duplicate. The latency is the ``call.offered`` events', matched by Call-ID to
    `sent` (Call-ID → INVITE time, µs, of every UAC); one of a Call-ID not sent in the
    step is unmatched, a call without one missing."""
    seen: set[str] = set()
    offered: dict[str, Arrival] = {}
    duplicates = unmatched = 0
    types: Counter[str] = Counter()
    for a in arrivals:
        if a.seq in seen:
            duplicates += 1
            continue
        seen.add(a.seq)
        types[a.type] += 1
        if a.type != EVENT_TYPE:
            continue
        if a.sip_call_id not in sent or a.sip_call_id in offered:
            unmatched += 1
        else:
            offered[a.sip_call_id] = a
    samples = [a.arrival_us - sent[cid] for cid, a in offered.items()]
    span_s = None
    if seen and sent:
        last = max(a.arrival_us for a in arrivals)
        span_s = (last - min(sent.values())) / 1e6
    received = len(seen)
    return {
        "calls_placed": len(sent),
        "offered_received": len(offered),
        "missing": len(sent) - len(offered),
        "events_expected": expected,
        "events_received": received,
        "duplicates": duplicates,
        "unmatched": unmatched,
        "types": dict(types),
        "latency": latency_ms(samples),
        "delivery_span_s": None if span_s is None else round(span_s, 3),
        "events_per_s": round(received / span_s, 1) if span_s and span_s > 0 else None,
    }


def published(nodes_before: Sequence[dict[str, float]], nodes_after: Sequence[dict[str, float]]
              ) -> int:  # fmt: skip
    """Events the nodes wrote to Redis in between (their counters added up)."""
    return round(sum(
        a.get(PUBLISHED, 0.0) - b.get(PUBLISHED, 0.0)
        for b, a in zip(nodes_before, nodes_after, strict=True)
    ))  # fmt: skip


def sum_counts(counts: Sequence[dict[str, Any]]) -> dict[str, int]:
    """The UACs' sipp counters added up."""
    keys = ("created", "successful", "failed", "retransmissions")
    return {k: int(sum(c.get(k, 0) for c in counts)) for k in keys}


def add_counters(deltas: Sequence[dict[str, float]]) -> dict[str, float]:
    """Every node's counter deltas (and gauges) added up."""
    out: dict[str, float] = {}
    for d in deltas:
        for k, v in d.items():
            out[k] = out.get(k, 0.0) + v
    return out


# -- the Redis deployments ------------------------------------------------------------------


@dataclass
class Deployment:
    """One standalone server or the 6-node cluster; the ``[redis]`` keys that name it."""

    kind: str
    servers: list[RedisServer]
    redis_keys: str
    cluster: LocalCluster | None = None

    @property
    def pids(self) -> list[int]:
        return [s.pid for s in self.servers if s.running]

    def masters(self) -> list[str]:
        """The addresses serving slots now (one server: its own)."""
        if self.cluster is None:
            return [s.address for s in self.servers]
        return sorted(self.cluster.view().masters.values())

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        else:
            for server in self.servers:
                server.stop()


def start_deployment(kind: str, directory: Path) -> Deployment:
    """Start it and return once it serves (the cluster: every slot, replicas in sync)."""
    if kind == "standalone":
        server = RedisServer.start_new("standalone", directory)
        return Deployment(kind, [server], f'url = "{server.url}"')
    cluster = LocalCluster.start(directory, node_timeout_ms=CLUSTER_NODE_TIMEOUT_MS)
    keys = f"cluster_nodes = {json.dumps(cluster.seeds())}"
    return Deployment(kind, list(cluster.nodes), keys, cluster)


class Node(EventsGateway):
    """One gateway node (one process) on a shared deployment: no Redis of its own."""

    def __init__(self, redis_keys: str) -> None:
        super().__init__()
        self.redis_keys = redis_keys

    def config_text(self, sip_port: int, http_port: int, trunk_port: int, redis_url: str) -> str:
        base = render_config(sip_port, http_port, trunk_port, redis_url, redis_keys=self.redis_keys)
        return base + recognition.RECOGNITION_TOML

    def start(self, workdir: Path) -> None:
        self.start_gateway(workdir, "")
        self.wait_http_ready(20)

    def all_events_url(self) -> str:
        """The subscription URL without a type filter: every event of the token's calls."""
        return f"ws://127.0.0.1:{self.http_port}/v1/events"


# -- the harness side --------------------------------------------------------------------------


@dataclass
class Context:
    setup: Setup
    deployment: Deployment
    nodes: list[Node]
    pool: SubscriberPool
    uas_port: int
    workdir: Path
    serial: int = 0  # of the next caller number


@dataclass
class Uac:
    node: Node
    cmd: SippCommand
    trace: Path
    proc: Managed | None = None
    exit: Exit | None = None


def _cpu(pids: Sequence[int]) -> float:
    return sum(procstat.tree_cpu_seconds(pid) for pid in pids)


def _run_uacs(uacs: list[Uac], plan: Plan) -> float:
    """Start every UAC at once and wait for them all (past the step's timeout: SIGUSR1,
    sipp's soft quit that still writes its statistics); the wall time."""
    t0 = time.monotonic()
    for uac in uacs:
        uac.cmd.workdir.mkdir(parents=True, exist_ok=True)
        argv = uac.cmd.argv(sipp_binary())
        uac.proc = Managed("sipp-uac", argv, cwd=uac.cmd.workdir, log_path=uac.cmd.log_path)
    deadline = t0 + plan.step_timeout_s()
    for uac in uacs:
        assert uac.proc is not None
        uac.exit = uac.proc.wait(max(0.0, deadline - time.monotonic()))
        if uac.exit is None:
            uac.exit = uac.proc.stop(grace=3, sig=signal.SIGUSR1)
    return time.monotonic() - t0


def wait_for_events(ctx: Context, before: Sequence[dict[str, float]]) -> int:
    """Wait (up to DRAIN_S in all) until the subscriber has every event the nodes wrote
    to Redis since `before`; the bus writer may append a call's last events a little
    after its BYE, so the count is read again once it is reached. The count."""
    deadline = time.monotonic() + DRAIN_S
    expected = -1
    while True:
        now_expected = published(before, [metrics(n) for n in ctx.nodes])
        if now_expected == expected or time.monotonic() >= deadline:
            return now_expected
        expected = now_expected
        ctx.pool.wait_for(ctx.pool.taken + expected, max(0.1, deadline - time.monotonic()))


def run_step(ctx: Context, step: Step) -> dict[str, Any]:
    """One rate split over the nodes; its events matched; CPU and counters over it."""
    step_dir = ctx.workdir / f"step-{step.rate:05d}"
    plan = Plan(step_duration_s=step.duration_s, hold_ms=HOLD_MS)
    uacs = []
    shares = split_calls(step, len(ctx.nodes))
    for i, (node, (rate, calls)) in enumerate(zip(ctx.nodes, shares, strict=True)):
        inf = step_dir / f"callers-{i}.csv"
        inf.parent.mkdir(parents=True, exist_ok=True)
        inf.write_text(injection_file(miss_numbers(calls, ctx.serial)))
        ctx.serial += calls
        trace = step_dir / f"invites-{i}.tsv"
        cmd = SippCommand(
            scenario="uac_callers", workdir=step_dir / f"uac-{i}", remote=node.remote,
            local_port=node.uac_port, service=DID, calls=calls, rate=rate,
            limit=plan.limit(rate), hold_ms=HOLD_MS, timeout_s=plan.step_timeout_s(),
            recv_timeout_ms=plan.recv_timeout_ms, keys={"domain": "127.0.0.1"},
            extra=["-inf", str(inf), "-trace_shortmsg", "-shortmessage_file", str(trace)],
        )  # fmt: skip
        uacs.append(Uac(node, cmd, trace))
    uas = SippCommand(
        scenario="uas", workdir=step_dir / "uas", local_port=ctx.uas_port, service=EXTENSION,
        calls=step.calls, timeout_s=plan.step_timeout_s() + 10,
    )  # fmt: skip
    uas.workdir.mkdir(parents=True)
    before = [metrics(n) for n in ctx.nodes]
    uas_proc = Managed("sipp-uas", uas.argv(sipp_binary()), cwd=uas.workdir, log_path=uas.log_path)
    try:
        _wait_bound(uas_proc, ctx.uas_port)
        gw_pids = [n.pid for n in ctx.nodes]
        gw_cpu, redis_cpu = _cpu(gw_pids), _cpu(ctx.deployment.pids)
        wall = _run_uacs(uacs, plan)
        gw_cpu, redis_cpu = _cpu(gw_pids) - gw_cpu, _cpu(ctx.deployment.pids) - redis_cpu
        sent: dict[str, int] = {}
        for uac in uacs:
            text = uac.trace.read_text(errors="replace") if uac.trace.exists() else ""
            sent.update(parse_invites(text))
        t0 = time.monotonic()
        expected = wait_for_events(ctx, before)
        wait_s = time.monotonic() - t0
        uas_proc.wait(2.0) or uas_proc.stop(grace=2, sig=signal.SIGUSR1)
    finally:
        for uac in uacs:
            if uac.proc is not None:
                uac.proc.stop(grace=1)
        uas_proc.stop(grace=1)
    counts = [vars(read_counts(u.cmd.stats_path)) for u in uacs]
    exit_codes = [u.exit.returncode if u.exit else None for u in uacs]
    record: dict[str, Any] = {
        "rate": step.rate,
        "duration_s": step.duration_s,
        "requested": step.calls,
        "per_node": [{"rate": r, "calls": c} for r, c in shares],
        **delivery_figures(sent, ctx.pool.take(), expected),
        "wait_s": round(wait_s, 2),
        "drain_s": DRAIN_S,
        "wall_s": round(wall, 2),
        "sip": {**sum_counts(counts), "uac": counts, "uac_exit_codes": exit_codes},
        "gateway_cpu_s": round(gw_cpu, 3),
        "redis_cpu_s": round(redis_cpu, 3),
        "uac_argv": [u.proc.argv if u.proc else [] for u in uacs],
        "uas_argv": uas_proc.argv,
        "gateway_counters": add_counters(
            [counter_deltas(b, metrics(n)) for b, n in zip(before, ctx.nodes, strict=True)]
        ),
    }
    time.sleep(SETTLE_S)
    return record


def _step_line(setup: Setup, rec: dict[str, Any]) -> str:
    lat = rec["latency"]
    failed = rec["sip"]["failed"]
    return (
        f"   {setup.label}, {rec['rate']} calls/s: {rec['events_received']}/"
        f"{rec['events_expected']} events, {rec['events_per_s']} events/s; call.offered "
        f"{rec['offered_received']}/{rec['calls_placed']} p50 {lat['p50_ms']} "
        f"p99 {lat['p99_ms']} ms; gateway CPU {rec['gateway_cpu_s']} s, Redis "
        f"{rec['redis_cpu_s']} s{f'; {failed} calls failed' if failed else ''}"
    )


@dataclass
class SetupRun:
    """What one setup's record collects while it runs."""

    setup: Setup
    record: dict[str, Any] = field(default_factory=dict)
    ctx: Context | None = None
    nodes: list[Node] = field(default_factory=list)
    deployment: Deployment | None = None
    pool: SubscriberPool | None = None


def _start(run: SetupRun, workdir: Path) -> Context:
    """The deployment, the nodes, a token, the UAS registered, the subscriber on node A."""
    rec = run.record
    t0 = time.monotonic()
    run.deployment = start_deployment(run.setup.deployment, workdir / "redis")
    rec["deployment_start_s"] = round(time.monotonic() - t0, 2)
    rec["redis_keys"] = run.deployment.redis_keys
    rec["masters_before"] = run.deployment.masters()
    for i in range(run.setup.nodes):
        node = Node(run.deployment.redis_keys)
        run.nodes.append(node)  # before its start: stopped whatever happens
        node.start(workdir / f"node-{i}")
    rec["commands"] = {"sipgw": [n.argv for n in run.nodes]}
    rec["configs"] = [n.config.read_text() for n in run.nodes]
    token, argv = subscriber_token(run.nodes[0])
    rec["commands"]["subscriber_token"] = argv
    calls = ProxiedCalls()
    calls.prepare(run.nodes[0], workdir, Plan(step_duration_s=1.0, hold_ms=HOLD_MS))
    run.pool = SubscriberPool(run.nodes[0].all_events_url(), token, 1, workdir / "subscriber")
    rec["subscriber"] = run.pool.start(timeout=30)
    rec["commands"]["subscriber"] = run.pool.argv
    if rec["subscriber"]["connected"] != 1:
        raise RuntimeError(f"the subscriber did not connect: {rec['subscriber']['errors']}")
    return Context(run.setup, run.deployment, run.nodes, run.pool, calls.uas_port, workdir)


def _stop(run: SetupRun) -> None:
    """Subscriber, nodes, then the deployment (the nodes flush their events on stop)."""
    rec = run.record
    if run.pool is not None:
        rec["subscriber"] = run.pool.stop()
    rec["nodes"] = []
    for node in run.nodes:
        part: dict[str, Any] = {"metrics_before_stop": metrics(node) if node.alive() else {}}
        part["alive_until_stop"] = node.alive()
        part["exit_code"] = node.stop()
        part["stop_s"] = node.stop_s
        part["log"] = node.log_summary().to_json() if node.proc else None
        rec["nodes"].append(part)
    if run.deployment is not None:
        try:
            rec["masters_after"] = run.deployment.masters()
        except Exception as err:  # the cluster not answering is itself the finding
            rec["masters_after"] = f"{type(err).__name__}: {err}"
        run.deployment.stop()


def run_setup(
    setup: Setup, steps: Sequence[Step], workdir: Path, quick: bool, deadline: float
) -> dict[str, Any]:
    """One deployment with its nodes, every step; everything stopped whatever happens."""
    run = SetupRun(setup)
    run.record.update(deployment=setup.deployment, nodes_count=setup.nodes, label=setup.label,
                      steps=[], error=None)  # fmt: skip
    try:
        ctx = _start(run, workdir)
        for step in steps:
            skip = no_time(quick, step.estimate_s() + 4, deadline - time.monotonic())
            if skip:
                _log(f"   {setup.label}, {step.rate} calls/s: skipped, {skip}")
                run.record["steps"].append({"rate": step.rate, "skipped": skip})
                continue
            rec = run_step(ctx, step)
            _log(_step_line(setup, rec))
            run.record["steps"].append(rec)
    except Exception as err:
        run.record["error"] = f"{type(err).__name__}: {err}"
        run.record["traceback"] = traceback.format_exc()
        _log(f"   {setup.label}: ERROR {err}")
    finally:
        _stop(run)
    return run.record


def run(quick: bool, budget_s: float, workroot: Path) -> dict[str, Any]:
    """The whole scenario; one JSON-ready document (see bench/README.md)."""
    from .runner import utc_now

    started = utc_now()
    t0 = time.monotonic()
    deadline = t0 + budget_s
    steps = STEPS_QUICK if quick else STEPS_FULL
    workdir = workroot / NAME
    workdir.mkdir(parents=True, exist_ok=True)
    _log(f"== {NAME}: {TITLE} (budget {budget_s:.0f} s)")
    doc: dict[str, Any] = {
        "schema": SCHEMA, "scenario": NAME, "title": TITLE, "unit": "ms", "quick": quick,
        "started_at": started.isoformat(), "budget_s": round(budget_s, 1),
        "method": _method(steps), "setups": [], "error": None,
    }  # fmt: skip
    try:
        for setup in SETUPS:
            skip = no_time(quick, setup.estimate_s(steps), deadline - time.monotonic())
            if skip:
                _log(f"   {setup.label}: skipped, {skip}")
                doc["setups"].append({"deployment": setup.deployment, "nodes_count": setup.nodes,
                                      "label": setup.label, "skipped": skip})  # fmt: skip
                continue
            name = f"{setup.deployment}-{setup.nodes}n"
            doc["setups"].append(run_setup(setup, steps, workdir / name, quick, deadline))
    except Exception as err:
        doc["error"] = f"{type(err).__name__}: {err}"
        doc["traceback"] = traceback.format_exc()
        _log(f"   ERROR {err}")
    wall = time.monotonic() - t0
    doc.update(
        finished_at=utc_now().isoformat(),
        wall_time_s=round(wall, 1),
        over_budget_s=round(max(0.0, wall - budget_s), 1),
        machine=procstat.machine_info(),
        versions=versions(),
    )
    return doc


def _method(steps: Sequence[Step]) -> dict[str, Any]:
    return {
        "setups": [{"deployment": s.deployment, "nodes": s.nodes} for s in SETUPS],
        "steps": [{"rate": s.rate, "duration_s": s.duration_s, "calls": s.calls} for s in steps],
        "hold_ms": HOLD_MS,
        "standalone": "one redis-server, no persistence",
        "cluster": "6 redis-server --cluster-enabled yes, redis-cli --cluster create "
        "--cluster-replicas 1 (3 masters, 3 replicas), no persistence, "
        f"cluster-node-timeout {CLUSTER_NODE_TIMEOUT_MS} ms; the gateways get every node "
        "as a seed",
        "nodes": "sipgw run, one process per node, each its own SIP and HTTP ports, the "
        "same [redis]; the step's calls split evenly, one sipp UAC per node, side by side",
        "call_flow": "sipp UAC (trunk, uac_callers.xml, a caller per call, none in the "
        "contact index: a look-up in Redis per call) → a node → sipp UAS registered as 201 "
        "through node A",
        "subscriber": f"1 WebSocket subscription on node A, token of user {EXTENSION}, "
        "every event type",
        "latency": f"{EVENT_TYPE}: subscriber arrival (time.time_ns()) minus INVITE sent "
        "(sipp -trace_shortmsg), matched by Call-ID; nearest-rank percentiles",
        "events_per_s": "events received / seconds from the step's first INVITE to its last event",
        "cpu": "user+system of the gateway processes, and of every Redis process, over the "
        "UACs' run (/proc)",
        "drain_s": DRAIN_S,
    }
