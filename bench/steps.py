"""The step method, kept free of I/O so it can be tested on synthetic data.

A *step* offers one rate (calls or requests per second) for a fixed time and records
what came back (`StepFigures`). A step is **clean** when all of these hold:

- sipp created every call it was asked for (the proxy did not hold it back through the
  concurrent-call limit -l, and the step did not hit its timeout);
- failed fraction = failed / attempted < 0.1 % (`max_failed_fraction`);
- retransmission fraction = retransmissions (UAC + UAS) / messages the sipps sent in a
  loss-free run (attempted x messages per call) ≤ 1 % (`max_retrans_fraction`): on
  loopback a retransmission means a message was dropped (socket buffer overflow) or
  answered later than T1 (500 ms), i.e. the proxy is falling behind;
- achieved rate ≥ 90 % of the offered rate (`min_rate_fraction`). Latency itself is
  judged by the retransmission criterion (an answer later than T1 = 500 ms is
  retransmitted); the rate criterion catches a chain that does not keep up, yet it
  must tolerate one short stall of the proxy in a 2-4 s step (a 150 ms pause costs
  ~5-9 % of the answers counted in the step's middle 80 %);
- median response time ≤ 100 ms (`max_p50_ms`): on loopback an unloaded proxy answers
  in a millisecond or two; a median above 100 ms means requests queue, i.e. the proxy
  is falling behind, even in a step too short for T1 retransmissions to start. Pauses
  (a garbage collection) raise the tail, not the median.

The search offers the rates in increasing order and stops after the first unclean step;
the **max clean rate** is the highest clean step before it (0 if the first step fails).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Criteria:
    max_failed_fraction: float = 0.001  # strictly below
    max_retrans_fraction: float = 0.01  # at most
    min_rate_fraction: float = 0.90  # achieved ≥ this x offered
    min_created_fraction: float = 1.0  # created ≥ this x requested
    max_p50_ms: float = 100.0  # median response time, at most

    def to_json(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class StepFigures:
    offered_rate: int  # per second
    duration_s: float  # planned load time (requested = offered_rate x duration_s)
    requested: int
    attempted: int  # calls sipp created
    successful: int
    failed: int  # attempted - successful (failed or left unfinished)
    retransmissions: int  # UAC + UAS
    messages: int  # messages the sipps send for `attempted` calls without loss
    achieved_rate: float
    response_ms: dict[str, float | int | None]  # p50, p90, p99, max, mean, samples
    cpu_s: float  # user + system of the implementation's process tree during the step
    wall_s: float  # from the UAC's start to its exit
    aux_cpu_s: float = 0.0  # what the implementation needs beside it (sipgw's Redis)
    loadgen_cpu_s: float = 0.0  # both sipps
    # All processes on the host, /proc/stat: tick-sampled, so it under-reads bursty
    # loads like these (kept as a hint of other load on a shared machine).
    host_busy_fraction: float = 0.0
    udp_rcvbuf_errors: int = 0  # datagrams dropped on full socket buffers (host-wide)
    proxy_socket_drops: int = 0  # of which at the proxy's SIP socket (/proc/net/udp)
    pss_kib: int = 0  # implementation's memory after the step
    uac_exit_code: int | None = None
    detail: dict[str, object] = field(default_factory=dict)  # raw counters, argv, ...
    clean: bool = False
    unclean_reasons: list[str] = field(default_factory=list)

    @property
    def failed_fraction(self) -> float:
        return self.failed / self.attempted if self.attempted else 1.0

    @property
    def retrans_fraction(self) -> float:
        return self.retransmissions / self.messages if self.messages else 0.0

    @property
    def proxy_cores(self) -> float:
        """Cores' worth of CPU the implementation used during the step (1.0 = one core
        busy all the time: a single-threaded proxy at its limit)."""
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_ms_per_call(self) -> float | None:
        return 1000 * self.cpu_s / self.successful if self.successful else None

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["failed_fraction"] = round(self.failed_fraction, 6)
        data["retrans_fraction"] = round(self.retrans_fraction, 6)
        cpu = self.cpu_ms_per_call
        data["cpu_ms_per_call"] = None if cpu is None else round(cpu, 4)
        data["achieved_rate"] = round(self.achieved_rate, 2)
        data["cpu_s"] = round(self.cpu_s, 3)
        data["loadgen_cpu_s"] = round(self.loadgen_cpu_s, 3)
        data["aux_cpu_s"] = round(self.aux_cpu_s, 3)
        data["host_busy_fraction"] = round(self.host_busy_fraction, 4)
        data["wall_s"] = round(self.wall_s, 3)
        data["proxy_cores"] = round(self.proxy_cores, 3)
        return data


def classify(step: StepFigures, criteria: Criteria) -> list[str]:
    """Why the step is not clean (an empty list: it is clean)."""
    reasons = []
    if step.attempted < criteria.min_created_fraction * step.requested:
        reasons.append(f"created {step.attempted} of {step.requested} calls")
    if step.attempted == 0 or step.failed_fraction >= criteria.max_failed_fraction:
        reasons.append(
            f"failed {step.failed}/{step.attempted} = {step.failed_fraction:.3%} "
            f"(limit < {criteria.max_failed_fraction:.1%})"
        )
    if step.retrans_fraction > criteria.max_retrans_fraction:
        reasons.append(
            f"retransmissions {step.retransmissions}/{step.messages} = "
            f"{step.retrans_fraction:.2%} (limit {criteria.max_retrans_fraction:.0%})"
        )
    p50 = step.response_ms.get("p50")
    if p50 is not None and p50 > criteria.max_p50_ms:
        reasons.append(f"median response {p50:.0f} ms (limit {criteria.max_p50_ms:.0f} ms)")
    if step.achieved_rate < criteria.min_rate_fraction * step.offered_rate:
        reasons.append(
            f"achieved {step.achieved_rate:.0f}/s of {step.offered_rate}/s offered "
            f"(limit {criteria.min_rate_fraction:.0%})"
        )
    return reasons


def judge(step: StepFigures, criteria: Criteria) -> StepFigures:
    step.unclean_reasons = classify(step, criteria)
    step.clean = not step.unclean_reasons
    return step


@dataclass
class Search:
    steps: list[StepFigures]
    max_clean_rate: int
    stop_reason: str

    def to_json(self) -> dict[str, object]:
        return {
            "max_clean_rate": self.max_clean_rate,
            "stop_reason": self.stop_reason,
            "steps": [s.to_json() for s in self.steps],
        }


def max_clean_rate(steps: Sequence[StepFigures]) -> int:
    """Highest offered rate among the clean steps before the first unclean one."""
    best = 0
    for step in sorted(steps, key=lambda s: s.offered_rate):
        if not step.clean:
            break
        best = step.offered_rate
    return best


def search(
    rates: Sequence[int],
    run_step: Callable[[int], StepFigures],
    criteria: Criteria,
    *,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    step_cost_s: float = 0.0,
    on_step: Callable[[StepFigures], None] | None = None,
) -> Search:
    """Offer `rates` in increasing order until a step is unclean.

    `deadline` (on `clock`) bounds the whole search: a step that would start after
    `deadline - step_cost_s` is not run, and the search says so in `stop_reason` (its
    max clean rate is then a lower bound). `on_step` sees each judged step (progress).
    """
    steps: list[StepFigures] = []
    reason = "all rates clean (the max clean rate is a lower bound)"
    for rate in sorted(rates):
        if deadline is not None and clock() + step_cost_s > deadline:
            reason = f"time budget exhausted before {rate}/s (max clean rate is a lower bound)"
            break
        step = judge(run_step(rate), criteria)
        steps.append(step)
        if on_step is not None:
            on_step(step)
        if not step.clean:
            reason = f"unclean at {rate}/s: " + "; ".join(step.unclean_reasons)
            break
    return Search(steps, max_clean_rate(steps), reason)


# -- small statistics ---------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0-100) by the nearest-rank method: always an observed
    value, which suits sipp's whole-millisecond response times."""
    data = sorted(values)
    if not data:
        return None
    if q <= 0:
        return data[0]
    rank = math.ceil(q / 100 * len(data))
    return data[min(rank, len(data)) - 1]


def response_summary(values: Sequence[float]) -> dict[str, float | int | None]:
    return {
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
        "mean": round(statistics.fmean(values), 3) if values else None,
        "samples": len(values),
    }


def spread(values: Sequence[float]) -> dict[str, float | None]:
    """median, min and max (None for no values)."""
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}
