"""Expert placers: DeepSeek's reference example, structural invariants, the raw algorithms against static,
node locality of hierarchical placement, never worse than static behind the guard."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from llmsched.policies.expert import EXPERT_PLACERS, Placement, Topology, balancedness
from llmsched.policies.expert.affinity import cross_gpu_fraction
from llmsched.policies.expert.base import static_phy2log
from llmsched.policies.expert.eplb_algo import balanced_packing, rebalance_experts, replicate_experts
from llmsched.workload.expert_routing import ExpertRoutingModel

# DeepSeek EPLB's published example: 2 layers, 12 experts, 16 replicas, 4 groups, 2 nodes, 8 GPUs.
REF_WEIGHT = np.array(
    [[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86], [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]]
)
REF_PHY2LOG = np.array(
    [[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1], [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]]
)
REF_TOPO = Topology(num_layers=2, num_experts=12, num_gpus=8, num_slots=16, num_nodes=2, num_groups=4)


def test_reference_example_matches_deepseek_output() -> None:
    phy2log, logcnt = rebalance_experts(REF_WEIGHT, 16, 4, 2, 8)
    np.testing.assert_array_equal(phy2log, REF_PHY2LOG)
    pl = Placement.from_phy2log(phy2log, 12)
    pl.validate(REF_TOPO)
    np.testing.assert_array_equal(pl.logcnt, logcnt)
    # balanced: far better than the contiguous layout, and each node holds whole groups
    static = EXPERT_PLACERS.create("static", {"use_redundant": True}).place(REF_WEIGHT, REF_TOPO)
    assert balancedness(pl.gpu_loads(REF_WEIGHT, 8)) > balancedness(static.gpu_loads(REF_WEIGHT, 8)) + 0.1
    for layer in range(2):
        for node in range(2):
            experts = set(phy2log[layer, node * 8 : (node + 1) * 8] // 3)  # group of each expert
            assert len(experts) == 2  # two whole groups per node


def test_balanced_packing_fills_every_pack_equally() -> None:
    w = np.random.default_rng(0).random((5, 24))
    pack, rank = balanced_packing(w, 6)
    for r in range(5):
        assert np.bincount(pack[r], minlength=6).tolist() == [4] * 6
        for p in range(6):
            assert sorted(rank[r, pack[r] == p]) == [0, 1, 2, 3]


def test_replication_goes_to_the_heaviest_per_replica() -> None:
    # Greedy on load per replica: 10/1 -> expert 0 (5.0 each), 5.0 -> expert 0 again (3.33), then 4/1 > 3.33
    # -> expert 2. So [3, 1, 2], and the extra slots are filled in that order.
    phy2log, rank, logcnt = replicate_experts(np.array([[10.0, 1.0, 4.0]]), 6)
    assert logcnt.tolist() == [[3, 1, 2]]
    assert phy2log.tolist() == [[0, 1, 2, 0, 0, 2]]
    assert rank.tolist() == [[0, 0, 0, 1, 2, 1]]


def test_placement_maps_are_consistent() -> None:
    pl = Placement.from_phy2log(np.array([[0, 1, 1, 2, 0, 1]]), 3)
    assert pl.logcnt.tolist() == [[2, 3, 1]]
    assert pl.log2phy[0, 1].tolist() == [1, 2, 5]
    assert pl.log2phy[0, 2].tolist() == [3, -1, -1]
    with pytest.raises(ValueError, match="no replica"):
        Placement.from_phy2log(np.array([[0, 0, 1, 1]]), 3).validate(Topology(1, 3, 2, 4))


def _case(choose: Callable[[list], Any], integer: Callable[[int, int], int], flip: Callable[[], bool]
          ) -> tuple[np.ndarray, Topology, np.ndarray | None]:
    """Random loads, topology and flows; the picks come from hypothesis or from a numpy generator."""
    nodes = choose([1, 2])
    gpus = nodes * choose([1, 2, 4])
    experts = gpus * integer(1, 4)
    groups = choose([g for g in (1, 2, 4, 8) if experts % g == 0 and g % nodes == 0] or [1])
    slots = experts + gpus * integer(0, 2)
    layers = integer(1, 3)
    skew = choose([0.0, 1.0, 3.0])
    rng = np.random.default_rng(integer(0, 2**16))
    loads = np.floor(np.exp(skew * rng.standard_normal((layers, experts))) * 100)
    if flip():
        loads[:, rng.integers(experts)] = 0.0
    flows = loads[:-1, :, None] * loads[1:, None, :] + 1.0 if layers > 1 else None
    return loads, Topology(layers, experts, gpus, slots, nodes, groups), flows


@st.composite
def cases(draw: st.DrawFn) -> tuple[np.ndarray, Topology]:
    loads, topo, _ = _case(lambda xs: draw(st.sampled_from(xs)), lambda a, b: draw(st.integers(a, b)),
                           lambda: draw(st.booleans()))
    return loads, topo


def _random_case(rng: np.random.Generator) -> tuple[np.ndarray, Topology, np.ndarray | None]:
    """The `cases` distribution drawn with numpy (a fixed sample, so rates over it are deterministic)."""
    return _case(lambda xs: xs[int(rng.integers(len(xs)))], lambda a, b: int(rng.integers(a, b + 1)),
                 lambda: bool(rng.random() < 0.5))


@pytest.mark.parametrize(("name", "params"), [("eplb", {"mode": "global"}), ("eplb", {}),
                                              ("affinity", {}), ("affinity", {"mode": "hierarchical"})])
def test_raw_placement_rarely_worse_than_static_and_better_on_skew(name: str, params: dict) -> None:
    """The algorithms themselves (`place_raw`, before the `at_least_static` guard) on 400 random loads.

    Measured (seed 1, 2000 cases): the peak GPU load of a layer exceeds static's in 0.3-0.5% of layers (eplb
    0.3-0.4%, affinity 0.4-0.5%, at most 1.07x); affinity was at 2.7% (up to 1.33x) before its balance-only
    fallback for layers left over its cap.
    """
    rng = np.random.default_rng(1)
    worse = layers = 0
    gain = []
    for _ in range(400):
        loads, topo, flows = _random_case(rng)
        if params.get("mode") == "hierarchical" and topo.num_groups % topo.num_nodes:
            continue
        raw = EXPERT_PLACERS.create(name, params).place_raw(loads, topo, flows)
        raw.validate(topo)
        mine = raw.gpu_loads(loads, topo.num_gpus).max(-1)
        ref = Placement.from_phy2log(static_phy2log(topo), topo.num_experts).gpu_loads(loads, topo.num_gpus).max(-1)
        worse += int((mine > ref * (1 + 1e-9) + 1e-9).sum())
        layers += len(mine)
        skewed = ref > loads.sum(-1) / topo.num_gpus * 1.5  # static at balancedness < 0.67
        gain += list(ref[skewed] / mine[skewed])
    print(f"{name} {params}: raw peak above static's in {worse}/{layers} layers")
    assert worse <= 0.01 * layers
    assert np.mean(gain) > 1.3  # where static is badly skewed, the algorithm cuts the peak by a third or more


@pytest.mark.parametrize("name", ["static", "eplb", "eplb-online", "hotspot", "affinity"])
@settings(max_examples=40, deadline=None)
@given(case=cases())
def test_every_placer_is_valid_and_no_worse_than_static_after_the_guard(name: str, case: tuple[np.ndarray, Topology]) -> None:
    """`place` (with the `at_least_static` guard for eplb and affinity): structure and the never-worse promise."""
    loads, topo = case
    flows = None
    if topo.num_layers > 1:
        flows = loads[:-1, :, None] * loads[1:, None, :] + 1.0
    pl = EXPERT_PLACERS.create(name).place(loads, topo, flows)
    pl.validate(topo)
    assert pl.num_slots % topo.num_gpus == 0
    per_gpu = np.bincount(np.arange(pl.num_slots) // (pl.num_slots // topo.num_gpus))
    assert (per_gpu == per_gpu[0]).all()
    static = EXPERT_PLACERS.create("static").place(loads, topo)
    mine, ref = pl.gpu_loads(loads, topo.num_gpus), static.gpu_loads(loads, topo.num_gpus)
    assert (mine.max(-1) <= ref.max(-1) * (1 + 1e-9) + 1e-9).all()
    assert balancedness(mine) >= balancedness(ref) - 1e-9
    np.testing.assert_allclose(mine.sum(-1), loads.sum(-1))  # tokens are conserved


@pytest.mark.parametrize(("name", "params"), [("eplb", {}), ("affinity", {}), ("affinity", {"mode": "hierarchical"})])
@settings(max_examples=40, deadline=None)
@given(case=cases())
def test_raw_placement_is_valid_on_random_topologies(name: str, params: dict, case: tuple[np.ndarray, Topology]) -> None:
    """`place_raw` itself (no guard to repair it): well formed, tokens conserved, hierarchical node-local."""
    loads, topo = case
    hier = params.get("mode") == "hierarchical" or (name == "eplb" and topo.num_nodes > 1)
    assume(not hier or topo.num_groups % topo.num_nodes == 0)
    flows = loads[:-1, :, None] * loads[1:, None, :] + 1.0 if topo.num_layers > 1 else None
    raw = EXPERT_PLACERS.create(name, params).place_raw(loads, topo, flows)
    raw.validate(topo)
    assert raw.num_slots == topo.num_slots
    np.testing.assert_allclose(raw.gpu_loads(loads, topo.num_gpus).sum(-1), loads.sum(-1))
    if hier:
        node = np.arange(topo.num_slots) // (topo.num_slots // topo.num_nodes)
        group = raw.phy2log // (topo.num_experts // topo.num_groups)
        for layer in range(topo.num_layers):
            for g in np.unique(group[layer]):
                assert len(set(node[group[layer] == g].tolist())) == 1


def _ds_like() -> tuple[np.ndarray, np.ndarray, Topology]:
    m = ExpertRoutingModel(12, 256, 8, seed=0)
    p = m.profile()
    return p, m.flows(p), Topology(12, 256, 32, 288, num_nodes=4, num_groups=8)


def test_eplb_balances_the_published_skew() -> None:
    p, _, topo = _ds_like()
    static = balancedness(EXPERT_PLACERS.create("static").place(p, topo).gpu_loads(p, 32))
    glob = balancedness(EXPERT_PLACERS.create("eplb", {"mode": "global"}).place(p, topo).gpu_loads(p, 32))
    hier = balancedness(EXPERT_PLACERS.create("eplb").place(p, topo).gpu_loads(p, 32))
    assert static < 0.55
    assert glob >= 0.95
    assert hier > static + 0.3


@pytest.mark.parametrize(("name", "params"), [("eplb", {"mode": "hierarchical"}), ("affinity", {"mode": "hierarchical"})])
def test_hierarchical_keeps_every_group_on_one_node_in_every_layer(name: str, params: dict) -> None:
    p, flows, topo = _ds_like()
    pl = EXPERT_PLACERS.create(name, params).place_raw(p, topo, flows)
    pl.validate(topo)
    node_of_slot = np.arange(topo.num_slots) // (topo.num_slots // topo.num_nodes)
    group_of = pl.phy2log // (topo.num_experts // topo.num_groups)
    for layer in range(topo.num_layers):
        for g in range(topo.num_groups):
            assert len(set(node_of_slot[group_of[layer] == g].tolist())) == 1, (layer, g)
    # and every node holds the same number of groups
    assert all(len(set(group_of[layer][node_of_slot == n].tolist())) == topo.num_groups // topo.num_nodes
               for layer in range(topo.num_layers) for n in range(topo.num_nodes))


def test_affinity_cuts_cross_gpu_traffic_at_good_balance() -> None:
    p, flows, topo = _ds_like()
    eplb = EXPERT_PLACERS.create("eplb", {"mode": "global"}).place(p, topo)
    aff = EXPERT_PLACERS.create("affinity", {"mode": "global"}).place(p, topo, flows)
    cut = 1 - cross_gpu_fraction(aff, flows, 32) / cross_gpu_fraction(eplb, flows, 32)
    assert cut >= 0.30
    assert balancedness(aff.gpu_loads(p, 32)) >= 0.9


def test_eplb_online_rebalances_on_its_interval_from_its_window() -> None:
    topo = Topology(2, 8, 2, 10)
    placer = EXPERT_PLACERS.create("eplb-online", {"window": 3, "interval": 5})
    start = placer.initial(np.ones((2, 8)), topo)
    hot = np.zeros((6, 2, 8))
    hot[:, :, 0] = 100.0
    hot[:, :, 1:] = 1.0
    placer.observe(hot[:4], 0)
    assert placer.maybe_rebalance(4, start, topo) is None  # not due
    placer.observe(hot[4:5], 4)
    assert placer.recorder_.steps == 3  # steps 2, 3, 4 only
    new = placer.maybe_rebalance(5, start, topo)
    assert new is not None and new.logcnt[0, 0] == 3
    assert placer.next_check() == 10


def test_hotspot_moves_little_and_helps() -> None:
    topo = Topology(1, 16, 4, 20)
    placer = EXPERT_PLACERS.create("hotspot", {"window": 2, "interval": 2, "max_moves": 2, "budget": 4})
    cur = placer.initial(np.ones((1, 16)), topo)
    loads = np.ones((2, 1, 16))
    loads[:, 0, 0] = 30.0
    placer.observe(loads, 0)
    new = placer.maybe_rebalance(2, cur, topo)
    assert new is not None
    assert (new.phy2log != cur.phy2log).sum() <= 4
    w = loads.sum(0)
    assert new.gpu_loads(w, 4).max() < cur.gpu_loads(w, 4).max()


def test_unknown_placer_and_bad_params_are_clear() -> None:
    with pytest.raises(ValueError, match="unknown expert policy"):
        EXPERT_PLACERS.create("nope")
    with pytest.raises(ValueError, match="invalid parameters"):
        EXPERT_PLACERS.create("eplb-online", {"window": 0})
