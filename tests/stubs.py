"""Test doubles shared by the engine and simulator tests."""

from __future__ import annotations

import numpy as np

from llmsched.model.base import BatchStats


class LinearCost:
    """step = base + per_prefill * prefill tokens + per_decode * decode seqs + per_kv * KV tokens read.

    Linear like BLIS's step model, so expected timings can be computed by hand in tests.
    """

    needs_class_tokens = False

    def __init__(
        self,
        base: float = 0.005,
        per_prefill: float = 1e-4,
        per_decode: float = 2e-4,
        per_kv: float = 1e-7,
        kv_tokens: int = 1_000_000,
    ) -> None:
        self.base, self.per_prefill, self.per_decode, self.per_kv = base, per_prefill, per_decode, per_kv
        self.kv_tokens = kv_tokens
        self.tp = 1

    def step_time(self, b: BatchStats, now: float) -> float:
        return (
            self.base
            + self.per_prefill * b.prefill_tokens
            + self.per_decode * b.decode_tokens
            + self.per_kv * b.kv_tokens
        )

    def decode_run(self, b: BatchStats, k: int, now: float) -> np.ndarray:
        i = np.arange(k, dtype=np.float64)
        return (
            self.base + self.per_prefill * b.prefill_tokens + self.per_decode * b.decode_tokens
        ) + self.per_kv * (b.kv_tokens + i * b.decode_tokens)

    def kv_capacity_tokens(self, gpu_memory_utilization: float) -> int:
        return self.kv_tokens


class AffineLinearCost(LinearCost):
    """The same costs, also offered in closed form (the engine then prices and cuts runs analytically)."""

    def decode_affine(self, b: BatchStats) -> tuple[float, float]:
        c0 = self.base + self.per_prefill * b.prefill_tokens + self.per_decode * b.decode_tokens
        return c0 + self.per_kv * b.kv_tokens, self.per_kv * b.decode_tokens
