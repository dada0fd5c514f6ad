"""Sweep throughput and executor equivalence: a >= 100-run sweep on the local pool, then on a local Ray.

    python benchmarks/bench_sweep.py [--scenario stack] [--num-requests 120] [--seeds 7] [--jobs 2] [--no-ray]

Prints the number of runs, wall seconds per executor (one repeat each: a sweep is minutes long), runs per
wall-minute, the Ray / pool time ratio, and whether both executors gave identical results (wall-clock
fields aside). Every run is simulated; nothing here needs a GPU.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from llmsched.bench.executors import Executor, LocalPool, RayPool
from llmsched.bench.runlog import RunLog
from llmsched.bench.sweep import SweepPlan, comparable, load_sweep, plan_sweep, run_sweep
from llmsched.bench.sweep_report import write_sweep_report


def timed(plan: SweepPlan, executor: Executor, log: Path) -> tuple[float, list[dict]]:
    console = Console(stderr=True)
    t0 = time.perf_counter()
    with executor, Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=console, transient=True) as progress:
        records = run_sweep(plan, RunLog(log).load(), executor, progress=progress)
    return time.perf_counter() - t0, records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="stack")
    ap.add_argument("--num-requests", type=int, default=120)
    ap.add_argument("--seeds", type=int, default=7)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="keep the sweep logs here (default: a temp folder)")
    args = ap.parse_args()

    out = args.out or Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    out.mkdir(parents=True, exist_ok=True)
    sweep = out / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"name": f"bench-{args.scenario}", "scenarios": [args.scenario],
                                     "seeds": args.seeds, "num_requests": args.num_requests}))
    plan = plan_sweep(*load_sweep(sweep))
    print(f"sweep: scenario {args.scenario}, {args.num_requests} requests a run, {args.seeds} seeds -> "
          f"{len(plan.cells)} runs + {len(plan.caps)} saturation run(s) (simulated)")

    t_pool, pooled = timed(plan, LocalPool(args.jobs), out / "pool.jsonl")
    print(f"local pool ({args.jobs} workers): {t_pool:.1f} s wall, {60 * len(pooled) / t_pool:.1f} runs/min")
    sim_wall = sum(r["result"].get("wall_s", 0.0) for r in pooled)
    print(f"  sum of per-run simulator wall time: {sim_wall:.1f} s "
          f"(pool efficiency {sim_wall / (args.jobs * t_pool):.0%} of {args.jobs} workers)")
    spec, scenarios = load_sweep(sweep)
    files = write_sweep_report(out / "report", spec.name, pooled, scenarios, plan.skipped, f"pool of {args.jobs}")
    print(f"  report: {files[0]}")
    if args.no_ray:
        return
    t_ray, rayed = timed(plan, RayPool("local"), out / "ray.jsonl")
    same = comparable(pooled) == comparable(rayed)
    print(f"local Ray (ray.init()): {t_ray:.1f} s wall, {60 * len(rayed) / t_ray:.1f} runs/min; "
          f"ratio ray/pool {t_ray / t_pool:.2f}")
    print(f"identical results (wall-clock fields aside): {same}")
    print(f"logs: {out}")


if __name__ == "__main__":
    main()
