"""The load scenarios: what one step sends, and how its figures are collected.

proxied-calls  sipp UAC (the trunk) → proxy → sipp UAS (extension 201, registered).
               Each call: INVITE → 180 → 200 → ACK, hold (-d), BYE → 200. The INVITE is
               record-routed, so ACK and BYE pass through the proxy too.
options        sipp UAC → proxy: OPTIONS sip:ping@proxy answered by the proxy itself.
"""

from __future__ import annotations

import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from . import procstat
from .ports import free_port
from .process import Exit, Managed
from .sipp import (
    PER_CALL,
    SippCommand,
    SippCounts,
    achieved_rate,
    read_counts,
    read_rtt,
    sipp_binary,
)
from .steps import StepFigures, response_summary
from .targets import DID, EXTENSION, Target

CALLER = "+31612345678"
# The UAC (the trunk) sends each call from a socket of its own, for every implementation
# alike: many flows, which the kernel spreads over the workers of a proxy whose workers
# share its port with SO_REUSEPORT (sipgw-2w). From one socket (-t u1) all calls would be
# one flow, served by one worker. The UAS (a registered phone) keeps its one socket.
UAC_TRANSPORT = PER_CALL


@dataclass(frozen=True)
class Plan:
    """How long and how hard each step of a search is."""

    step_duration_s: float
    hold_ms: int  # call hold between ACK and BYE (sipp -d)
    recv_timeout_ms: int = 4000  # a message lost for good fails its call after this
    settle_s: float = 0.3  # pause after a step, so the next starts on a quiet proxy

    def requested(self, rate: int) -> int:
        return max(1, round(rate * self.step_duration_s))

    def limit(self, rate: int) -> int:
        """sipp -l: one second's worth of calls may be in progress at once. A healthy
        call lasts hold + a few ms; if they pile up beyond this, the proxy is late and
        sipp stops creating calls, which the step reports (created < requested)."""
        return max(50, rate)

    def step_timeout_s(self) -> float:
        return self.step_duration_s + self.hold_ms / 1000 + 2 * self.recv_timeout_ms / 1000 + 5

    def step_cost_s(self) -> float:
        """What a clean step usually takes, start to settled (for the time budget):
        measured, ~0.5 s beyond the load, the hold and the pause (starting the sipps,
        waiting for the UAS to bind, reading their files)."""
        return self.step_duration_s + self.hold_ms / 1000 + self.settle_s + 0.5


class Scenario(ABC):
    name: str
    title: str
    unit: str  # "calls/s" or "requests/s"
    messages_per_call: int  # what the sipps send per call when nothing is lost
    rates_full: tuple[int, ...]
    rates_quick: tuple[int, ...]
    duration_full_s: float
    duration_quick_s: float
    # The sustained check (see runner.py): one long step at the max clean rate. 0: none.
    sustain_full_s: float
    sustain_quick_s: float
    # Whether an unclean step leaves requests pending at the proxy (INVITEs nobody
    # answers before Timer C): sipgw then drains for up to 10 s when it is stopped.
    leaves_requests_pending: bool = False
    # What a turn takes before its first step: starting the implementation (sipgw with
    # two workers ~3 s), registering the UAS (calls), the idle sample.
    start_s: float = 2.5

    def rates(self, quick: bool) -> tuple[int, ...]:
        return self.rates_quick if quick else self.rates_full

    def sustain_s(self, quick: bool) -> float:
        return self.sustain_quick_s if quick else self.sustain_full_s

    def plan(self, quick: bool, duration_s: float | None = None, hold_ms: int = 100) -> Plan:
        default = self.duration_quick_s if quick else self.duration_full_s
        return Plan(step_duration_s=duration_s or default, hold_ms=hold_ms)

    def prepare(self, target: Target, workdir: Path, plan: Plan) -> None:  # noqa: B027
        """Per repetition, after the target started (e.g. register the UAS)."""

    @abstractmethod
    def run_step(self, target: Target, workdir: Path, rate: int, plan: Plan) -> StepFigures: ...


@dataclass(frozen=True)
class Ticker:
    """Something to call every `every_s` seconds while a long sipp runs (the soak's
    samples of memory, lag and counters)."""

    every_s: float
    call: Callable[[], None]


def _run_sipp(
    cmd: SippCommand, timeout: float, name: str, ticker: Ticker | None = None
) -> tuple[Managed, Exit]:
    """Run sipp to its end; past `timeout`, soft-quit it (SIGUSR1: final stats are
    written) and kill it 3 s later."""
    cmd.workdir.mkdir(parents=True, exist_ok=True)
    proc = Managed(name, cmd.argv(sipp_binary()), cwd=cmd.workdir, log_path=cmd.log_path)
    deadline = time.monotonic() + timeout
    result = None
    while ticker is not None and result is None and time.monotonic() < deadline:
        result = proc.wait(min(ticker.every_s, deadline - time.monotonic()))
        if result is None:
            ticker.call()
    if result is None:
        result = proc.wait(max(0.0, deadline - time.monotonic()))
    if result is None:
        result = proc.stop(grace=3, sig=signal.SIGUSR1)
    return proc, result


def _wait_bound(proc: Managed, port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if procstat.udp_port_bound(port):
            return
        if not proc.running:
            raise RuntimeError(f"sipp UAS exited at start:\n{proc.log_text()[-2000:]}")
        time.sleep(0.02)
    raise RuntimeError(f"sipp UAS did not bind port {port} within {timeout}s")


@dataclass
class Window:
    """What happened on the host while the UAC ran."""

    cpu_s: float  # the implementation's process tree
    aux_cpu_s: float  # processes it needs beside it (sipgw's Redis)
    wall_s: float
    host_busy: float
    udp_rcvbuf_errors: int  # the whole host
    proxy_socket_drops: int  # the proxy's own UDP sockets (its whole process tree)


def _measure_uac(
    target: Target, uac: SippCommand, plan: Plan, name: str, ticker: Ticker | None = None
) -> tuple[Managed, Exit, Window]:
    """Run the UAC; measure the target's CPU, the wall time, host CPU and UDP drops over
    exactly the UAC's life."""
    host_before = procstat.host_cpu()
    udp_before = procstat.udp_counters().get("RcvbufErrors", 0)
    sock_before = procstat.tree_udp_drops(target.pid)
    cpu_before = procstat.tree_cpu_seconds(target.pid)
    aux_before = sum(procstat.tree_cpu_seconds(pid) for pid in target.aux_pids)
    t0 = time.monotonic()
    proc, result = _run_sipp(uac, plan.step_timeout_s(), name, ticker)
    wall = time.monotonic() - t0
    cpu = procstat.tree_cpu_seconds(target.pid) - cpu_before
    aux = sum(procstat.tree_cpu_seconds(pid) for pid in target.aux_pids) - aux_before
    busy = procstat.busy_fraction(host_before, procstat.host_cpu())
    drops = procstat.udp_counters().get("RcvbufErrors", 0) - udp_before
    sock_drops = procstat.tree_udp_drops(target.pid) - sock_before
    return proc, result, Window(cpu, aux, wall, busy, drops, sock_drops)


def _figures(
    *,
    rate: int,
    plan: Plan,
    messages_per_call: int,
    uac: SippCommand,
    uac_proc: Managed,
    uac_exit: Exit,
    uac_counts: SippCounts,
    window: Window,
    target: Target,
    uas_counts: SippCounts | None = None,
    uas_proc: Managed | None = None,
    uas_exit: Exit | None = None,
) -> StepFigures:
    samples = read_rtt(uac.workdir)
    attempted = uac_counts.created
    retrans = uac_counts.retransmissions + (uas_counts.retransmissions if uas_counts else 0)
    detail: dict[str, object] = {
        "uac": vars(uac_counts),
        "uac_argv": uac_proc.argv,
    }
    if uas_counts is not None and uas_proc is not None:
        detail["uas"] = vars(uas_counts)
        detail["uas_argv"] = uas_proc.argv
        detail["uas_exit_code"] = uas_exit.returncode if uas_exit else None
    return StepFigures(
        offered_rate=rate,
        duration_s=plan.step_duration_s,
        requested=plan.requested(rate),
        attempted=attempted,
        successful=uac_counts.successful,
        failed=max(0, attempted - uac_counts.successful),
        retransmissions=retrans,
        messages=attempted * messages_per_call,
        achieved_rate=achieved_rate(samples),
        response_ms=response_summary([s.rt_ms for s in samples]),
        cpu_s=window.cpu_s,
        aux_cpu_s=window.aux_cpu_s,
        wall_s=window.wall_s,
        loadgen_cpu_s=uac_exit.cpu_s + (uas_exit.cpu_s if uas_exit else 0.0),
        host_busy_fraction=window.host_busy,
        udp_rcvbuf_errors=window.udp_rcvbuf_errors,
        proxy_socket_drops=window.proxy_socket_drops,
        pss_kib=procstat.tree_pss_kib(target.pid),
        uac_exit_code=uac_exit.returncode,
        detail=detail,
    )


class ProxiedCalls(Scenario):
    name = "proxied-calls"
    title = "Proxied calls/s, sipp UAC → proxy → sipp UAS over UDP"
    unit = "calls/s"
    # UAC: INVITE, ACK, BYE; UAS: 180, 200 (INVITE), 200 (BYE).
    messages_per_call = 6
    # 1600 is goal 3's bar (4x the issue's 400, bench/goals.py): on the ladder, so a
    # max clean rate at the bar is measured as such (it took 6000's place: every
    # Kamailio search was clean from 2000 to 8000).
    rates_full = (100, 300, 400, 600, 800, 1000, 1600, 2000, 8000)
    rates_quick = (100, 400, 1000)
    duration_full_s = 2.0
    duration_quick_s = 1.5
    # Longer than the ~32 s (64 x T1) a UDP transaction's state may be kept, so the
    # proxy reaches its steady-state heap and timer load.
    sustain_full_s = 34.0
    sustain_quick_s = 8.0
    leaves_requests_pending = True
    start_s = 4.5

    def __init__(self) -> None:
        self.uas_port = 0

    def prepare(self, target: Target, workdir: Path, plan: Plan) -> None:
        """Register the UAS's future port as extension 201 (digest for sipgw)."""
        self.uas_port = free_port()
        cmd = SippCommand(
            scenario="register_uac",
            workdir=workdir / "register",
            remote=target.remote,
            local_port=self.uas_port,
            service=EXTENSION,
            calls=1,
            auth=target.register_auth,
            timeout_s=15,
            keys={"domain": target.register_domain, "expires": "3600"},
        )
        proc, result = _run_sipp(cmd, 20, "sipp-register")
        counts = read_counts(cmd.stats_path)
        if result.returncode != 0 or counts.successful != 1:
            raise RuntimeError(
                f"REGISTER of {EXTENSION} with {target.label} failed (sipp exit "
                f"{result.returncode}):\n{proc.log_text()[-2000:]}"
            )

    def run_step(self, target: Target, workdir: Path, rate: int, plan: Plan) -> StepFigures:
        step_dir = workdir / f"step-{rate:05d}"
        requested = plan.requested(rate)
        # A fresh UAS per step: its counters and CPU then belong to this step alone.
        uas = SippCommand(
            scenario="uas",
            workdir=step_dir / "uas",
            local_port=self.uas_port,
            service=EXTENSION,
            calls=requested,
            timeout_s=plan.step_timeout_s() + 10,
        )
        uas.workdir.mkdir(parents=True, exist_ok=True)
        uas_proc = Managed(
            "sipp-uas", uas.argv(sipp_binary()), cwd=uas.workdir, log_path=uas.log_path
        )
        try:
            _wait_bound(uas_proc, self.uas_port)
            uac = SippCommand(
                scenario="uac",
                workdir=step_dir / "uac",
                remote=target.remote,
                local_port=target.uac_port,
                service=DID,
                calls=requested,
                rate=rate,
                limit=plan.limit(rate),
                hold_ms=plan.hold_ms,
                timeout_s=plan.step_timeout_s(),
                recv_timeout_ms=plan.recv_timeout_ms,
                rtt=True,
                keys={"domain": "127.0.0.1", "caller": CALLER},
                transport=UAC_TRANSPORT,
            )
            uac_proc, uac_exit, window = _measure_uac(target, uac, plan, "sipp-uac")
            # The UAS ends by itself once it has seen `requested` calls through; after
            # a lossy step it waits for calls that will never end: soft quit, then kill.
            uas_exit = uas_proc.wait(2.0) or uas_proc.stop(grace=2, sig=signal.SIGUSR1)
        finally:
            uas_proc.stop(grace=1)
        return _figures(
            rate=rate, plan=plan, messages_per_call=self.messages_per_call,
            uac=uac, uac_proc=uac_proc, uac_exit=uac_exit,
            uac_counts=read_counts(uac.stats_path),
            window=window, target=target,
            uas_counts=read_counts(uas.stats_path), uas_proc=uas_proc, uas_exit=uas_exit,
        )  # fmt: skip


class OptionsPing(Scenario):
    name = "options"
    title = "OPTIONS/s answered by the proxy itself, sipp UAC → proxy over UDP"
    unit = "requests/s"
    messages_per_call = 1  # the OPTIONS
    rates_full = (1000, 2000, 4000, 6000, 8000, 16000, 32000)
    rates_quick = (1000, 4000, 16000)
    duration_full_s = 1.0
    duration_quick_s = 1.0
    sustain_full_s = 10.0
    sustain_quick_s = 0.0

    def plan(self, quick: bool, duration_s: float | None = None, hold_ms: int = 100) -> Plan:
        """No call hold: an OPTIONS is over with its answer."""
        return replace(super().plan(quick, duration_s, hold_ms), hold_ms=0)

    def run_step(self, target: Target, workdir: Path, rate: int, plan: Plan) -> StepFigures:
        uac = SippCommand(
            scenario="options_uac",
            workdir=workdir / f"step-{rate:05d}",
            remote=target.remote,
            local_port=target.uac_port,
            service="ping",
            calls=plan.requested(rate),
            rate=rate,
            limit=plan.limit(rate),
            timeout_s=plan.step_timeout_s(),
            recv_timeout_ms=plan.recv_timeout_ms,
            rtt=True,
            keys={"domain": target.remote, "caller": "bench"},
            transport=UAC_TRANSPORT,
        )
        uac_proc, uac_exit, window = _measure_uac(target, uac, plan, "sipp-options")
        return _figures(
            rate=rate, plan=plan, messages_per_call=self.messages_per_call,
            uac=uac, uac_proc=uac_proc, uac_exit=uac_exit,
            uac_counts=read_counts(uac.stats_path),
            window=window, target=target,
        )  # fmt: skip


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (ProxiedCalls(), OptionsPing())}
