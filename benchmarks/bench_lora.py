"""Adapter-aware vs adapter-blind routing on a workload with many LoRA adapters (simulated).

    python benchmarks/bench_lora.py [--seeds 3] [--rate 24] [--adapters 16] [--max-loras 2] [--instances 4]

Every router sees the same requests per seed: the `chat` generator with `--adapters` adapters of Zipf
popularity (`--popularity`), on `--instances` simulated instances of `--model` on `--gpu`, each serving
`--max-loras` adapters at a time (vLLM's --max-loras; engine/lora.py models the skip rule and the load cost).
Figures are medians over the seeds; each ratio is against round-robin measured in the same run. The load
average of the machine is printed with the table (the figures are simulated times, not wall times, so it does
not change them; it says how long the run took to compute). The last row is the same requests on the base
model alone (no adapter named), round robin: what the adapters cost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from llmsched.sim.config import SimConfig
from llmsched.sim.run import build_cluster, load_requests, report

ROUTERS = ("round-robin", "least-requests", "lmetric", "lora-affinity")


def run_one(args: argparse.Namespace, router: str, seed: int, adapters: int | None = None) -> dict[str, Any]:
    cfg = SimConfig.model_validate(
        {
            "workload": {
                "name": "chat",
                "rate": args.rate,
                "num_requests": args.requests,
                "params": {"adapters": args.adapters if adapters is None else adapters,
                           "adapter_popularity": args.popularity},
            },
            "model": args.model,
            "gpu": args.gpu,
            "instances": args.instances,
            "router": router,
            "router_params": args.affinity if router == "lora-affinity" else {},
            "engine": {"lora": {"max_loras": args.max_loras, "lora_rank": args.rank}},
            "seed": seed,
        }
    )
    reqs = load_requests(cfg)
    cluster = build_cluster(cfg)
    t0 = time.perf_counter()
    cluster.run(reqs)
    res = report(cfg, cluster, reqs, time.perf_counter() - t0, 0.0, False)
    slots = [e.lora for e in cluster.engines if e.lora is not None]
    return {
        "ttft_p50": res["ttft_s"]["p50"],
        "ttft_p99": res["ttft_s"]["p99"],
        "e2e_mean": res["e2e_s"]["mean"],
        "rps": res["request_throughput_rps"],
        "loads": sum(s.stats.loads for s in slots),
        "load_s": sum(s.stats.load_s for s in slots),
        "skipped": sum(s.stats.skipped for s in slots),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    ap.add_argument("--rate", type=float, default=24.0, help="mean arrivals per second")
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--adapters", type=int, default=16)
    ap.add_argument("--popularity", type=float, default=1.0, help="Zipf exponent over adapters")
    ap.add_argument("--max-loras", type=int, default=2)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--instances", type=int, default=4)
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--gpu", default="h100")
    ap.add_argument("--routers", default=",".join(ROUTERS))
    ap.add_argument("--affinity", nargs="*", default=[], metavar="K=V",
                    help="lora-affinity parameters, e.g. tolerance=0.5 slack=4")
    args = ap.parse_args()
    args.affinity = {k: float(v) for k, v in (kv.split("=", 1) for kv in args.affinity)}
    routers = args.routers.split(",")
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    if "round-robin" not in routers:
        routers.insert(0, "round-robin")
    rows: dict[str, dict[str, float]] = {}
    for r in routers:
        runs = [run_one(args, r, seed) for seed in seeds]
        rows[r] = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
    # Reference: the same requests on the base model alone (no adapter), round robin.
    runs = [run_one(args, "round-robin", seed, adapters=0) for seed in seeds]
    rows["round-robin, no adapters"] = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
    base = rows["round-robin"]
    print(
        f"simulated: {args.model} on {args.gpu}, {args.instances} instances, max_loras {args.max_loras}, rank"
        f" {args.rank}; chat workload, {args.adapters} adapters (Zipf {args.popularity}), {args.rate} req/s,"
        f" {args.requests} requests; median of seeds {args.first_seed}..{seeds[-1]}; ratios vs round-robin (same run);"
        f" lora-affinity params {args.affinity or 'default'}"
    )
    head = ("router", "TTFT p50 s", "TTFT p99 s", "E2E mean s", "req/s", "loads", "load s", "skips", "p99 ratio",
            "E2E ratio")
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    for r, m in rows.items():
        print(
            f"{r} | {m['ttft_p50']:.3f} | {m['ttft_p99']:.2f} | {m['e2e_mean']:.2f} | {m['rps']:.2f} |"
            f" {m['loads']:.0f} | {m['load_s']:.1f} | {m['skipped']:.0f} | {m['ttft_p99'] / base['ttft_p99']:.2f} |"
            f" {m['e2e_mean'] / base['e2e_mean']:.2f}"
        )
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
