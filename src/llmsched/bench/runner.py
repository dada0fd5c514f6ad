"""Runs cells on an executor: saturation runs first (capacities), then every cell at its offered load.

`simulate` is a parameter (default: `llmsched.sim.run.simulate`) so tests can run the whole pipeline on a
fake in milliseconds; it must be a module-level function for a process pool or Ray to ship it by name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rich.progress import Progress

from llmsched.bench.executors import Executor
from llmsched.bench.plan import Cell, capacity_of, loaded_config
from llmsched.sim.config import SimConfig

SimulateFn = Callable[..., dict[str, Any]]
NativeRateFn = Callable[[SimConfig], float]
# Per-request arrays and time series: wanted for plots, too big for results.json and sweep logs.
BULKY_KEYS = ("samples", "balancedness_series")


def run_sim(simulate: SimulateFn | None, cfg: dict[str, Any], keep_samples: bool) -> dict[str, Any]:
    """Worker entry point: one simulation from a plain-dict config (plain data travels to any executor)."""
    if simulate is None:
        from llmsched.sim.run import simulate as simulate_fn
    else:
        simulate_fn = simulate
    return simulate_fn(SimConfig(**cfg), progress=False, keep_samples=keep_samples)


def default_native_rate(cfg: SimConfig) -> float:
    """Arrivals per second of a trace as recorded: (n - 1) / (last arrival - first arrival)."""
    from llmsched.sim.run import load_requests

    reqs = load_requests(cfg.model_copy(update={"workload": cfg.workload.model_copy(update={"rate_scale": 1.0})}))
    if len(reqs) < 2:
        raise RuntimeError(f"trace {cfg.workload.path} has fewer than 2 requests: no arrival rate")
    span = reqs[-1].arrival - reqs[0].arrival
    if span <= 0:
        raise RuntimeError(f"trace {cfg.workload.path}: every request arrives at the same time")
    return (len(reqs) - 1) / span


def strip_bulky(result: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in BULKY_KEYS}


@dataclass
class Runner:
    executor: Executor
    simulate: SimulateFn | None = None
    native_rate: NativeRateFn | None = None
    keep_samples: bool = True
    progress: Progress | None = None
    cpu_s: float = 0.0  # CPU seconds the simulations reported (saturation runs included)
    _native: dict[str, float] = field(default_factory=dict)

    def capacities(self, caps: Mapping[str, SimConfig], known: Mapping[str, float] | None = None,
                   on_capacity: Callable[[str, float], None] | None = None) -> dict[str, float]:
        """Capacity (req/s) of every saturation run not already `known`."""
        out = dict(known or {})
        todo = [(k, (self.simulate, c.model_dump(mode="json"), True)) for k, c in caps.items() if k not in out]
        if not todo:
            return out
        task = self.progress.add_task("measuring capacity", total=len(todo)) if self.progress else None
        for key, result in self.executor.run(run_sim, todo):
            self.cpu_s += float(result.get("cpu_s", 0.0))
            out[key] = capacity_of(result)
            if on_capacity is not None:
                on_capacity(key, out[key])
            if self.progress is not None and task is not None:
                self.progress.advance(task)
        return out

    def _native_rate(self, cfg: SimConfig) -> float:
        key = cfg.workload.model_dump_json()
        if key not in self._native:
            self._native[key] = (self.native_rate or default_native_rate)(cfg)
        return self._native[key]

    def run(self, cells: Iterable[Cell], capacities: Mapping[str, float],
            on_record: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """Run every cell; each finished run becomes a record, passed to `on_record` as soon as it lands."""
        cells = list(cells)
        by_id: dict[str, tuple[Cell, dict[str, float]]] = {}
        items = []
        for c in cells:
            cap = capacities[c.cap_key] if c.cap_key is not None else None
            native = (self._native_rate(c.config) if cap is not None and c.config.workload.kind == "trace"
                      else None)
            cfg, figures = loaded_config(c, cap, native)
            by_id[c.run_id] = (c, figures)
            items.append((c.run_id, (self.simulate, cfg.model_dump(mode="json"), self.keep_samples)))
        task = self.progress.add_task("simulating", total=len(items)) if self.progress and items else None
        records = []
        for run_id, result in self.executor.run(run_sim, items):
            self.cpu_s += float(result.get("cpu_s", 0.0))
            c, figures = by_id[run_id]
            rec = {"run_id": run_id, "scenario": c.scenario, "workload": c.workload, "label": c.label,
                   "load": c.load, "seed": c.seed, "policies": c.policies(), **figures,
                   "simulated": result.get("simulated") or simulated_label(c.config), "result": result}
            records.append(rec)
            if on_record is not None:
                on_record(rec)
            if self.progress is not None and task is not None:
                self.progress.advance(task)
        order = {c.run_id: i for i, c in enumerate(cells)}
        records.sort(key=lambda r: order[r["run_id"]])
        return records


def simulated_label(cfg: SimConfig) -> dict[str, Any]:
    return {"model": cfg.model, "gpu": cfg.gpu, "tp": cfg.tp, "instances": cfg.instances}
