"""Our expert placers as vLLM EPLB policies, and the plugin that installs one for vLLM's rebalancer."""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest
import torch
from vllm.distributed.eplb.policy import EPLB_POLICIES
from vllm.distributed.eplb.policy.default import DefaultEplbPolicy

from llmsched.policies.expert import Placement, balancedness
from llmsched.policies.expert.affinity import cross_gpu_fraction
from llmsched.vllm import eplb as ours
from llmsched.vllm.eplb import AffinityPolicy, EplbPolicy, HotspotPolicy

L, E, R, G = 4, 16, 20, 4  # layers, logical experts, physical slots, ranks


def _skewed(seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.zipf(1.6, size=(L, E)).clip(max=500).astype(np.int64) * 10)


def _bal(phy2log: torch.Tensor, w: torch.Tensor) -> float:
    p = Placement.from_phy2log(phy2log.numpy(), E)
    return balancedness(p.gpu_loads(w.double().numpy(), G))


@pytest.mark.parametrize("policy", [EplbPolicy, HotspotPolicy, AffinityPolicy])
def test_returns_a_complete_layout_in_vllms_format(policy) -> None:
    w = _skewed(0)
    out = policy.rebalance_experts(w, R, 4, 1, G)
    assert out.dtype == torch.int64 and tuple(out.shape) == (L, R)
    assert int(out.min()) >= 0 and int(out.max()) < E
    assert all(len(set(row.tolist())) == E for row in out)  # every expert has a replica in every layer


def _peaks(phy2log: torch.Tensor, w: torch.Tensor) -> np.ndarray:
    return Placement.from_phy2log(phy2log.numpy(), E).gpu_loads(w.double().numpy(), G).max(-1)


def test_eplb_is_deepseeks_algorithm_never_worse_than_static() -> None:
    """Ours is DeepSeek's EPLB, as vLLM's default, except that a layer where that layout's peak GPU load is
    above the static layout's keeps the static one: per layer, the same row or a lower peak."""
    replaced = 0
    for seed in range(8):
        rng = np.random.default_rng(seed)
        for w in (torch.from_numpy(rng.choice(10_000, size=(L, E), replace=False)), _skewed(seed)):
            a, b = (
                EplbPolicy.rebalance_experts(w, R, 4, 2, G),
                DefaultEplbPolicy.rebalance_experts(w, R, 4, 2, G),
            )
            pa, pb = _peaks(a, w), _peaks(b, w)
            assert (pa <= pb * (1 + 1e-12)).all()
            distinct = len(set(w.flatten().tolist())) == w.numel()
            for layer in range(L):
                if distinct and pa[layer] == pytest.approx(pb[layer]):
                    assert torch.equal(a[layer], b[layer])
                replaced += int(pa[layer] < pb[layer] * (1 - 1e-12))
    assert replaced > 0  # the static fallback did act in some layers


def test_eplb_moves_no_more_weights_than_vllms_default() -> None:
    """With the layout in force, ours renumbers GPUs too (keep_in_place); vLLM's only reorders inside a GPU."""
    ours_moves = theirs_moves = 0
    for seed in range(6):
        old = EplbPolicy.rebalance_experts(_skewed(seed), R, 4, 1, G)
        w = _skewed(seed + 50)
        a = EplbPolicy.rebalance_experts(w, R, 4, 1, G, old)
        b = DefaultEplbPolicy.rebalance_experts(w, R, 4, 1, G, old)
        assert _bal(a, w) == pytest.approx(_bal(b, w))  # same packs, same balance
        ours_moves += int((a != old).sum())
        theirs_moves += int((b != old).sum())
    assert ours_moves < theirs_moves


def test_hotspot_relieves_the_layout_in_force_and_leaves_balanced_layers_alone() -> None:
    w = _skewed(3)
    static = torch.arange(R).remainder(E).repeat(L, 1)
    static[:, E:] = static[:, : R - E]  # extra slots hold copies (rank-major: rank g owns slots 5g..5g+4)
    new = HotspotPolicy.rebalance_experts(w, R, 4, 1, G, static)
    assert _bal(new, w) > _bal(static, w)
    # loads for which `new` is perfectly balanced (each slot carries 1): nothing to relieve
    even = torch.stack([torch.bincount(row, minlength=E) for row in new]) * 7
    assert torch.equal(HotspotPolicy.rebalance_experts(even, R, 4, 1, G, new), new)


def test_hotspot_cold_start_replicates_the_hot_experts() -> None:
    """With no layout in force hotspot starts from EPLB's placement: the hot expert gets EPLB's replicas
    (starting from the static layout, its spare slots hold whatever expert they hold)."""
    w = torch.tensor([[300, 20, 40, 60, 80, 100], [10, 30, 50, 70, 90, 400]])
    hot = w.argmax(1)

    def replicas(policy) -> np.ndarray:
        out = policy.rebalance_experts(w, 10, 1, 1, 2).numpy()
        return np.stack([np.bincount(row, minlength=6) for row in out])[np.arange(2), hot]

    assert (replicas(HotspotPolicy) >= replicas(EplbPolicy)).all() and (replicas(HotspotPolicy) >= 3).all()


def test_affinity_uses_a_flow_profile(tmp_path, monkeypatch) -> None:
    """With LLMSCHED_EXPERT_FLOWS, affinity cuts cross-GPU traffic below eplb's; without it, it is eplb."""
    w = _skewed(4)
    rng = np.random.default_rng(0)
    flows = np.zeros((L - 1, E, E))
    for layer in range(L - 1):  # each expert mostly feeds one partner in the next layer
        flows[layer, np.arange(E), rng.permutation(E)] = 100.0
    flows += 1.0
    assert torch.equal(
        AffinityPolicy.rebalance_experts(w, R, 1, 1, G), EplbPolicy.rebalance_experts(w, R, 1, 1, G)
    )
    np.save(tmp_path / "flows.npy", flows)
    monkeypatch.setenv("LLMSCHED_EXPERT_FLOWS", str(tmp_path / "flows.npy"))
    aff = Placement.from_phy2log(AffinityPolicy.rebalance_experts(w, R, 1, 1, G).numpy(), E)
    base = Placement.from_phy2log(EplbPolicy.rebalance_experts(w, R, 1, 1, G).numpy(), E)
    assert cross_gpu_fraction(aff, flows, G) < cross_gpu_fraction(base, flows, G)


def test_vllms_contract_assertion_on_uneven_replicas() -> None:
    with pytest.raises(AssertionError):
        EplbPolicy.rebalance_experts(torch.ones(1, 4), 7, 2, 2, 4)


def test_plugin_entry_point_installs_the_named_policy(monkeypatch) -> None:
    eps = importlib.metadata.entry_points(group="vllm.general_plugins")
    assert any(ep.value == "llmsched.vllm.eplb:install" for ep in eps)
    import vllm.plugins

    monkeypatch.setattr(vllm.plugins, "plugins_loaded", False)
    monkeypatch.setenv("LLMSCHED_EXPERT_POLICY", "hotspot")
    try:
        vllm.plugins.load_general_plugins()  # what every vLLM process does at start
        assert EPLB_POLICIES["default"] is HotspotPolicy
    finally:
        ours.uninstall()
    assert EPLB_POLICIES["default"] is DefaultEplbPolicy


def test_plugin_does_nothing_when_unset(monkeypatch) -> None:
    monkeypatch.delenv("LLMSCHED_EXPERT_POLICY", raising=False)
    assert ours.install() is None
    assert EPLB_POLICIES["default"] is DefaultEplbPolicy


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        (
            {"LLMSCHED_EXPERT_POLICY": "nope"},
            "LLMSCHED_EXPERT_POLICY='nope' is not an EPLB policy of llmsched; valid: eplb, hotspot, affinity",
        ),
        (
            {"LLMSCHED_EXPERT_POLICY": "hotspot", "LLMSCHED_EXPERT_PARAMS": "{x"},
            "LLMSCHED_EXPERT_PARAMS is not valid JSON",
        ),
        (
            {"LLMSCHED_EXPERT_POLICY": "hotspot", "LLMSCHED_EXPERT_PARAMS": '{"window": 0}'},
            "LLMSCHED_EXPERT_PARAMS: invalid parameters for hotspot",
        ),
        (
            {"LLMSCHED_EXPERT_POLICY": "affinity", "LLMSCHED_EXPERT_FLOWS": "/no/such.npy"},
            "LLMSCHED_EXPERT_FLOWS='/no/such.npy': cannot read",
        ),
    ],
)
def test_plugin_bad_environment_is_a_clear_error(env: dict[str, str], needle: str, monkeypatch) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError) as e:
        ours.install()
    assert needle in str(e.value)
    assert EPLB_POLICIES["default"] is DefaultEplbPolicy
