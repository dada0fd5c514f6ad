"""Build a cluster from a `SimConfig`, run it, and report the `simulate --json` object."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from llmsched.core.types import Request
from llmsched.engine.engine import Engine
from llmsched.policies.instance import ROUTERS
from llmsched.policies.request import REQUEST_POLICIES
from llmsched.sim.cluster import Cluster
from llmsched.sim.config import SimConfig


def _with_run_params(cls: type, params: dict[str, Any], **run: Any) -> dict[str, Any]:
    """Give a policy the run's settings it declares (seed, block size) unless the user set them: the same seed
    gives the same numbers, and a router's prefix index hashes blocks the engine's way."""
    fields = getattr(getattr(cls, "Params", None), "model_fields", {})
    return {**{k: v for k, v in run.items() if k in fields}, **params}


def build_cluster(cfg: SimConfig) -> Cluster:
    from llmsched.model import build_cost_model, get_llm

    llm = get_llm(cfg.model)
    engines = []
    req_cls = REQUEST_POLICIES.get(cfg.request_policy)
    knobs = cfg.calibration.knobs() if cfg.calibration is not None else {}
    # A dense model's cost model is a pure function with memo tables (CostModel._tok / _seq): one shared by
    # every engine fills them once instead of once per engine (at 512 instances that warm-up was ~15% of a
    # 200k-request run). MoE cost models draw expert loads per instance, so each engine gets its own.
    shared = None if getattr(llm, "is_moe", False) else build_cost_model(cfg.model, cfg.gpu, cfg.tp, **knobs)
    for i in range(cfg.instances):
        cost = shared if shared is not None else build_cost_model(cfg.model, cfg.gpu, cfg.tp, **knobs)
        if getattr(llm, "is_moe", False):
            from llmsched.model.moe import build_moe_cost

            cost = build_moe_cost(cost, cfg.expert_policy or "static", dict(cfg.expert_params), cfg.seed * 1000 + i)
        elif cfg.expert_policy not in (None, "static"):
            raise ValueError(f"--expert-policy {cfg.expert_policy!r} needs an MoE model; {cfg.model} is dense")
        if cfg.engine_kind == "vllm":
            if cfg.engine.lora is not None:
                raise ValueError("engine.lora needs engine_kind llmsched: the vLLM-scheduler engine has no LoRA model")
            from llmsched.vllm.sim_engine import build_vllm_engine

            engines.append(build_vllm_engine(cost, cfg, i))
            continue
        policy = req_cls(**_with_run_params(req_cls, cfg.request_params, seed=cfg.seed))
        engines.append(
            Engine(cost, policy, cfg.engine, instance=i, record_token_times=cfg.record_token_times, collect_tokens=False)
        )
    router_cls = ROUTERS.get(cfg.router)
    router = router_cls(
        **_with_run_params(router_cls, cfg.router_params, seed=cfg.seed, block_size=cfg.engine.block_size,
                           max_num_seqs=cfg.engine.max_num_seqs)
    )
    return Cluster(engines, router, cfg.metrics_interval_s)


def load_requests(cfg: SimConfig) -> list[Request]:
    from llmsched.workload import load_workload

    return load_workload(cfg.workload, block_size=cfg.engine.block_size, seed=cfg.seed)


def simulate(
    cfg: SimConfig,
    progress: bool = False,
    keep_samples: bool = False,
    requests: Sequence[Request] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run one simulation. `requests` overrides the workload (tests); they are consumed (mutated)."""
    t0, c0 = time.perf_counter(), time.process_time()
    reqs = list(requests) if requests is not None else load_requests(cfg)
    t_load = time.perf_counter() - t0
    cluster = build_cluster(cfg)
    t1 = time.perf_counter()
    if progress and len(reqs) > 2000:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        with Progress(
            "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            transient=True,
        ) as bar:
            task = bar.add_task("simulating (requests arrived)", total=len(reqs))
            cluster.run(reqs, lambda k: bar.update(task, completed=k))
    else:
        cluster.run(reqs, (lambda k: on_progress(k, len(reqs))) if on_progress else None)
    wall = time.perf_counter() - t1
    res = report(cfg, cluster, reqs, wall, t_load, keep_samples)
    res["cpu_s"] = time.process_time() - c0  # CPU seconds of the whole call: wall_s grows on a busy machine
    return res


def report(
    cfg: SimConfig, cluster: Cluster, reqs: Sequence[Request], wall: float, t_load: float, keep_samples: bool
) -> dict[str, Any]:
    m = cluster.metrics
    first = reqs[0].arrival if reqs else 0.0
    duration = max(0.0, (m.last_finish if len(m) else first) - first)
    res = m.summary(duration)
    engines = cluster.engines
    base_cost = getattr(engines[0].cost, "base", engines[0].cost) if engines else None
    queries = sum(e.kv.queries for e in engines)
    hits = sum(e.kv.hits for e in engines)
    res.update(
        {
            "submitted": len(reqs),
            "rejected": len(cluster.rejected),
            "wall_s": wall,
            "workload_wall_s": t_load,  # wall seconds spent reading or generating the workload
            "sim_requests_per_wall_s": len(reqs) / wall if wall > 0 else 0.0,
            "prefix_hit_rate": hits / queries if queries else 0.0,
            "preemptions": sum(e.stats.preemptions for e in engines),
            "simulated": {
                "model": cfg.model,
                "gpu": cfg.gpu,
                "tp": getattr(base_cost, "tp", cfg.tp),
                "gpus_per_instance": getattr(base_cost, "num_gpus", None),
                "expert_parallel": base_cost.num_gpus if getattr(getattr(base_cost, "llm", None), "is_moe", False) else None,
                "instances": cfg.instances,
                "request_policy": cfg.request_policy,
                "engine_kind": cfg.engine_kind,
                "router": cfg.router,
                "expert_policy": cfg.expert_policy,
                "metrics_interval_s": cfg.metrics_interval_s,
                "seed": cfg.seed,
                "engine": {k: getattr(cfg.engine, k) for k in (
                    "max_num_seqs", "max_num_batched_tokens", "block_size", "enable_chunked_prefill",
                    "enable_prefix_caching", "num_gpu_blocks")},
                "kv_blocks_per_instance": engines[0].kv.num_blocks if engines else None,
                "workload": workload_block(cfg, reqs),
                "llmsched_version": version(),
                **({"calibration": cfg.calibration.knobs()} if cfg.calibration is not None else {}),
            },
            "per_instance": [
                {
                    "instance": e.instance,
                    "finished": e.stats.finished,
                    "utilisation": e.stats.busy_time / duration if duration > 0 else 0.0,
                    "steps": e.stats.steps,
                    "decode_runs": e.stats.runs,
                    "preemptions": e.stats.preemptions,
                    "prefix_hit_rate": e.kv.hits / e.kv.queries if e.kv.queries else 0.0,
                    "kv_blocks": e.kv.num_blocks,
                }
                for e in engines
            ],
            "routing_decisions": dict(cluster.router.decisions),
        }
    )
    if cluster.rejected:
        res["rejected_examples"] = [msg for _, msg in cluster.rejected[:3]]
    moe = [e.cost.moe_stats() for e in engines if hasattr(e.cost, "moe_stats")]
    if moe:
        res.update(_merge_moe(moe))
    if keep_samples:
        res["samples"] = m.samples()
        if moe and "balancedness_series" in moe[0]:
            res["balancedness_series"] = moe[0]["balancedness_series"]
    return res


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as pkg_version

    try:
        return pkg_version("llmsched")
    except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
        return "unknown"


def workload_block(cfg: SimConfig, reqs: Sequence[Request]) -> dict[str, Any]:
    """What ran: the workload as configured plus the requests it gave (count, offered rate)."""
    wl = cfg.workload
    span = (reqs[-1].arrival - reqs[0].arrival) if len(reqs) >= 2 else 0.0
    return {
        "kind": wl.kind,
        "name": wl.path if wl.kind == "trace" else wl.name,
        **({"format": wl.name} if wl.kind == "trace" else {}),
        "rate": wl.rate,
        "rate_scale": wl.rate_scale,
        "num_requests": len(reqs),
        "offered_rate_rps": (len(reqs) - 1) / span if span > 0 else None,
        "window": list(wl.window) if wl.window else None,
        "params": dict(wl.params),
    }


def _merge_moe(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Average the per-instance MoE figures (sum the migrations)."""
    out: dict[str, Any] = {}
    for key in ("expert_balancedness", "a2a_bytes_per_token"):
        vals = [s[key] for s in stats if key in s]
        if vals:
            out[key] = sum(vals) / len(vals)
    for key in ("expert_migrations", "expert_rebalances"):
        out[key] = sum(int(s.get(key, 0)) for s in stats)
    out["migration_stall_s"] = sum(float(s.get("migration_stall_s", 0.0)) for s in stats)
    return out
