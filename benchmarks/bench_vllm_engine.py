"""`--engine vllm` (vLLM's real scheduler) against `--engine llmsched` (our engine model) on built-in scenarios.

Each cell of a scenario (quick sizes by default) runs twice with the same config and offered rate (capacity
measured once, with our engine): once per engine. Prints both engines' metrics side by side, the largest
relative difference per metric, and the wall-time ratio (median over --repeat of each engine's total wall
time). Needs llmsched[vllm]. Usage:
    python benchmarks/bench_vllm_engine.py [--scenarios mixed prefix] [--policies fcfs round-robin ...] [--full]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from llmsched.bench.plan import capacity_of, expand, loaded_config
from llmsched.bench.runner import default_native_rate, run_sim
from llmsched.bench.scenario import load_scenario
from llmsched.bench.traces import resolve_traces
from llmsched.sim.run import simulate

METRICS = [
    ("ttft_s", "mean"),
    ("ttft_s", "p99"),
    ("tpot_s", "mean"),
    ("tpot_s", "p99"),
    ("e2e_s", "mean"),
    ("e2e_s", "p99"),
    ("output_throughput_tok_s", None),
    ("prefix_hit_rate", None),
    ("preemptions", None),
]


def value(res: dict, key: str, q: str | None) -> float:
    return float(res[key][q]) if q else float(res[key])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenarios", nargs="+", default=["mixed", "prefix"])
    ap.add_argument(
        "--policies",
        nargs="+",
        default=["fcfs", "round-robin", "least-kv", "prefix", "lmetric"],
        help="policy-set labels to keep (vLLM's own queues are fcfs and priority)",
    )
    ap.add_argument("--traces", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "traces"))
    ap.add_argument("--full", action="store_true", help="full sizes instead of the scenarios' quick ones")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    rows = []
    walls: dict[str, list[float]] = {"llmsched": [], "vllm": []}
    for name in args.scenarios:
        sc = load_scenario(name)
        if not args.full:
            sc = sc.with_quick()
        sc, skipped = resolve_traces(sc, Path(args.traces))
        for s in skipped:
            print(f"skipped {s}")
        cells, caps = expand(sc, policies=[p.label for p in sc.policies if p.label in args.policies])
        cap = {k: capacity_of(run_sim(None, c.model_dump(mode="json"), False)) for k, c in caps.items()}
        for cell in cells:
            c = cap.get(cell.cap_key) if cell.cap_key else None
            native = (
                default_native_rate(cell.config)
                if c is not None and cell.config.workload.kind == "trace"
                else None
            )
            cfg, _ = loaded_config(cell, c, native)
            res = {}
            for eng in ("llmsched", "vllm"):
                w = []
                for _ in range(args.repeat):
                    r = simulate(cfg.model_copy(update={"engine_kind": eng}))
                    w.append(r["wall_s"])
                res[eng] = r
                walls[eng].append(statistics.median(w))
            row = {
                "scenario": name,
                "workload": cell.workload,
                "policy": cell.label,
                "load": cell.load,
                "requests": res["llmsched"]["submitted"],
                "wall_s": {e: res[e]["wall_s"] for e in res},
            }
            for key, q in METRICS:
                a, b = value(res["llmsched"], key, q), value(res["vllm"], key, q)
                row[f"{key}:{q}" if q else key] = {
                    "llmsched": a,
                    "vllm": b,
                    "rel_diff": abs(a - b) / abs(a) if a else abs(b),
                }
            rows.append(row)
            print(json.dumps(row), flush=True)
    tot = {e: sum(v) for e, v in walls.items()}
    print(
        f"wall time: llmsched {tot['llmsched']:.2f} s, vllm {tot['vllm']:.2f} s, ratio vllm/llmsched"
        f" {tot['vllm'] / tot['llmsched']:.1f}x; load average {os.getloadavg()}; {time.strftime('%H:%M:%S')}"
    )
    worst = {}
    for row in rows:
        for k, v in row.items():
            if isinstance(v, dict) and "rel_diff" in v:
                worst[k] = max(worst.get(k, 0.0), v["rel_diff"])
    print("largest relative difference per metric:", json.dumps(worst))
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "walls": tot, "worst": worst}, indent=1))


if __name__ == "__main__":
    main()
