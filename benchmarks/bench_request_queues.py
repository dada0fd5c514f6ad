"""Cost of one push + pop with 10,000 requests queued, for every request policy (issue 3 target: median < 10 us).

Each timed operation pushes a new request and pops one at a fresh `now` (so EWSJF scores its queue heads every
time: the worst case; pops at one `now` within a batch are cheaper), keeping the queue at 10,000. Prints the
median and p99 of single operations, the mean (which includes EWSJF's periodic Refine-and-Prune and re-queue
of all 10,000 requests, amortised), and the ratio of each median to FCFS's measured in the same run.

    python benchmarks/bench_request_queues.py [--queued 10000] [--ops 20000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from llmsched.core.types import Request
from llmsched.policies.request import REQUEST_POLICIES

POLICIES: list[tuple[str, str, dict[str, object]]] = [
    ("fcfs", "fcfs", {}),
    ("priority", "priority", {}),
    ("sjf", "sjf", {}),
    ("sjf-aging", "sjf-aging", {}),
    ("sjf+guard", "sjf", {"max_wait_s": 30.0}),
    ("ewsjf-static", "ewsjf", {"meta_optimize": False}),
    ("ewsjf", "ewsjf", {}),
    ("ewsjf+guard", "ewsjf", {"max_wait_s": 30.0}),
]


def requests(n: int, t0: float, rid0: int, rng: np.random.Generator) -> list[Request]:
    """The `mixed` shape: 80% prompts uniform[64, 512], 20% uniform[2048, 8192]; ~1000 arrivals/s."""
    is_long = rng.random(n) < 0.2
    size = np.where(is_long, rng.integers(2048, 8193, n), rng.integers(64, 513, n))
    prio = rng.integers(0, 3, n)
    return [
        Request(
            rid=rid0 + i,
            arrival=t0 + i * 1e-3,
            prompt_len=int(size[i]),
            output_len=100,
            priority=int(prio[i]),
        )
        for i in range(n)
    ]


def run(name: str, params: dict[str, object], queued: int, ops: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pol = REQUEST_POLICIES.create(name, params)
    for r in requests(queued, 0.0, 0, rng):
        pol.push(r, r.arrival)
    new = requests(ops, queued * 1e-3, queued, rng)
    out = np.empty(ops)
    clock = time.perf_counter_ns
    for i, r in enumerate(new):
        now = r.arrival
        t = clock()
        pol.push(r, now)
        pol.pop(now)
        out[i] = clock() - t
    assert len(pol) == queued
    return out / 1e3  # microseconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queued", type=int, default=10_000)
    ap.add_argument("--ops", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    print(f"push + pop with {a.queued:,} queued, {a.ops:,} ops x {a.repeats} repeats (microseconds)")
    print(f"{'policy':<14}{'median':>9}{'p99':>9}{'mean':>9}{'vs fcfs':>9}")
    base = None
    for label, name, params in POLICIES:
        runs = [run(name, params, a.queued, a.ops, seed) for seed in range(a.repeats)]
        med = float(np.median([np.median(x) for x in runs]))
        p99 = float(np.median([np.percentile(x, 99) for x in runs]))
        mean = float(np.median([x.mean() for x in runs]))
        base = base or med
        print(f"{label:<14}{med:>9.2f}{p99:>9.2f}{mean:>9.2f}{med / base:>8.2f}x")


if __name__ == "__main__":
    main()
