"""Hot-spot relief: a short window, a frequent check, and a few cheap moves where a GPU runs hot.

The periodic EPLB rebalance reacts to a shift in the workload mix only at its next interval, and then moves
many weights. This placer checks every `interval` steps (default 100) on the last `window` steps and, in each
layer whose balancedness is below `threshold`, makes at most `max_moves` moves between the hottest and the
coldest GPU: either swap two experts, or point a redundant replica (an expert with >= 2 copies) of the cold
GPU at the hot GPU's hottest expert. A move is kept only if it lowers that layer's maximum GPU load by at
least `min_gain` (relative). `budget` bounds the expert copies per check over all layers.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from llmsched.core.registry import Params
from llmsched.policies.expert.base import (
    EXPERT_PLACERS,
    ExpertPlacer,
    Placement,
    Topology,
    padded_static_phy2log,
)
from llmsched.policies.expert.window import WindowedPlacer, WindowRecorder


def _gpu_loads(w: np.ndarray, row: np.ndarray, num_experts: int, num_gpus: int) -> np.ndarray:
    cnt = np.bincount(row, minlength=num_experts)
    return (w[row] / cnt[row]).reshape(num_gpus, -1).sum(1)


def relieve_layer(w: np.ndarray, row: np.ndarray, num_gpus: int, max_moves: int, min_gain: float) -> int:
    """Improve one layer's placement `row` (phy2log, modified in place) for loads `w`; returns copies made."""
    E = w.shape[0]
    s = row.shape[0] // num_gpus
    copies = 0
    for _ in range(max_moves):
        g = _gpu_loads(w, row, E, num_gpus)
        h, c = int(g.argmax()), int(g.argmin())
        peak = g[h]
        if peak <= 0 or h == c:
            break
        cnt = np.bincount(row, minlength=E)
        per = w[row] / cnt[row]  # load of each slot
        hs, cs = np.arange(h * s, (h + 1) * s), np.arange(c * s, (c + 1) * s)
        best_peak, best = peak, None
        # swaps: moving delta = load_a - load_b from h to c
        delta = per[hs][:, None] - per[cs][None, :]
        pair_peak = np.maximum(g[h] - delta, g[c] + delta)
        i, j = np.unravel_index(pair_peak.argmin(), pair_peak.shape)
        if row[hs[i]] != row[cs[j]]:
            trial = row.copy()
            trial[hs[i]], trial[cs[j]] = row[cs[j]], row[hs[i]]
            p = _gpu_loads(w, trial, E, num_gpus).max()
            if p < best_peak:
                best_peak, best = p, (trial, 2)
        # retarget a redundant copy on c at the hottest expert of h
        hot = int(row[hs[per[hs].argmax()]])
        for b in cs[cnt[row[cs]] >= 2]:
            if row[b] == hot:
                continue
            trial = row.copy()
            trial[b] = hot
            p = _gpu_loads(w, trial, E, num_gpus).max()
            if p < best_peak:
                best_peak, best = p, (trial, 1)
        if best is None or best_peak > peak * (1 - min_gain):
            break
        row[:] = best[0]
        copies += best[1]
    return copies


@EXPERT_PLACERS.register("hotspot")
class Hotspot(WindowedPlacer, ExpertPlacer):
    online = True

    class Params(Params):
        window: int = Field(100, ge=1, description="steps of recent loads a check looks at")
        interval: int = Field(100, ge=1, description="steps between checks")
        threshold: float = Field(0.9, gt=0, le=1, description="act on layers whose balancedness is below this")
        max_moves: int = Field(4, ge=1, description="moves per layer per check")
        min_gain: float = Field(0.01, ge=0, lt=1, description="least relative cut of the layer's peak per move")
        budget: int = Field(64, ge=1, description="expert copies per check, all layers together")

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self.recorder_ = WindowRecorder(self.params.window, self.params.interval)

    def place(self, loads: np.ndarray, topology: Topology, flows: np.ndarray | None = None) -> Placement:
        """Offline use: relieve every layer of the padded static layout for `loads` (never worse than static)."""
        start = Placement.from_phy2log(padded_static_phy2log(topology), topology.num_experts)
        return self._relieve(np.asarray(loads, dtype=np.float64), start, topology) or start

    def maybe_rebalance(self, step: int, current: Placement, topology: Topology) -> Placement | None:
        if not self.recorder_.due(step):
            return None
        w = self.recorder_.take(step)
        if w is None:
            return None
        return self._relieve(w, current, topology)

    def _relieve(self, w: np.ndarray, current: Placement, topology: Topology) -> Placement | None:
        p = self.params
        gpu = current.gpu_loads(w, topology.num_gpus)
        mx = gpu.max(1)
        bal = np.where(mx > 0, gpu.mean(1) / np.where(mx > 0, mx, 1), 1.0)
        phy2log = current.phy2log.copy()
        budget = p.budget
        changed = False
        for layer in np.argsort(bal):  # worst layers first
            if bal[layer] >= p.threshold or budget <= 0:
                break
            moves = min(p.max_moves, budget)
            used = relieve_layer(w[layer], phy2log[layer], topology.num_gpus, moves, p.min_gain)
            budget -= used
            changed |= used > 0
        return Placement.from_phy2log(phy2log, topology.num_experts) if changed else None
