"""DeepSeek's EPLB, offline (`eplb`: placed once from a load profile) and online (`eplb-online`).

`eplb-online` follows vLLM: it starts from the default layout, records each step's loads, and every
`interval` steps re-runs EPLB on the last `window` steps (vLLM defaults 1000 / 3000). The cost model charges
the weights that move.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from llmsched.core.registry import Params
from llmsched.policies.expert.base import (
    EXPERT_PLACERS,
    ExpertPlacer,
    Placement,
    Topology,
    at_least_static,
)
from llmsched.policies.expert.eplb_algo import rebalance_experts
from llmsched.policies.expert.window import WindowedPlacer, WindowRecorder


def eplb_placement(loads: np.ndarray, topology: Topology, mode: str = "auto", guard: bool = True) -> Placement:
    """EPLB's placement for `loads` [L, E]; `guard` applies `at_least_static` (False: the algorithm raw)."""
    t = topology
    hier = None if mode == "auto" else mode == "hierarchical"
    if hier and t.num_groups % t.num_nodes:
        raise ValueError(f"hierarchical EPLB needs groups ({t.num_groups}) divisible by nodes ({t.num_nodes})")
    w = np.asarray(loads, dtype=np.float64)
    if w.shape != (t.num_layers, t.num_experts):
        raise ValueError(f"loads have shape {w.shape}, expected ({t.num_layers}, {t.num_experts})")
    phy2log, _ = rebalance_experts(w, t.num_slots, t.num_groups, t.num_nodes, t.num_gpus, hier)
    placement = Placement.from_phy2log(phy2log, t.num_experts)
    return at_least_static(placement, w, t) if guard else placement


def keep_in_place(new: Placement, old: Placement, num_gpus: int) -> Placement:
    """Renumber the new placement's GPUs and slots to keep as many experts as possible where they are.

    Which GPU gets which pack does not change the balance, so each layer's packs are matched to the old
    GPUs greedily by the number of experts they share, then each GPU keeps its shared experts' slots.
    """
    if new.phy2log.shape != old.phy2log.shape:
        return new
    L, R = new.phy2log.shape
    E = new.num_experts
    s = R // num_gpus
    out = np.empty_like(new.phy2log)
    for layer in range(L):
        nw = new.phy2log[layer].reshape(num_gpus, s)
        od = old.phy2log[layer].reshape(num_gpus, s)
        cn = np.zeros((num_gpus, E), dtype=np.int64)
        co = np.zeros((num_gpus, E), dtype=np.int64)
        np.add.at(cn, (np.repeat(np.arange(num_gpus), s), nw.ravel()), 1)
        np.add.at(co, (np.repeat(np.arange(num_gpus), s), od.ravel()), 1)
        overlap = np.minimum(cn[:, None, :], co[None, :, :]).sum(-1)  # [new pack, old GPU]
        target = np.full(num_gpus, -1)
        used = np.zeros(num_gpus, dtype=bool)
        for flat in np.argsort(-overlap, axis=None, kind="stable"):
            a, g = divmod(int(flat), num_gpus)
            if target[a] < 0 and not used[g]:
                target[a] = g
                used[g] = True
        for a in range(num_gpus):
            g = int(target[a])
            want = list(nw[a])
            row = [-1] * s
            for i, e in enumerate(od[g]):
                if e in want:
                    want.remove(e)
                    row[i] = int(e)
            it = iter(want)
            out[layer, g * s : (g + 1) * s] = [e if e >= 0 else next(it) for e in row]
    return Placement.from_phy2log(out, E)


@EXPERT_PLACERS.register("eplb")
class EPLB(ExpertPlacer):
    class Params(Params):
        mode: Literal["auto", "hierarchical", "global"] = "auto"

    def place(self, loads: np.ndarray, topology: Topology, flows: np.ndarray | None = None) -> Placement:
        return eplb_placement(loads, topology, self.params.mode)

    def place_raw(self, loads: np.ndarray, topology: Topology, flows: np.ndarray | None = None) -> Placement:
        """EPLB itself, before the `at_least_static` guard of `place`."""
        return eplb_placement(loads, topology, self.params.mode, guard=False)


@EXPERT_PLACERS.register("eplb-online")
class EPLBOnline(WindowedPlacer, EPLB):
    online = True

    class Params(Params):
        mode: Literal["auto", "hierarchical", "global"] = "auto"
        window: int = Field(1000, ge=1, description="steps of recorded loads used by a rebalance (vLLM 1000)")
        interval: int = Field(3000, ge=1, description="steps between rebalances (vLLM 3000)")

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self.recorder_ = WindowRecorder(self.params.window, self.params.interval)

    def maybe_rebalance(self, step: int, current: Placement, topology: Topology) -> Placement | None:
        if not self.recorder_.due(step):
            return None
        w = self.recorder_.take(step)
        if w is None or not w.any():
            return None
        return keep_in_place(self.place(w, topology), current, topology.num_gpus)
