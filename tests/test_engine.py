"""Fidelity of the engine model against hand-computed timings (linear cost stub)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stubs import AffineLinearCost, LinearCost

from llmsched.core.hashing import chain
from llmsched.core.types import Request, Status
from llmsched.engine.config import EngineConfig
from llmsched.engine.engine import Engine
from llmsched.model.base import BatchStats
from llmsched.policies.instance import ROUTERS
from llmsched.policies.request import REQUEST_POLICIES
from llmsched.sim.cluster import Cluster


def engine(kv_tokens: int = 1_000_000, **cfg: object) -> Engine:
    return Engine(LinearCost(kv_tokens=kv_tokens), REQUEST_POLICIES.create("fcfs"), EngineConfig(**cfg))


def drive(eng: Engine, t: float = 0.0) -> float:
    while True:
        end = eng.start_step(t)
        if end is None:
            return t
        eng.finish_step(end)
        t = end


def test_single_request_ttft_is_the_prefill_time() -> None:
    eng = engine()
    r = Request(0, 0.0, prompt_len=1000, output_len=5)
    eng.add(r, 0.0)
    drive(eng)
    cost = eng.cost
    expected = cost.step_time(BatchStats(prefill_tokens=1000, prefill_seqs=1), 0.0)
    assert r.first_token == pytest.approx(expected)
    assert r.num_output == 5 and r.status == Status.FINISHED
    # Each decode step reads the whole context: 1000 + j tokens.
    decode = sum(cost.step_time(BatchStats(decode_tokens=1, kv_tokens=1000 + j + 1), 0.0) for j in range(4))
    assert r.finish == pytest.approx(expected + decode)


def test_chunked_prefill_splits_a_long_prompt_by_the_token_budget() -> None:
    eng = engine(max_num_batched_tokens=512)
    r = Request(0, 0.0, prompt_len=1200, output_len=2)
    eng.add(r, 0.0)
    drive(eng)
    assert eng.stats.steps == 3 + 1  # 512 + 512 + 176, then one decode


def test_prefix_hit_shortens_ttft_by_the_cached_share() -> None:
    hashes = chain(range(1000 // 16))
    eng = engine()
    a = Request(0, 0.0, 1000, 2, block_hashes=hashes)
    eng.add(a, 0.0)
    t = drive(eng)
    b = Request(1, t, 1000, 2, block_hashes=hashes)
    eng.add(b, t)
    drive(eng, t)
    cached = (1000 // 16) * 16
    assert b.num_cached == cached
    assert b.ttft == pytest.approx(eng.cost.step_time(BatchStats(prefill_tokens=1000 - cached, prefill_seqs=1), 0))
    assert b.ttft < a.ttft * (1000 - cached + 60) / 1000


def test_preemption_happens_and_recovers_when_kv_is_short() -> None:
    eng = engine(kv_tokens=16 * 40, max_num_seqs=8)  # 40 blocks
    reqs = [Request(i, 0.0, 160, 200) for i in range(4)]  # 10 prompt blocks each, growing to 23
    for r in reqs:
        eng.add(r, 0.0)
    drive(eng)
    assert eng.stats.preemptions > 0
    assert all(r.status == Status.FINISHED and r.num_output == 200 for r in reqs)
    assert eng.kv.num_used == 0


def test_request_larger_than_kv_is_rejected_clearly() -> None:
    eng = engine(kv_tokens=16 * 10)
    with pytest.raises(ValueError, match="exceed this instance's KV capacity"):
        eng.add(Request(0, 0.0, 200, 10), 0.0)


def test_throughput_saturates_at_the_cost_model_capacity() -> None:
    # All requests present at t=0, decode-bound: tokens per second approaches max_num_seqs / step time.
    eng = engine(max_num_seqs=64)
    reqs = [Request(i, 0.0, 16, 500) for i in range(256)]
    for r in reqs:
        eng.add(r, 0.0)
    end = drive(eng)
    tput = sum(r.num_output for r in reqs) / end
    c = eng.cost
    worst = c.base + c.per_decode * 64 + c.per_kv * 64 * 516
    best = c.base + c.per_decode * 64 + c.per_kv * 64 * 16
    assert 64 / worst * 0.95 <= tput <= 64 / best


def test_abort_frees_blocks_and_drops_the_request() -> None:
    eng = engine()
    r = Request(0, 0.0, 100, 50)
    eng.add(r, 0.0)
    end = eng.start_step(0.0)
    assert end is not None
    eng.finish_step(end)
    assert eng.abort(r, end)
    assert eng.kv.num_used == 0 and r.status == Status.ABORTED
    assert eng.start_step(end) is None


@st.composite
def workloads(draw: st.DrawFn) -> list[tuple[float, int, int, int]]:
    n = draw(st.integers(1, 25))
    t = 0.0
    out = []
    for _ in range(n):
        t += draw(st.floats(0.0, 0.3))
        out.append((t, draw(st.integers(1, 700)), draw(st.integers(1, 120)), draw(st.integers(0, 3))))
    return out


@settings(max_examples=60, deadline=None)
@given(
    workloads(),
    st.integers(1, 3),
    st.sampled_from([256, 2048]),
    st.sampled_from([48, 400]),
    st.sampled_from([LinearCost, AffineLinearCost]),
)
def test_fast_forward_matches_token_by_token(
    spec: list[tuple[float, int, int, int]], instances: int, budget: int, kv_blocks: int, cost_cls: type
) -> None:
    """Decode runs give the same per-request timings as stepping one iteration at a time."""

    def run(max_run: int) -> list[tuple[float, float, list[float]]]:
        reqs = [
            Request(i, t, p, min(o, 16 * kv_blocks - p), block_hashes=chain((g, j) for j in range(p // 16)))
            for i, (t, p, o, g) in enumerate(spec)
        ]
        engines = [
            Engine(
                cost_cls(kv_tokens=16 * kv_blocks),
                REQUEST_POLICIES.create("fcfs"),
                EngineConfig(max_num_batched_tokens=budget, max_num_seqs=8),
                instance=k,
                record_token_times=True,
            )
            for k in range(instances)
        ]
        cluster = Cluster(engines, ROUTERS.create("round-robin"), max_run=max_run)
        cluster.run(reqs)
        for e in engines:  # everything handed back
            assert e.kv.num_used == 0 and e._pending_prefill == 0 and e._dheld == 0
            assert not e.decoding and not e.prefilling and not len(e.policy)
        assert all(r.status == Status.FINISHED and r.num_output == r.output_len for r in reqs)
        return [(r.first_token, r.finish, r.token_times or []) for r in reqs]

    ref = run(1)
    fast = run(4096)
    for (f0, e0, tt0), (f1, e1, tt1) in zip(ref, fast, strict=True):
        assert f1 == pytest.approx(f0, rel=1e-9, abs=1e-9)
        assert e1 == pytest.approx(e0, rel=1e-9, abs=1e-9)
        assert tt1 == pytest.approx(tt0, rel=1e-9, abs=1e-9)


def test_real_cost_model_single_request_ttft_and_fast_forward() -> None:
    """With the shipped roofline model: TTFT is its prefill time, and decode runs match stepping."""
    from llmsched.model import build_cost_model

    def run(max_run: int) -> list[Request]:
        cost = build_cost_model("llama-3.1-8b", "h100")
        engines = [Engine(cost, REQUEST_POLICIES.create("fcfs"), EngineConfig(), instance=0)]
        reqs = [Request(0, 0.0, 3000, 40), Request(1, 0.5, 700, 300), Request(2, 0.52, 20, 5)]
        Cluster(engines, ROUTERS.create("round-robin"), max_run=max_run).run(reqs)
        return reqs

    cost = build_cost_model("llama-3.1-8b", "h100")
    fast, ref = run(4096), run(1)
    assert fast[0].ttft == pytest.approx(cost.step_time(BatchStats(3000, 3000 * 3001 / 2, 1), 0.0))
    for a, b in zip(fast, ref, strict=True):
        assert a.first_token == pytest.approx(b.first_token, rel=1e-9)
        assert a.finish == pytest.approx(b.finish, rel=1e-9)


def test_follow_up_turn_hits_the_previous_answer_blocks() -> None:
    """vLLM caches a finished request's full blocks, answer included; a follow-up sending prompt + answer
    hits them when the workload names the answer's blocks (`output_hashes`)."""
    chain_all = chain(("turn", j) for j in range(7))  # blocks 0-3 prompt, 4-5 answer, 6 the new message
    for with_answer, expected in ((True, 6 * 16), (False, 4 * 16)):
        eng = engine()
        a = Request(0, 0.0, 64, 40, block_hashes=chain_all[:4], output_hashes=chain_all[4:6] if with_answer else None)
        eng.add(a, 0.0)
        t = drive(eng)
        b = Request(1, t, 124, 5, block_hashes=chain_all[:7])
        eng.add(b, t)
        drive(eng, t)
        assert b.num_cached == expected
