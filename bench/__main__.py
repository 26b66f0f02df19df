"""``python -m bench [--quick] [--scenario NAME] [--out bench/results]``: see bench/README.md."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from . import recognition, report
from .process import stop_all
from .runner import TARGETS, RunOptions, run_scenario, utc_now, workroot
from .scenarios import SCENARIOS

# Every scenario, in the order "all" runs them: recognition, fixed work, last.
ALL = (*SCENARIOS, recognition.NAME)
# Share of the run's time budget per scenario: its weight over the weights of itself and
# the scenarios after it, times the time left (what earlier scenarios leave unused goes
# to the later ones). The call scenario has the longer steps (the call hold, 6 messages
# per call) and matters most.
# Full run: recognition takes 200-260 s (the 1M-row syncs 150-210 s) and is measured whole
# even past its share (its report says by how much); the weights leave it ~240 s even if
# the step scenarios use all of theirs (calls ~600 s, options ~300 s: less than options
# needs, 292 s, for sipgw's first turn not to be skipped, and the calls search's
# Kamailio steps at 6000/s and up are cut short; they used ~695 s and ~273 s before).
# --quick: recognition takes ~35 s and has no weight: the step searches keep the whole
# budget they had before it existed (the calls search needs 113 s of its 165 s for
# sipgw's turn to reach 600/s) and usually leave ~60 s unused, in which it runs; a part
# of it that does not fit in what is left is skipped, so the run stays within budget.
SHARES = {"proxied-calls": 0.7, "options": 0.35, recognition.NAME: 0.28}
SHARES_QUICK = {"proxied-calls": 0.7, "options": 0.3, recognition.NAME: 0.0}
BUDGET_QUICK_S = 165.0  # stays under 3 minutes with start-up and the report
BUDGET_FULL_S = 1140.0  # stays under 20 minutes with start-up and the report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument(
        "--quick", action="store_true", help="fewer, shorter steps, 1 repetition (under 3 minutes)"
    )
    p.add_argument(
        "--scenario",
        choices=[*ALL, "all"],
        default="all",
        help="which scenario to run (default: all)",
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
        help="seconds of load per step (default: per scenario)",
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
    return args


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
                if name == recognition.NAME:
                    doc = recognition.run(args.quick, left * share, root)
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
            md = args.out / f"{stamp}-summary.md"
            md.write_text(report.markdown(docs, images))
            print(f"summary: {md}  (wall time {time.monotonic() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
