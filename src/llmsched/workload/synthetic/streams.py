"""Generators with shared prefixes: `prefix-heavy` (classes session, api, agent) and `burstgpt-like`.

Every request belongs to a *stream* of one class: a shared prefix (one of `prefixes` system prompts, picked
with Zipf-like popularity) followed by the stream's own append-only tokens. A stream's first request sends
prefix + `first` new tokens; each later request (a turn) sends the whole previous prompt + its answer +
`append` new tokens, so it re-uses every block of the previous turn. Chat sessions are streams of a few turns,
API calls single-request streams behind a few long system prompts, agents long streams whose context grows
by tool results at each step.

Timing, open loop: the arrival process gives the request instants (so the target rate is met exactly); at
each instant the class is drawn by weight, and the request is the next turn of the stream of that class that
became ready earliest, or a new stream if none is ready. A stream is ready again `think` seconds (exponential,
mean `think_s`) plus `output * assumed_tpot_s` after its request: the response must plausibly be done. The
first `think_s` seconds therefore hold mostly first turns (warm-up). A stream ends after its number of turns
(geometric, mean `turns`) or when its next prompt would exceed `max_context`.
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmsched.workload.arrivals import ArrivalKind
from llmsched.workload.columns import Columns
from llmsched.workload.lengths import LengthDist, lognormal, uniform
from llmsched.workload.prefix import StreamHasher
from llmsched.workload.synthetic.base import GENERATORS, Generator, GeneratorParams


class StreamClass(BaseModel):
    """One class of prefix-sharing traffic."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: float = Field(1.0, ge=0, description="share of requests (normalised over classes)")
    prefixes: int = Field(1, ge=1, description="distinct shared prefixes (system prompts)")
    prefix_len: LengthDist = lognormal(512, 0.5)
    popularity: float = Field(1.0, ge=0, description="Zipf exponent over prefixes; 0 = uniform")
    first: LengthDist = lognormal(100, 1.0)
    append: LengthDist = lognormal(100, 1.0)
    output: LengthDist = lognormal(200, 0.8)
    turns: float = Field(1.0, ge=1, description="mean requests per stream (geometric)")
    think_s: float = Field(0.0, ge=0, description="mean pause before a stream's next request")
    max_context: int = Field(32768, ge=1, description="a stream ends when its prompt would exceed this")


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class StreamParams(GeneratorParams):
    assumed_tpot_s: float = Field(
        0.03, ge=0, description="decode time per output token assumed for readiness"
    )

    @model_validator(mode="before")
    @classmethod
    def _merge_partial(cls, data: Any) -> Any:
        """Let `{"api": {"weight": 0.5}}` change one knob and keep the class's other defaults."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name, f in cls.model_fields.items():
            if isinstance(f.default, StreamClass) and isinstance(data.get(name), dict):
                data[name] = _deep_merge(f.default.model_dump(), data[name])
        return data

    @model_validator(mode="after")
    def _check_weights(self) -> StreamParams:
        if sum(c.weight for _, c in self.classes()) <= 0:
            raise ValueError("class weights sum to 0")
        return self

    def classes(self) -> list[tuple[str, StreamClass]]:
        return [(n, v) for n in type(self).model_fields if isinstance(v := getattr(self, n), StreamClass)]


class PrefixHeavyParams(StreamParams):
    session: StreamClass = StreamClass(
        weight=0.5,
        prefixes=8,
        prefix_len=lognormal(400, 0.5, 16, 4096),
        first=lognormal(100, 1.0, 4, 4096),
        append=lognormal(80, 1.0, 4, 4096),
        output=lognormal(200, 0.8, 1, 2048),
        turns=5,
        think_s=10,
        max_context=16384,
    )
    api: StreamClass = StreamClass(
        weight=0.3,
        prefixes=4,
        prefix_len=uniform(1024, 4096),
        first=lognormal(200, 1.0, 4, 4096),
        output=lognormal(100, 0.8, 1, 1024),
        turns=1,
        max_context=16384,
    )
    agent: StreamClass = StreamClass(
        weight=0.2,
        prefixes=2,
        prefix_len=uniform(2048, 6144),
        first=lognormal(400, 0.8, 16, 4096),
        append=lognormal(500, 1.0, 16, 8192),
        output=lognormal(120, 0.7, 1, 1024),
        turns=12,
        think_s=2,
        max_context=32768,
    )


class _Streams(Generator):
    Params = StreamParams
    params: StreamParams

    def generate(self, n: int, rate: float, rng: np.random.Generator, block_size: int = 16) -> Columns:
        p = self.params
        arrival = self.arrivals(n, rate, rng)
        classes = p.classes()
        weights = np.array([c.weight for _, c in classes], dtype=np.float64)
        cls_idx = rng.choice(len(classes), size=n, p=weights / weights.sum()).astype(np.int32)
        # Draw everything up front (one vector per quantity and class): fast, and the stream logic below
        # consumes draws in a fixed order, so the seed fixes the workload.
        draws = []
        for ci, (_, c) in enumerate(classes):
            m = int(np.count_nonzero(cls_idx == ci))
            zipf = 1.0 / np.arange(1, c.prefixes + 1) ** c.popularity
            draws.append(
                {
                    "prefix_len": c.prefix_len.sample(rng, c.prefixes).tolist(),
                    "prefix": rng.choice(c.prefixes, size=m, p=zipf / zipf.sum()).tolist(),
                    "first": c.first.sample(rng, m).tolist(),
                    "append": c.append.sample(rng, m).tolist(),
                    "output": c.output.sample(rng, m).tolist(),
                    "think": rng.exponential(c.think_s, m).tolist() if c.think_s > 0 else [0.0] * m,
                    "turns": (rng.geometric(1.0 / c.turns, m) if c.turns > 1 else np.ones(m, int)).tolist(),
                }
            )
        hasher = StreamHasher(block_size)
        prompt = np.empty(n, dtype=np.int64)
        output = np.empty(n, dtype=np.int64)
        sessions: list[str | None] = [None] * n
        hashes: list[tuple[int, ...] | None] = [None] * n
        out_hashes: list[tuple[int, ...] | None] = [None] * n
        ready: list[list[tuple[float, int]]] = [[] for _ in classes]
        # stream id -> [class index, prefix key, prefix length, context length, turns left]
        streams: dict[int, list[int]] = {}
        used = [0] * len(classes)  # draws consumed per class
        news = [0] * len(classes)  # streams started per class
        next_sid = 0
        tpot = p.assumed_tpot_s
        for i, (t, ci) in enumerate(zip(arrival.tolist(), cls_idx.tolist(), strict=True)):
            label, c = classes[ci]
            d = draws[ci]
            j = used[ci]
            used[ci] += 1
            heap = ready[ci]
            sid = -1
            length = 0
            while heap and heap[0][0] <= t:
                _, s = heapq.heappop(heap)
                st = streams[s]
                length = st[3] + d["append"][j]
                if length <= c.max_context:
                    sid = s
                    break
                del streams[s]
                hasher.forget(s)
            if sid < 0:
                sid = next_sid
                next_sid += 1
                k = d["prefix"][news[ci] % len(d["prefix"])]
                news[ci] += 1
                plen = d["prefix_len"][k]
                length = plen + d["first"][j]
                st = [ci, ci * 1_000_003 + k, plen, 0, d["turns"][j]]
                streams[sid] = st
            out = d["output"][j]
            prompt[i] = length
            output[i] = out
            sessions[i] = f"{label}-{sid}"
            hashes[i] = hasher.hashes(sid, st[1], st[2], length) or None
            st[3] = length + out
            st[4] -= 1
            if st[4] > 0:  # a follow-up will send this prompt + answer: the answer's blocks are shareable
                out_hashes[i] = hasher.answer_hashes(sid, length, length + out) or None
                heapq.heappush(heap, (t + d["think"][j] + out * tpot, sid))
            else:
                del streams[sid]
                hasher.forget(sid)
        return Columns(
            arrival, prompt, output, cls_idx, [label for label, _ in classes], sessions, hashes,
            out_hashes=out_hashes,
        )


@GENERATORS.register("prefix-heavy")
class PrefixHeavy(_Streams):
    """Chat sessions, API calls behind shared system prompts and growing agent contexts."""

    Params = PrefixHeavyParams


class BurstGPTLikeParams(StreamParams):
    arrival: ArrivalKind = "gamma"
    cv: float | None = 2.0
    conversation: StreamClass = StreamClass(
        weight=0.6,
        prefixes=4,
        prefix_len=lognormal(200, 0.5, 16, 2048),
        first=lognormal(150, 1.1, 4, 4096),
        append=lognormal(120, 1.1, 4, 4096),
        output=lognormal(250, 0.9, 1, 2048),
        turns=4,
        think_s=15,
        max_context=16384,
    )
    api: StreamClass = StreamClass(
        weight=0.4,
        prefixes=16,
        prefix_len=lognormal(800, 0.7, 16, 8192),
        popularity=1.2,
        first=lognormal(300, 1.0, 4, 8192),
        output=lognormal(150, 1.0, 1, 2048),
        turns=1,
        max_context=16384,
    )


@GENERATORS.register("burstgpt-like")
class BurstGPTLike(_Streams):
    """Bursty (gamma) arrivals of chat conversations and API calls with shared prefixes (full-stack runs)."""

    Params = BurstGPTLikeParams
