"""A workload whose mix shifts over time: consecutive phases, each drawn from another generator.

Real traffic changes composition (a batch job starts, a region wakes up); the expert-level scenario needs it
because the experts a workload heats depend on its classes. Each phase is any registered generator with its
own parameters, share of the requests and relative rate; phases follow each other in time. Sessions and
prefix hashes are kept apart between phases (a phase's ids are re-keyed with its index), so two phases never
share a prefix by accident of their generators' numbering.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from llmsched.core.registry import Params
from llmsched.workload.columns import Columns, LazyHashes
from llmsched.workload.synthetic.base import GENERATORS, Generator, GeneratorParams


class Phase(Params):
    generator: str = Field(description="a registered generator name (chat, code, mixed, ...)")
    params: dict[str, Any] = Field(default_factory=dict, description="that generator's parameters")
    fraction: float = Field(1.0, gt=0, description="share of the requests (normalised over the phases)")
    rate_factor: float = Field(1.0, gt=0, description="this phase's rate relative to the run's rate")
    label: str | None = Field(None, description="relabel every request of this phase with this class")


class PhasesParams(GeneratorParams):
    phases: list[Phase] = Field(
        default_factory=lambda: [
            Phase(generator="chat", fraction=0.5),
            Phase(generator="code", fraction=0.5),
        ],
        min_length=1,
    )


def _rekey(h: LazyHashes, k: int) -> LazyHashes:
    if h is None:
        return None
    if callable(h):
        return lambda: _rekey(h(), k)  # type: ignore[return-value]
    return tuple(hash((k, x)) for x in h)


@GENERATORS.register("phases")
class Phases(Generator):
    """Consecutive phases of other generators (see the module docstring)."""

    Params = PhasesParams
    params: PhasesParams

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        for ph in self.params.phases:
            if ph.generator == "phases":
                raise ValueError("a phase cannot itself be a 'phases' workload")
            GENERATORS.get(ph.generator)  # unknown names fail here, with the list of known ones

    def generate(self, n: int, rate: float, rng: np.random.Generator, block_size: int = 16) -> Columns:
        phases = self.params.phases
        w = np.array([ph.fraction for ph in phases], dtype=np.float64)
        counts = np.floor(w / w.sum() * n).astype(int)
        counts[np.argsort(-(w / w.sum() * n - counts), kind="stable")[: n - counts.sum()]] += 1
        parts: list[Columns] = []
        t0 = 0.0
        for k, (ph, m) in enumerate(zip(phases, counts.tolist(), strict=True)):
            if m == 0:
                continue
            r = rate * ph.rate_factor
            part = GENERATORS.create(ph.generator, ph.params).generate(m, r, rng, block_size)
            part.arrival = part.arrival - part.arrival.min() + t0
            t0 = float(part.arrival.max()) + 1.0 / r
            if ph.label is not None:
                part.relabel(ph.label)
            if part.session is not None:
                part.session = [None if s is None else f"p{k}-{s}" for s in part.session]
            if part.hashes is not None and k:
                part.hashes = [_rekey(h, k) for h in part.hashes]
            if part.out_hashes is not None and k:
                part.out_hashes = [_rekey(h, k) for h in part.out_hashes]  # type: ignore[misc]
            parts.append(part)
        return Columns.concat(parts)
