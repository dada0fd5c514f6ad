"""DeepSeek's EPLB algorithms (hierarchical and global), reimplemented from their published description.

Every step is vectorised over layers (and over nodes): the Python loops run over items of one layer (at most
the number of slots), each iteration a handful of numpy operations on [layers, packs] arrays, so a rebalance
of 58 layers x 288 slots stays in the low milliseconds.
"""

from __future__ import annotations

import numpy as np


def balanced_packing(weight: np.ndarray, num_packs: int) -> tuple[np.ndarray, np.ndarray]:
    """Pack n items of each row into `num_packs` packs of exactly n / num_packs items, balancing weight.

    Greedy: heaviest item first, into the lightest pack that still has room.

    Returns:
        pack[rows, n]: pack of each item; rank[rows, n]: its position inside the pack.
    """
    rows, n = weight.shape
    if n % num_packs:
        raise ValueError(f"{n} items do not split evenly into {num_packs} packs")
    cap = n // num_packs
    if cap == 1:
        order = np.argsort(-weight, axis=1, kind="stable")
        pack = np.empty_like(order)
        np.put_along_axis(pack, order, np.arange(n)[None, :].repeat(rows, 0), axis=1)
        return pack, np.zeros_like(pack)
    order = np.argsort(-weight, axis=1, kind="stable")
    sorted_w = np.take_along_axis(weight, order, axis=1).astype(np.float64)
    r = np.arange(rows)
    pack_w = np.zeros((rows, num_packs))
    pack_n = np.zeros((rows, num_packs), dtype=np.int64)
    pack = np.empty((rows, n), dtype=np.int64)
    rank = np.empty((rows, n), dtype=np.int64)
    for j in range(n):
        p = np.where(pack_n < cap, pack_w, np.inf).argmin(axis=1)
        item = order[:, j]
        pack[r, item] = p
        rank[r, item] = pack_n[r, p]
        pack_w[r, p] += sorted_w[:, j]
        pack_n[r, p] += 1
    return pack, rank


def replicate_experts(weight: np.ndarray, num_phy: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Give each of `num_phy - n` extra replicas to the expert with the largest load per replica.

    Returns:
        phy2log[rows, num_phy], rank[rows, num_phy] (replica index of each slot), logcnt[rows, n].
    """
    rows, n = weight.shape
    if num_phy < n:
        raise ValueError(f"{num_phy} physical slots cannot hold {n} experts")
    r = np.arange(rows)
    phy2log = np.empty((rows, num_phy), dtype=np.int64)
    phy2log[:, :n] = np.arange(n)
    rank = np.zeros((rows, num_phy), dtype=np.int64)
    logcnt = np.ones((rows, n), dtype=np.int64)
    w = weight.astype(np.float64)
    for i in range(n, num_phy):
        e = (w / logcnt).argmax(axis=1)
        phy2log[:, i] = e
        rank[:, i] = logcnt[r, e]
        logcnt[r, e] += 1
    return phy2log, rank, logcnt


def _inverse(perm: np.ndarray) -> np.ndarray:
    inv = np.empty_like(perm)
    np.put_along_axis(inv, perm, np.arange(perm.shape[1])[None, :].repeat(perm.shape[0], 0), axis=1)
    return inv


def rebalance_hierarchical(
    weight: np.ndarray, num_phy: int, num_groups: int, num_nodes: int, num_gpus: int
) -> tuple[np.ndarray, np.ndarray]:
    """Hierarchical EPLB: groups onto nodes, replicate inside each node, pack replicas onto its GPUs.

    Keeping a group's experts on one node is what limits inter-node traffic under group-limited routing.

    Returns:
        phy2log[L, num_phy] (GPU-major slots), logcnt[L, E].
    """
    L, E = weight.shape
    for what, a, b in (
        ("experts", E, num_groups),
        ("groups", num_groups, num_nodes),
        ("GPUs", num_gpus, num_nodes),
        ("slots", num_phy, num_gpus),
    ):
        if a % b:
            raise ValueError(f"hierarchical EPLB: {a} {what} do not split evenly by {b}")
    group_size = E // num_groups
    groups_per_node = num_groups // num_nodes
    gpus_per_node = num_gpus // num_nodes
    phy_per_node = num_phy // num_nodes
    w = weight.astype(np.float64)

    # 1. groups -> nodes
    gpack, grank = balanced_packing(w.reshape(L, num_groups, group_size).sum(-1), num_nodes)
    # node-major "meta-logical" order: the experts of node 0's groups first, then node 1's, ...
    log2mlog = ((gpack * groups_per_node + grank) * group_size)[:, :, None] + np.arange(group_size)
    log2mlog = log2mlog.reshape(L, E)
    mlog2log = _inverse(log2mlog)
    # 2. replicate inside each node
    w_mlog = np.take_along_axis(w, mlog2log, axis=1).reshape(L * num_nodes, E // num_nodes)
    phy2mlog, _, mlogcnt = replicate_experts(w_mlog, phy_per_node)
    # 3. replicas -> GPUs of the node
    w_phy = np.take_along_axis(w_mlog / mlogcnt, phy2mlog, axis=1)
    pack, prank = balanced_packing(w_phy, gpus_per_node)
    phy2pphy = pack * (phy_per_node // gpus_per_node) + prank
    pphy2mlog = np.take_along_axis(phy2mlog, _inverse(phy2pphy), axis=1)
    pphy2mlog = pphy2mlog.reshape(L, num_nodes, phy_per_node) + (np.arange(num_nodes) * (E // num_nodes))[:, None]
    phy2log = np.take_along_axis(mlog2log, pphy2mlog.reshape(L, num_phy), axis=1)
    logcnt = np.take_along_axis(mlogcnt.reshape(L, E), log2mlog, axis=1)
    return phy2log, logcnt


def rebalance_experts(
    weight: np.ndarray, num_phy: int, num_groups: int, num_nodes: int, num_gpus: int, hierarchical: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """EPLB entry point: hierarchical when groups split evenly over nodes (or when asked), else global.

    The global policy is the hierarchical one with a single group on a single node.
    """
    if hierarchical is None:
        hierarchical = num_groups % num_nodes == 0 and num_nodes > 1
    if hierarchical:
        return rebalance_hierarchical(weight, num_phy, num_groups, num_nodes, num_gpus)
    return rebalance_hierarchical(weight, num_phy, 1, 1, num_gpus)
