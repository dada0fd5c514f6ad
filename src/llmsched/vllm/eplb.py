"""Our expert placers as vLLM EPLB policies, and the `vllm.general_plugins` hook that installs one.

vLLM's expert-parallel load balancer records each physical expert's load over a window of steps and, every
`step_interval` steps, asks its policy class for a new layout:
`rebalance_experts(weight[L, E], num_replicas, num_groups, num_nodes, num_ranks, old_global_expert_indices)
-> physical_to_logical_map[L, num_replicas]` (slots rank-major, as ours). `weight` is that load window per
logical expert; `old_global_expert_indices` is the layout in force (vLLM passes its current
physical_to_logical_map).

- `EplbPolicy` (`eplb`): DeepSeek's EPLB (ours, never worse than the static layout per layer), then renumbered so
  that experts already on a GPU keep their slot (`keep_in_place`: fewer weights to move);
- `HotspotPolicy` (`hotspot`): a few cheap moves on the layout in force, only in layers whose balancedness is
  below the threshold (meant for a short window and interval: `--eplb-config '{"window_size": 100,
  "step_interval": 100}'`); with no layout in force (a cold start) it starts from EPLB's;
- `AffinityPolicy` (`affinity`): EPLB's replica counts, placed layer by layer next to the previous layer's
  senders. vLLM records no inter-layer flows, so they come from a profile: `LLMSCHED_EXPERT_FLOWS` = a `.npy`
  file of shape [L-1, E, E]; without it the layout is EPLB's.

`install()` is the plugin: when `LLMSCHED_EXPERT_POLICY` names one of these, it becomes what vLLM selects as its
`"default"` policy (vLLM's `EPLBConfig.policy` accepts no other name), in every vLLM process; parameters
come from `LLMSCHED_EXPERT_PARAMS` (JSON). Unset: vLLM is left alone.
"""

from __future__ import annotations

import logging
import os
from typing import ClassVar

import numpy as np
import torch
from vllm.distributed.eplb.policy import EPLB_POLICIES
from vllm.distributed.eplb.policy.abstract import AbstractEplbPolicy

from llmsched.policies.expert import EXPERT_PLACERS, ExpertPlacer, Placement, Topology
from llmsched.policies.expert.eplb import eplb_placement, keep_in_place
from llmsched.vllm._env import create_from_env

logger = logging.getLogger(__name__)

EXPERT_ENV = "LLMSCHED_EXPERT_POLICY"
EXPERT_PARAMS_ENV = "LLMSCHED_EXPERT_PARAMS"
FLOWS_ENV = "LLMSCHED_EXPERT_FLOWS"

VLLM_DEFAULT_POLICY = EPLB_POLICIES["default"]


def _placer(name: str) -> ExpertPlacer:
    """Our placer `name`, with LLMSCHED_EXPERT_PARAMS when LLMSCHED_EXPERT_POLICY selects this one."""
    selected = os.environ.get(EXPERT_ENV, "").strip() == name
    return create_from_env(EXPERT_PLACERS, name, EXPERT_PARAMS_ENV, os.environ if selected else {})


def _layout(old: torch.Tensor | None, shape: tuple[int, int], num_experts: int) -> Placement | None:
    """The layout in force, if it is a complete one of this shape (every expert at least once)."""
    if old is None:
        return None
    a = old.detach().cpu().numpy()
    if a.shape != shape or a.min() < 0 or a.max() >= num_experts:
        return None
    p = Placement.from_phy2log(a, num_experts)
    return p if (p.logcnt >= 1).all() else None


class LlmschedEplbPolicy(AbstractEplbPolicy):
    """vLLM's EPLB policy interface over one of our expert placers (subclasses name it)."""

    placer_name: ClassVar[str] = ""

    @classmethod
    def rebalance_experts(
        cls,
        weight: torch.Tensor,
        num_replicas: int,
        num_groups: int,
        num_nodes: int,
        num_ranks: int,
        old_global_expert_indices: torch.Tensor | None = None,
    ) -> torch.Tensor:
        w = weight.detach().float().cpu().numpy().astype(np.float64)
        if w.ndim != 2:
            raise ValueError(f"weight must be [layers, experts], got shape {tuple(w.shape)}")
        L, E = w.shape
        # vLLM's own contract (its default policy asserts the same).
        assert num_replicas % num_ranks == 0, f"{num_replicas} replicas do not split over {num_ranks} ranks"
        assert num_ranks % num_nodes == 0, f"{num_ranks} ranks do not split over {num_nodes} nodes"
        assert num_replicas >= E, f"{num_replicas} replicas cannot hold {E} experts"
        topo = Topology(L, E, num_ranks, num_replicas, num_nodes, max(1, num_groups))
        old = _layout(old_global_expert_indices, (L, num_replicas), E)
        new = cls.place(w, topo, old)
        return torch.from_numpy(np.ascontiguousarray(new.phy2log, dtype=np.int64))

    @classmethod
    def place(cls, w: np.ndarray, topo: Topology, old: Placement | None) -> Placement:
        raise NotImplementedError


class EplbPolicy(LlmschedEplbPolicy):
    placer_name = "eplb"

    @classmethod
    def place(cls, w: np.ndarray, topo: Topology, old: Placement | None) -> Placement:
        new = _placer(cls.placer_name).place(w, topo)
        return new if old is None else keep_in_place(new, old, topo.num_gpus)


class HotspotPolicy(LlmschedEplbPolicy):
    placer_name = "hotspot"

    @classmethod
    def place(cls, w: np.ndarray, topo: Topology, old: Placement | None) -> Placement:
        placer = _placer(cls.placer_name)
        if old is None:  # a cold start: a full placement first, replicas where the load is
            old = eplb_placement(w, topo)
        return placer._relieve(w, old, topo) or old  # type: ignore[attr-defined]


class AffinityPolicy(LlmschedEplbPolicy):
    placer_name = "affinity"

    @classmethod
    def place(cls, w: np.ndarray, topo: Topology, old: Placement | None) -> Placement:
        return _placer(cls.placer_name).place(w, topo, _flows())


def _flows() -> np.ndarray | None:
    path = os.environ.get(FLOWS_ENV, "").strip()
    if not path:
        return None
    try:
        return np.load(path)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"{FLOWS_ENV}={path!r}: cannot read a .npy array of flows [L-1, E, E] ({e})"
        ) from None


POLICIES: dict[str, type[LlmschedEplbPolicy]] = {
    c.placer_name: c for c in (EplbPolicy, HotspotPolicy, AffinityPolicy)
}


def install() -> type[AbstractEplbPolicy] | None:
    """The `vllm.general_plugins` entry point: make LLMSCHED_EXPERT_POLICY vLLM's EPLB policy (if set).

    vLLM runs it in every process (more than once is harmless). A bad name or parameter stops vLLM with a
    message naming the variable.
    """
    name = os.environ.get(EXPERT_ENV, "").strip()
    if not name:
        return None
    cls = POLICIES.get(name)
    if cls is None:
        raise ValueError(
            f"{EXPERT_ENV}={name!r} is not an EPLB policy of llmsched; valid: {', '.join(POLICIES)}"
        )
    _placer(name)  # validate LLMSCHED_EXPERT_PARAMS now, not at the first rebalance
    if cls.placer_name == "affinity":
        _flows()
    EPLB_POLICIES["default"] = cls
    logger.info("llmsched: vLLM's EPLB policy is now %s (%s)", name, cls.__qualname__)
    return cls


def uninstall() -> None:
    """Give vLLM its own default EPLB policy back."""
    EPLB_POLICIES["default"] = VLLM_DEFAULT_POLICY
