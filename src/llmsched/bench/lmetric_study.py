"""LMetric studies (simulated): the detector ablation, and where LMetric's TTFT gain comes from.

- `ablation`: for each detector a workload built so that its condition occurs, lmetric with every detector on
  against the same with that one off: medians over seeds, the median of the per-seed on/off ratios, and how
  often each detector fired.
- `study`: lmetric's mean / p99 TTFT over round robin's and over llmd-weighted's, one factor at a time
  around a base point (KV capacity per instance, offered load, instance count), on the Mooncake conversation
  trace and on the prefix-heavy synthetic. `plot_study` draws it (one PNG).

Loads are fractions of the simulated capacity (a saturation run, as `llmsched compare` does). Every figure is
simulated and labelled with its model and GPU preset. The benchmarks in benchmarks/bench_lmetric_*.py print
the tables; the functions take `workers` processes (2 by default: the machines this runs on are small).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmsched.bench.plan import capacity_of, saturation_config
from llmsched.engine.config import EngineConfig
from llmsched.sim.config import SimConfig
from llmsched.sim.run import load_requests, simulate
from llmsched.workload.spec import WorkloadSpec

MOONCAKE = "builtin:mooncake-conv"
MOONCAKE_FALLBACK = Path(__file__).resolve().parents[3].parent / "shared" / "traces" / "mooncake" / "conversation_trace.jsonl"


def mooncake_spec(limit: int) -> WorkloadSpec:
    """The Mooncake conversation trace: the packaged builtin if this install has it, else ../shared/traces."""
    try:
        spec = WorkloadSpec(kind="trace", name="mooncake", path=MOONCAKE, limit=limit)
        load_requests(SimConfig(workload=spec.model_copy(update={"limit": 2})))
        return spec
    except (ValueError, FileNotFoundError, OSError):
        if not MOONCAKE_FALLBACK.exists():
            raise FileNotFoundError(f"Mooncake trace: neither {MOONCAKE} nor {MOONCAKE_FALLBACK}") from None
        return WorkloadSpec(kind="trace", name="mooncake", path=str(MOONCAKE_FALLBACK), limit=limit)


def _run(cfg: SimConfig) -> dict[str, Any]:
    r = simulate(cfg)
    return {"ttft_mean": r["ttft_s"]["mean"], "ttft_p99": r["ttft_s"]["p99"], "tpot_mean": r["tpot_s"]["mean"],
            "decisions": r["routing_decisions"], "hit": r["prefix_hit_rate"], "preemptions": r["preemptions"],
            "completed": r["completed"]}


def _capacity(cfg: SimConfig) -> float:
    res = simulate(saturation_config(cfg), keep_samples=True)
    return capacity_of(res)


def at_load(cfg: SimConfig, load: float, capacity: float) -> SimConfig:
    """`cfg` with its arrivals scaled so that they offer `load` x `capacity` requests per second."""
    wl = cfg.workload
    if wl.kind == "synthetic":
        return cfg.model_copy(update={"workload": wl.model_copy(update={"rate": load * capacity})})
    reqs = load_requests(cfg.model_copy(update={"workload": wl.model_copy(update={"rate_scale": 1.0})}))
    native = (len(reqs) - 1) / max(reqs[-1].arrival - reqs[0].arrival, 1e-9)
    return cfg.model_copy(update={"workload": wl.model_copy(update={"rate_scale": load * capacity / native})})


def _map(fn: Any, items: Sequence[Any], workers: int) -> list[Any]:
    if workers <= 1:
        return [fn(x) for x in items]
    with ProcessPoolExecutor(workers) as ex:
        return list(ex.map(fn, items))


# ---- ablation ------------------------------------------------------------------------------------------
@dataclass
class Case:
    detector: str
    why: str
    cfg: SimConfig
    load: float
    router_params: dict[str, Any] = field(default_factory=dict)


# API calls behind 4 long system prompts with a few new tokens each: full prefix hits (P below the index's
# resolution) that pile onto the instances holding them.
HOT_PREFIXES: dict[str, Any] = {
    "session": {"weight": 0.0},
    "agent": {"weight": 0.0},
    "api": {"weight": 1.0, "prefixes": 4, "turns": 1,
            "prefix_len": {"kind": "uniform", "low": 1024, "high": 4096, "min": 1024, "max": 4096},
            "first": {"kind": "lognormal", "median": 24, "sigma": 0.5, "min": 4, "max": 256},
            "output": {"kind": "lognormal", "median": 100, "sigma": 0.8, "min": 1, "max": 1024}},
}


def ablation_cases(requests: int) -> list[Case]:
    base = SimConfig(model="llama-3.1-8b", gpu="h100", instances=4, router="lmetric")
    hot = WorkloadSpec(kind="synthetic", name="prefix-heavy", num_requests=requests, params=HOT_PREFIXES)
    mixed = WorkloadSpec(kind="synthetic", name="mixed", num_requests=requests, params={"long_fraction": 0.3})
    return [
        Case("kv-pressure", "KV for 32k tokens per instance, 30% long requests (2-8k prompts, 256-1k outputs)",
             base.model_copy(update={"workload": mixed, "engine": EngineConfig(num_gpu_blocks=2048)}), 0.9),
        Case("load-guard", "hot prefixes (API calls: 4 system prompts of 1-4k tokens + ~24 new tokens), "
             "max_num_seqs 16", base.model_copy(update={"workload": hot, "engine": EngineConfig(max_num_seqs=16)}), 0.9),
    ]


def _ablation_job(job: tuple[SimConfig, float, float, dict[str, Any], tuple[str, ...], int]) -> dict[str, Any]:
    cfg, load, cap, params, detectors, seed = job
    c = at_load(cfg, load, cap).model_copy(update={"seed": seed, "router_params": {**params, "detectors": detectors}})
    return _run(c)


def ablation(requests: int = 1500, seeds: Sequence[int] = (0, 1, 2), workers: int = 2) -> list[dict[str, Any]]:
    """One row per detector: medians over seeds with all detectors on and with that one off."""
    from llmsched.policies.instance.lmetric import DETECTORS

    cases = ablation_cases(requests)
    caps = _map(_capacity, [c.cfg for c in cases], workers)
    jobs = []
    for case, cap in zip(cases, caps, strict=True):
        off = tuple(d for d in DETECTORS if d != case.detector)
        for dets in (DETECTORS, off):
            jobs += [(case.cfg, case.load, cap, case.router_params, dets, s) for s in seeds]
    res = _map(_ablation_job, jobs, workers)
    rows = []
    k = 0
    for case in cases:
        on, off = res[k : k + len(seeds)], res[k + len(seeds) : k + 2 * len(seeds)]
        k += 2 * len(seeds)

        def med(rs: list[dict[str, Any]], key: str) -> float:
            return statistics.median(r[key] for r in rs)

        fired = {d: statistics.median(r["decisions"].get(d, 0) for r in on) for d in DETECTORS}
        rows.append({
            "detector": case.detector, "workload": case.why, "load": case.load,
            "model": f"{case.cfg.model}/{case.cfg.gpu}", "instances": case.cfg.instances,
            "on": {m: med(on, m) for m in ("ttft_mean", "ttft_p99", "tpot_mean")},
            "off": {m: med(off, m) for m in ("ttft_mean", "ttft_p99", "tpot_mean")},
            # Paired by seed: the seeds' spread is larger than the detectors' effect, so compare within a seed.
            "ratio": {m: statistics.median(a[m] / b[m] for a, b in zip(on, off, strict=True))
                      for m in ("ttft_mean", "ttft_p99", "tpot_mean")},
            "per_seed_mean_ms": [(a["ttft_mean"] * 1e3, b["ttft_mean"] * 1e3) for a, b in zip(on, off, strict=True)],
            "fired": fired, "decisions": statistics.median(r["completed"] for r in on),
            "changed": any(a[m] != b[m] for a, b in zip(on, off, strict=True)
                           for m in ("ttft_mean", "ttft_p99", "tpot_mean")),
        })
    return rows


# ---- study ---------------------------------------------------------------------------------------------
ROUTERS = ("round-robin", "llmd-weighted", "lmetric")


@dataclass
class Point:
    workload: str
    factor: str  # which factor this point varies ("base" for the base point)
    kv_tokens: int | None  # KV capacity per instance (None: the model/GPU default)
    load: float
    instances: int


def study_points(kv: Sequence[int | None], loads: Sequence[float], instances: Sequence[int],
                 base: tuple[int | None, float, int]) -> list[tuple[str, int | None, float, int]]:
    """One factor at a time around `base` = (kv, load, instances)."""
    pts = [("base", *base)]
    pts += [("kv", k, base[1], base[2]) for k in kv if k != base[0]]
    pts += [("load", base[0], x, base[2]) for x in loads if x != base[1]]
    pts += [("instances", base[0], base[1], n) for n in instances if n != base[2]]
    return pts


def _study_cfg(wl: WorkloadSpec, kv_tokens: int | None, instances: int, model: str, gpu: str) -> SimConfig:
    eng = EngineConfig(num_gpu_blocks=kv_tokens // 16) if kv_tokens else EngineConfig()
    return SimConfig(workload=wl, model=model, gpu=gpu, instances=instances, engine=eng)


def _study_job(job: tuple[SimConfig, float, float, str, int]) -> dict[str, Any]:
    cfg, load, cap, router, seed = job
    return _run(at_load(cfg, load, cap).model_copy(update={"router": router, "seed": seed}))


def study(workloads: dict[str, WorkloadSpec], kv: Sequence[int | None], loads: Sequence[float],
          instances: Sequence[int], base: tuple[int | None, float, int], model: str = "llama-3.1-8b",
          gpu: str = "h100", seeds: Sequence[int] = (0,), workers: int = 2) -> list[dict[str, Any]]:
    """Rows: workload, factor, kv_tokens, load, instances, and per router its medians over seeds."""
    pts = [(name, *pt) for name in workloads for pt in study_points(kv, loads, instances, base)]
    cfgs = {(name, k, n): _study_cfg(workloads[name], k, n, model, gpu) for name, _, k, _, n in pts}
    keys = list(cfgs)
    caps = dict(zip(keys, _map(_capacity, [cfgs[k] for k in keys], workers), strict=True))
    jobs = [(cfgs[(name, k, n)], x, caps[(name, k, n)], r, s)
            for name, _, k, x, n in pts for r in ROUTERS for s in seeds]
    res = iter(_map(_study_job, jobs, workers))
    rows = []
    for name, factor, k, x, n in pts:
        row: dict[str, Any] = {"workload": name, "factor": factor, "kv_tokens": k, "load": x, "instances": n,
                               "model": f"{model}/{gpu}", "capacity_rps": caps[(name, k, n)]}
        for r in ROUTERS:
            rs = [next(res) for _ in seeds]
            row[r] = {m: statistics.median(q[m] for q in rs) for m in ("ttft_mean", "ttft_p99", "tpot_mean", "hit")}
        rows.append(row)
    return rows


def default_kv_tokens(model: str = "llama-3.1-8b", gpu: str = "h100") -> int:
    """The KV capacity per instance the model/GPU preset gives (tokens), for labels."""
    from llmsched.model import build_cost_model

    return int(build_cost_model(model, gpu, None).kv_capacity_tokens(EngineConfig().gpu_memory_utilization))


def plot_study(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """One PNG: lmetric's mean TTFT as a fraction of round robin's and of llmd-weighted's, per factor and
    workload (the paper's -92% is 0.08 on this axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    factors = [("kv", "kv_tokens", "KV capacity per instance (tokens)"), ("load", "load", "offered load"),
               ("instances", "instances", "instances")]
    workloads = sorted({r["workload"] for r in rows})
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), sharey=True)
    default_kv = default_kv_tokens(rows[0]["model"].split("/")[0], rows[0]["model"].split("/")[1]) if rows else 0
    for ax, (factor, key, label) in zip(axes, factors, strict=True):
        for wl in workloads:
            pts = [r for r in rows if r["workload"] == wl and r["factor"] in ("base", factor)]
            pts.sort(key=lambda r: (r[key] or default_kv) if key == "kv_tokens" else r[key])
            xs = [(r[key] or default_kv) if key == "kv_tokens" else r[key] for r in pts]
            for base, style in (("round-robin", "-o"), ("llmd-weighted", "--s")):
                ys = [r["lmetric"]["ttft_mean"] / r[base]["ttft_mean"] for r in pts]
                ax.plot(xs, ys, style, label=f"{wl}: vs {base}")
        if factor == "kv":
            ax.set_xscale("log")
        ax.axhline(0.08, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("lmetric mean TTFT / baseline's")
    axes[0].text(axes[0].get_xlim()[0], 0.09, " paper: 0.08 (-92%)", fontsize=8, color="grey")
    axes[-1].legend(fontsize=7)
    model = rows[0]["model"] if rows else ""
    fig.suptitle(f"Where LMetric wins (simulated, {model}); one factor at a time around the base point")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
