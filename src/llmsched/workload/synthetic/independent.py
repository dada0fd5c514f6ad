"""Generators of independent requests (no shared prefixes): `chat`, `code`, `mixed`.

Default distributions (all overridable in params, see `lengths.LengthDist`):
- chat (ShareGPT-like): prompt lognormal(median 128, sigma 1.2) in [4, 8192] (mean ~263);
  output lognormal(median 200, sigma 0.9) in [1, 4096] (mean ~300). Class `chat`.
- code (code completion, shaped on Azure 2023 code: prompt mean ~2k, output mean ~28): prompt
  lognormal(1500, 0.8) in [16, 16384]; output lognormal(15, 1.1) in [1, 2048]. Class `code`.
- mixed (EWSJF's setting): class `short` (interactive) prompt uniform[64, 512], output uniform[64, 256];
  class `long` (batch) prompt uniform[2048, 8192], output uniform[256, 1024]; `long_fraction` 0.2.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from llmsched.workload.columns import Columns
from llmsched.workload.lengths import LengthDist, lognormal, uniform
from llmsched.workload.synthetic.base import GENERATORS, Generator, GeneratorParams


class IIDParams(GeneratorParams):
    prompt: LengthDist
    output: LengthDist
    label: str


class _IID(Generator):
    Params = IIDParams
    params: IIDParams

    def generate(self, n: int, rate: float, rng: np.random.Generator, block_size: int = 16) -> Columns:
        p = self.params
        arrival = self.arrivals(n, rate, rng)
        return Columns.single_class(arrival, p.prompt.sample(rng, n), p.output.sample(rng, n), p.label)


class ChatParams(IIDParams):
    prompt: LengthDist = lognormal(128, 1.2, 4, 8192)
    output: LengthDist = lognormal(200, 0.9, 1, 4096)
    label: str = "chat"


@GENERATORS.register("chat")
class Chat(_IID):
    """ShareGPT-like chat: lognormal prompt and answer lengths, independent requests."""

    Params = ChatParams


class CodeParams(IIDParams):
    prompt: LengthDist = lognormal(1500, 0.8, 16, 16384)
    output: LengthDist = lognormal(15, 1.1, 1, 2048)
    label: str = "code"


@GENERATORS.register("code")
class Code(_IID):
    """Code completion: long prompts, very short outputs."""

    Params = CodeParams


class MixedParams(GeneratorParams):
    long_fraction: float = Field(0.2, ge=0, le=1, description="share of `long` (batch) requests")
    short_prompt: LengthDist = uniform(64, 512)
    short_output: LengthDist = uniform(64, 256)
    long_prompt: LengthDist = uniform(2048, 8192)
    long_output: LengthDist = uniform(256, 1024)


@GENERATORS.register("mixed")
class Mixed(Generator):
    """Short interactive requests mixed with long batch ones (classes `short` and `long`)."""

    Params = MixedParams
    params: MixedParams

    def generate(self, n: int, rate: float, rng: np.random.Generator, block_size: int = 16) -> Columns:
        p = self.params
        arrival = self.arrivals(n, rate, rng)
        is_long = rng.random(n) < p.long_fraction
        prompt = np.where(is_long, p.long_prompt.sample(rng, n), p.short_prompt.sample(rng, n))
        output = np.where(is_long, p.long_output.sample(rng, n), p.short_output.sample(rng, n))
        return Columns(arrival, prompt, output, is_long.astype(np.int32), ["short", "long"])
