"""LMetric's failure detectors, ablated (simulated): for each, a workload where its condition occurs, lmetric
with every detector on against the same with that one off (median over seeds), and how often each fired.

    python benchmarks/bench_lmetric_detectors.py [--requests 1500] [--seeds 0 1 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import time

from llmsched.bench.lmetric_study import ablation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the rows here")
    a = ap.parse_args()
    t0 = time.perf_counter()
    rows = ablation(a.requests, a.seeds, a.workers)
    print(f"simulated; median over seeds {a.seeds}; TTFT/TPOT in ms; wall {time.perf_counter() - t0:.0f} s, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| detector | workload (model/GPU, instances, load) | fired (median) | mean TTFT on / off | p99 TTFT on / off "
          "| mean TPOT on / off | on/off per seed, median: mean / p99 TTFT | outcome changed |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        on, off = r["on"], r["off"]
        print(f"| {r['detector']} | {r['workload']} ({r['model']}, {r['instances']}, {r['load']}) | "
              f"{r['fired'][r['detector']]:.0f} of {r['decisions']:.0f} | "
              f"{on['ttft_mean'] * 1e3:.1f} / {off['ttft_mean'] * 1e3:.1f} | "
              f"{on['ttft_p99'] * 1e3:.0f} / {off['ttft_p99'] * 1e3:.0f} | "
              f"{on['tpot_mean'] * 1e3:.2f} / {off['tpot_mean'] * 1e3:.2f} | "
              f"{r['ratio']['ttft_mean']:.3f} / {r['ratio']['ttft_p99']:.3f} | {'yes' if r['changed'] else 'no'} |")
    print("\nmean TTFT per seed, on / off (ms):")
    for r in rows:
        print(f"  {r['detector']:14s}", ", ".join(f"{a:.1f} / {b:.1f}" for a, b in r["per_seed_mean_ms"]))
    print("\nfirings of every detector per workload (all on):")
    for r in rows:
        print(f"  {r['detector']:14s}", {k: int(v) for k, v in r["fired"].items()})
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
