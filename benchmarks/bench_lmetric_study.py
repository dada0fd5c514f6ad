"""Where LMetric wins, and why (simulated): lmetric's mean / p99 TTFT over round robin's and llmd-weighted's
as a function of KV capacity per instance, offered load and instance count (one factor at a time around a
base point), on the Mooncake conversation trace and the prefix-heavy synthetic; writes a PNG.

    python benchmarks/bench_lmetric_study.py --quick            # ~minutes on 2 cores
    python benchmarks/bench_lmetric_study.py --png study.png    # the full sweep
"""

from __future__ import annotations

import argparse
import json
import os
import time

from llmsched.bench.lmetric_study import default_kv_tokens, mooncake_spec, plot_study, study
from llmsched.workload.spec import WorkloadSpec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests and smaller clusters")
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--gpu", default="h100")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--png", default="lmetric_study.png")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    n = a.requests or (500 if a.quick else 1500)
    instances = (2, 4, 8) if a.quick else (4, 8, 16)
    base_n = instances[1]
    kv = (65536, 131072, None)
    loads = (0.6, 0.85, 1.0, 1.1)
    workloads = {"mooncake": mooncake_spec(n),
                 "prefix-heavy": WorkloadSpec(kind="synthetic", name="prefix-heavy", num_requests=n)}
    t0 = time.perf_counter()
    rows = study(workloads, kv, loads, instances, (None, 0.85, base_n), a.model, a.gpu, a.seeds, a.workers)
    dflt = default_kv_tokens(a.model, a.gpu)
    print(f"simulated: {a.model} on {a.gpu}; {n} requests per run; seeds {a.seeds}; default KV {dflt:,} tokens "
          f"per instance; wall {time.perf_counter() - t0:.0f} s, load average {os.getloadavg()[0]:.1f}")
    print("| workload | varied | KV tokens | load | instances | lmetric TTFT mean / p99 (ms) | vs round-robin mean / p99 "
          "| vs llmd-weighted mean / p99 | hit rate lmetric / rr |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        lm, rr, ll = r["lmetric"], r["round-robin"], r["llmd-weighted"]
        print(f"| {r['workload']} | {r['factor']} | {r['kv_tokens'] or dflt:,} | {r['load']} | {r['instances']} | "
              f"{lm['ttft_mean'] * 1e3:.0f} / {lm['ttft_p99'] * 1e3:.0f} | "
              f"{lm['ttft_mean'] / rr['ttft_mean']:.2f} / {lm['ttft_p99'] / rr['ttft_p99']:.2f} | "
              f"{lm['ttft_mean'] / ll['ttft_mean']:.2f} / {lm['ttft_p99'] / ll['ttft_p99']:.2f} | "
              f"{lm['hit']:.2f} / {rr['hit']:.2f} |")
    print(f"plot: {plot_study(rows, a.png)}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
