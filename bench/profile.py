"""Profile one implementation at one rate: the bench's own target and scenario, one
step under py-spy, and the flame graph and collapsed stacks kept beside the results.

    .venv/bin/python -m bench.profile --scenario proxied-calls --rate 800 --seconds 15
    .venv/bin/python -m bench.profile --scenario options --rate 16000 --target sipgw

Writes ``<out>/<stamp>-<scenario>-<target>-pyspy.svg`` (the flame graph),
``…-pyspy.txt`` (collapsed stacks, what the table below is read from) and prints the
step's CPU per call and the functions with the most samples, own and inclusive: the
profile behind each change of issue #12 is kept with its figures.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from . import flame
from .process import Managed
from .runner import utc_now
from .scenarios import SCENARIOS
from .sipgw import SipgwTarget
from .targets import Target

REPO = Path(__file__).resolve().parents[1]


def _target(label: str) -> Target:
    if label == "sipgw":
        return SipgwTarget()
    if label == "sipgw-2w":
        return SipgwTarget(workers=2)
    raise SystemExit(f"--target: sipgw or sipgw-2w, not {label!r}")


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed (pip install -e '.[bench]')")
    return found


def top_frames(collapsed: Path, count: int = 25) -> tuple[list[tuple[str, int]], ...]:
    """The frames with most samples of their own, and inclusive (a frame counted once
    per stack however often it recurs), from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack:
            continue
        n = int(samples)
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    return own.most_common(count), inclusive.most_common(count)


def _gc_pauses(target: Target) -> str:
    """The gateway's garbage-collector pauses so far (from its /metrics)."""
    url = getattr(target, "url", None)
    if url is None:
        return "GC pauses: not measured (no /metrics)"
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError as err:
        return f"GC pauses: /metrics unreadable ({err})"
    values: dict[str, float] = {}
    generations = []
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("sipgw_gc_collections_total{"):
            generation = name.split('"')[1]
            generations.append(f"{generation}: {float(value):.0f}")
        if name in ("sipgw_gc_pause_seconds_sum", "sipgw_gc_pause_seconds_count",
                    "sipgw_gc_pause_max_seconds", "sipgw_gc_pause_cpu_max_seconds"):  # fmt: skip
            values[name] = float(value)
    count = values.get("sipgw_gc_pause_seconds_count", 0.0)
    total = values.get("sipgw_gc_pause_seconds_sum", 0.0)
    longest = values.get("sipgw_gc_pause_max_seconds", 0.0)
    longest_cpu = values.get("sipgw_gc_pause_cpu_max_seconds", 0.0)
    return (
        f"GC pauses since start: {count:.0f} collections, {1000 * total:.1f} ms in all, "
        f"the longest {1000 * longest:.2f} ms ({1000 * longest_cpu:.2f} ms of CPU) "
        f"(by generation {', '.join(generations)})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="proxied-calls")
    parser.add_argument("--target", default="sipgw")
    parser.add_argument("--rate", type=int, default=800)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--no-profile", action="store_true", help="the figures alone")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()  # py-spy runs in the work directory

    scenario = SCENARIOS[args.scenario]
    plan = scenario.plan(quick=False, duration_s=args.seconds, hold_ms=100)
    target = _target(args.target)
    stamp = utc_now().strftime("%Y%m%dT%H%M%SZ")
    base = args.out / f"{stamp}-{scenario.name}-{target.label}-pyspy"
    with tempfile.TemporaryDirectory(prefix="sipgw-profile-") as tmp:
        workdir = Path(tmp)
        target.start(workdir)
        spy: Managed | None = None
        try:
            scenario.prepare(target, workdir, plan)
            if not args.no_profile:
                args.out.mkdir(parents=True, exist_ok=True)
                argv_spy = [_py_spy(), "record", "--pid", str(target.pid), "--rate", "250"]
                argv_spy += ["--format", "raw", "--output", str(base) + ".txt"]
                if args.target != "sipgw":
                    argv_spy.append("--subprocesses")
                spy = Managed("py-spy", argv_spy, cwd=workdir, log_path=Path(str(base) + ".log"))
                time.sleep(1.0)  # py-spy attaches before the load starts
            step = scenario.run_step(target, workdir, args.rate, plan)
            gc_line = _gc_pauses(target)
        finally:
            if spy is not None:
                # py-spy writes its file on SIGINT, not on SIGTERM.
                spy.stop(grace=10, sig=signal.SIGINT)
            target.stop()
    cpu = step.cpu_ms_per_call
    print(
        f"{target.label} {scenario.name} @ {args.rate}/s for {args.seconds:g} s: "
        f"{step.successful}/{step.attempted} ok, cpu {step.cpu_s:.2f} s = "
        f"{'-' if cpu is None else f'{1000 * cpu:.1f}'} µs per {scenario.unit.split('/')[0][:-1]}, "
        f"response p50/p99 {step.response_ms.get('p50')}/{step.response_ms.get('p99')} ms"
    )
    print(gc_line)
    collapsed = Path(str(base) + ".txt")
    if spy is None or not collapsed.exists():
        return 0
    Path(str(base) + ".svg").write_text(flame.render(collapsed.read_text(), title=collapsed.name))
    own, inclusive = top_frames(collapsed)
    total = sum(int(line.rpartition(" ")[2]) for line in collapsed.read_text().splitlines())
    print(f"\n{total} samples; own time:")
    for frame, n in own:
        print(f"  {100 * n / total:5.1f} %  {frame}")
    print("inclusive:")
    for frame, n in inclusive:
        print(f"  {100 * n / total:5.1f} %  {frame}")
    print(f"\nkept: {collapsed} and {base}.svg")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
