"""Trunk health as every node sees it: the merge rule, sans I/O.

Each node's OPTIONS prober (prober.py, worker 0 of the node) knows which trunks *it*
finds down. A `NodeReport` is that knowledge: the node, the trunks it finds down (when
each went down, and why), a version and how long the report stays valid. The runtime
(gateway/runtime/shared_health.py) carries reports between processes (Redis for other
nodes, worker envelopes within a node); `HealthView` merges them into what routing reads
(`directory.TrunkHealth`), in memory, so the SIP path never waits on anything.

The merge rule: **a trunk is down while any node's fresh report lists it down.**

- Fresh: a report is valid for its ``ttl`` (three of the publisher's refresh periods)
  from the moment it was received here, by this process's clock; each refresh renews
  it. A node that dies, or is cut off from Redis, stops refreshing: its reports lapse
  and stop holding trunks down. Receiving time, not the publisher's clock, so clock
  skew between hosts does not shorten or stretch a report's life (a report read from a
  snapshot is aged by Redis's own clock, see the runtime).
- Any: one node that cannot reach a trunk (its OPTIONS time out, or get a 503) is
  evidence enough to prefer another trunk for a while. Skipping a trunk that works costs
  a call the second trunk in the list; sending calls to a dead one costs each of them a
  Timer B timeout. And when every outbound trunk is down, routing takes the first one
  anyway (Directory.outbound_trunk): a wrong report never refuses calls. A majority
  vote would need every node to probe every trunk and would not decide with two nodes;
  "the freshest report wins" would flap between nodes that disagree.
- A node's own prober is the authority on that node (its report never lapses there:
  the prober is in the same process); worker 0 hands it to its sibling workers, for
  whom it lapses like any other report, so a sibling outliving worker 0 does not keep a
  trunk down for good.

Versions: a report carries ``(started, seq)``, the publishing prober's start time (ms)
and a counter of its changes. Two paths (Redis, envelopes) may deliver one node's
reports out of order; an older version never replaces a newer one, an equal one only
renews it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

TrunkKey = tuple[str, str]  # (tenant id, trunk name)


@dataclass(frozen=True, slots=True)
class DownTrunk:
    """One trunk a node finds down."""

    tenant: str
    trunk: str
    since: float  # wall-clock seconds when that node found it down
    reason: str  # the reporting node's reason (its PeerChange.reason)


@dataclass(frozen=True, slots=True)
class NodeReport:
    """What one node's prober finds down; a trunk not listed is up as far as it knows."""

    node: str
    started: int  # the publishing prober's start, ms since the epoch
    seq: int  # its changes so far
    ttl: float  # seconds the report stays valid without a refresh
    down: tuple[DownTrunk, ...] = ()

    @property
    def version(self) -> tuple[int, int]:
        return (self.started, self.seq)


@dataclass(frozen=True, slots=True)
class Flip:
    """The merged state of a trunk changed (for the log)."""

    tenant: str
    trunk: str
    down: bool
    nodes: tuple[str, ...]  # the nodes whose fresh reports list it down (empty: up)


@dataclass(slots=True)
class _Held:
    report: NodeReport
    expires_at: float  # on the view's clock; inf for this node's own prober


class HealthView:
    """Every node's reports, merged by the rule above; `is_down` is what routing asks."""

    def __init__(self, node: str, *, clock: Callable[[], float]) -> None:
        self.node = node
        self.clock = clock
        self._held: dict[str, _Held] = {}  # node name -> its latest report
        self._by_trunk: dict[TrunkKey, dict[str, DownTrunk]] = {}  # -> node -> entry
        self._shown: dict[TrunkKey, tuple[str, ...]] = {}  # down trunks at the last flips()
        self._local = False  # this node's prober lives in this process
        self.applied = 0
        self.stale = 0  # reports older than the one held (out of order, ignored)

    # -- what routing and /metrics read ----------------------------------------------------
    def is_down(self, tenant: str, trunk: str) -> bool:
        entries = self._by_trunk.get((tenant, trunk))
        if not entries:
            return False
        now = self.clock()
        return any(self._held[node].expires_at > now for node in entries)

    def down_by(self, tenant: str, trunk: str) -> tuple[str, ...]:
        """The nodes whose fresh reports list the trunk down, sorted."""
        entries = self._by_trunk.get((tenant, trunk))
        if not entries:
            return ()
        now = self.clock()
        return tuple(sorted(n for n in entries if self._held[n].expires_at > now))

    def down_trunks(self) -> list[TrunkKey]:
        """Every trunk routing skips now, sorted."""
        return sorted(key for key in self._by_trunk if self.is_down(*key))

    def reports(self) -> list[NodeReport]:
        """The fresh reports held, by node name."""
        now = self.clock()
        return [h.report for _, h in sorted(self._held.items()) if h.expires_at > now]

    # -- what the prober and the runtime feed in -------------------------------------------
    def set_local(self, report: NodeReport) -> None:
        """This process's own prober's report: valid until the next one."""
        self._local = True
        self._store(report, math.inf)

    def apply(self, report: NodeReport, *, age: float = 0.0) -> bool:
        """A report from elsewhere, received `age` seconds ago. False when ignored: our
        own node's report where our prober is the authority, or an older version."""
        if self._local and report.node == self.node:
            return False
        held = self._held.get(report.node)
        if held is not None and report.version < held.report.version:
            self.stale += 1
            return False
        self._store(report, self.clock() + report.ttl - max(0.0, age))
        return True

    def resync(self, reports: Iterable[tuple[NodeReport, float]]) -> None:
        """A snapshot (report, age) of every node's report: what Redis holds after a
        (re)connection. A node absent from it has no report any more (Redis drops those
        that lapsed long ago); this node's own report is kept, it also comes by envelope."""
        present = set()
        for report, age in reports:
            present.add(report.node)
            self.apply(report, age=age)
        for node in list(self._held):
            if node not in present and node != self.node:
                self._drop(node)

    def expire(self) -> None:
        """Forget reports that lapsed (is_down ignores them already; this frees them)."""
        now = self.clock()
        for node, held in list(self._held.items()):
            if held.expires_at <= now:
                self._drop(node)

    def flips(self) -> list[Flip]:
        """The trunks whose merged state changed since the last call."""
        now_down: dict[TrunkKey, tuple[str, ...]] = {}
        for key in self._by_trunk:
            nodes = self.down_by(*key)
            if nodes:
                now_down[key] = nodes
        changed = [
            Flip(key[0], key[1], True, nodes)
            for key, nodes in now_down.items()
            if key not in self._shown
        ]
        changed += [Flip(key[0], key[1], False, ()) for key in self._shown if key not in now_down]
        self._shown = now_down
        return sorted(changed, key=lambda f: (f.tenant, f.trunk))

    # -- internals -------------------------------------------------------------------------
    def _store(self, report: NodeReport, expires_at: float) -> None:
        self._unindex(report.node)
        self._held[report.node] = _Held(report, expires_at)
        for entry in report.down:
            self._by_trunk.setdefault((entry.tenant, entry.trunk), {})[report.node] = entry
        self.applied += 1

    def _drop(self, node: str) -> None:
        self._unindex(node)
        del self._held[node]

    def _unindex(self, node: str) -> None:
        held = self._held.get(node)
        if held is None:
            return
        for entry in held.report.down:
            key = (entry.tenant, entry.trunk)
            nodes = self._by_trunk.get(key)
            if nodes is not None:
                nodes.pop(node, None)
                if not nodes:
                    del self._by_trunk[key]
