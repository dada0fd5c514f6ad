"""The MoE step-cost wrapper: reduces to the dense model when balanced, fast-forward equivalence,
interrupted runs, migration pricing, statistics."""

from __future__ import annotations

import numpy as np
import pytest

from llmsched.model.base import BatchStats
from llmsched.model.moe import build_moe_cost
from llmsched.model.roofline import build_cost_model


@pytest.fixture(scope="module")
def ds():  # noqa: ANN201 - the base cost model
    return build_cost_model("deepseek-v3-like", "h100")


@pytest.fixture(scope="module")
def qwen():  # noqa: ANN201
    return build_cost_model("qwen3-30b-a3b", "a100-80g")


def decode(n: int = 64, cls: str = "chat") -> BatchStats:
    return BatchStats(decode_tokens=n, kv_tokens=n * 700, class_tokens={cls: n})


def prefill(n: int = 8192) -> BatchStats:
    return BatchStats(prefill_tokens=n, prefill_seqs=4, prefill_pairs=n * 1024.0, class_tokens={"code": n})


@pytest.mark.parametrize("name", ["ds", "qwen"])
def test_uniform_routing_reduces_to_the_balanced_base_model(name: str, request: pytest.FixtureRequest) -> None:
    base = request.getfixturevalue(name)
    m = build_moe_cost(base, "static", {"redundant_slots": 0, "routing": {"skew": 0.0, "noise": "none", "affinity": 0.0}}, seed=0)
    for b in (decode(), prefill()):
        assert m.step_time(b, 0.0) == pytest.approx(base.step_time(b, 0.0), rel=1e-9)


def test_skew_slows_static_and_eplb_recovers(ds) -> None:  # noqa: ANN001
    b = prefill()
    times = {}
    for pol in ("static", "eplb"):
        m = build_moe_cost(ds, pol, {"mode": "global"} if pol == "eplb" else {}, seed=0)
        times[pol] = np.mean([m.step_time(b, 0.01 * i) for i in range(5)])
    assert times["static"] > ds.step_time(b, 0.0) * 1.05
    assert times["eplb"] < times["static"]


@pytest.mark.parametrize("policy", ["static", "eplb-online"])
def test_decode_run_equals_step_by_step(ds, policy: str) -> None:  # noqa: ANN001
    params = {"interval": 10_000} if policy == "eplb-online" else {}
    run = build_moe_cost(ds, policy, params, seed=7)
    steps = build_moe_cost(ds, policy, params, seed=7)
    b = decode(32)
    durs = run.decode_run(b, 12, 1.0)
    now, seq = 1.0, []
    for i in range(12):
        bi = BatchStats(decode_tokens=32, kv_tokens=b.kv_tokens + i * 32, class_tokens={"chat": 32})
        seq.append(steps.step_time(bi, now))
        now += seq[-1]
    np.testing.assert_allclose(durs, seq, rtol=1e-12)
    assert run.moe_stats()["moe_steps"] == steps.moe_stats()["moe_steps"] == 12


def test_an_interrupted_run_commits_only_its_executed_steps(qwen) -> None:  # noqa: ANN001
    m = build_moe_cost(qwen, "static", {}, seed=0)
    durs = m.decode_run(decode(16), 10, 0.0)
    ends = np.cumsum(durs)
    m.step_time(decode(16), float(ends[2]))  # the engine cut the run after 3 steps
    assert m.moe_stats()["moe_steps"] == 4


def test_online_rebalance_stalls_the_step_and_counts_migrations(ds) -> None:  # noqa: ANN001
    m = build_moe_cost(ds, "eplb-online", {"window": 4, "interval": 5}, seed=0)
    b = prefill(4096)
    t = [m.step_time(b, 0.0) for _ in range(7)]
    s = m.moe_stats()
    assert s["expert_rebalances"] == 1 and s["expert_migrations"] > 0
    assert s["migration_stall_s"] > 0.05  # tens of GB over InfiniBand
    assert t[5] - s["migration_stall_s"] == pytest.approx(t[6], rel=0.2)  # the stall lands in step 5
    assert t[6] < t[4]  # and the new placement is faster


def test_background_migration_delays_the_switch_without_stall(ds) -> None:  # noqa: ANN001
    m = build_moe_cost(ds, "eplb-online", {"window": 4, "interval": 5, "migration": "background"}, seed=0)
    b = prefill(4096)
    now, t = 0.0, []
    for _ in range(12):
        t.append(m.step_time(b, now))
        now += t[-1]
    s = m.moe_stats()
    assert s["migration_stall_s"] == 0.0 and s["expert_rebalances"] >= 1
    assert max(t) < 2 * min(t)  # no stall step
    assert t[-1] < t[4]  # switched once the copy was done


def test_stats_and_errors(qwen) -> None:  # noqa: ANN001
    m = build_moe_cost(qwen, "hotspot", {"interval": 5, "window": 5, "balance_window": 4}, seed=1)
    now = 0.0
    for _ in range(20):
        now += m.step_time(prefill(2048), now)
    s = m.moe_stats()
    assert s["a2a_bytes_per_token"] == 0.0  # TP2 attention over the whole instance: no all-to-all
    assert len(m.series) == 5
    # 5 windows of 4 equal steps: the token-weighted balancedness is the mean of the windows', each below 1
    windows = [b for _, b in m.series]
    assert s["expert_balancedness"] == pytest.approx(np.mean(windows), rel=1e-12)
    assert max(windows) < 1.0
    with pytest.raises(ValueError, match="invalid parameters for hotspot"):
        build_moe_cost(qwen, "hotspot", {"bogus": 1}, seed=0)
    with pytest.raises(ValueError, match="redundant_slots"):
        build_moe_cost(qwen, "static", {"redundant_slots": 3}, seed=0)


def test_affinity_cuts_all_to_all_bytes(ds) -> None:  # noqa: ANN001
    per_token = {}
    for pol in ("eplb", "affinity"):
        m = build_moe_cost(ds, pol, {"mode": "global"}, seed=0)
        m.step_time(BatchStats(decode_tokens=256, kv_tokens=256 * 500), 0.0)
        per_token[pol] = m.moe_stats()["a2a_bytes_per_token"]
    assert per_token["affinity"] < 0.8 * per_token["eplb"]


def test_recorded_loads_drive_the_model(qwen, tmp_path) -> None:  # noqa: ANN001
    import json

    def loads_file(name: str, load: np.ndarray) -> str:
        path = tmp_path / name
        path.write_text(json.dumps({"load_history": [{"logical_expert_load": load.tolist()}] * 3}))
        return str(path)

    uniform = np.ones((48, 128), dtype=int)
    skewed = np.zeros((48, 128), dtype=int)
    skewed[:, :64] = 1  # every token to the experts that static EP2 keeps on GPU 0
    path = loads_file("uniform.json", uniform)
    static = {n: build_moe_cost(qwen, "static", {"loads_file": loads_file(f"{n}.json", a)}, seed=0)
              for n, a in (("uniform", uniform), ("skewed", skewed))}
    t = {n: m.step_time(prefill(4096), 0.0) for n, m in static.items()}
    assert t["skewed"] > 1.05 * t["uniform"]  # the recorded loads, not a routing model, set the step time
    b = {n: m.moe_stats()["expert_balancedness"] for n, m in static.items()}
    assert b["uniform"] > 0.95 and b["skewed"] < 0.6
    with pytest.raises(ValueError, match="is 48 x 128"):
        build_moe_cost(build_cost_model("deepseek-v3-like", "h100"), "static", {"loads_file": str(path)}, seed=0)


def test_profile_classes_plan_offline_placers_on_the_workload_mix(ds) -> None:  # noqa: ANN001
    shared = build_moe_cost(ds, "eplb", {"mode": "global"}, seed=0)
    matched = build_moe_cost(ds, "eplb", {"mode": "global", "profile_classes": {"code": 1.0}}, seed=0)
    assert (shared.placement.phy2log != matched.placement.phy2log).any()
    b = prefill(8192)  # all of class "code"
    assert matched.step_time(b, 0.0) < shared.step_time(b, 0.0)


def test_inter_node_traffic_follows_the_placement(ds) -> None:  # noqa: ANN001
    """4 nodes x 8 GPUs, uniform routing, no affinity: a remote hop leaves the node with chance
    (1 - 1/4) / (1 - 1/32); a hierarchical placement cannot beat that without flows, and nothing is negative."""
    m = build_moe_cost(ds, "static", {"routing": {"skew": 0.0, "noise": "none", "affinity": 0.0}}, seed=0)
    m.decode_run(decode(256), 5, 0.0)
    s = m.moe_stats()
    assert s["a2a_inter_node_bytes_per_token"] / s["a2a_bytes_per_token"] == pytest.approx(0.75 / (31 / 32), rel=1e-6)


def test_simulator_reports_expert_figures() -> None:
    from llmsched.sim import run as sim
    from llmsched.sim.config import SimConfig

    wl = {"kind": "synthetic", "name": "chat", "num_requests": 40, "rate": 5.0}
    res = {p: sim.simulate(SimConfig(model="qwen3-30b-a3b", gpu="a100-80g", expert_policy=p, workload=wl))
           for p in ("hotspot", "static")}
    assert res["hotspot"]["completed"] == 40
    assert 0 < res["static"]["expert_balancedness"] < res["hotspot"]["expert_balancedness"] <= 1
    assert res["hotspot"]["a2a_bytes_per_token"] == 0.0  # TP2 attention over EP2 experts: no all-to-all
    assert res["hotspot"]["expert_migrations"] > 0 and res["hotspot"]["expert_rebalances"] > 0
    assert res["hotspot"]["migration_stall_s"] > 0 and res["static"]["expert_migrations"] == 0


def test_expert_parallelism_that_does_not_divide_the_experts() -> None:
    """128 experts over 6 GPUs (tp 2, 3 DP groups): slots padded to 132 (22 per GPU); with uniform routing the
    static layout's busiest GPUs hold 22 whole experts, which is what the base model prices."""
    base = build_cost_model("qwen3-30b-a3b", "h100", tp=2, num_gpus=6)
    uniform = {"skew": 0.0, "noise": "none", "affinity": 0.0}
    m = build_moe_cost(base, "static", {"routing": uniform}, seed=0)
    assert (m.topology.num_slots, m.topology.slots_per_gpu) == (132, 22)
    b = decode(256)
    assert m.step_time(b, 0.0) == pytest.approx(base.step_time(b, 0.0), rel=0.01)
    for policy in ("eplb", "hotspot", "affinity"):
        skewed = build_moe_cost(base, policy, {}, seed=0)
        skewed.placement.validate(skewed.topology)
        assert skewed.step_time(b, 0.0) > 0
