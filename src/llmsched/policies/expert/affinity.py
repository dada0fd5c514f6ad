"""Inter-layer affinity placement (the ExFlow / MoETuner idea, Gimbal's expert layer).

A token's hidden state sits on the GPU of its expert at layer l; if its expert at layer l+1 is on that same
GPU, the dispatch never leaves the GPU. Given the flows F[l][e, e'] (tokens that go from expert e of layer l
to expert e' of layer l+1), this placer places layer by layer, layer 0 as EPLB does:

- `global`: EPLB's replica counts; the replicas of layer l+1 go, by decreasing inbound flow from layer l's
  placement, to the GPU that sends them most, while that GPU has a free slot and stays under mean /
  `balance_target`; the rest are packed heaviest first onto the lightest GPUs (see `place_layer`).
- `hierarchical`: every layer keeps EPLB's node structure. Its groups are packed onto nodes by the same rule one level up (a group goes
  to the node whose GPUs send it most, under a node-load cap), its experts are replicated inside their node,
  and the node's replicas are placed on the node's GPUs by inbound flow from those GPUs. So each node holds
  whole groups in every layer, which is what keeps group-limited routing's dispatch inside a node. Under the
  routing model here (no group-limited routing) it measured worse than `global` on balance, cross-node bytes
  and step time, so `auto` means `global` for this placer.

`cross_gpu_fraction` / `cross_node_fraction` measure the traffic cut.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from llmsched.core.registry import Params
from llmsched.policies.expert.base import EXPERT_PLACERS, ExpertPlacer, Placement, Topology, at_least_static
from llmsched.policies.expert.eplb import eplb_placement
from llmsched.policies.expert.eplb_algo import balanced_packing, replicate_experts
from llmsched.policies.expert.hotspot import relieve_layer


def cross_gpu_fraction(placement: Placement, flows: np.ndarray, num_gpus: int, num_nodes: int | None = None) -> float:
    """Share of the inter-layer flow whose next expert is served on another GPU than the previous one
    (another node, when `num_nodes` is given).

    Replicas split tokens evenly, so a flow e -> e' stays local with probability sum_g share[e,g] share[e',g].
    """
    share = placement.gpu_share(num_gpus)  # [L, E, G]
    if num_nodes is not None:
        share = share.reshape(*share.shape[:2], num_nodes, -1).sum(-1)
    local = np.einsum("leg,lfg,lef->", share[:-1], share[1:], flows)
    total = flows.sum()
    return float(1.0 - local / total) if total > 0 else 0.0


def cross_node_fraction(placement: Placement, flows: np.ndarray, topology: Topology) -> float:
    """Share of the inter-layer flow whose next expert is served on another node than the previous one."""
    return cross_gpu_fraction(placement, flows, topology.num_gpus, topology.num_nodes)


def place_layer(
    w: np.ndarray, cnt: np.ndarray, inbound: np.ndarray, num_gpus: int, slots: int, cap: float
) -> np.ndarray:
    """One layer: phy2log row (GPU-major) for loads `w`, replica counts `cnt`, inbound flow [E, G].

    Pass 1 takes (expert, GPU) pairs by decreasing inbound flow per replica while the GPU has a free slot
    and stays under `cap`; pass 2 places the remaining replicas heaviest first on the lightest GPU with a
    free slot; pass 3 repairs the peak with a few swaps (the hot-spot moves) if pass 2 overshot.
    """
    E = w.shape[0]
    per = w / cnt
    score = inbound / cnt[:, None]
    need = cnt.copy()
    load = np.zeros(num_gpus)
    free = np.full(num_gpus, slots)
    gpu_items: list[list[int]] = [[] for _ in range(num_gpus)]
    # candidates: each expert's few best GPUs (enough for its replicas), best pairs first
    top = min(num_gpus, int(cnt.max()) + 3)
    cand = np.argpartition(-score, top - 1, axis=1)[:, :top] if top < num_gpus else np.tile(np.arange(num_gpus), (E, 1))
    cs = np.take_along_axis(score, cand, axis=1).ravel()
    ce = np.repeat(np.arange(E), cand.shape[1])
    cg = cand.ravel()
    keep = cs > 0
    order = np.argsort(-cs[keep], kind="stable")
    for e, g in zip(ce[keep][order].tolist(), cg[keep][order].tolist(), strict=True):
        if need[e] and free[g] and load[g] + per[e] <= cap:
            gpu_items[g].append(e)
            load[g] += per[e]
            free[g] -= 1
            need[e] -= 1
    rest = np.repeat(np.arange(E), need)
    for e in rest[np.argsort(-per[rest], kind="stable")]:
        g = int(np.where(free > 0, load, np.inf).argmin())
        gpu_items[g].append(int(e))
        load[g] += per[e]
        free[g] -= 1
    row = np.array([e for g in gpu_items for e in g], dtype=np.int64)
    if load.max() > cap:
        relieve_layer(w, row, num_gpus, max_moves=2 * slots, min_gain=0.0)
        # Still over the cap: EPLB's balance-only packing of the same replicas, when the flow-driven row is
        # worse than that packing by more than the tolerated imbalance (1 / target). The packing's peak is at
        # least max(mean, heaviest replica), so most rows are kept without computing it.
        tol = cap * num_gpus / w.sum()
        peak = _peak(w, row, num_gpus)
        if peak > max(w.sum() / num_gpus, float(per.max())) * tol:
            reps = np.repeat(np.arange(E), cnt)
            pack, rank = balanced_packing(per[reps][None, :], num_gpus)
            packed = np.empty_like(reps)
            packed[pack[0] * slots + rank[0]] = reps
            if peak > _peak(w, packed, num_gpus) * tol:
                row = packed
    return row


def _peak(w: np.ndarray, row: np.ndarray, num_gpus: int) -> float:
    cnt = np.bincount(row, minlength=w.shape[0])
    return float((w[row] / cnt[row]).reshape(num_gpus, -1).sum(1).max())


def place_layer_hierarchical(w: np.ndarray, inbound: np.ndarray, topology: Topology, target: float) -> np.ndarray:
    """One layer, node-local: groups onto nodes by inbound flow (under a node cap), replication inside each
    node, then the node's replicas onto its GPUs by inbound flow from those GPUs (`place_layer` at both levels).

    w: the layer's expert loads [E]; inbound: flow into each expert from each GPU's slots [E, G].
    """
    t = topology
    E, G, N = t.num_experts, t.num_gpus, t.num_nodes
    gsize, gpn, spg = E // t.num_groups, G // N, t.slots_per_gpu
    group_w = w.reshape(t.num_groups, gsize).sum(1)
    group_in = inbound.reshape(t.num_groups, gsize, N, gpn).sum((1, 3))  # [groups, nodes]
    node_cap = group_w.sum() / N / target
    groups_of = place_layer(group_w, np.ones(t.num_groups, dtype=np.int64), group_in, N, t.num_groups // N, node_cap)
    row = np.empty(t.num_slots, dtype=np.int64)
    for node in range(N):
        experts = (groups_of[node * (t.num_groups // N) : (node + 1) * (t.num_groups // N)][:, None] * gsize
                   + np.arange(gsize)).ravel()
        wn = w[experts]
        _, _, cnt = replicate_experts(wn[None, :], gpn * spg)
        gpus = slice(node * gpn, (node + 1) * gpn)
        cap = wn.sum() / gpn / target
        local = place_layer(wn, cnt[0], inbound[experts, gpus], gpn, spg, cap)
        row[node * gpn * spg : (node + 1) * gpn * spg] = experts[local]
    return row


@EXPERT_PLACERS.register("affinity")
class Affinity(ExpertPlacer):
    wants_flows = True

    class Params(Params):
        balance_target: float = Field(0.92, gt=0, le=1, description="keep each GPU under mean / this")
        mode: Literal["auto", "hierarchical", "global"] = "auto"

    def place(self, loads: np.ndarray, topology: Topology, flows: np.ndarray | None = None) -> Placement:
        return at_least_static(self.place_raw(loads, topology, flows), np.asarray(loads, dtype=np.float64), topology)

    def place_raw(self, loads: np.ndarray, topology: Topology, flows: np.ndarray | None = None) -> Placement:
        """The affinity placement itself, before the `at_least_static` guard of `place`."""
        t = topology
        w = np.asarray(loads, dtype=np.float64)
        hier = self.params.mode == "hierarchical"  # auto = global: measured better (docs/experts.md)
        base = eplb_placement(w, t, "hierarchical" if hier else "global", guard=False)
        if flows is None or t.num_layers < 2:
            return base
        F = np.asarray(flows, dtype=np.float64)
        if F.shape != (t.num_layers - 1, t.num_experts, t.num_experts):
            raise ValueError(f"flows have shape {F.shape}, expected {(t.num_layers - 1, t.num_experts, t.num_experts)}")
        target = self.params.balance_target
        phy2log = base.phy2log.copy()
        cnt = None if hier else replicate_experts(w, t.num_slots)[2]
        for layer in range(1, t.num_layers):
            prev = phy2log[layer - 1]
            # inbound[e', g]: flow into e' from the slots of GPU g (a slot carries 1/count of its expert)
            sent = F[layer - 1][prev] / np.bincount(prev, minlength=t.num_experts)[prev][:, None]
            inbound = sent.reshape(t.num_gpus, t.slots_per_gpu, t.num_experts).sum(1).T
            if hier:
                phy2log[layer] = place_layer_hierarchical(w[layer], inbound, t, target)
            else:
                cap = w[layer].sum() / t.num_gpus / target
                phy2log[layer] = place_layer(w[layer], cnt[layer], inbound, t.num_gpus, t.slots_per_gpu, cap)
        return Placement.from_phy2log(phy2log, t.num_experts)
