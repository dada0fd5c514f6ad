"""Per-step cost of the MoE part of the cost model (what the simulator pays per engine iteration).

For each preset and batch shape: the dense roofline model's `step_time` (baseline, memoised), the MoE
wrapper's `step_time`, and `decode_run` of 32 steps per step; median of `--repeats` batches of calls.

    python benchmarks/bench_moe_cost.py [--repeats 5] [--calls 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from llmsched.model.base import BatchStats
from llmsched.model.moe import build_moe_cost
from llmsched.model.roofline import build_cost_model


def per_call(fn, calls: int, repeats: int) -> float:  # noqa: ANN001
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(calls):
            fn(i)
        out.append((time.perf_counter() - t) / calls)
    return statistics.median(out)


def main() -> None:
    print(f"load average {os.getloadavg()}")
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--calls", type=int, default=200)
    a = ap.parse_args()
    shapes = {
        "decode 64": BatchStats(decode_tokens=64, kv_tokens=64 * 800, class_tokens={"chat": 64}),
        "decode 256": BatchStats(decode_tokens=256, kv_tokens=256 * 800, class_tokens={"chat": 200, "api": 56}),
        "mixed 8192": BatchStats(prefill_tokens=8000, prefill_seqs=4, prefill_pairs=8000 * 1500.0,
                                 decode_tokens=192, kv_tokens=192 * 800, class_tokens={"chat": 4192, "api": 4000}),
    }
    for model, gpu in (("qwen3-30b-a3b", "a100-80g"), ("deepseek-v3-like", "h100")):
        base = build_cost_model(model, gpu)
        for noise in ("gaussian", "multinomial"):
            for policy in ("static", "eplb-online"):
                moe = build_moe_cost(base, policy, {"routing": {"noise": noise}}, seed=0)
                for label, b in shapes.items():
                    t_base = per_call(lambda i, b=b, c=base: c.step_time(b, 0.01 * i), a.calls, a.repeats)
                    t_moe = per_call(lambda i, b=b, m=moe: m.step_time(b, 0.01 * i), a.calls, a.repeats)
                    line = (f"{model:17s} {noise:11s} {policy:11s} {label:10s} base {t_base * 1e6:7.1f} us  "
                            f"moe {t_moe * 1e6:7.1f} us  (x{t_moe / t_base:.0f})")
                    if b.prefill_tokens == 0:
                        t_run = per_call(lambda i, b=b, m=moe: m.decode_run(b, 32, 0.01 * i), max(1, a.calls // 8),
                                         a.repeats) / 32
                        line += f"  decode_run(32) {t_run * 1e6:6.1f} us/step"
                    print(line, flush=True)


if __name__ == "__main__":
    main()
    print(f"load average {os.getloadavg()}")
