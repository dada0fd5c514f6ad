"""The differential check: our engine model against vLLM's real scheduler, step by step (needs llmsched[vllm])."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmsched.vllm.diff import DiffRequest, Limits, compare, engine_config, random_workload
from llmsched.vllm.harness import FakeRunnerLoop, KVCacheTooSmall, build_scheduler, make_request

BS = 16


@st.composite
def cases(draw: st.DrawFn) -> tuple[Limits, list[DiffRequest]]:
    policy = draw(st.sampled_from(["fcfs", "priority"]))
    chunked = draw(st.booleans())
    budget = draw(st.sampled_from([32, 48, 64, 128]))
    max_seqs = draw(st.integers(1, min(8, budget)))
    threshold = draw(st.sampled_from([0, 0, 8, 16, 20])) if chunked else 0
    n = draw(st.integers(1, 14))
    groups = draw(st.integers(0, 3))
    reqs = []
    for rid in range(n):
        if chunked:
            prompt = draw(st.integers(1, 160))
            output = draw(st.integers(1, 40))
        else:  # vLLM needs max_model_len <= max_num_batched_tokens without chunked prefill
            prompt = draw(st.integers(1, budget - 1))
            output = draw(st.integers(1, budget - prompt))
        g = draw(st.integers(-1, groups - 1)) if groups else -1
        reqs.append(
            DiffRequest(
                rid=rid,
                arrival_step=draw(st.integers(0, 25)),
                prompt_len=prompt,
                output_len=output,
                priority=draw(st.integers(0, 2)) if policy == "priority" else 0,
                prefix_group=g,
                prefix_len=draw(st.integers(0, prompt)) if g >= 0 else 0,
            )
        )
    # From just enough blocks for the largest request (preemptions) up to plenty.
    need = max(-(-(r.prompt_len + r.output_len) // BS) for r in reqs)
    blocks = draw(st.integers(need, need * 6))
    limits = Limits(
        max_num_batched_tokens=budget,
        max_num_seqs=max_seqs,
        block_size=BS,
        num_blocks=blocks,
        enable_chunked_prefill=chunked,
        enable_prefix_caching=draw(st.booleans()),
        long_prefill_token_threshold=threshold,
        policy=policy,
    )
    return limits, reqs


@settings(max_examples=400, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_engine_schedules_as_vllm_step_by_step(case: tuple[Limits, list[DiffRequest]]) -> None:
    limits, reqs = case
    res = compare(reqs, limits)
    assert res.identical, res.divergence


def test_small_cache_workload_preempts_and_hits_the_prefix_cache_identically() -> None:
    """The property's hard corner on purpose: a cache a few requests fill, shared prefixes, priorities."""
    preempted = hits = 0
    for seed in range(6):
        for policy in ("fcfs", "priority"):
            limits = Limits(max_num_batched_tokens=64, max_num_seqs=8, num_blocks=40, policy=policy)
            res = compare(random_workload(seed, priorities=3 if policy == "priority" else 1), limits)
            assert res.identical, res.divergence
            preempted += sum(len(r.preempted) for r in res.theirs)
            hits += sum(h > 0 for r in res.theirs for h in r.admitted.values())
    assert preempted > 0 and hits > 0  # the corner was reached


def test_a_changed_engine_rule_is_reported_as_the_first_divergence() -> None:
    """Admission checking only the first chunk (vLLM checks the whole sequence) must show, with context."""
    limits = Limits(max_num_batched_tokens=64, max_num_seqs=8, num_blocks=40)
    loose = engine_config(limits).model_copy(update={"scheduler_reserve_full_isl": False})
    found = [compare(random_workload(s), limits, ours_config=loose) for s in range(5)]
    diverged = [r for r in found if not r.identical]
    assert diverged
    text = diverged[0].divergence
    assert text is not None and "first divergence at step" in text
    assert "llmsched:" in text and "vllm    :" in text and ">> step" in text


def test_loop_guard_raises_instead_of_spinning_on_a_too_small_cache() -> None:
    loop = FakeRunnerLoop(build_scheduler(Limits(num_blocks=2, max_model_len=4096)))
    loop.add(make_request("big", list(range(100, 300)), 4, BS))
    with pytest.raises(KVCacheTooSmall, match="cannot hold"):
        loop.run(max_steps=50)


def test_priority_ties_of_arrival_are_broken_as_vllm_breaks_them() -> None:
    """Requests of one step arrive at the same instant: queue order and preemption victims fall to tie-breaks."""
    for seed in range(8):
        limits = Limits(max_num_batched_tokens=64, max_num_seqs=8, num_blocks=40, policy="priority")
        res = compare(random_workload(seed, priorities=2, ties=True, arrival_span=6), limits)
        assert res.identical, res.divergence


def test_vllm_diff_command_reports_identical_workloads_and_refuses_a_cache_too_small() -> None:
    from typer.testing import CliRunner

    from llmsched.cli import app

    ok = CliRunner().invoke(app, ["vllm-diff", "--cases", "2", "--num-requests", "6"])
    assert ok.exit_code == 0, ok.output
    assert "identical: 2 workloads" in ok.output
    small = CliRunner().invoke(app, ["vllm-diff", "--cases", "1", "--num-blocks", "2"])
    assert small.exit_code == 2 and "cannot hold" in small.output
