"""Speed work must not change outcomes: simulations on small fixed workloads, digested (every request's instance,
cached tokens, first-token and finish times, and the router's decision counts), must match digests recorded
from the code before the speed work (first on commit 15b912e; re-recorded on wip/ewsjf's tree, which has the
decode-attention CTA-quantisation change but none of the speed work: that change reorders the float additions of
H100's decode price by an ulp, which moves timestamps; the speed work on top of it gives the same digests).

A changed digest means some decision or timestamp moved: if that is a deliberate fix, say so in the commit and
re-record with `python tests/test_sim_digest.py` (it prints the table below)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from llmsched.engine.config import EngineConfig
from llmsched.sim.config import SimConfig
from llmsched.sim.run import build_cluster, load_requests
from llmsched.workload.spec import WorkloadSpec

# name -> (workload, requests, instances, rate per instance, router, router params, metrics interval, engine)
CASES: dict[str, tuple[str, int, int, float, str, dict[str, Any], float, dict[str, Any]]] = {
    # small KV and max_num_seqs: preemptions, and lmetric's kv-pressure and load-guard detectors fire
    "tight-lmetric-live": ("chat", 2000, 8, 40.0, "lmetric", {}, 0.0, {"num_gpu_blocks": 1500, "max_num_seqs": 16}),
    "chat-lmetric-live": ("chat", 3000, 16, 15.0, "lmetric", {}, 0.0, {}),
    "chat-lmetric-scraped": ("chat", 2000, 16, 15.0, "lmetric", {}, 0.05, {}),
    "chat-rr": ("chat", 2000, 16, 15.0, "round-robin", {}, 0.0, {}),
    "prefix-lmetric-live": ("prefix-heavy", 1500, 8, 4.0, "lmetric", {}, 0.0, {}),
    "prefix-lmetric-scraped": ("prefix-heavy", 1500, 8, 4.0, "lmetric", {}, 0.1, {}),
    "prefix-lmetric-ttl-feedback": ("prefix-heavy", 1500, 8, 4.0, "lmetric",
                                    {"index_ttl_s": 5.0, "hit_feedback": True, "index_capacity_blocks": 2000}, 0.0, {}),
    "prefix-gimbal": ("prefix-heavy", 1000, 8, 4.0, "gimbal", {}, 0.0, {}),
    "prefix-llmd": ("prefix-heavy", 1000, 8, 4.0, "llmd-weighted", {}, 0.0, {}),
    "prefix-sglang": ("prefix-heavy", 1000, 8, 4.0, "sglang-cache-aware", {}, 0.0, {}),
    "prefix-prefix": ("prefix-heavy", 1000, 8, 4.0, "prefix", {}, 0.0, {}),
    "prefix-linear": ("prefix-heavy", 1000, 8, 4.0, "linear", {}, 0.0, {}),
}

# Recorded on 15b912e (before the speed work).
EXPECTED = {
    'tight-lmetric-live': '2fb4672dc29d9de0b2b9',
    'chat-lmetric-live': '5520ee0dde38f22c310a',
    'chat-lmetric-scraped': '09cac8e6bc0158731e78',
    'chat-rr': '254431ae775fbc8051bb',
    'prefix-lmetric-live': '4cc53805cc2a80a513fb',
    'prefix-lmetric-scraped': '27aefbcbdf0f2544cac8',
    'prefix-lmetric-ttl-feedback': '9b6c0e0e929db2de9951',
    'prefix-gimbal': '1a5e0c33265765947422',
    'prefix-llmd': '523aae94f38942f270d7',
    'prefix-sglang': 'a626effd666c471b72fd',
    'prefix-prefix': '3d8564a64c42db087ce5',
    'prefix-linear': '6cf996f36645db8a604f',
}


def digest(case: str) -> str:
    workload, requests, instances, rate, router, params, interval, engine = CASES[case]
    cfg = SimConfig(
        engine=EngineConfig(**engine),
        workload=WorkloadSpec(kind="synthetic", name=workload, num_requests=requests, rate=rate * instances),
        instances=instances, router=router, router_params=params, metrics_interval_s=interval, seed=3,
    )
    reqs = load_requests(cfg)
    cluster = build_cluster(cfg)
    cluster.run(reqs)
    h = hashlib.sha256()
    for r in reqs:
        h.update(f"{r.rid} {r.instance} {r.num_cached} {r.first_token!r} {r.finish!r}\n".encode())
    h.update(repr(sorted(getattr(cluster.router, "decisions", {}).items())).encode())
    return h.hexdigest()[:20]


@pytest.mark.parametrize("case", sorted(CASES))
def test_outcome_unchanged_by_speed_work(case: str) -> None:
    assert digest(case) == EXPECTED[case]


if __name__ == "__main__":
    import llmsched

    print(f"# {llmsched.__file__}")
    for name in CASES:
        print(f"    {name!r}: {digest(name)!r},")


def test_dense_engines_share_one_cost_model_moe_engines_do_not() -> None:
    """The shared memo tables are a speed-up only where the cost model is pure: an MoE cost model draws expert
    loads from its own seeded stream per instance, so sharing it would change every instance's draws."""
    dense = build_cluster(SimConfig(instances=3))
    assert len({id(e.cost) for e in dense.engines}) == 1
    moe = build_cluster(SimConfig(model="qwen3-30b-a3b", gpu="a100-80g", instances=3))
    assert len({id(e.cost) for e in moe.engines}) == 3
