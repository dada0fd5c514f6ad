"""`llmsched compare` without the CLI: load scenarios, resolve traces, run every cell, return records."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmsched.bench.executors import Executor
from llmsched.bench.plan import Cell, expand
from llmsched.bench.runner import NativeRateFn, Runner, SimulateFn
from llmsched.bench.scenario import Scenario, builtin_names, load_scenario
from llmsched.bench.traces import Skipped, resolve_traces


@dataclass
class Comparison:
    scenarios: list[Scenario]
    cells: list[Cell]
    caps: dict[str, Any]
    skipped: list[Skipped] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    cpu_s: float = 0.0  # CPU seconds of every simulation, saturation runs included


def prepare(names: list[str] | None, quick: bool, seed: int | None = None,
            traces: Path | None = None, calibration: Any = None) -> Comparison:
    """Scenarios (every built-in one when `names` is empty), their cells and saturation runs; `calibration`
    (a `Calibration`) goes into every scenario's base."""
    scenarios, cells, caps, skipped = [], [], {}, []
    for name in names or builtin_names():
        sc = load_scenario(name)
        if quick:
            sc = sc.with_quick()
        if seed is not None:
            sc = sc.with_seed(seed)
        if calibration is not None:
            sc = sc.with_calibration(calibration)
        sc, skip = resolve_traces(sc, traces)
        skipped += skip
        c, k = expand(sc)
        scenarios.append(sc)
        cells += c
        caps.update(k)
    return Comparison(scenarios, cells, caps, skipped)


def run(comp: Comparison, executor: Executor, *, simulate: SimulateFn | None = None,
        native_rate: NativeRateFn | None = None, progress: Any = None) -> Comparison:
    runner = Runner(executor, simulate=simulate, native_rate=native_rate, keep_samples=True, progress=progress)
    caps = runner.capacities(comp.caps)
    comp.records = runner.run(comp.cells, caps)
    comp.cpu_s = runner.cpu_s
    return comp
