"""`llmsched calibrate --from-metrics URL...`: fit the cost-model knobs from vLLM's `/metrics` histograms.

Each backend's `/metrics` is read at `scrapes` instants over a window; the differences of its histograms between
two consecutive reads are what it did meanwhile. Their sums and counts are exact, whatever the arrival process:
`vllm:iteration_tokens_total` (iterations and the tokens they computed, and in which power-of-two bucket each
iteration fell), `vllm:inter_token_latency_seconds` (or the older `vllm:time_per_output_token_seconds`: every
decoded token's wait, so its sum is sum over iterations of decodes x iteration time) and the gauges at both ends
(`vllm:num_requests_running`, `vllm:kv_cache_usage_perc` x the cache size of `vllm:cache_config_info`).

The fit rebuilds each sub-window's iterations from those figures (iterations with fewer tokens than sequences
running are decode-only with the running count, clipped to their bucket; the others carry the running decodes
plus prefill tokens placed in their buckets so that the tokens add up to the exact sum; decode context = KV in
use / running) and asks the cost model for their times: the predicted inter-token sum must match the observed
one, and the predicted busy time must not exceed the sub-window (a hinge). scipy least squares on the log
ratios; intervals from refits on resampled sub-windows started ~10% off the estimate.

No arrival times and no per-iteration times are in the metrics, and the buckets are a factor of two wide: the
rebuilt iterations are approximate (a few % per sub-window at the truth), which bounds what this fit can tell
apart (docs/calibration.md has the figures: compute and bandwidth are found, the fixed step overhead is not).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmsched.bench.calibrate import BOUNDS, FREE, STARTS

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


def parse_gauges(text: str) -> dict[str, float]:
    """The gauges of a Prometheus text page, label sets summed per name; `kv_tokens`: the KV cache's size in
    tokens from `vllm:cache_config_info` (num_gpu_blocks x block_size), when the page has it."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            if fam.name == "vllm:cache_config_info" and "num_gpu_blocks" in smp.labels:
                out["kv_tokens"] = float(smp.labels["num_gpu_blocks"]) * float(smp.labels.get("block_size", 16))
            elif fam.type == "gauge":
                out[smp.name] = out.get(smp.name, 0.0) + smp.value
    return out


@dataclass
class Window:
    """What one backend did between two reads of its /metrics (histogram differences), the seconds between
    them, and its gauges at both reads."""

    h: dict[str, Hist]
    seconds: float
    start: dict[str, float] = field(default_factory=dict)
    end: dict[str, float] = field(default_factory=dict)

    def itl(self) -> Hist:
        for name in ITL:
            if name in self.h and self.h[name].count:
                return self.h[name]
        raise ValueError(f"no inter-token latency histogram ({' or '.join(ITL)}) with observations")

    def need(self, name: str) -> Hist:
        if name not in self.h or not self.h[name].count:
            raise ValueError(f"the window has no observations of {name}")
        return self.h[name]

    def gauge(self, name: str) -> float:
        if name not in self.start or name not in self.end:
            raise ValueError(f"the /metrics pages have no gauge {name}")
        return 0.5 * (self.start[name] + self.end[name])


def window_from_pages(before: str, after: str, seconds: float) -> Window:
    a, b = parse_histograms(before), parse_histograms(after)
    return Window({k: b[k] - a[k] if k in a else b[k] for k in b}, seconds, parse_gauges(before), parse_gauges(after))


def windows_from_series(pages: list[tuple[float, list[str]]], time_scale: float = 1.0) -> list[Window]:
    """Consecutive reads (time, one page per backend) -> one window per backend and pair of reads."""
    return [window_from_pages(p0[b], p1[b], (t1 - t0) * time_scale)
            for b in range(len(pages[0][1])) for (t0, p0), (t1, p1) in zip(pages, pages[1:], strict=False)]


@dataclass
class IterationMix:
    """A window's iterations rebuilt from its metrics: `count[i]` iterations of `decodes[i]` decoding sequences
    (reading `kv[i]` KV tokens) and `prefill[i]` prompt tokens; what was observed of them."""

    count: np.ndarray
    decodes: np.ndarray
    prefill: np.ndarray
    kv: np.ndarray
    prompt_mean: float
    itl_sum: float
    seconds: float

    @classmethod
    def of(cls, w: Window) -> IterationMix:
        from scipy.optimize import brentq

        it = w.need(ITER)
        c = np.diff(np.concatenate([[0.0], it.cum]))
        hi = it.bounds.astype(np.float64)
        lo = np.concatenate([[0.0], hi[:-1]])
        hi = np.where(np.isfinite(hi), hi, 2.0 * lo)
        lo = np.maximum(lo + 1.0, 1.0)
        hi = np.maximum(hi, lo)
        m = c > 0
        c, lo, hi = c[m], lo[m], hi[m]
        run_key = "vllm:num_requests_running"
        run = w.gauge(run_key)
        mixed = lo > max(w.start[run_key], w.end[run_key])  # more tokens than sequences: prefill chunks inside
        d = np.minimum(np.where(mixed, run, np.clip(run, lo, hi)), hi)
        n = d.copy()
        rest = it.sum - float(np.sum(c[~mixed] * d[~mixed]))  # the mixed iterations' tokens, exactly
        if mixed.any():
            def excess(th: float) -> float:
                return float(np.sum(c[mixed] * (lo[mixed] + th * (hi[mixed] - lo[mixed])))) - rest

            th = 0.0 if excess(0.0) > 0 else 1.0 if excess(1.0) < 0 else brentq(excess, 0.0, 1.0)
            n[mixed] = lo[mixed] + th * (hi[mixed] - lo[mixed])
        if "kv_tokens" not in w.start:
            raise ValueError("the /metrics pages have no vllm:cache_config_info (num_gpu_blocks, block_size)")
        kv_used = w.gauge("vllm:kv_cache_usage_perc") * w.start["kv_tokens"]
        prompt = w.h.get(PROMPT)
        mean_prompt = prompt.mean if prompt is not None and prompt.count else 1024.0
        return cls(c, d, np.maximum(n - d, 0.0), d * kv_used / max(run, 1.0), float(mean_prompt), w.itl().sum,
                   w.seconds)

    def predict(self, cost: Any) -> tuple[float, float]:
        """(sum over iterations of decodes x time, busy time) under a cost model."""
        from llmsched.model.base import BatchStats

        t = np.empty(len(self.count))
        for i, (d, p, kv) in enumerate(zip(self.decodes.tolist(), self.prefill.tolist(), self.kv.tolist(), strict=True)):
            seqs = max(1, round(p / self.prompt_mean)) if p >= 1 else 0
            t[i] = cost.step_time(BatchStats(prefill_tokens=round(p), prefill_pairs=p * (min(p, self.prompt_mean) + 1) / 2,
                                             prefill_seqs=seqs, decode_tokens=round(d), kv_tokens=int(kv)), 0.0)
        return float(np.sum(self.count * self.decodes * t)), float(np.sum(self.count * t))


def fit_metrics(windows: list[Window], model: str, gpu: str, tp: int | None = None, seed: int = 0,
                refits: int = 8) -> dict[str, Any]:
    """Knobs that make the rebuilt iterations of every window add up to its observed inter-token sum (and fit
    in its length); 95% intervals from refits on resampled windows started ~10% off the estimate."""
    from scipy.optimize import least_squares

    from llmsched.bench.calibrate import _correlations
    from llmsched.model import build_cost_model

    mixes = [IterationMix.of(w) for w in windows if ITER in w.h and w.h[ITER].count and w.itl().count]
    if len(mixes) < len(FREE):
        raise ValueError(f"too few windows with iterations and decodes to fit ({len(mixes)}); sample longer or "
                         "more often")
    lo = np.array([math.log(BOUNDS[k][0]) for k in FREE])
    hi = np.array([math.log(BOUNDS[k][1]) for k in FREE])

    def unpack(x: np.ndarray) -> dict[str, float]:
        return {k: float(math.exp(v)) for k, v in zip(FREE, np.clip(x, lo, hi), strict=True)}

    def resid(x: np.ndarray, rows: list[IterationMix] = mixes) -> np.ndarray:
        cost = build_cost_model(model, gpu, tp, **unpack(x))
        out = []
        for mx in rows:
            s, busy = mx.predict(cost)
            out += [math.log(max(s, 1e-12) / mx.itl_sum), max(0.0, math.log(max(busy, 1e-12) / mx.seconds))]
        return np.array(out)

    starts = [np.array([math.log(v[k]) for k in FREE]) for v in STARTS]
    sol = min((least_squares(resid, x0, bounds=(lo, hi), diff_step=1e-3) for x0 in starts), key=lambda r: r.cost)
    rng = np.random.default_rng([seed, 0x3E7])
    moved = []
    for _ in range(refits):
        rows = [mixes[i] for i in rng.integers(0, len(mixes), len(mixes))]
        x0 = np.clip(sol.x + rng.normal(0.0, 0.1, len(FREE)), lo, hi)
        moved.append(least_squares(resid, x0, bounds=(lo, hi), diff_step=1e-3, kwargs={"rows": rows}).x)
    values = unpack(sol.x)
    ci = {k: (values[k], values[k]) for k in FREE}
    if moved:
        m = np.exp(np.array(moved))
        ci = {k: (min(values[k], float(np.percentile(m[:, i], 2.5))), max(values[k], float(np.percentile(m[:, i], 97.5))))
              for i, k in enumerate(FREE)}
    r = sol.fun[0::2]
    return {"values": values, "ci": ci, "correlation": _correlations(sol.jac[0::2], FREE),
            "residuals": {"itl_sum_rms_log_err": float(np.sqrt(np.mean(r * r))), "windows": len(mixes)},
            "evaluations": int(sol.nfev)}


async def sample_windows(urls: list[str], seconds: float, time_scale: float = 1.0, scrapes: int = 11) -> list[Window]:
    """Read every URL's /metrics at `scrapes` instants `seconds / (scrapes - 1)` apart; one window per URL and
    pair of consecutive reads (lengths x time_scale)."""
    import asyncio

    import aiohttp

    if scrapes < 2:
        raise ValueError(f"--scrapes must be >= 2, got {scrapes}")
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        async def page(u: str) -> str:
            async with s.get(u.rstrip("/") + "/metrics") as r:
                if r.status != 200:
                    raise ValueError(f"{u}/metrics answered HTTP {r.status}")
                return await r.text()

        pages = []
        for k in range(scrapes):
            if k:
                await asyncio.sleep(seconds / (scrapes - 1))
            pages.append((loop.time(), list(await asyncio.gather(*(page(u) for u in urls)))))
    return windows_from_series(pages, time_scale)
