"""EWSJF components 1-3 in isolation: Refine-and-Prune, queue routing with bubbles, scoring and the cost fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmsched.policies.request.ewsjf_partition import kmeans_1d, refine_and_prune
from llmsched.policies.request.ewsjf_routing import QueueSet
from llmsched.policies.request.ewsjf_scoring import PrefillFit, ScoreWeights, head_score, score_line


def mixture(modes: list[tuple[float, float, int]], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.lognormal(math.log(m), s, n) for m, s, n in modes]).round().clip(1)


def queue_of(part, x: float) -> int:  # noqa: ANN001
    return int(np.searchsorted(part.lo, x, side="right")) - 1


MIXTURES = [
    [(100, 0.15, 6000), (3000, 0.15, 4000)],
    [(60, 0.2, 5000), (800, 0.15, 3000), (6000, 0.1, 2000)],
    [(30, 0.1, 2000), (250, 0.1, 3000), (1500, 0.1, 3000), (9000, 0.1, 2000)],
    [(200, 0.1, 9000), (4000, 0.1, 1000)],  # unbalanced: a 10% mode must survive the prune
]


@pytest.mark.parametrize("modes", MIXTURES)
@pytest.mark.parametrize("seed", [1, 2])
def test_refine_and_prune_finds_the_modes(modes: list[tuple[float, float, int]], seed: int) -> None:
    x = mixture(modes, seed)
    part = refine_and_prune(x, alpha=1.5, max_queues=len(modes) + 2)
    assert 1 <= len(part) <= len(modes) + 2
    owners = [queue_of(part, m) for m, _, _ in modes]
    # Every mode lies inside a queue range, and no two modes share a queue.
    for (m, _, _), q in zip(modes, owners, strict=True):
        assert part.lo[q] <= m <= part.hi[q]
    assert len(set(owners)) == len(modes)
    # Each queue that owns a mode is nearly pure: most of the traffic in its range is that mode's.
    rng = np.random.default_rng(seed)
    per_mode = [rng.lognormal(math.log(m), s, n).round().clip(1) for m, s, n in modes]
    assert np.array_equal(np.concatenate(per_mode), x)  # the same draws as `mixture`, labelled by mode
    for k, q in enumerate(owners):
        inside = [int(((v >= part.lo[q]) & (v <= part.hi[q])).sum()) for v in per_mode]
        assert inside[k] >= 0.9 * sum(inside), (k, q, inside)
    assert np.all(part.lo <= part.hi) and np.all(part.hi[:-1] < part.lo[1:])


@pytest.mark.parametrize("modes", MIXTURES[1:3])
def test_prune_to_the_number_of_modes_keeps_them_apart(modes: list[tuple[float, float, int]]) -> None:
    x = mixture(modes, 3)
    part = refine_and_prune(x, alpha=1.0, max_queues=len(modes))
    assert len(part) == len(modes)
    assert [queue_of(part, m) for m, _, _ in modes] == list(range(len(modes)))


@given(
    x=st.lists(st.integers(1, 100_000), min_size=1, max_size=300),
    q=st.integers(1, 10),
    alpha=st.floats(0.5, 3.0),
)
@settings(max_examples=80, deadline=None)
def test_partition_covers_the_window(x: list[int], q: int, alpha: float) -> None:
    part = refine_and_prune(np.array(x), alpha=alpha, max_queues=q)
    assert 1 <= len(part) <= q
    assert part.lo[0] == min(x) and part.hi[-1] == max(x)
    arr = np.array(x)
    counts = [((arr >= lo) & (arr <= hi)).sum() for lo, hi in zip(part.lo, part.hi, strict=True)]
    assert sum(counts) == len(x)


def test_partition_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one"):
        refine_and_prune(np.array([]))
    with pytest.raises(ValueError, match="max_queues"):
        refine_and_prune(np.array([1, 2]), max_queues=0)


def test_kmeans_separates_three_groups() -> None:
    x = np.sort(np.log1p(mixture([(50, 0.05, 300), (500, 0.05, 300), (5000, 0.05, 300)], 0)))
    assert list(kmeans_1d(x, 3)) == [0, 300, 600, 900]


def test_alpha_controls_refinement() -> None:
    x = mixture([(100, 0.1, 3000), (140, 0.1, 3000), (3000, 0.4, 4000)], 0)
    fine = refine_and_prune(x, alpha=0.5, max_queues=16)
    coarse = refine_and_prune(x, alpha=3.0, max_queues=16)
    assert len(fine) > len(coarse)


# -- routing -----------------------------------------------------------------------------------------
def two_queue_set(**kw: int) -> QueueSet:
    qs = QueueSet(**kw)  # type: ignore[arg-type]
    qs.set_partition(
        refine_and_prune(np.array([100] * 50 + [200] * 50 + [2000] * 50 + [3000] * 50), max_queues=2)
    )
    assert [(q.lo, q.hi) for q in qs.queues] == [(100, 200), (2000, 3000)]
    return qs


def test_routing_rule_with_tolerances() -> None:
    qs = two_queue_set()
    a, b = qs.queues
    assert qs.route(150, 0) is a
    assert qs.route(220, 0) is a  # <= 1.10 x hi
    assert qs.route(1850, 0) is b  # >= 0.90 x lo of the next
    assert qs.route(5000, 0).bubble  # beyond the last queue's tolerance
    assert qs.route(50, 0).bubble  # below the first
    assert qs.num_bubbles == 2 and len(qs) == 4


def test_gap_creates_a_bubble_that_is_reused_then_pruned() -> None:
    qs = two_queue_set(bubble_ttl=5)
    b = qs.route(700, round_=10)
    assert b.bubble and (b.lo, b.hi) == (700, 700)
    assert [q.lo for q in qs.queues] == [100, 700, 2000]  # kept in length order
    assert qs.route(740, 11) is b  # within its tolerance
    b.count, b.last_busy = 1, 11
    assert qs.prune_bubbles(100) == 0  # holds a request
    b.count = 0
    assert qs.prune_bubbles(15) == 0  # empty, but not for long enough
    assert qs.prune_bubbles(16) == 1
    assert not any(q.bubble for q in qs.queues) and qs.bubbles_pruned == 1


def test_bubble_cap_falls_back_to_the_nearest_queue() -> None:
    qs = two_queue_set(max_bubbles=1)
    qs.route(600, 0)
    q = qs.route(1500, 0)
    assert not q.bubble and q.lo == 2000 and qs.num_bubbles == 1


def test_split_and_overdispersion() -> None:
    qs = two_queue_set()
    recent = np.array([100.0] * 20 + [200.0] * 20 + [2000.0] * 40 + [2900.0, 3000.0] * 2)
    cands = qs.overdispersed(recent, ratio=1.5, min_count=10)
    assert [c[0].lo for c in cands] == [100]
    left, right = qs.split(cands[0][0], cands[0][1])
    assert left.lo == 100 and left.hi < right.lo and right.hi == 200
    assert len(qs) == 3
    with pytest.raises(ValueError, match="cannot split"):
        qs.split(left, 5000)


# -- scoring -----------------------------------------------------------------------------------------
def test_prefill_fit_recovers_a_power_law() -> None:
    fit = PrefillFit(coeff=1.0, exp=1.0, decay=1.0)
    rng = np.random.default_rng(0)
    assert fit.cost(1000) == 1000.0  # prior before any sample
    for n in rng.integers(16, 8192, 200):
        fit.observe(int(n), 3e-5 * n**1.2 * math.exp(rng.normal(0, 0.02)))
    assert fit.refit()
    assert fit.exp == pytest.approx(1.2, abs=0.02)
    assert fit.cost(2000) == pytest.approx(3e-5 * 2000**1.2, rel=0.05)


def test_prefill_fit_single_size_fits_level_only_and_ignores_junk() -> None:
    fit = PrefillFit(coeff=1.0, exp=1.0)
    fit.observe(0, 1.0)
    fit.observe(10, -1.0)
    assert fit.n == 0
    for _ in range(10):
        fit.observe(512, 0.05)
    assert fit.refit()
    assert fit.exp == 1.0 and fit.cost(512) == pytest.approx(0.05)


@given(
    a_u=st.floats(-0.001, 0.01),
    b_u=st.floats(0.1, 5.0),
    a_f=st.floats(-0.001, 0.001),
    b_f=st.floats(0.01, 2.0),
    mean_len=st.floats(1, 100_000),
    size=st.integers(1, 100_000),
    w=st.floats(0, 1e4),
)
@settings(max_examples=100, deadline=None)
def test_score_grows_with_waiting_for_every_tuner_setting(
    a_u: float, b_u: float, a_f: float, b_f: float, mean_len: float, size: int, w: float
) -> None:
    ws = ScoreWeights(a_u, b_u, a_f, b_f)
    s0 = head_score(0, 3, size, w, 0.01, ws, mean_len)
    s1 = head_score(0, 3, size, w + 1.0, 0.01, ws, mean_len)
    assert s1 > s0 >= 0
    a, b = score_line(0, 3, size, 0.01, ws.w_base, ws.urgency(mean_len), ws.fairness(mean_len))
    assert a + b * w == pytest.approx(s0)


def test_shorter_queue_and_head_score_higher_at_equal_wait() -> None:
    ws = ScoreWeights()
    short = head_score(0, 3, 100, 1.0, 0.01, ws, 100)
    long = head_score(2, 3, 4000, 1.0, 0.4, ws, 4000)
    assert short > long
