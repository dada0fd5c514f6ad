"""A fake `simulate` for the bench tests: deterministic, instant, shaped like the real result.

Latency grows with the offered load (rate / capacity) so tables and plots have something to show; the wall
time is real, as in the real simulator, so tests must compare results without it (`sweep.comparable`).
"""

from __future__ import annotations

import time
import zlib
from typing import Any

import numpy as np

from llmsched.sim.config import SimConfig

CALLS: list[SimConfig] = []  # inline executor only: every call, in order
STOP_AFTER: list[int] = []  # when set, raise KeyboardInterrupt once this many calls were made


def _lat(x: np.ndarray) -> dict[str, float]:
    return {"mean": float(x.mean()), "p50": float(np.percentile(x, 50)), "p90": float(np.percentile(x, 90)),
            "p99": float(np.percentile(x, 99))}


def fake_simulate(cfg: SimConfig, progress: bool = False, keep_samples: bool = False) -> dict[str, Any]:
    t0 = time.perf_counter()
    if STOP_AFTER and len(CALLS) >= STOP_AFTER[0]:
        raise KeyboardInterrupt
    CALLS.append(cfg)
    wl = cfg.workload
    n = wl.num_requests or 100
    capacity = 10.0 * cfg.instances
    rate = wl.rate if wl.kind == "synthetic" else 5.0 * wl.rate_scale
    rate = rate or capacity
    rho = min(rate / capacity, 0.95)
    policy_key = zlib.crc32(f"{cfg.request_policy}/{cfg.router}/{cfg.expert_policy}".encode())
    rng = np.random.default_rng([cfg.seed, policy_key])
    speed = 1.0 - 0.2 * (cfg.request_policy != "fcfs") - 0.1 * (cfg.router != "round-robin")
    ttft = rng.exponential(0.05 * speed / (1.0 - rho), n)
    tpot = rng.normal(0.02, 0.002, n).clip(0.001)
    # finish times spread evenly at the served rate, so the runner's capacity estimate is min(rate, capacity)
    e2e = (rng.permutation(n) + 1.0) / min(rate, capacity)
    cls = np.where(rng.random(n) < 0.7, "short", "long")
    by_class = {c: {"count": int((cls == c).sum()), "ttft_s": _lat(ttft[cls == c]), "tpot_s": _lat(tpot[cls == c]),
                    "e2e_s": _lat(e2e[cls == c])} for c in ("short", "long")}
    duration = n / min(rate, capacity)
    res: dict[str, Any] = {
        "completed": n, "sim_duration_s": duration, "output_throughput_tok_s": 200 * n / duration,
        "request_throughput_rps": n / duration, "ttft_s": _lat(ttft), "tpot_s": _lat(tpot), "e2e_s": _lat(e2e),
        "queue_s": _lat(ttft / 2), "by_class": by_class, "prefix_hit_rate": 0.0, "preemptions": 0,
        "simulated": {"model": cfg.model, "gpu": cfg.gpu, "tp": cfg.tp or 1, "instances": cfg.instances},
    }
    moe = "a3b" in cfg.model
    if moe:
        res["expert_balancedness"] = 0.9 if cfg.expert_policy not in (None, "static") else 0.6
    if keep_samples:
        res["samples"] = {"ttft": ttft.tolist(), "tpot": tpot.tolist(), "e2e": e2e.tolist()}
        if moe:
            t = np.linspace(0, duration, 50)
            res["balancedness_series"] = {"t": t.tolist(),
                                          "value": (res["expert_balancedness"] + 0.05 * np.sin(t)).tolist()}
    res["wall_s"] = time.perf_counter() - t0
    return res


def fake_native_rate(cfg: SimConfig) -> float:
    return 5.0
