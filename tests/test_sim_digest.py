"""Speed work must not change outcomes: simulations on small fixed workloads, digested (every request's instance,
cached tokens, first-token and finish times, and the router's decision counts), must match digests recorded
from the code before the speed work (first on commit 15b912e; re-recorded on wip/ewsjf's tree, which has the
decode-attention CTA-quantisation change but none of the speed work; the speed work on top of it gave the same
digests).

Times are digested at 1 us, not bit for bit: numpy's `**` and other SIMD kernels differ by an ulp between CPUs
(AVX-512 or not), which moved every full-precision digest on another machine while no decision moved. Re-recorded
at 1 us on 9a679c1 (the merged tree); the three prefix-lmetric digests re-recorded again when lmetric's
floor and tie band were removed (each equal to the digest of the code before, run with those two detectors
off); every digest is unchanged when the GEMM roofline is moved up by one ulp
(`np.nextafter`), the size of such a platform difference.

A changed digest means some decision or timestamp moved: if that is a deliberate fix, say so in the commit and
re-record with `python tests/test_sim_digest.py` (it prints the table below)."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
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

# Recorded on 9a679c1 at 1 us (the outcomes of 15b912e, before the speed work, up to the CTA change).
EXPECTED = {
    'tight-lmetric-live': '5f8387bdb6d6bc7513fa',
    'chat-lmetric-live': 'cff012b9e2a422241a15',
    'chat-lmetric-scraped': '66c8845dc84e1e7c77cf',
    'chat-rr': '20a344990a001acc0532',
    'prefix-lmetric-live': '010fe711a1b13b9b72ce',
    'prefix-lmetric-scraped': 'ca03fd78f73e9c823d15',
    'prefix-lmetric-ttl-feedback': '488298a55904bd42daa3',
    'prefix-gimbal': '076ecd4ddacaaa656d7e',
    'prefix-llmd': '7efef8b15b7b507de66d',
    'prefix-sglang': '1a0062f687fcd18aecfb',
    'prefix-prefix': '0fc5855deacbdd410895',
    'prefix-linear': 'e7f6ac717efee200290b',
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
        h.update(f"{r.rid} {r.instance} {r.num_cached} {r.first_token:.6f} {r.finish:.6f}\n".encode())
    h.update(repr(sorted(getattr(cluster.router, "decisions", {}).items())).encode())
    return h.hexdigest()[:20]


@pytest.mark.parametrize("case", sorted(CASES))
def test_outcome_unchanged_by_speed_work(case: str) -> None:
    assert digest(case) == EXPECTED[case]


def test_digest_ignores_an_ulp_of_platform_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    """The digests hold on another CPU: one ulp more on every GEMM roofline price (what another SIMD `**` gives)
    moves full-precision times but neither a decision nor a time at 1 us."""
    from llmsched.model.roofline import CostModel

    def times() -> list[tuple[float, float]]:
        workload, requests, instances, rate, router, params, interval, engine = CASES["prefix-lmetric-live"]
        cfg = SimConfig(workload=WorkloadSpec(kind="synthetic", name=workload, num_requests=requests,
                                              rate=rate * instances), instances=instances, router=router, seed=3)
        reqs = load_requests(cfg)
        build_cluster(cfg).run(reqs)
        return [(r.first_token, r.finish) for r in reqs]

    before = times()
    roof = CostModel._roof
    monkeypatch.setattr(CostModel, "_roof", lambda self, c, m: np.nextafter(roof(self, c, m), np.inf))
    assert times() != before  # the perturbation reaches the timestamps
    assert digest("prefix-lmetric-live") == EXPECTED["prefix-lmetric-live"]


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
