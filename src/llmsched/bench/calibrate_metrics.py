"""`llmsched calibrate --from-metrics URL...`: fit the cost-model knobs from vLLM's `/metrics` histograms.

Each backend's `/metrics` is read at the start and the end of a window; the differences of its histograms are
what it did meanwhile: `vllm:request_prompt_tokens` and `vllm:request_generation_tokens` (the workload's
length distributions, exact means from their sums), the first-token count (the arrival rate),
`vllm:time_to_first_token_seconds`, `vllm:inter_token_latency_seconds` (or the older
`vllm:time_per_output_token_seconds`) and `vllm:iteration_tokens_total` (iterations per second and tokens
per iteration). Each backend is then simulated as one instance under a Poisson workload drawn from those
distributions (common random numbers: the same draws for every candidate), and Nelder-Mead moves the knobs
to minimise the squared log errors of the moments: mean and median TTFT, mean and p90 inter-token latency,
iterations per second. Arrival times are not in the metrics, so burstiness is not reproduced: this fit is
coarser than `--from-record`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmsched.bench.calibrate import BOUNDS, FREE, START

TTFT = "vllm:time_to_first_token_seconds"
ITL = ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")
ITER = "vllm:iteration_tokens_total"
PROMPT = "vllm:request_prompt_tokens"
GEN = "vllm:request_generation_tokens"


@dataclass
class Hist:
    bounds: np.ndarray  # upper bounds, +inf last
    cum: np.ndarray  # cumulative counts
    sum: float

    @property
    def count(self) -> float:
        return float(self.cum[-1]) if len(self.cum) else 0.0

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else float("nan")

    def __sub__(self, other: Hist) -> Hist:
        return Hist(self.bounds, self.cum - other.cum, self.sum - other.sum)

    def quantile(self, q: float) -> float:
        """Linear interpolation inside the bucket (Prometheus' histogram_quantile)."""
        if not self.count:
            return float("nan")
        rank = q * self.count
        k = int(np.searchsorted(self.cum, rank, side="left"))
        k = min(k, len(self.cum) - 1)
        hi = self.bounds[k] if np.isfinite(self.bounds[k]) else self.bounds[k - 1]
        lo = self.bounds[k - 1] if k > 0 else 0.0
        below = self.cum[k - 1] if k > 0 else 0.0
        inside = self.cum[k] - below
        return float(lo + (hi - lo) * ((rank - below) / inside if inside else 1.0))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n draws: a bucket by its count, then uniform inside it (the +Inf bucket: its lower bound), rescaled so
        that the draws' mean is the histogram's exact mean."""
        counts = np.diff(np.concatenate([[0.0], self.cum]))
        p = counts / counts.sum()
        k = rng.choice(len(p), size=n, p=p)
        lo = np.concatenate([[0.0], self.bounds[:-1]])[k]
        hi = np.where(np.isfinite(self.bounds[k]), self.bounds[k], lo)
        x = lo + (hi - lo) * rng.random(n)
        return x * (self.mean / x.mean()) if x.mean() > 0 else x


def parse_histograms(text: str) -> dict[str, Hist]:
    """The histograms of a Prometheus text page, label sets summed per name."""
    from prometheus_client.parser import text_string_to_metric_families

    acc: dict[str, dict[str, Any]] = {}
    for fam in text_string_to_metric_families(text):
        if fam.type != "histogram":
            continue
        a = acc.setdefault(fam.name, {"b": {}, "sum": 0.0})
        for s in fam.samples:
            if s.name.endswith("_bucket"):
                le = float("inf") if s.labels["le"] == "+Inf" else float(s.labels["le"])
                a["b"][le] = a["b"].get(le, 0.0) + s.value
            elif s.name.endswith("_sum"):
                a["sum"] += s.value
    out = {}
    for name, a in acc.items():
        bounds = np.array(sorted(a["b"]))
        out[name] = Hist(bounds, np.array([a["b"][b] for b in bounds]), float(a["sum"]))
    return out


@dataclass
class Window:
    """What one backend did over a window (histogram differences) and the window's length in seconds."""

    h: dict[str, Hist]
    seconds: float

    def itl(self) -> Hist:
        for name in ITL:
            if name in self.h and self.h[name].count:
                return self.h[name]
        raise ValueError(f"no inter-token latency histogram ({' or '.join(ITL)}) with observations")

    def need(self, name: str) -> Hist:
        if name not in self.h or not self.h[name].count:
            raise ValueError(f"the window has no observations of {name}")
        return self.h[name]

    def moments(self) -> dict[str, float]:
        ttft, itl = self.need(TTFT), self.itl()
        out = {"ttft_mean": ttft.mean, "ttft_p50": ttft.quantile(0.5), "itl_mean": itl.mean,
               "itl_p90": itl.quantile(0.9)}
        if ITER in self.h and self.h[ITER].count:
            out["iterations_per_s"] = self.h[ITER].count / self.seconds
        return out


def window_from_pages(before: str, after: str, seconds: float) -> Window:
    a, b = parse_histograms(before), parse_histograms(after)
    return Window({k: b[k] - a[k] if k in a else b[k] for k in b}, seconds)


def simulate_window(w: Window, model: str, gpu: str, tp: int | None, knobs: dict[str, float], seed: int = 0,
                    engine: dict[str, Any] | None = None) -> dict[str, float]:
    """The same moments from one simulated instance under a Poisson workload drawn from the window."""
    from llmsched.core.types import Request
    from llmsched.engine.config import EngineConfig
    from llmsched.engine.engine import Engine
    from llmsched.model import build_cost_model
    from llmsched.policies.instance import ROUTERS
    from llmsched.policies.request import REQUEST_POLICIES
    from llmsched.sim.cluster import Cluster

    prompt, gen = w.need(PROMPT), w.need(GEN)
    rate = w.need(TTFT).count / w.seconds  # first tokens in the window: requests that started in it
    warm = 0.5 * w.seconds  # the real engine was already loaded when the window opened: warm up first
    n = int(round(rate * (warm + w.seconds)))
    rng = np.random.default_rng([seed, 0x3E7])
    p = np.maximum(1, np.round(prompt.sample(n, rng))).astype(int)
    o = np.maximum(1, np.round(gen.sample(n, rng))).astype(int)
    t = np.sort(rng.random(n) * (warm + w.seconds))
    eng = Engine(build_cost_model(model, gpu, tp, **knobs), REQUEST_POLICIES.create("fcfs", {}),
                 EngineConfig(**(engine or {})), instance=0, collect_tokens=False, record_token_times=True)
    reqs = [Request(i, float(t[i]), int(p[i]), int(o[i])) for i in range(n)]
    for r in reqs:
        r.token_times = []
    Cluster([eng], ROUTERS.create("round-robin", {})).run(reqs)
    lo, hi = warm, warm + w.seconds
    ttft = np.array([r.first_token - r.arrival for r in reqs if r.finish >= 0 and lo <= r.first_token < hi])
    gaps, steps = [], set()
    for r in reqs:
        tt = np.asarray(r.token_times or [])
        if len(tt) > 1:
            g = np.diff(tt)
            gaps.append(g[(tt[1:] >= lo) & (tt[1:] < hi)])
        steps.update(tt[(tt >= lo) & (tt < hi)].tolist())
    gap = np.concatenate(gaps) if gaps else np.zeros(0)
    nan = float("nan")
    return {"ttft_mean": float(ttft.mean()) if len(ttft) else nan,
            "ttft_p50": float(np.median(ttft)) if len(ttft) else nan,
            "itl_mean": float(gap.mean()) if len(gap) else nan,
            "itl_p90": float(np.percentile(gap, 90)) if len(gap) else nan,
            "iterations_per_s": len(steps) / w.seconds}


def fit_metrics(windows: list[Window], model: str, gpu: str, tp: int | None = None, max_evals: int = 120,
                seed: int = 0, engine: dict[str, Any] | None = None) -> dict[str, Any]:
    """Knobs minimising the squared log errors of every backend's moments (Nelder-Mead in log space)."""
    from scipy.optimize import minimize

    targets = [w.moments() for w in windows]
    lo = np.array([math.log(BOUNDS[k][0]) for k in FREE])
    hi = np.array([math.log(BOUNDS[k][1]) for k in FREE])

    def unpack(x: np.ndarray) -> dict[str, float]:
        return {k: float(math.exp(v)) for k, v in zip(FREE, np.clip(x, lo, hi), strict=True)}

    def errors(x: np.ndarray) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for w, tgt in zip(windows, targets, strict=True):
            sim = simulate_window(w, model, gpu, tp, unpack(x), seed, engine)
            for k, v in tgt.items():
                out.setdefault(k, []).append(math.log(max(sim[k], 1e-9) / v) if math.isfinite(sim[k]) else 5.0)
        return out

    def objective(x: np.ndarray) -> float:
        return float(sum(e * e for errs in errors(x).values() for e in errs))

    x0 = np.array([math.log(START[k]) for k in FREE])
    simplex = np.vstack([x0] + [x0 + np.eye(len(FREE))[i] * 0.5 for i in range(len(FREE))])
    sol = minimize(objective, x0, method="Nelder-Mead",
                   options={"initial_simplex": simplex, "xatol": 3e-3, "fatol": 1e-6, "maxfev": max_evals})
    values = unpack(sol.x)
    errs = errors(sol.x)
    return {"values": values, "moment_errors": {k: [math.expm1(e) for e in v] for k, v in errs.items()},
            "targets": targets, "evaluations": int(sol.nfev), "objective": float(sol.fun)}


async def sample_windows(urls: list[str], seconds: float, time_scale: float = 1.0) -> list[Window]:
    """Read every URL's /metrics now and `seconds` later; one window each (length x time_scale)."""
    import asyncio

    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        async def page(u: str) -> str:
            async with s.get(u.rstrip("/") + "/metrics") as r:
                if r.status != 200:
                    raise ValueError(f"{u}/metrics answered HTTP {r.status}")
                return await r.text()

        before = await asyncio.gather(*(page(u) for u in urls))
        await asyncio.sleep(seconds)
        after = await asyncio.gather(*(page(u) for u in urls))
    return [window_from_pages(a, b, seconds * time_scale) for a, b in zip(before, after, strict=True)]
