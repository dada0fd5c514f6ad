"""Cost of the cost model on the simulator's hot path.

    python benchmarks/bench_cost_model.py

Prints the median (over repeats) time per `step_time` call (memoised token/sequence parts, the steady state of
a simulation), per first call at a new token count (memo miss), and per `decode_run(k=1000)` call against the
baseline of 1000 `step_time` calls it replaces, measured in the same run.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time

from llmsched.model import BatchStats, build_cost_model

REPEATS = 7


def per_call(fn, number: int) -> float:
    """Median over REPEATS of the seconds per call of fn()."""
    samples = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - t0) / number)
    return statistics.median(samples)


def main() -> None:
    print(f"load average {os.getloadavg()}")
    mixed = BatchStats(prefill_tokens=512, prefill_pairs=512 * 3000.0, prefill_seqs=1, decode_tokens=63,
                       kv_tokens=63 * 1500)
    decode = BatchStats(decode_tokens=64, kv_tokens=64 * 1500)
    print(f"{'model':28s} {'step_time':>10s} {'miss':>9s} {'decode_run(1000)':>17s} {'1000 x step':>12s} {'ratio':>6s}")
    for model, gpu in (("llama-3.1-8b", "h100"), ("llama-2-70b", "a100-80g"), ("qwen3-30b-a3b", "a100-80g"),
                       ("deepseek-v3-like", "h100")):
        m = build_cost_model(model, gpu)
        m.step_time(mixed, 0.0)
        hit = per_call(lambda m=m: m.step_time(mixed, 0.0), 100_000)
        counter = iter(range(10_000_000))

        def miss(m=m, counter=counter) -> float:
            return m.step_time(dataclasses.replace(mixed, prefill_tokens=100_000 + next(counter)), 0.0)

        miss_t = per_call(miss, 500)
        run = per_call(lambda m=m: m.decode_run(decode, 1000, 0.0), 500)
        steps = [dataclasses.replace(decode, kv_tokens=decode.kv_tokens + i * 64) for i in range(1000)]
        loop = per_call(lambda m=m, steps=steps: [m.step_time(s, 0.0) for s in steps], 20)
        print(f"{model + '/' + gpu:28s} {hit * 1e6:8.2f}us {miss_t * 1e6:7.1f}us {run * 1e6:15.1f}us "
              f"{loop * 1e6:10.1f}us {loop / run:5.1f}x")


if __name__ == "__main__":
    main()
    print(f"load average {os.getloadavg()}")
