"""Simulator speed: simulated requests per wall-second.

1. The Azure 2023 conversation trace (19,366 requests) on 4 x llama-3.1-8b / h100, fcfs + round-robin.
2. N synthetic `chat` requests (default 1,000,000) over 16 instances.
3. Baseline in the same run: the same simulator stepping token by token (decode runs off) on the first
   3,000 Azure requests, against decode runs on; the ratio is the fast-forward's speed-up.

Figures are wall-clock on this machine (median of --repeat runs). Usage:
    python benchmarks/bench_sim.py [--traces DIR] [--chat N] [--chat-rate R] [--repeat K]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from llmsched.sim.config import SimConfig
from llmsched.sim.run import build_cluster, load_requests, simulate
from llmsched.workload.spec import WorkloadSpec


def timed(cfg: SimConfig, repeat: int) -> tuple[float, dict]:
    walls = []
    res: dict = {}
    for _ in range(repeat):
        res = simulate(cfg)
        walls.append(res["wall_s"])
    return statistics.median(walls), res


def stepping(cfg: SimConfig, max_run: int, repeat: int) -> float:
    walls = []
    for _ in range(repeat):
        reqs = load_requests(cfg)
        cluster = build_cluster(cfg)
        cluster.max_run = max_run
        t0 = time.perf_counter()
        cluster.run(reqs)
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--traces", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "traces"))
    ap.add_argument("--chat", type=int, default=1_000_000)
    ap.add_argument("--chat-rate", type=float, default=240.0, help="arrivals/s over the 16 instances")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    azure = Path(a.traces) / "azure-2023" / "AzureLLMInferenceTrace_conv.csv"
    print("simulated: llama-3.1-8b on h100 (tp 1), fcfs + round-robin; wall-clock figures of this machine")
    if azure.exists():
        cfg = SimConfig(workload=WorkloadSpec(kind="trace", name="azure", path=str(azure)), instances=4)
        wall, res = timed(cfg, a.repeat)
        print(f"azure conv, 4 instances: {res['completed']}/{res['submitted']} completed, median wall {wall:.2f} s"
              f" -> {res['submitted'] / wall:,.0f} simulated requests per wall-second"
              f" (simulated {res['sim_duration_s']:.0f} s; mean TTFT {res['ttft_s']['mean'] * 1e3:.1f} ms)")
        sub = cfg.model_copy(update={"workload": cfg.workload.model_copy(update={"limit": 3000})})
        slow = stepping(sub, 1, a.repeat)
        fast = stepping(sub, 4096, a.repeat)
        print(f"baseline, first 3,000 azure requests: token-by-token {slow:.2f} s, decode runs {fast:.2f} s"
              f" -> fast-forward speed-up x{slow / fast:.1f}")
    else:
        print(f"azure trace not found under {a.traces}: skipped")
    cfg = SimConfig(workload=WorkloadSpec(kind="synthetic", name="chat", num_requests=a.chat, rate=a.chat_rate),
                    instances=16)
    wall, res = timed(cfg, 1 if a.chat >= 500_000 else a.repeat)
    util = statistics.mean(p["utilisation"] for p in res["per_instance"])
    print(f"chat x {a.chat:,}, 16 instances at {a.chat_rate:g} req/s: {res['completed']:,} completed, wall"
          f" {wall:.1f} s (+ {res['workload_wall_s']:.1f} s generating) -> {res['submitted'] / wall:,.0f} simulated requests"
          f" per wall-second (mean utilisation {util:.0%}, mean TTFT {res['ttft_s']['mean'] * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
