"""`simulate --engine vllm`: vLLM's real scheduler inside our discrete-event loop (needs llmsched[vllm])."""

from __future__ import annotations

import math

import pytest

from llmsched.bench.scenario import validate
from llmsched.engine.config import EngineConfig
from llmsched.sim.config import SimConfig
from llmsched.sim.run import simulate
from llmsched.vllm.sim_engine import VllmEngine
from llmsched.workload.spec import WorkloadSpec


def _both(cfg: SimConfig) -> tuple[dict, dict]:
    return simulate(cfg, keep_samples=True), simulate(
        cfg.model_copy(update={"engine_kind": "vllm"}), keep_samples=True
    )


def _close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def test_exact_engine_times_every_request_as_our_engine_on_a_chat_workload() -> None:
    cfg = SimConfig(workload=WorkloadSpec(kind="synthetic", name="chat", num_requests=60, rate=20.0), seed=3)
    ours, theirs = _both(cfg)
    assert theirs["simulated"]["engine_kind"] == "vllm" and ours["simulated"]["engine_kind"] == "llmsched"
    assert theirs["completed"] == ours["completed"] == 60
    for key in ("ttft", "tpot", "e2e"):
        a, b = ours["samples"][key], theirs["samples"][key]
        assert all(_close(x, y) for x, y in zip(a, b, strict=True)), key
    assert theirs["per_instance"][0]["steps"] > 0


def test_exact_engine_gives_routers_snapshots_and_hits_shared_prefixes_and_follow_ups() -> None:
    """Two instances behind a snapshot-reading router, multi-turn sessions and shared system prompts."""
    cfg = SimConfig(
        workload=WorkloadSpec(kind="synthetic", name="prefix-heavy", num_requests=80, rate=15.0),
        instances=2,
        router="least-kv",
        seed=1,
    )
    ours, theirs = _both(cfg)
    assert theirs["prefix_hit_rate"] > 0.2
    assert _close(ours["prefix_hit_rate"], theirs["prefix_hit_rate"])
    assert ours["routing_decisions"] == theirs["routing_decisions"]
    assert _close(ours["ttft_s"]["mean"], theirs["ttft_s"]["mean"])
    assert _close(ours["e2e_s"]["p99"], theirs["e2e_s"]["p99"])


def test_exact_engine_preempts_on_a_small_cache_as_our_engine() -> None:
    cfg = SimConfig(
        workload=WorkloadSpec(kind="synthetic", name="chat", num_requests=40, rate=200.0),
        engine=EngineConfig(num_gpu_blocks=300, max_num_seqs=16),
        seed=2,
    )
    ours, theirs = _both(cfg)
    assert theirs["preemptions"] == ours["preemptions"] > 0
    assert _close(ours["e2e_s"]["mean"], theirs["e2e_s"]["mean"])


def test_scenario_engine_key_reaches_every_cell() -> None:
    sc = validate(
        {
            "name": "t",
            "engine": "vllm",
            "workloads": [{"label": "w", "kind": "synthetic", "name": "chat"}],
            "policies": [{"label": "fcfs", "request": "fcfs"}],
        },
        "test.yaml",
    )
    assert sc.config(sc.workloads[0], sc.policies[0]).engine_kind == "vllm"


def test_exact_engine_refuses_a_queue_vllm_does_not_have() -> None:
    from llmsched.model import build_cost_model

    with pytest.raises(ValueError, match="fcfs or priority"):
        VllmEngine(build_cost_model("llama-3.1-8b", "h100", None), "sjf")


def test_exact_engine_snapshots_match_while_a_step_is_in_flight() -> None:
    """Periodic snapshots land inside steps: pending prefill must not count the in-flight chunk as done."""
    cfg = SimConfig(
        workload=WorkloadSpec(kind="synthetic", name="mixed", num_requests=60, rate=6.0),
        instances=2,
        router="lmetric",
        metrics_interval_s=0.5,
        seed=4,
    )
    ours, theirs = _both(cfg)
    assert ours["routing_decisions"] == theirs["routing_decisions"]
    assert all(_close(a, b) for a, b in zip(ours["samples"]["ttft"], theirs["samples"]["ttft"], strict=True))


def test_exact_engine_on_a_moe_model_equals_our_engine_stepping_token_by_token() -> None:
    """MoE step costs sample expert loads per priced call: compare against our engine without decode runs."""
    from llmsched.sim.run import build_cluster, load_requests

    cfg = SimConfig(
        workload=WorkloadSpec(kind="synthetic", name="mixed", num_requests=40),
        model="qwen3-30b-a3b",
        gpu="h100",
    )
    runs = []
    for kind in ("llmsched", "vllm"):
        c = cfg.model_copy(update={"engine_kind": kind})
        reqs = load_requests(c)
        cluster = build_cluster(c)
        cluster.max_run = 1
        cluster.run(reqs)
        runs.append([(r.first_token, r.finish) for r in reqs])
    assert runs[0] == runs[1]
