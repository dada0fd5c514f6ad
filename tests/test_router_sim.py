"""Routers inside the simulator: the shell's contract (route/dispatch/first token/finish/snapshots) end to end."""

from __future__ import annotations

import pytest

from llmsched.bench.scenario import load_scenario
from llmsched.policies.instance import ROUTERS
from llmsched.sim.config import SimConfig
from llmsched.sim.run import simulate
from llmsched.workload.spec import WorkloadSpec


def run(router: str, interval: float = 0.0, n: int = 150, instances: int = 3) -> dict:
    wl = WorkloadSpec(kind="synthetic", name="prefix-heavy", num_requests=n, rate=30.0)
    return simulate(SimConfig(workload=wl, instances=instances, router=router, metrics_interval_s=interval, seed=3))


@pytest.mark.parametrize("router", ROUTERS.names())
def test_every_router_completes_a_run(router):
    r = run(router)
    assert r["completed"] == 150
    assert sum(r["routing_decisions"].values()) >= 150


def test_prefix_affinity_raises_the_hit_rate():
    assert run("prefix", n=300)["prefix_hit_rate"] > run("random", n=300)["prefix_hit_rate"] + 0.02


@pytest.mark.parametrize("router", ["lmetric", "llmd-weighted", "sglang-cache-aware"])
def test_stale_metrics_still_route(router):
    r = run(router, interval=1.0)
    assert r["completed"] == 150


def test_prefix_scenario_lists_every_router():
    sc = load_scenario("prefix")
    assert sorted(p.router for p in sc.policies) == ROUTERS.names()
    assert sc.base["instances"] == 8
    assert any(w.requires_trace for w in sc.workloads)
