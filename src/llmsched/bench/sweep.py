"""`llmsched sweep FILE`: a grid of scenarios x policy sets x loads x seeds, resumable, with CIs across seeds.

The sweep file (docs/sweeps.md):

    name: stack-ablation
    scenarios: [stack]          # built-in names or YAML files (relative to the sweep file)
    seeds: 5                    # or a list: [0, 1, 2, 3, 4]
    loads: [0.5, 0.8, 1.1]      # optional: replaces each scenario's loads
    policies: [vllm-default, full-stack]   # optional: keep these policy-set labels
    quick: false                # optional: apply each scenario's quick overrides first
    num_requests: 600           # optional: replaces every workload's size
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llmsched.bench.executors import Executor
from llmsched.bench.plan import Cell, expand
from llmsched.bench.runlog import RunLog
from llmsched.bench.runner import NativeRateFn, Runner, SimulateFn
from llmsched.bench.scenario import Scenario, ScenarioError, check_loads, load_scenario
from llmsched.bench.traces import Skipped, resolve_traces
from llmsched.core.names import format_validation
from llmsched.yamlfile import read_yaml


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "sweep"
    scenarios: list[str] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    loads: list[float] | None = Field(None, min_length=1)
    policies: list[str] | None = None
    quick: bool = False
    num_requests: int | None = Field(None, ge=1)

    @field_validator("seeds", mode="before")
    @classmethod
    def _count_or_list(cls, v: Any) -> Any:
        if isinstance(v, int):
            if v < 1:
                raise ValueError("seeds: a count must be >= 1")
            return list(range(v))
        return v

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("seeds must be distinct")
        return v

    @field_validator("loads")
    @classmethod
    def _positive(cls, v: list[float] | None) -> list[float] | None:
        return check_loads(v)


def load_sweep(path: Path) -> tuple[SweepSpec, list[Scenario]]:
    """Parse and validate a sweep file and every scenario it names; errors name the file and field."""
    data = read_yaml(path, ScenarioError)
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: a sweep file is a mapping with at least `scenarios:`")
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as e:
        raise ScenarioError(f"{path}: {format_validation(e, SweepSpec)}") from None
    scenarios = []
    for name in spec.scenarios:
        rel = path.parent / name
        sc = load_scenario(rel if rel.suffix in (".yaml", ".yml") else name)
        if spec.quick:
            sc = sc.with_quick()
        if spec.num_requests is not None:
            sc = sc.model_copy(update={"workloads": [w.model_copy(update={"num_requests": spec.num_requests})
                                                     for w in sc.workloads]})
        if spec.policies is not None and not set(spec.policies) & {p.label for p in sc.policies}:
            raise ScenarioError(f"{path}: policies: none of {spec.policies} is a policy set of {sc.name!r}")
        scenarios.append(sc)
    return spec, scenarios


@dataclass
class SweepPlan:
    cells: list[Cell]
    caps: dict[str, Any]
    skipped: list[Skipped]


def plan_sweep(spec: SweepSpec, scenarios: list[Scenario], traces: Path | None = None) -> SweepPlan:
    cells: list[Cell] = []
    caps: dict[str, Any] = {}
    skipped: list[Skipped] = []
    for sc in scenarios:
        sc, skip = resolve_traces(sc, traces)
        skipped += skip
        c, k = expand(sc, seeds=spec.seeds, loads=spec.loads, policies=spec.policies)
        cells += c
        caps.update(k)
    ids = [c.run_id for c in cells]
    if len(set(ids)) != len(ids):
        raise ScenarioError("two runs of the sweep are identical (same scenario, workload, label, load, seed)")
    return SweepPlan(cells, caps, skipped)


def run_sweep(plan: SweepPlan, log: RunLog, executor: Executor, *, simulate: SimulateFn | None = None,
              native_rate: NativeRateFn | None = None, progress: Any = None,
              on_record: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Run every cell of the plan not already in `log`, appending each result as it lands; returns all the
    plan's records (logged and new) in plan order."""
    runner = Runner(executor, simulate=simulate, native_rate=native_rate, keep_samples=False, progress=progress)
    caps = runner.capacities(plan.caps, known=log.capacities, on_capacity=log.add_capacity)
    todo = [c for c in plan.cells if c.run_id not in log.runs]

    def record(rec: dict[str, Any]) -> None:
        log.add_run(rec)
        if on_record is not None:
            on_record(rec)

    runner.run(todo, caps, on_record=record)
    return [log.runs[c.run_id] for c in plan.cells]


# Wall-clock figures of the simulate result: the only part that differs between executors and repeats.
WALL_KEYS = frozenset({"wall_s", "workload_wall_s", "cpu_s", "sim_requests_per_wall_s"})


def comparable(result: Any) -> Any:
    """A result (or record, or list of them) without its wall-clock figures."""
    if isinstance(result, dict):
        return {k: comparable(v) for k, v in result.items() if k not in WALL_KEYS and not k.startswith("wall")}
    if isinstance(result, list):
        return [comparable(v) for v in result]
    return result
