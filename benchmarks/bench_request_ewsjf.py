"""EWSJF and the request policies it competes with: a simulated quality table, and EWSJF's periodic costs.

Table (simulated, Llama-2-13B on one A100-80G): workload x {fcfs, sjf, sjf-aging, ewsjf untuned, ewsjf tuned,
gimbal} at 90% of the measured capacity, medians over seeds of per-seed ratios against FCFS in the same seed:
short-class mean TTFT gain (FCFS / policy), long-class p99 E2E (policy / FCFS), mean TTFT over all requests,
and the mean TTFT of the high-priority requests (a random 20% at priority -1 in every workload; only
gimbal reads it). Workloads: `mixed` (3,000 requests, 20% long), the Azure 2023 conversation + code traces
merged (4,000-request slice number `seed`; conversation reported as `short`, code as `long`), and `phases`
(3,000 `mixed` requests whose long fraction shifts 10% -> 30% -> 10% in three equal phases).

Timing: one Refine-and-Prune over a 10,000-length window, one full re-partition of a policy holding 10,000
queued requests, each the median
of several repeats; the partition is compared with a plain `np.sort` of the same window in the same run; and
one tuning window of the meta-optimiser (KV calibration and the twin trials, 200 arrivals after 200 of context).

    python benchmarks/bench_request_ewsjf.py [--only table|timing] [--seeds 0 1 2] [--load 0.9] [--jobs 2]
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from llmsched.bench.plan import capacity_of, saturation_config
from llmsched.core.types import Request
from llmsched.policies.request.ewsjf import EWSJF
from llmsched.policies.request.ewsjf_partition import refine_and_prune
from llmsched.policies.request.ewsjf_tuner import Window
from llmsched.sim.config import SimConfig
from llmsched.sim.run import simulate
from llmsched.workload import load_columns
from llmsched.workload.spec import WorkloadSpec

MODEL, GPU = "llama-2-13b", "a100-80g"
TRACES = Path(__file__).resolve().parents[1] / ".." / "shared" / "traces" / "azure-2023"
AZURE = f"{TRACES}/AzureLLMInferenceTrace_conv.csv,{TRACES}/AzureLLMInferenceTrace_code.csv"
SLICE = 4000
POLICIES: dict[str, tuple[str, dict[str, Any]]] = {
    "fcfs": ("fcfs", {}),
    "sjf": ("sjf", {}),
    "sjf-aging": ("sjf-aging", {}),
    "ewsjf untuned": ("ewsjf", {"meta_optimize": False}),
    "ewsjf tuned": ("ewsjf", {}),
    "gimbal": ("gimbal", {}),
}


def _mixed(lf: float) -> dict[str, Any]:
    return {"generator": "mixed", "params": {"long_fraction": lf}, "fraction": 1.0}


SYNTHETIC = {
    "mixed": WorkloadSpec(name="mixed", num_requests=3000, params={"long_fraction": 0.2}),
    "phases": WorkloadSpec(name="phases", num_requests=3000, params={"phases": [_mixed(0.1), _mixed(0.3), _mixed(0.1)]}),
}


def requests(workload: str, seed: int, rate: float | None) -> list[Request]:
    """The workload's requests at `rate` (None: as generated / native), 20% of them at priority -1."""
    if workload == "azure":
        cols = load_columns(WorkloadSpec(kind="trace", path=AZURE, limit=SLICE * (seed + 1),
                                         params={"classes": ["short", "long"]}))
        cols = cols.take(np.arange(SLICE * seed, min(len(cols), SLICE * (seed + 1))))
        cols.arrival = cols.arrival - cols.arrival[0]
        if rate is not None:
            cols.arrival = cols.arrival * ((len(cols) - 1) / cols.arrival[-1] / rate)
        reqs = cols.to_requests()
    else:
        spec = SYNTHETIC[workload].model_copy(update={"rate": rate})
        reqs = load_columns(spec, seed=seed).to_requests()
    prio = np.random.default_rng([seed, 0x9A1]).random(len(reqs)) < 0.2
    for r, p in zip(reqs, prio.tolist(), strict=True):
        r.priority = -1 if p else 0
    return reqs


def capacity(workload: str) -> float:
    """Requests/s one instance sustains on the workload (saturation run, seed 0; see bench.plan)."""
    cfg = SimConfig(model=MODEL, gpu=GPU)
    sat = saturation_config(cfg)
    reqs = requests(workload, 0, None)
    for r in reqs:
        r.arrival = 0.0
    return capacity_of(simulate(sat, requests=reqs, keep_samples=True))


def run_one(workload: str, seed: int, rate: float, label: str) -> dict[str, float]:
    name, params = POLICIES[label]
    reqs = requests(workload, seed, rate)
    simulate(SimConfig(model=MODEL, gpu=GPU, request_policy=name, request_params=params, seed=seed), requests=reqs)
    ttft = np.array([r.first_token - r.arrival for r in reqs])
    e2e = np.array([r.finish - r.arrival for r in reqs])
    short = np.array([r.cls == "short" for r in reqs])
    hi = np.array([r.priority < 0 for r in reqs])
    if np.any(e2e < 0):
        raise RuntimeError(f"{label} on {workload} seed {seed}: {int((e2e < 0).sum())} requests never finished")
    return {
        "short_ttft": float(ttft[short].mean()),
        "long_p99_e2e": float(np.quantile(e2e[~short], 0.99)),
        "mean_ttft": float(ttft.mean()),
        "hi_ttft": float(ttft[hi].mean()),
    }


def table(workloads: list[str], seeds: list[int], load: float, jobs: int) -> None:
    print(f"simulated: {MODEL} on 1 x {GPU}; load {load} of the measured capacity; seeds {seeds}; "
          f"loadavg {os.getloadavg()[0]:.1f}")
    with ProcessPoolExecutor(jobs) as ex:
        caps = dict(zip(workloads, ex.map(capacity, workloads), strict=True))
        keys = [(w, s, lab) for w in workloads for s in seeds for lab in POLICIES]
        t0 = time.perf_counter()
        res = dict(zip(keys, ex.map(run_one, *zip(*[(w, s, load * caps[w], lab) for w, s, lab in keys], strict=True)),
                       strict=True))
    print(f"{len(keys)} runs in {time.perf_counter() - t0:.0f} s wall; loadavg {os.getloadavg()[0]:.1f}")
    for w in workloads:
        print(f"\n{w} (capacity {caps[w]:.3f} req/s, rate {load * caps[w]:.3f} req/s)")
        print("| policy | short TTFT gain vs fcfs | long p99 E2E / fcfs | mean TTFT (s) | high-priority mean TTFT (s) |"
              " per seed: short gain | per seed: long p99 E2E / fcfs |")
        print("|---|---|---|---|---|---|---|")
        for lab in POLICIES:
            gain = [res[w, s, "fcfs"]["short_ttft"] / res[w, s, lab]["short_ttft"] for s in seeds]
            tail = [res[w, s, lab]["long_p99_e2e"] / res[w, s, "fcfs"]["long_p99_e2e"] for s in seeds]
            mean = [res[w, s, lab]["mean_ttft"] for s in seeds]
            hi = [res[w, s, lab]["hi_ttft"] for s in seeds]
            print(f"| {lab} | {np.median(gain):.1f}x | {np.median(tail):.2f} | {np.median(mean):.2f} | "
                  f"{np.median(hi):.2f} | {' '.join(f'{g:.1f}' for g in gain)} | {' '.join(f'{x:.2f}' for x in tail)} |")


# -- timing of the periodic work ---------------------------------------------------------------------------
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


def timing(n: int, repeats: int) -> None:
    print(f"loadavg {os.getloadavg()[0]:.1f}")
    rng = np.random.default_rng(0)
    x = window(n, rng)
    sort_ms = timed(lambda: np.sort(x), repeats)
    for alpha in (0.5, 1.5, 3.0):
        ms = timed(lambda alpha=alpha: refine_and_prune(x, alpha=alpha, max_queues=8), repeats)
        k = len(refine_and_prune(x, alpha=alpha, max_queues=8))
        print(f"refine_and_prune window={n:,} alpha={alpha}: {ms:.2f} ms median ({k} queues; "
              f"{ms / sort_ms:.1f}x np.sort)")

    pol = EWSJF(meta_optimize=False, window=n, repartition_every=10**9, min_samples=10**9)
    for i, size in enumerate(x):
        pol.push(Request(rid=i, arrival=i * 1e-3, prompt_len=int(size), output_len=1), i * 1e-3)
    ms = timed(pol.repartition, repeats)
    print(f"re-partition of a policy with {len(pol):,} queued: {ms:.2f} ms median")

    tuned = EWSJF(meta_window=200, window=n)
    for i, size in enumerate(x[:2000]):
        tuned.push(Request(rid=i, arrival=i * 0.5, prompt_len=int(size), output_len=1), i * 0.5)
    sizes = x[:400].astype(np.float64)  # the previous window (context) and the scored one, 200 arrivals each
    svc = np.array([tuned._cost(s) for s in sizes.tolist()])
    w = Window(np.arange(400) * 0.5, sizes, svc * (1 + rng.exponential(1.0, 400)), sizes + 300, np.full(400, 20.0),
               warm=200)
    assert tuned.tuner_ is not None
    ms = timed(lambda: tuned.tuner_.close(w), max(3, repeats // 3))  # type: ignore[union-attr]
    print(f"tuner window (KV calibration + {tuned.tuner_.per_window} twin trials; 200 arrivals after 200 of "
          f"context): {ms:.1f} ms median")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["table", "timing"])
    ap.add_argument("--workloads", nargs="+", default=["mixed", "azure", "phases"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--load", type=float, default=0.9)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--window", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=15)
    a = ap.parse_args()
    if a.only != "timing":
        table(a.workloads, a.seeds, a.load, a.jobs)
    if a.only != "table":
        timing(a.window, a.repeats)


if __name__ == "__main__":
    main()
