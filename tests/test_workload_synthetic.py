"""Synthetic generators: determinism by seed, target rate, distributions, prefix structure, properties."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmsched.workload import GENERATORS, WorkloadError, WorkloadSpec, load_workload
from llmsched.workload.arrivals import arrival_times

NAMES = ["chat", "code", "mixed", "prefix-heavy", "burstgpt-like"]


def gen(name: str, n: int = 2000, rate: float = 20.0, seed: int = 0, **params: object) -> list:
    return load_workload(WorkloadSpec(name=name, rate=rate, num_requests=n, params=params), seed=seed)


def signature(reqs: list) -> list[tuple]:
    return [(r.arrival, r.prompt_len, r.output_len, r.cls, r.session, r.block_hashes) for r in reqs]


def test_all_generators_registered() -> None:
    assert set(NAMES) <= set(GENERATORS.names())


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_by_seed(name: str) -> None:
    a, b, c = gen(name, 500, seed=1), gen(name, 500, seed=1), gen(name, 500, seed=2)
    assert signature(a) == signature(b)
    assert signature(a) != signature(c)


@pytest.mark.parametrize("name", NAMES)
def test_shape_of_output(name: str) -> None:
    reqs = gen(name, 1000)
    assert [r.rid for r in reqs] == list(range(1000))
    assert reqs[0].arrival == 0.0
    t = np.array([r.arrival for r in reqs])
    assert np.all(np.diff(t) >= 0)
    assert min(r.prompt_len for r in reqs) >= 1 and min(r.output_len for r in reqs) >= 1
    for r in reqs:
        assert r.block_hashes is None or len(r.block_hashes) == r.prompt_len // 16


@pytest.mark.parametrize(("name", "tol"), [("chat", 0.05), ("prefix-heavy", 0.05), ("burstgpt-like", 0.15)])
def test_hits_target_rate(name: str, tol: float) -> None:
    reqs = gen(name, 20000 if name == "chat" else 5000, rate=7.0)
    rate = (len(reqs) - 1) / reqs[-1].arrival
    assert rate == pytest.approx(7.0, rel=tol)


def test_gamma_arrivals_cv() -> None:
    rng = np.random.default_rng(0)
    gaps = np.diff(arrival_times(50_000, 10.0, rng, "gamma", cv=3.0))
    assert gaps.mean() == pytest.approx(0.1, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(3.0, rel=0.1)
    pois = np.diff(arrival_times(50_000, 10.0, rng, "poisson"))
    assert pois.std() / pois.mean() == pytest.approx(1.0, rel=0.05)
    with pytest.raises(WorkloadError, match="cv or shape, not both"):
        arrival_times(10, 1.0, rng, "gamma", cv=1.0, shape=1.0)


def test_chat_lengths_match_stated_distribution() -> None:
    reqs = gen("chat", 20000)
    p = np.array([r.prompt_len for r in reqs])
    o = np.array([r.output_len for r in reqs])
    assert np.median(p) == pytest.approx(128, rel=0.05)
    assert np.median(o) == pytest.approx(200, rel=0.05)
    assert p.max() <= 8192 and p.min() >= 4 and o.max() <= 4096
    assert all(r.block_hashes is None and r.cls == "chat" for r in reqs)


def test_mixed_classes_ranges_and_fraction() -> None:
    reqs = gen("mixed", 5000, long_fraction=0.3)
    short = [r for r in reqs if r.cls == "short"]
    long = [r for r in reqs if r.cls == "long"]
    assert len(long) / len(reqs) == pytest.approx(0.3, abs=0.03)
    assert all(64 <= r.prompt_len <= 512 and 64 <= r.output_len <= 256 for r in short)
    assert all(2048 <= r.prompt_len <= 8192 and 256 <= r.output_len <= 1024 for r in long)
    custom = gen("mixed", 200, long_fraction=0.0, short_prompt={"kind": "constant", "value": 77})
    assert {r.prompt_len for r in custom} == {77} and {r.cls for r in custom} == {"short"}


def test_prefix_heavy_turns_extend_previous_prompt_and_answer() -> None:
    reqs = gen("prefix-heavy", 3000, rate=20.0)
    assert {r.cls for r in reqs} == {"session", "api", "agent"}
    by_session: dict[str, list] = defaultdict(list)
    for r in reqs:
        by_session[r.session].append(r)
    multi = [rs for rs in by_session.values() if len(rs) > 1]
    assert multi, "some sessions have several turns"
    for rs in multi:
        for prev, nxt in zip(rs, rs[1:], strict=False):
            assert nxt.arrival > prev.arrival
            assert nxt.prompt_len > prev.prompt_len + prev.output_len  # history + answer + new message
            assert nxt.block_hashes[: len(prev.block_hashes)] == prev.block_hashes
    api = [r for r in reqs if r.cls == "api"]
    firsts = {r.block_hashes[0] for r in api}
    assert len(firsts) <= 4  # API calls start with one of 4 shared system prompts
    assert all(len(rs) == 1 for s, rs in by_session.items() if s.startswith("api-"))


def test_prefix_heavy_partial_params_keep_other_defaults() -> None:
    g = GENERATORS.create("prefix-heavy", {"api": {"weight": 0.9, "output": {"median": 10}}})
    assert g.params.api.weight == 0.9
    assert g.params.api.prefixes == 4  # default kept
    assert g.params.api.output.median == 10 and g.params.api.output.max == 1024
    with pytest.raises(ValueError, match="weights sum to 0"):
        GENERATORS.create(
            "prefix-heavy", {"session": {"weight": 0}, "api": {"weight": 0}, "agent": {"weight": 0}}
        )


def test_burstgpt_like_classes_and_burstiness() -> None:
    reqs = gen("burstgpt-like", 5000, rate=10.0)
    assert {r.cls for r in reqs} == {"conversation", "api"}
    gaps = np.diff([r.arrival for r in reqs])
    assert gaps.std() / gaps.mean() > 1.5  # gamma cv 2 by default


def test_bad_generator_params_are_clear() -> None:
    with pytest.raises(WorkloadError, match="unknown generator 'nope'"):
        gen("nope")
    with pytest.raises(WorkloadError, match="invalid parameters for chat"):
        gen("chat", bogus=1)
    with pytest.raises(WorkloadError, match="invalid parameters for mixed"):
        gen("mixed", long_fraction=2)


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(NAMES),
    n=st.integers(1, 300),
    rate=st.floats(0.1, 1000),
    seed=st.integers(0, 2**32 - 1),
    bs=st.sampled_from([1, 16, 64]),
)
def test_properties(name: str, n: int, rate: float, seed: int, bs: int) -> None:
    reqs = load_workload(WorkloadSpec(name=name, rate=rate, num_requests=n), block_size=bs, seed=seed)
    assert len(reqs) == n
    assert reqs[0].arrival == 0.0
    assert all(a.arrival <= b.arrival for a, b in zip(reqs, reqs[1:], strict=False))
    assert all(r.prompt_len >= 1 and r.output_len >= 1 for r in reqs)
    assert all(r.block_hashes is None or len(r.block_hashes) == r.prompt_len // bs for r in reqs)
