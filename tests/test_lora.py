"""LoRA adapters: engine slots (LRU, max_loras batch rule, load cost), adapter workloads, lora-affinity routing."""

from __future__ import annotations

from collections import Counter

import pytest
from stubs import LinearCost

from llmsched.core.snapshots import SnapshotTable
from llmsched.core.types import AdapterState, InstanceSnapshot, Request, Status
from llmsched.engine.config import EngineConfig
from llmsched.engine.engine import Engine
from llmsched.engine.lora import AdapterSlots, LoraConfig, adapter_bytes
from llmsched.model.base import BatchStats
from llmsched.model.presets import get_llm
from llmsched.policies.instance import ROUTERS
from llmsched.policies.request import REQUEST_POLICIES
from llmsched.sim.cluster import Cluster
from llmsched.sim.config import SimConfig
from llmsched.sim.run import simulate
from llmsched.workload import WorkloadSpec, load_workload

# 1 GB adapters: 0.1 s host-to-device, plus 0.5 s + 1 s from disk when the CPU cache lacks them.
COST = {"adapter_bytes": 10**9, "h2d_bandwidth": 1e10, "disk_bandwidth": 1e9, "load_overhead_s": 0.5}
GPU_S, DISK_S = 0.1, 1.5


def lora_engine(max_loras: int = 1, max_cpu_loras: int | None = None) -> Engine:
    lora = LoraConfig(max_loras=max_loras, max_cpu_loras=max_cpu_loras, **COST)
    return Engine(LinearCost(), REQUEST_POLICIES.create("fcfs"), EngineConfig(lora=lora))


def drive(eng: Engine, t: float = 0.0) -> float:
    while (end := eng.start_step(t)) is not None:
        eng.finish_step(end)
        t = end
    return t


def slots(max_loras: int, max_cpu: int | None = None) -> AdapterSlots:
    return AdapterSlots(LoraConfig(max_loras=max_loras, max_cpu_loras=max_cpu, **COST), 10**9)


def use(s: AdapterSlots, adapter: str) -> float:
    """One request with `adapter` queued, admitted and finished; returns the load time it cost."""
    s.on_queue(adapter)
    s.on_admit(adapter)
    cost = s.take_pending()
    s.on_leave(adapter)
    return cost


# ---- the adapter slots -------------------------------------------------------------------------------------
def test_adapter_bytes_of_llama_31_8b_rank_16() -> None:
    # r x layers x (9 h + 2 kv + 3 ffn) x 2 bytes = 16 x 32 x (36864 + 2048 + 43008) x 2
    assert adapter_bytes(get_llm("llama-3.1-8b"), 16) == 83_886_080


def test_least_recently_used_adapter_is_evicted() -> None:
    s = slots(2, max_cpu=8)
    use(s, "a")
    use(s, "b")
    use(s, "a")  # a is now more recent than b
    use(s, "c")
    assert s.state().resident == ("a", "c")


def test_an_adapter_was_last_used_when_its_last_request_left() -> None:
    s = slots(2, max_cpu=8)
    s.on_queue("a")
    s.on_admit("a")
    use(s, "b")
    s.on_leave("a")  # a ran until now: more recent than b
    use(s, "c")
    assert s.state().resident == ("a", "c")


def test_a_running_adapter_is_never_evicted() -> None:
    s = slots(2, max_cpu=8)
    s.on_queue("a")
    s.on_admit("a")  # a stays running, least recently used
    use(s, "b")
    use(s, "c")  # must evict b, the only one not running
    assert set(s.state().resident) == {"a", "c"}


def test_load_cost_is_host_to_device_when_cpu_cached_and_disk_otherwise() -> None:
    s = slots(1, max_cpu=2)
    assert use(s, "a") == pytest.approx(GPU_S + DISK_S)
    assert use(s, "a") == 0.0  # resident: free
    assert use(s, "b") == pytest.approx(GPU_S + DISK_S)
    assert use(s, "a") == pytest.approx(GPU_S)  # evicted from the GPU, still in the CPU cache
    assert (s.stats.loads, s.stats.disk_loads) == (3, 2)


def test_cpu_cache_below_gpu_slots_is_refused() -> None:
    with pytest.raises(ValueError, match="max_cpu_loras"):
        LoraConfig(max_loras=4, max_cpu_loras=2)


# ---- the engine ----------------------------------------------------------------------------------------------
def test_batch_holds_at_most_max_loras_adapters_and_skips_without_blocking() -> None:
    eng = lora_engine(max_loras=1)
    r0 = Request(0, 0.0, 100, 3, adapter="a")
    r1 = Request(1, 0.0, 100, 3, adapter="b")
    r2 = Request(2, 0.0, 100, 3, adapter="a")
    for r in (r0, r1, r2):
        eng.add(r, 0.0)
    end = eng.start_step(0.0)
    # vLLM skips r1 (a second adapter) and still admits r2 behind it
    assert {r.rid for r, _ in eng._plan.sched} == {0, 2}
    assert r1.status == Status.WAITING
    assert eng.snapshot(0.0).adapters == AdapterState(1, running=("a",), waiting=("b",), resident=("a",))
    assert end is not None
    eng.finish_step(end)
    drive(eng, end)
    assert all(r.status == Status.FINISHED for r in (r0, r1, r2))
    assert r1.first_scheduled >= max(r0.finish, r2.finish)  # b waited until a drained
    assert eng.lora.stats.loads == 2


def test_skipped_requests_are_served_in_queue_order_once_a_slot_frees() -> None:
    eng = lora_engine(max_loras=1)
    reqs = [Request(0, 0.0, 100, 2, adapter="a"), Request(1, 0.1, 100, 2, adapter="b"),
            Request(2, 0.2, 100, 2, adapter="c")]
    for r in reqs:
        eng.add(r, r.arrival)
    drive(eng, 0.2)
    # FCFS after a drains: b (older) before c
    assert reqs[1].first_scheduled < reqs[2].first_scheduled


def test_load_cost_is_charged_once_to_the_first_iteration() -> None:
    eng = lora_engine(max_loras=2)
    a1 = Request(0, 0.0, 100, 3, adapter="a")
    eng.add(a1, 0.0)
    prefill = eng.cost.step_time(BatchStats(prefill_tokens=100, prefill_seqs=1), 0.0)
    end = eng.start_step(0.0)
    assert end == pytest.approx(prefill + GPU_S + DISK_S)
    eng.finish_step(end)
    end2 = eng.start_step(end)  # a decode iteration: no load
    assert end2 - end == pytest.approx(eng.cost.step_time(BatchStats(decode_tokens=1, kv_tokens=101), 0.0))
    eng.finish_step(end2)
    t = drive(eng, end2)
    a2 = Request(1, t, 100, 1, adapter="a")  # same adapter later: still resident
    eng.add(a2, t)
    end3 = eng.start_step(t)
    assert end3 - t == pytest.approx(prefill)
    assert eng.lora.stats.loads == 1


def test_request_naming_an_adapter_is_refused_when_lora_is_off() -> None:
    eng = Engine(LinearCost(), REQUEST_POLICIES.create("fcfs"), EngineConfig())
    with pytest.raises(ValueError, match="LoRA adapter 'a'.*LoRA is off"):
        eng.add(Request(0, 0.0, 10, 2, adapter="a"), 0.0)


def test_preempted_request_returns_its_adapter_to_waiting() -> None:
    eng = lora_engine(max_loras=1)
    r = Request(0, 0.0, 100, 50, adapter="a")
    eng.add(r, 0.0)
    eng.finish_step(eng.start_step(0.0))
    eng._preempt(r, 0.0)
    st = eng.snapshot(0.0).adapters
    assert st is not None and (st.running, st.waiting) == ((), ("a",))


def test_decode_runs_while_adapters_block_give_the_same_times_as_stepping() -> None:
    def run(max_run: int) -> tuple[list[float], int]:
        reqs = [Request(i, i * 0.01, 64 + 7 * i, 20 + i % 5, adapter=f"l{i % 3}") for i in range(12)]
        eng = lora_engine(max_loras=1)
        Cluster([eng], ROUTERS.create("round-robin"), max_run=max_run).run(reqs)
        return [t for r in reqs for t in (r.first_token, r.finish)], eng.stats.runs

    (stepped, _), (fast, runs) = run(1), run(4096)
    assert fast == pytest.approx(stepped)
    assert runs > 1  # runs were planned while requests of other adapters waited, not only once the queue drained


# ---- snapshots ---------------------------------------------------------------------------------------------
def test_snapshot_table_carries_adapter_state() -> None:
    st = AdapterState(2, running=("a",), waiting=("b",), resident=("a", "c"))
    snap = InstanceSnapshot(0, 0.0, 1, 1, 0.1, 90, 100, None, adapters=st)
    table = SnapshotTable.from_snapshots([snap])
    assert table[0].adapters == st
    table.set_adapters(0, AdapterState(2))
    assert table[0].adapters == AdapterState(2)


# ---- workloads -------------------------------------------------------------------------------------------
def test_generator_adapters_are_zipf_ranked_and_leave_other_columns_alone() -> None:
    spec = {"name": "chat", "num_requests": 4000}
    plain = load_workload(WorkloadSpec(**spec), seed=3)
    lora = load_workload(WorkloadSpec(**spec, params={"adapters": 8, "adapter_popularity": 1.0}), seed=3)
    assert [(r.arrival, r.prompt_len, r.output_len) for r in plain] == [
        (r.arrival, r.prompt_len, r.output_len) for r in lora
    ]
    counts = Counter(r.adapter for r in lora)
    assert set(counts) == {f"lora-{k}" for k in range(8)}
    # Zipf 1 over 8: lora-0 draws 1/H8 = 37% of requests, lora-7 4.6%
    assert counts["lora-0"] / 4000 == pytest.approx(0.368, abs=0.03)
    assert counts["lora-0"] > 5 * counts["lora-7"]
    assert all(r.adapter is None for r in plain)


def test_sessions_keep_one_adapter_and_base_fraction_leaves_some_on_the_base_model() -> None:
    params = {"adapters": 4, "base_fraction": 0.3}
    reqs = load_workload(WorkloadSpec(name="prefix-heavy", num_requests=600, params=params), seed=1)
    by_session: dict[str | None, set[str | None]] = {}
    for r in reqs:
        by_session.setdefault(r.session, set()).add(r.adapter)
    assert all(len(v) == 1 for s, v in by_session.items() if s is not None)
    base = sum(r.adapter is None for r in reqs) / len(reqs)
    assert 0.15 < base < 0.45


def test_trace_requests_name_no_adapter() -> None:
    reqs = load_workload(WorkloadSpec(kind="trace", name="mooncake", path="builtin:mooncake-conv", limit=50))
    assert all(r.adapter is None for r in reqs)


# ---- the lora-affinity router ----------------------------------------------------------------------------
def snap(i: int, running: tuple[str, ...] = (), max_loras: int = 2) -> InstanceSnapshot:
    return InstanceSnapshot(i, 0.0, 0, 0, 0.0, 100, 100, None, adapters=AdapterState(max_loras, running=running))


def test_router_prefers_an_instance_running_the_adapter() -> None:
    router = ROUTERS.create("lora-affinity")
    snaps = [snap(0, ("x",)), snap(1, ("a",)), snap(2)]
    assert [router.route(Request(k, 0.0, 10, 2, adapter="a"), snaps, 0.0) for k in range(3)] == [1, 1, 1]
    assert router.decisions["affinity"] == 3


def test_router_without_affinity_takes_an_instance_with_a_free_slot() -> None:
    router = ROUTERS.create("lora-affinity")
    snaps = [snap(0, ("x", "y")), snap(1, ("x", "z")), snap(2, ("y",)), snap(3, ("x", "w"))]
    assert router.route(Request(0, 0.0, 10, 2, adapter="a"), snaps, 0.0) == 2
    assert router.decisions["free-slot"] == 1


def test_router_remembers_its_own_dispatches() -> None:
    router = ROUTERS.create("lora-affinity")
    snaps = [snap(i) for i in range(4)]
    first = Request(0, 0.0, 10, 2, adapter="a")
    i = router.route(first, snaps, 0.0)
    router.on_dispatch(first, i, 0.0)
    router.on_finish(first, i, 0.0)  # done, but the adapter is likely still loaded there
    assert router.route(Request(1, 0.0, 10, 2, adapter="a"), snaps, 0.0) == i


def test_load_guard_moves_a_hot_adapter_off_an_overloaded_instance() -> None:
    router = ROUTERS.create("lora-affinity", {"tolerance": 0.0, "slack": 1.0})
    snaps = [snap(i) for i in range(4)]
    placed = []
    for k in range(40):
        r = Request(k, 0.0, 10, 2, adapter="hot")
        i = router.route(r, snaps, 0.0)
        router.on_dispatch(r, i, 0.0)
        placed.append(i)
    loads = Counter(placed)
    assert len(loads) == 4 and max(loads.values()) - min(loads.values()) <= 2


def test_base_model_requests_go_to_the_least_loaded() -> None:
    router = ROUTERS.create("lora-affinity")
    snaps = [snap(i) for i in range(3)]
    for k, i in enumerate((0, 0, 2)):
        router.on_dispatch(Request(k, 0.0, 10, 2), i, 0.0)
    assert router.route(Request(9, 0.0, 10, 2), snaps, 0.0) == 1


# ---- simulation -----------------------------------------------------------------------------------------
def lora_sim(router: str, seed: int = 0) -> dict:
    cfg = SimConfig.model_validate({
        "workload": {"name": "chat", "rate": 12, "num_requests": 300, "params": {"adapters": 8}},
        "instances": 4, "router": router, "engine": {"lora": {"max_loras": 2}}, "seed": seed,
    })
    return simulate(cfg)


def test_same_seed_same_numbers_with_adapters() -> None:
    a, b = lora_sim("lora-affinity"), lora_sim("lora-affinity")
    assert (a["ttft_s"], a["e2e_s"], a["routing_decisions"]) == (b["ttft_s"], b["e2e_s"], b["routing_decisions"])


def test_adapter_affinity_beats_adapter_blind_least_requests_in_simulation() -> None:
    # lora-affinity routes a base-model request as least-requests does: the gap is the adapter awareness
    blind, la = lora_sim("least-requests"), lora_sim("lora-affinity")
    assert la["completed"] == blind["completed"] == 300
    assert la["e2e_s"]["mean"] < 0.8 * blind["e2e_s"]["mean"]


def test_lora_with_the_vllm_scheduler_engine_is_refused() -> None:
    cfg = SimConfig.model_validate({"engine_kind": "vllm", "engine": {"lora": {"max_loras": 2}}})
    with pytest.raises(ValueError, match="engine.lora needs engine_kind llmsched"):
        simulate(cfg, requests=[Request(0, 0.0, 10, 2, adapter="a")])
