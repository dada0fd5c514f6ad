"""Contiguous placement without replicas: vLLM's default when EPLB is off."""

from __future__ import annotations

import numpy as np

from llmsched.core.registry import Params
from llmsched.policies.expert.base import EXPERT_PLACERS, ExpertPlacer, Placement, Topology, static_phy2log


@EXPERT_PLACERS.register("static")
class Static(ExpertPlacer):
    class Params(Params):
        use_redundant: bool = False  # fill redundant slots round-robin (vLLM's initial EPLB layout)

    def place(self, loads: np.ndarray, topology: Topology, flows: np.ndarray | None = None) -> Placement:
        return Placement.from_phy2log(static_phy2log(topology, self.params.use_redundant), topology.num_experts)
