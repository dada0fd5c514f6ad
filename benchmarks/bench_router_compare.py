"""Issue 4's router comparison (simulated): every router, the refresh-interval sweep, LMetric's variants and
the linear-combination grid, on the `prefix` scenario's setting (8 x Llama-3.1-8B on H100, 85% load).

    python benchmarks/bench_router_compare.py --part table sweep grid variants --seed 0 --jobs 2

Load is a fraction of the capacity measured by a saturation run (all requests at once, round-robin), as
`llmsched compare` does. Defaults are chosen on `--tune-seed` (variants; for the trace, on `--tune-window`) and
reported on `--seed` (`--trace-window`): never the same data. Prints one table per part and writes every result to `--out` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from llmsched.bench.plan import capacity_of, saturation_config
from llmsched.policies.instance import ROUTERS
from llmsched.sim.config import SimConfig
from llmsched.sim.run import load_requests, simulate
from llmsched.workload.spec import WorkloadSpec

TRACES = Path(os.environ.get("LLMSCHED_TRACES", Path(__file__).resolve().parents[1] / ".." / "shared" / "traces"))
MOONCAKE = TRACES / "mooncake" / "conversation_trace.jsonl"
INTERVALS = [0.0, 0.05, 0.2, 1.0]
SWEPT = ["lmetric", "llmd-weighted", "sglang-cache-aware"]
GRID = [0, 16, 64, 256, 1024, 4096, 16384, 65536, None]  # w_batch / w_prefill; None = batch only


def workloads(n_synth: int, window: tuple[float, float]) -> dict[str, WorkloadSpec]:
    out = {"prefix-heavy": WorkloadSpec(kind="synthetic", name="prefix-heavy", num_requests=n_synth)}
    if MOONCAKE.exists():
        out["mooncake"] = WorkloadSpec(kind="trace", name="mooncake", path=str(MOONCAKE), window=window)
    else:
        print(f"note: {MOONCAKE} not found: the Mooncake workload is skipped (set LLMSCHED_TRACES)")
    return out


def base(wl: WorkloadSpec, seed: int) -> SimConfig:
    return SimConfig(workload=wl, model="llama-3.1-8b", gpu="h100", instances=8, seed=seed)


def loaded(wl: WorkloadSpec, seed: int, load: float) -> WorkloadSpec:
    """The workload at `load` x capacity (capacity from a round-robin saturation run on the same seed)."""
    cfg = base(wl, seed)
    cap = capacity_of(simulate(saturation_config(cfg)))
    if wl.kind == "synthetic":
        return wl.model_copy(update={"rate": load * cap})
    reqs = load_requests(cfg)
    native = (len(reqs) - 1) / (reqs[-1].arrival - reqs[0].arrival)
    return wl.model_copy(update={"rate_scale": load * cap / native})


def one(job: tuple[str, str, SimConfig]) -> tuple[str, str, dict[str, Any]]:
    wl, label, cfg = job
    r = simulate(cfg)
    keep = {k: r[k] for k in ("completed", "rejected", "wall_s", "output_throughput_tok_s", "ttft_s", "tpot_s",
                              "prefix_hit_rate", "preemptions", "routing_decisions")}
    return wl, label, keep


def row(label: str, r: dict[str, Any], ref: dict[str, Any] | None) -> str:
    ttft, tpot = r["ttft_s"], r["tpot_s"]
    rel = f"{ttft['mean'] / ref['ttft_s']['mean']:6.2f}x" if ref else "       "
    return (f"  {label:34s} {ttft['mean'] * 1e3:9.1f} {rel} {ttft['p99'] * 1e3:9.1f} {tpot['mean'] * 1e3:7.2f} "
            f"{r['output_throughput_tok_s']:9.0f} {r['prefix_hit_rate'] * 100:6.1f} {r['preemptions']:6d}")


HEADER = (f"  {'router':34s} {'TTFT ms':>9s} {'vs rr':>7s} {'p99 ms':>9s} {'TPOT ms':>7s} {'out tok/s':>9s} "
          f"{'hit %':>6s} {'preem':>6s}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", nargs="+", default=["table", "sweep", "grid"],
                    choices=["table", "sweep", "grid", "variants"])
    ap.add_argument("--seed", type=int, default=0, help="reported seed")
    ap.add_argument("--tune-seed", type=int, default=1, help="seed of the variant selection")
    ap.add_argument("--load", type=float, default=0.85)
    ap.add_argument("--synthetic-requests", type=int, default=4000)
    ap.add_argument("--trace-window", type=float, nargs=2, default=(0.0, 1200.0),
                    help="reported part of the trace, seconds (the trace spans ~3540 s)")
    ap.add_argument("--tune-window", type=float, nargs=2, default=(1800.0, 3000.0),
                    help="part of the trace the variants are chosen on (a trace has no seed: use other data)")
    ap.add_argument("--workloads", nargs="+", default=None)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", type=Path, default=Path("router_compare.json"))
    args = ap.parse_args()
    t0 = time.time()
    wls = workloads(args.synthetic_requests, tuple(args.trace_window))
    if args.workloads:
        wls = {k: v for k, v in wls.items() if k in args.workloads}
    jobs: list[tuple[str, str, SimConfig]] = []
    parts: dict[str, list[str]] = {}
    for name, wl in wls.items():
        seeds = {args.seed} | ({args.tune_seed} if "variants" in args.part else set())
        lw = {}
        for s in seeds:
            w = wl if s == args.seed or wl.kind == "synthetic" else wl.model_copy(update={"window": tuple(args.tune_window)})
            lw[s] = loaded(w, s, args.load)

        def add(part: str, label: str, seed: int = args.seed, _n: str = name, _lw: dict = lw, **kw: Any) -> None:
            jobs.append((_n, f"{part}|{label}", base(_lw[seed], seed).model_copy(update=kw)))
            parts.setdefault(part, []).append(label)

        if "table" in args.part:
            for router in ROUTERS.names():
                add("table", router, router=router)
        if "sweep" in args.part:
            for router in SWEPT:
                for iv in INTERVALS:
                    add("sweep", f"{router} @ {iv:g} s", router=router, metrics_interval_s=iv)
        if "grid" in args.part:
            for ratio in GRID:
                params = {"w_prefill": 0.0, "w_batch": 1.0} if ratio is None else {"w_batch": float(ratio)}
                add("grid", f"linear w_batch/w_prefill={ratio if ratio is not None else 'inf'}",
                    router="linear", router_params=params)
            add("grid", "lmetric (default)", router="lmetric")
        if "variants" in args.part:
            for prefill in ("request", "request+pending"):
                for batch in ("running", "queue", "in-flight"):
                    for guards in (True, False):
                        add("variants", f"P={prefill} B={batch} guards={guards}", seed=args.tune_seed,
                            router="lmetric", router_params={"prefill": prefill, "batch": batch, "guards": guards})
    print(f"{len(jobs)} simulations on {args.jobs} processes (capacity runs took {time.time() - t0:.0f} s)")
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with ProcessPoolExecutor(args.jobs) as pool:
        for wl, label, r in pool.map(one, jobs):
            results.setdefault(wl, {})[label] = r
    for wl, res in results.items():
        ref = res.get("table|round-robin")
        for part in args.part:
            labels = [k for k in res if k.startswith(part + "|")]
            if not labels:
                continue
            seed = args.tune_seed if part == "variants" else args.seed
            print(f"\n{wl} / {part} (seed {seed}, load {args.load:g})")
            print(HEADER)
            for k in labels:
                print(row(k.split("|", 1)[1], res[k], ref if part == "table" else None))
            if part == "table":
                lm = res[f"{part}|lmetric"]
                for other in ("round-robin", "llmd-weighted"):
                    o = res.get(f"{part}|{other}")
                    if o:
                        print(f"  lmetric / {other} mean TTFT = {lm['ttft_s']['mean'] / o['ttft_s']['mean']:.3f}")
                best_tpot = min(v["tpot_s"]["mean"] for k, v in res.items() if k.startswith("table|")
                                and not k.endswith("|lmetric"))
                print(f"  lmetric TPOT / best baseline TPOT = {lm['tpot_s']['mean'] / best_tpot:.3f}")
                print(f"  lmetric decisions: {lm['routing_decisions']}")
            if part == "grid":
                grid = {k: v for k, v in res.items() if k.startswith("grid|linear")}
                bk = min(grid, key=lambda k: grid[k]["ttft_s"]["mean"])
                lm = res["grid|lmetric (default)"]
                print(f"  best grid point: {bk.split('|', 1)[1]}; lmetric mean TTFT / best = "
                      f"{lm['ttft_s']['mean'] / grid[bk]['ttft_s']['mean']:.3f}")
    args.out.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {args.out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
