"""The expert routing model: determinism, published skew, class dependence, drift, flows, noise."""

from __future__ import annotations

import numpy as np

from llmsched.workload.expert_routing import ExpertRoutingModel, sample_loads, skew_stats


def test_same_seed_same_popularity_and_classes_are_order_free() -> None:
    a, b = ExpertRoutingModel(4, 64, 8, seed=3), ExpertRoutingModel(4, 64, 8, seed=3)
    b.class_popularity("code")
    np.testing.assert_array_equal(a.class_popularity("chat", 2), b.class_popularity("chat", 2))
    assert not np.allclose(a.class_popularity("chat"), ExpertRoutingModel(4, 64, 8, seed=4).class_popularity("chat"))


def test_default_skew_matches_published_ratios() -> None:
    ratios = [skew_stats(ExpertRoutingModel(58, 256, 8, seed=s).profile(), 32) for s in range(3)]
    expert = np.mean([r["expert_max_over_mean"] for r in ratios])
    gpu = np.mean([r["gpu_max_over_mean"] for r in ratios])
    assert 9 <= expert <= 16  # DeepSeek-R1 decode: ~12
    assert 2.0 <= gpu <= 3.2  # ~2.6 per rank under static EP32


def test_classes_and_drift_move_popularity_and_mix_is_linear() -> None:
    m = ExpertRoutingModel(3, 32, 4, seed=0)
    chat, code = m.class_popularity("chat", 0), m.class_popularity("code", 0)
    assert np.abs(chat - code).sum() > 0.05
    assert np.abs(m.class_popularity("chat", 1) - chat).sum() > 0.01
    mix = m.popularity({"chat": 3, "code": 1}, now=0.0)
    np.testing.assert_allclose(mix, 0.75 * chat + 0.25 * code)
    np.testing.assert_allclose(mix.sum(-1), 1.0)
    assert m.epoch(m.params.drift_period_s * 2.5) == 2


def test_flows_have_the_layer_marginals_and_the_successor_structure() -> None:
    m = ExpertRoutingModel(4, 16, 2, seed=1, affinity=0.5)
    p = m.profile()
    f = m.flows(p)
    np.testing.assert_allclose(f.sum(2), p[:-1], atol=1e-12)
    np.testing.assert_allclose(f.sum(1), p[1:], atol=1e-12)
    succ_share = f[0][np.arange(16), m.successor[0]].sum()
    assert succ_share >= 0.5 - 1e-9


def test_gaussian_noise_keeps_mean_and_totals_and_steps_share_the_stream() -> None:
    p = ExpertRoutingModel(2, 16, 2, seed=0).profile()
    x = sample_loads(p, 1000, np.random.default_rng(0), steps=400)
    np.testing.assert_allclose(x.mean(0), 1000 * p, rtol=0.1, atol=3)
    np.testing.assert_allclose(x.sum(-1), 1000, rtol=0.02)
    one = np.random.default_rng(5)
    seq = np.concatenate([sample_loads(p, 50, one) for _ in range(3)])
    np.testing.assert_array_equal(seq, sample_loads(p, 50, np.random.default_rng(5), steps=3))
    m = np.random.default_rng(7)
    seq = np.concatenate([sample_loads(p, 50, m, noise="multinomial") for _ in range(3)])
    np.testing.assert_array_equal(seq, sample_loads(p, 50, np.random.default_rng(7), steps=3, noise="multinomial"))
