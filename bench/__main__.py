"""``python -m bench [--quick] [--scenario NAME] [--out bench/results]``: see bench/README.md."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from . import cluster, fanout, goals, latency, recognition, report, soak
from .process import stop_all
from .runner import TARGETS, RunOptions, run_scenario, utc_now, workroot
from .scenarios import SCENARIOS

# The scenarios of fixed work: each measures what it set out to (a full run all of it,
# past its share if need be, and says by how much; --quick skips a part that does not fit).
FIXED: dict[str, Callable[[bool, float, Path], dict[str, Any]]] = {
    latency.NAME: latency.run,
    fanout.NAME: fanout.run,
    recognition.NAME: recognition.run,
    cluster.NAME: cluster.run,
}
# Every scenario, in the order "all" runs them: the step searches, then fixed work.
ALL = (*SCENARIOS, *FIXED)
# Share of the run's time budget per scenario: its weight over the weights of itself and
# the scenarios after it, times the time left (what earlier scenarios leave unused goes
# to the later ones). The weights are the seconds each takes in a full run (x 1000).
# Full run, four implementations (sipgw, sipgw-2w, kamailio-1w, kamailio-2w), 3
# repetitions (measured on the 2-core bench machine):
# - proxied-calls ~600 s: per repetition sipgw ~20-30 s (its steps to 600 or 800/s,
#   unclean, and the ~13 s drain of the requests an overload left pending), sipgw-2w
#   ~40 s (to 2000/s, the drain), each Kamailio ~25-35 s (the ladder to 8000/s); then
#   the four sustained checks of 34 s, ~40-57 s each with start and stop;
# - options ~230 s: ~50 s per repetition (1 s steps), the four 10 s sustained checks;
#   the uvloop floor (bench/floor.py) adds one search of the whole ladder, ~16 s;
# - invite-event-latency 30-40 s before goal 4's steps (300 calls/s, and 1000 with a
#   2-worker gateway of its own: ~45-60 s, estimated), fan-out 55-70 s, recognition
#   160-260 s (measured whole even past its share: its report says by how much);
# - redis-cluster ~60 s (58 s measured alone): four setups (one Redis and the 6-node
#   cluster, 1 and 2 gateway nodes), each a few seconds to start (the cluster 4-6 s more)
#   and two steps of 4 s and 3 s.
# 18.5-21 min in all. (With three implementations the steps were 4 s and 2 s long, the
# sustained checks 40 s and 20 s, and the ladders longer: see bench/README.md.)
# --quick: the fixed-work scenarios have no weight: the step searches (1 repetition,
# short ladders, sipgw's 8 s sustained check) take ~125 s of the 165 and leave the rest,
# in which the others run in order (latency ~10 s, fan-out ~14 s, recognition ~35 s); a
# part that does not fit in what is left is skipped, so the run stays within budget.
SHARES = {
    "proxied-calls": 0.600,
    "options": 0.256,  # with the uvloop floor: one search of the ladder, ~16 s
    latency.NAME: 0.050,  # with goal 4's 300/s step and a 2-worker gateway: ~45-60 s
    fanout.NAME: 0.060,
    recognition.NAME: 0.199,
    cluster.NAME: 0.060,
}
SHARES_QUICK = {
    "proxied-calls": 0.7,
    "options": 0.3,
    latency.NAME: 0.0,
    fanout.NAME: 0.0,
    recognition.NAME: 0.0,
    cluster.NAME: 0.0,
}
BUDGET_QUICK_S = 165.0  # stays under 3 minutes with start-up and the report
BUDGET_FULL_S = 1225.0  # stays under 21 minutes with start-up and the report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument(
        "--quick", action="store_true", help="fewer, shorter steps, 1 repetition (under 3 minutes)"
    )
    p.add_argument(
        "--scenario",
        choices=[*ALL, soak.NAME, "all"],
        default="all",
        help="which scenario to run (default: all; soak runs only when named)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).with_name("results"),
        help="directory for the JSON, Markdown and PNG results",
    )
    p.add_argument(
        "--repetitions",
        type=int,
        default=None,
        help="step searches per implementation (default 3, --quick 1)",
    )
    p.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated subset of {','.join(TARGETS)}",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds of load per step (default: per scenario); soak: its length "
        f"(default {soak.DURATION_S:.0f}, --quick {soak.DURATION_QUICK_S:.0f})",
    )
    p.add_argument(
        "--max-clean-rate",
        type=int,
        default=None,
        help="soak: sipgw's max clean calls/s (default: measured by one proxied-calls search)",
    )
    p.add_argument(
        "--soak-result",
        type=Path,
        default=None,
        help="a soak JSON for the goals table's G6 (default: the newest in --out)",
    )
    p.add_argument("--hold-ms", type=int, default=100, help="call hold, sipp -d (default 100)")
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help=f"time budget in seconds (default {BUDGET_FULL_S:.0f}, --quick {BUDGET_QUICK_S:.0f})",
    )
    p.add_argument(
        "--keep-workdir",
        action="store_true",
        help="keep the per-step sipp and proxy logs (the path is printed)",
    )
    args = p.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        p.error(f"unknown targets {unknown}; choose from {', '.join(TARGETS)}")
    args.targets = targets
    if args.soak_result is not None and not args.soak_result.is_file():
        p.error(f"--soak-result: no such file {args.soak_result}")
    if args.max_clean_rate is not None and args.max_clean_rate <= 0:
        p.error("--max-clean-rate must be a positive number of calls/s")
    return args


def soak_result(args: argparse.Namespace, docs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The soak the goals table reads: this run's, the one given, or the newest saved in
    the results directory (its file named in the table); None: G6 is not measured."""
    ran = next((d for d in docs if d["scenario"] == soak.NAME), None)
    if ran is not None:
        return ran
    path = args.soak_result or max(args.out.glob(f"*-{soak.NAME}.json"), default=None)
    if path is None:
        return None
    try:
        doc: dict[str, Any] = report.summarize(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError) as err:
        print(f"soak result {path} unreadable: {err}", file=sys.stderr)
        return None
    doc["summary"]["source"] = path.name
    return doc


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM (e.g. from a CI timeout) unwinds like Ctrl-C, so every finally block runs
    # and every proxy and sipp is stopped.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    scenarios = list(ALL) if args.scenario == "all" else [args.scenario]
    budget = args.budget or (BUDGET_QUICK_S if args.quick else BUDGET_FULL_S)
    opts = RunOptions(
        quick=args.quick,
        repetitions=args.repetitions or (1 if args.quick else 3),
        scenarios=scenarios,
        targets=args.targets,
        budget_s=budget,
        step_duration_s=args.duration,
        hold_ms=args.hold_ms,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = utc_now().strftime("%Y%m%dT%H%M%SZ")
    t0 = time.monotonic()
    docs = []
    images: dict[str, list[Path]] = {}
    try:
        with workroot(args.keep_workdir) as root:
            shares = SHARES_QUICK if args.quick else SHARES
            total_share = sum(shares.get(s, 0.3) for s in scenarios)
            for name in scenarios:
                # What earlier scenarios left unused goes to the later ones; the last
                # (or one alone, whatever its weight) gets all that is left.
                left = budget - (time.monotonic() - t0)
                weight = shares.get(name, 0.3)
                share = weight / total_share if total_share > 1e-9 else 1.0
                total_share -= weight
                if name == soak.NAME:
                    doc = soak.run(args.quick, left * share, root, duration_s=args.duration,
                                   max_clean_rate=args.max_clean_rate)  # fmt: skip
                elif name in FIXED:
                    doc = FIXED[name](args.quick, left * share, root)
                else:
                    doc = run_scenario(SCENARIOS[name], opts, left * share, root)
                doc["command_line"] = [sys.executable, "-m", "bench", *(argv or sys.argv[1:])]
                report.summarize(doc)
                json_path = args.out / f"{stamp}-{name}.json"
                json_path.write_text(json.dumps(doc, indent=1) + "\n")
                images[name] = report.plot(doc, args.out / f"{stamp}-{name}")
                docs.append(doc)
                print(report.headline_table(doc), flush=True)
                print(f"\n→ {json_path}\n", flush=True)
    except KeyboardInterrupt:
        print("interrupted: stopping every process started", file=sys.stderr)
        return 130
    finally:
        stop_all()
        if docs:
            verdicts = goals.evaluate(docs, soak_result(args, docs))
            table = goals.table(verdicts)
            print(f"\n{table}\n", flush=True)
            (args.out / f"{stamp}-goals.json").write_text(
                json.dumps([v.to_json() for v in verdicts], indent=1) + "\n"
            )
            md = args.out / f"{stamp}-summary.md"
            md.write_text(report.markdown(docs, images, table))
            print(f"summary: {md}  (wall time {time.monotonic() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
