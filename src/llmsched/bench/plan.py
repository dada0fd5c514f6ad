"""From scenarios to independent runs: cells, stable run ids, saturation configs, load -> rate.

Offered load is a fraction of the *simulated* capacity, so the same scenario means the same thing on any
model or GPU preset: capacity is measured once per (base, workload) by a saturation run (every request
arriving at once, fcfs + round-robin) and each load becomes a synthetic `rate` or a trace `rate_scale`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from llmsched.bench.scenario import PolicySet, Scenario
from llmsched.sim.config import SimConfig

# Arrivals far above any capacity: the whole workload is queued at once, so throughput is the engine's own.
SATURATION_RATE = 1e6
SATURATION_SCALE = 1e6


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Cell:
    """One run of a scenario before its load is turned into a rate."""

    run_id: str
    scenario: str
    workload: str
    label: str
    load: float | None
    seed: int
    config: SimConfig
    cap_key: str | None  # key of the saturation run that gives this cell its rate; None: no load sweep

    def policies(self) -> dict[str, str | None]:
        return {"request": self.config.request_policy, "router": self.config.router,
                "expert": self.config.expert_policy}


def saturation_config(cfg: SimConfig) -> SimConfig:
    """The capacity-measuring run of a config: the whole workload at once, fcfs and round-robin.

    `cfg` should carry the scenario's base expert policy (see `expand`), not a policy set's, so that every
    policy set of a scenario is offered the same rates.
    """
    wl = cfg.workload
    wl = (wl.model_copy(update={"rate": SATURATION_RATE}) if wl.kind == "synthetic"
          else wl.model_copy(update={"rate_scale": SATURATION_SCALE}))
    # At least twice what the cluster can run at once, so the first half of the requests finish while every
    # batch is still full (see capacity_of); a quick run of a few hundred requests would not fill them.
    floor = 2 * cfg.instances * cfg.engine.max_num_seqs
    for size in ("num_requests", "limit"):  # a trace shorter than the floor is simply used whole
        if getattr(wl, size) is not None and getattr(wl, size) < floor:
            wl = wl.model_copy(update={size: floor})
    return cfg.model_copy(update={"workload": wl, "request_policy": "fcfs", "request_params": {},
                                  "router": "round-robin", "router_params": {}})


def expand(sc: Scenario, seeds: list[int] | None = None, loads: list[float] | None = None,
           policies: list[str] | None = None) -> tuple[list[Cell], dict[str, SimConfig]]:
    """Every cell of a scenario (workload x load x policy set x seed) and the saturation runs they need.

    Capacity is measured with the scenario's own base seed, so that across sweep seeds a load is the same
    offered rate and only the workload's randomness varies.
    """
    seeds = seeds if seeds is not None else [int(sc.base.get("seed", 0))]
    load_list: list[float | None] = list(loads if loads is not None else (sc.loads or [None]))
    cells: list[Cell] = []
    caps: dict[str, SimConfig] = {}
    for w in sc.workloads:
        for p in sc.policies:
            if policies is not None and p.label not in policies:
                continue
            base_cfg = sc.config(w, p)
            cap_key = None
            if load_list != [None]:
                # the base with this set's overrides (e.g. another instance count) but no policy of its own
                sat = saturation_config(sc.config(w, PolicySet(label="saturation", overrides=p.overrides)))
                cap_key = "cap-" + _digest(sat.model_dump(mode="json"))
                caps[cap_key] = sat
            for load in load_list:
                for seed in seeds:
                    cfg = base_cfg.model_copy(update={"seed": seed})
                    rid = _digest({"scenario": sc.name, "workload": w.label, "label": p.label, "load": load,
                                   "seed": seed, "config": cfg.model_dump(mode="json")})
                    cells.append(Cell(rid, sc.name, w.label, p.label, load, seed, cfg, cap_key))
    return cells, caps


def capacity_of(result: dict[str, Any]) -> float:
    """Requests per simulated second that the cluster sustains, from a saturation run.

    With per-request samples: k / (time the k-th request finished), k = half the requests. Every request
    arrives at ~0, so the first half finish while the cluster is still full; the last ones finish in a drain
    tail set by the longest outputs, not by throughput, which makes completed / makespan underestimate the
    capacity of a workload too small to keep the batch full. `saturation_config` also makes the run at least
    twice as large as the cluster's concurrency (`instances x max_num_seqs`) for the same reason.
    Without samples: completed / makespan.
    """
    done, span = float(result.get("completed", 0)), float(result.get("sim_duration_s", 0.0))
    if done <= 0 or span <= 0:
        raise RuntimeError(f"saturation run completed {done:g} requests in {span:g} s: no capacity to scale by")
    e2e = sorted((result.get("samples") or {}).get("e2e") or [])
    if len(e2e) >= 2:
        k = len(e2e) // 2
        if e2e[k - 1] > 0:
            return k / e2e[k - 1]
    return done / span


def loaded_config(cell: Cell, capacity: float | None, native_rate: float | None) -> tuple[SimConfig, dict[str, float]]:
    """The cell's SimConfig with its load turned into a rate, and the figures used (for the record)."""
    if cell.load is None or capacity is None:
        return cell.config, {}
    wl = cell.config.workload
    target = cell.load * capacity
    if wl.kind == "synthetic":
        return (cell.config.model_copy(update={"workload": wl.model_copy(update={"rate": target})}),
                {"capacity_rps": capacity, "rate": target})
    if not native_rate or native_rate <= 0:
        raise RuntimeError(f"{cell.scenario}/{cell.workload}: the trace's native arrival rate is unknown")
    scale = target / native_rate
    return (cell.config.model_copy(update={"workload": wl.model_copy(update={"rate_scale": scale})}),
            {"capacity_rps": capacity, "rate": target, "rate_scale": scale, "native_rate": native_rate})
