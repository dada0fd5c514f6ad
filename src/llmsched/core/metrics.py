"""Per-request latency records and their summary, the same for the simulator and the gateway's reports.

Records are appended as finished requests come out (plain lists: appending is the hot path) and summarised
once with numpy. Definitions follow vLLM's benchmark_serving: TTFT = first token - arrival; TPOT = mean time
between output tokens after the first, (finish - first token) / (output tokens - 1), over requests with more
than one output token; E2E = finish - arrival; queueing delay = first scheduled - arrival.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmsched.core.types import Request

PERCENTILES = (50, 90, 99)
# Prompt-length buckets used when the workload carries no class labels.
BUCKETS = ((512, "short"), (4096, "medium"), (float("inf"), "long"))


def bucket_of(prompt_len: int) -> str:
    for bound, name in BUCKETS:
        if prompt_len < bound:
            return name
    return BUCKETS[-1][1]  # pragma: no cover


def latency_summary(values: np.ndarray | list[float]) -> dict[str, float]:
    """{mean, p50, p90, p99} of a sample (zeros for an empty one, so JSON stays well-formed)."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {"mean": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0}
    p = np.percentile(a, PERCENTILES)
    return {"mean": float(a.mean()), "p50": float(p[0]), "p90": float(p[1]), "p99": float(p[2])}


@dataclass
class MetricsCollector:
    """Collects finished requests; `summary()` gives the `simulate --json` latency fields."""

    ttft: list[float] = field(default_factory=list)
    tpot: list[float] = field(default_factory=list)  # nan for single-token outputs
    e2e: list[float] = field(default_factory=list)
    queue: list[float] = field(default_factory=list)
    prompt: list[int] = field(default_factory=list)
    output: list[int] = field(default_factory=list)
    cached: list[int] = field(default_factory=list)
    cls: list[str | None] = field(default_factory=list)
    first_arrival: float = float("inf")
    last_finish: float = 0.0

    def add(self, r: Request) -> None:
        self.ttft.append(r.first_token - r.arrival)
        self.tpot.append((r.finish - r.first_token) / (r.num_output - 1) if r.num_output > 1 else float("nan"))
        self.e2e.append(r.finish - r.arrival)
        self.queue.append(r.first_scheduled - r.arrival)
        self.prompt.append(r.prompt_len)
        self.output.append(r.num_output)
        self.cached.append(r.num_cached)
        self.cls.append(r.cls)
        if r.arrival < self.first_arrival:
            self.first_arrival = r.arrival
        if r.finish > self.last_finish:
            self.last_finish = r.finish

    def __len__(self) -> int:
        return len(self.ttft)

    def classes(self) -> list[str]:
        """Each record's class: the workload's label, else its prompt-length bucket."""
        if any(c is not None for c in self.cls):
            return [c if c is not None else "unlabelled" for c in self.cls]
        return [bucket_of(p) for p in self.prompt]

    def summary(self, duration: float | None = None) -> dict[str, Any]:
        n = len(self)
        ttft = np.asarray(self.ttft)
        tpot = np.asarray(self.tpot)
        e2e = np.asarray(self.e2e)
        queue = np.asarray(self.queue)
        if duration is None:
            duration = max(self.last_finish - min(self.first_arrival, self.last_finish), 0.0)
        out_tokens = int(np.sum(self.output)) if n else 0
        prompt_tokens = int(np.sum(self.prompt)) if n else 0
        cached = int(np.sum(self.cached)) if n else 0
        tpot_valid = tpot[~np.isnan(tpot)] if n else tpot
        res: dict[str, Any] = {
            "completed": n,
            "sim_duration_s": duration,
            "output_throughput_tok_s": out_tokens / duration if duration > 0 else 0.0,
            "total_throughput_tok_s": (out_tokens + prompt_tokens) / duration if duration > 0 else 0.0,
            "request_throughput_rps": n / duration if duration > 0 else 0.0,
            "ttft_s": latency_summary(ttft),
            "tpot_s": latency_summary(tpot_valid),
            "e2e_s": latency_summary(e2e),
            "queue_s": latency_summary(queue),
            "prompt_tokens": prompt_tokens,
            "output_tokens": out_tokens,
            "prefix_hit_tokens": cached,
        }
        by_class: dict[str, Any] = {}
        if n:
            labels = np.asarray(self.classes())
            for c in sorted(set(labels.tolist())):
                m = labels == c
                tp = tpot[m]
                by_class[c] = {
                    "count": int(m.sum()),
                    "ttft_s": latency_summary(ttft[m]),
                    "tpot_s": latency_summary(tp[~np.isnan(tp)]),
                    "e2e_s": latency_summary(e2e[m]),
                    "queue_s": latency_summary(queue[m]),
                }
        res["by_class"] = by_class
        return res

    def samples(self) -> dict[str, list]:
        """Per-request values, for CDF plots."""
        return {
            "ttft": list(self.ttft),
            "tpot": [x for x in self.tpot if x == x],
            "e2e": list(self.e2e),
            "cls": self.classes(),
        }
