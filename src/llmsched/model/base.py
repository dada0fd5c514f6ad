"""What the engine asks of a cost model: the duration of one iteration of a batch.

The engine describes each iteration with a `BatchStats` and asks `step_time`. For a run of identical decode
iterations (the batch is fixed between two events; only each sequence's context grows by one token a step)
it asks `decode_run` for all k durations at once, which is what lets the simulator jump over token-by-token
stepping. `decode_run(b, k)[i]` must equal `step_time` of `b` with `kv_tokens + i * decode_tokens` (the
fast-forward property test checks this through the engine).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(slots=True)
class BatchStats:
    """One engine iteration.

    prefill_tokens: new prompt tokens computed this step (all chunks).
    prefill_pairs: causal attention work of the prefill chunks, sum over chunks of
        chunk * (context_before_chunk + (chunk + 1) / 2) query-key pairs.
    prefill_seqs: sequences with a prefill chunk this step.
    decode_tokens: sequences decoding one token this step.
    kv_tokens: KV tokens read by the decoding sequences (sum of their context lengths).
    class_tokens: tokens of this step by request class (None unless the cost model asks for it, e.g. MoE
        expert routing that depends on the workload class).
    """

    prefill_tokens: int = 0
    prefill_pairs: float = 0.0
    prefill_seqs: int = 0
    decode_tokens: int = 0
    kv_tokens: int = 0
    class_tokens: dict[str, int] | None = field(default=None)

    @property
    def num_tokens(self) -> int:
        return self.prefill_tokens + self.decode_tokens

    @property
    def num_seqs(self) -> int:
        return self.prefill_seqs + self.decode_tokens


class StepCostModel(Protocol):
    """Anything that prices an engine iteration (dense roofline model, MoE wrapper, a fitted table...)."""

    needs_class_tokens: bool

    def step_time(self, b: BatchStats, now: float) -> float:
        """Seconds one iteration of `b` takes, starting at `now`."""
        ...

    def decode_run(self, b: BatchStats, k: int, now: float) -> np.ndarray:
        """Durations (seconds, float64, shape (k,)) of k consecutive pure-decode iterations of `b`."""
        ...

    def kv_capacity_tokens(self, gpu_memory_utilization: float) -> int:
        """KV-cache tokens that fit in the instance's memory after weights and activations."""
        ...
