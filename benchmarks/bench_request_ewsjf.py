"""EWSJF's periodic work: one Refine-and-Prune over a 10,000-length window (issue 3 target: < 20 ms), one full
re-partition of a policy holding 10,000 queued requests (Refine-and-Prune + moving every request), and one
meta-optimisation step (closing a window: objective, Optuna tell, ask). Medians of several repeats; the
partition is also compared with a plain `np.sort` of the same window, measured in the same run.

    python benchmarks/bench_request_ewsjf.py [--window 10000] [--repeats 15]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from llmsched.core.types import Request
from llmsched.policies.request.ewsjf import EWSJF
from llmsched.policies.request.ewsjf_partition import refine_and_prune
from llmsched.policies.request.ewsjf_tuner import MetaOptimizer


def window(n: int, rng: np.random.Generator) -> np.ndarray:
    """Three length modes plus a heavy tail, the kind of mix the partition exists for."""
    parts = [
        rng.lognormal(np.log(m), s, int(n * f))
        for m, s, f in ((120, 0.4, 0.5), (900, 0.3, 0.3), (5000, 0.3, 0.2))
    ]
    return np.concatenate(parts).round().clip(1)[:n]


def timed(fn, repeats: int) -> float:  # noqa: ANN001
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e3  # ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=15)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    x = window(a.window, rng)

    sort_ms = timed(lambda: np.sort(x), a.repeats)
    for alpha in (0.5, 1.5, 3.0):
        ms = timed(lambda alpha=alpha: refine_and_prune(x, alpha=alpha, max_queues=8), a.repeats)
        k = len(refine_and_prune(x, alpha=alpha, max_queues=8))
        print(
            f"refine_and_prune window={a.window:,} alpha={alpha}: {ms:.2f} ms median ({k} queues; {ms / sort_ms:.1f}x np.sort)"
        )

    pol = EWSJF(meta_optimize=False, window=a.window, repartition_every=10**9, min_samples=10**9)
    for i, n in enumerate(x):
        pol.push(Request(rid=i, arrival=i * 1e-3, prompt_len=int(n), output_len=1), i * 1e-3)
    ms = timed(pol.repartition, a.repeats)
    print(f"re-partition of a policy with {len(pol):,} queued: {ms:.2f} ms median")

    start = {"a_u": 0.002, "b_u": 1.0, "a_f": 0.0, "b_f": 0.5, "alpha": 1.5}
    for trials in (10, 30):
        tuner = MetaOptimizer(start, seed=0, window=2, max_trials=10**6, warmup_windows=0)
        steps = []
        t = 0.0
        for k in range(trials):
            tuner.record_arrival(t)
            t += 1.0
            tuner.record(float(rng.exponential(2.0)), t)
            c = time.perf_counter()
            tuner.record(float(rng.exponential(2.0)), t)  # closes the window: tell + ask
            steps.append(time.perf_counter() - c)
            del k
        print(
            f"meta-optimisation step (tell + ask, TPE) after {trials} trials: {np.median(steps[-5:]) * 1e3:.2f} ms median of the last 5"
        )


if __name__ == "__main__":
    main()
