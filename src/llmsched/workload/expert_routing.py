"""Expert popularity and routing model: which experts a step's tokens go to, without sampling tokens.

Per MoE layer l and request class c, a popularity q_l(c, t) over the E experts is a softmax of Gaussian
logits, so per-expert loads are log-normal (the skew): `skew` scales the logits, `layer_spread` varies it by
layer (hot layers), `class_corr` is the correlation of two classes' logits (different workloads heat
different experts), `drift` is the share of logit variance redrawn every `drift_period_s` seconds (hot
experts persist for an epoch: hundreds of iterations at the default 5 s).

Inter-layer structure: a token on expert e of layer l goes next, with probability `affinity`, to a fixed
successor succ_l(e) of layer l+1, else to an expert drawn from q_{l+1}. So the layer marginals are
p_0 = q_0, p_{l+1} = (1 - affinity) q_{l+1} + affinity * p_l pushed through succ_l, and the flow from e to
e' is p_l[e] ((1 - affinity) q_{l+1}[e'] + affinity [e' = succ_l(e)]).

A step of T tokens makes n = T * top_k expert assignments per layer; `sample` draws loads for k steps at once
over any set of cells (experts, or GPUs once the popularity is folded through a placement, which is what the
MoE cost model does): Multinomial(n, p) per layer (`noise: multinomial`, exact) or its Gaussian approximation
with the same mean and covariance n (diag p - p p^T) (`noise: gaussian`, the default, several times faster;
negative draws are clipped to 0), or the mean alone (`noise: none`).

The defaults give per-expert max/mean ~12 and, with 8 experts per GPU on 32 GPUs, per-GPU max/mean ~2.6
(`skew_stats`; DeepSeek-R1 decode figures in ../shared/papers/NOTES.md section 4).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class RoutingParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    skew: float = Field(1.45, ge=0, description="std of the popularity logits (0 = uniform)")
    layer_spread: float = Field(0.3, ge=0, lt=1, description="per-layer skew multiplier in [1-s, 1+s]")
    class_corr: float = Field(0.9, ge=0, le=1, description="correlation of two classes' logits")
    drift: float = Field(0.03, ge=0, le=1, description="share of logit variance redrawn each drift epoch")
    drift_period_s: float = Field(5.0, gt=0, description="length of a drift epoch (seconds of simulated time)")
    affinity: float = Field(0.6, ge=0, le=1, description="probability of going to the successor expert")
    noise: Literal["gaussian", "multinomial", "none"] = "gaussian"


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class ExpertRoutingModel:
    """Seeded popularity of L layers x E experts; deterministic in (seed, class name, drift epoch)."""

    def __init__(self, num_layers: int, num_experts: int, top_k: int, seed: int = 0, **params: object) -> None:
        if num_layers < 1 or num_experts < 1 or not 0 < top_k <= num_experts:
            raise ValueError(f"routing model needs layers, experts >= 1 and 0 < top_k <= experts, got "
                             f"{num_layers}, {num_experts}, {top_k}")
        self.params = RoutingParams(**params)  # type: ignore[arg-type]
        self.num_layers, self.num_experts, self.top_k, self.seed = num_layers, num_experts, top_k, seed
        rng = np.random.default_rng([seed, 0x5EED])
        p = self.params
        self.layer_skew = p.skew * rng.uniform(1 - p.layer_spread, 1 + p.layer_spread, size=(num_layers, 1))
        self.shared_logits = rng.standard_normal((num_layers, num_experts))
        self.successor = np.stack([rng.permutation(num_experts) for _ in range(max(0, num_layers - 1))]) \
            if num_layers > 1 else np.zeros((0, num_experts), dtype=np.int64)
        self._class_logits: dict[str, np.ndarray] = {}
        self._cache: dict[tuple[str, int], np.ndarray] = {}

    # ---- popularity -------------------------------------------------------------------------------------

    def _logits_of_class(self, cls: str) -> np.ndarray:
        z = self._class_logits.get(cls)
        if z is None:
            rng = np.random.default_rng([self.seed, 0xC1A55, zlib.crc32(cls.encode())])
            own = rng.standard_normal((self.num_layers, self.num_experts))
            rho = self.params.class_corr
            z = self._class_logits[cls] = np.sqrt(rho) * self.shared_logits + np.sqrt(1 - rho) * own
        return z

    def epoch_of(self, now: float, step: int) -> int:
        """The key of the popularity in force at `now` (drift epoch; recorded loads use the step)."""
        return self.epoch(now)

    def epoch(self, now: float) -> int:
        return int(now // self.params.drift_period_s) if self.params.drift > 0 else 0

    def class_popularity(self, cls: str | None, epoch: int = 0) -> np.ndarray:
        """Marginal popularity p_l [L, E] of one class (None or "": the shared profile) in a drift epoch."""
        key = (cls or "", epoch)
        p = self._cache.get(key)
        if p is not None:
            return p
        z = self._logits_of_class(cls) if cls else self.shared_logits
        beta = self.params.drift
        if beta > 0:
            noise = np.random.default_rng([self.seed, 0xD21F7, epoch]).standard_normal(z.shape)
            z = np.sqrt(1 - beta) * z + np.sqrt(beta) * noise
        q = _softmax(self.layer_skew * z)
        p = self._chain(q)
        if len(self._cache) > 256:
            self._cache.clear()
        self._cache[key] = p
        return p

    def _chain(self, q: np.ndarray) -> np.ndarray:
        a = self.params.affinity
        p = q.copy()
        for layer in range(1, self.num_layers):
            pushed = np.zeros(self.num_experts)
            pushed[self.successor[layer - 1]] = p[layer - 1]
            p[layer] = (1 - a) * q[layer] + a * pushed
        return p

    @property
    def affinity(self) -> float:
        return self.params.affinity

    def profile(self) -> np.ndarray:
        """What an offline placer is given: the shared (class-free) popularity of the first drift epoch."""
        return self.class_popularity(None, 0)

    def popularity(self, class_tokens: Mapping[str, float] | None, now: float, step: int = 0) -> np.ndarray:
        """Popularity [L, E] of a step whose tokens come from classes in these proportions, at time `now`."""
        ep = self.epoch(now)
        if not class_tokens:
            return self.class_popularity(None, ep)
        total = sum(class_tokens.values())
        items = [(c, n) for c, n in class_tokens.items() if n > 0]
        if len(items) == 1 or total <= 0:
            return self.class_popularity(items[0][0] if items else None, ep)
        out = np.zeros((self.num_layers, self.num_experts))
        for c, n in items:
            out += (n / total) * self.class_popularity(c, ep)
        return out

    def flows(self, p: np.ndarray) -> np.ndarray:
        """Expected flows [L-1, E, E] (shares of a layer's assignments) for marginals `p` [L, E]."""
        a = self.params.affinity
        L, E = p.shape
        q_next = (p[1:] - a * np.stack([self._push(p[i], i) for i in range(L - 1)])) / max(1 - a, 1e-12) \
            if a < 1 else np.zeros_like(p[1:])
        f = (1 - a) * p[:-1, :, None] * np.clip(q_next, 0, None)[:, None, :]
        f[np.arange(L - 1)[:, None], np.arange(E)[None, :], self.successor] += a * p[:-1]
        return f

    def _push(self, p_layer: np.ndarray, layer: int) -> np.ndarray:
        out = np.zeros(self.num_experts)
        out[self.successor[layer]] = p_layer
        return out

    # ---- sampling ---------------------------------------------------------------------------------------

    def sample(self, p: np.ndarray, num_assign: int, rng: np.random.Generator, steps: int = 1) -> np.ndarray:
        """Loads [steps, L, E] (expert assignments) of `steps` steps of `num_assign` assignments per layer."""
        return sample_loads(p, num_assign, rng, steps, self.params.noise)


def sample_loads(p: np.ndarray, num_assign: int, rng: np.random.Generator, steps: int = 1,
                 noise: str = "gaussian") -> np.ndarray:
    """Loads [steps, L, E] for popularity p [L, E]: multinomial, its Gaussian approximation, or the mean."""
    if noise == "none" or num_assign <= 0:
        return np.broadcast_to(num_assign * p, (steps, *p.shape)).copy()
    if noise == "multinomial":
        return rng.multinomial(num_assign, np.broadcast_to(p, (steps, *p.shape))).astype(np.float64)
    z = rng.standard_normal((steps, *p.shape))
    sp = np.sqrt(p)
    s = (z * sp).sum(-1, keepdims=True)
    x = num_assign * p + np.sqrt(num_assign) * (sp * z - p * s)
    return np.maximum(x, 0.0, out=x)


def skew_stats(p: np.ndarray, num_gpus: int) -> dict[str, float]:
    """Per-expert and per-GPU (contiguous static placement) max/mean of popularity p [L, E], layer-averaged."""
    L, E = p.shape
    gpu = p.reshape(L, num_gpus, E // num_gpus).sum(-1)
    return {
        "expert_max_over_mean": float((p.max(-1) * E).mean()),
        "gpu_max_over_mean": float((gpu.max(-1) * num_gpus).mean()),
        "static_balancedness": float((1 / (gpu.max(-1) * num_gpus)).mean()),
    }
