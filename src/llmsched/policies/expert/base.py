"""The expert-level interface: a placer maps each MoE layer's logical experts onto physical GPU slots.

A `Placement` is what DeepSeek's EPLB, vLLM and SGLang exchange: `phy2log[L, R]` (which logical expert each
physical slot holds), `log2phy[L, E, max_replicas]` (-1 padded) and `logcnt[L, E]` (replicas per expert).
Slots are GPU-major: GPU g owns slots [g * S, (g + 1) * S), S = R / num_gpus. A token routed to an expert
with several replicas is split evenly between them (vLLM's EPLB dispatch spreads tokens over replicas).

Placers are sans-I/O: `place(loads, topology)` is a pure function of recorded loads. Online placers also get
every step's loads through `observe(loads, first_step)` and may return a new placement from
`maybe_rebalance(step, current, topology)`; the cost model prices the weight migration.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from llmsched.core.registry import Configurable, Registry


@dataclass(frozen=True, slots=True)
class Topology:
    """The expert-parallel group: L MoE layers of E experts over num_gpus GPUs on num_nodes nodes.

    num_slots: physical expert slots in total (E + redundant); a multiple of num_gpus.
    num_groups: expert groups of the model's group-limited routing (DeepSeek-V3: 8); 1 when none.
    """

    num_layers: int
    num_experts: int
    num_gpus: int
    num_slots: int
    num_nodes: int = 1
    num_groups: int = 1

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_experts", "num_gpus", "num_slots", "num_nodes", "num_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"Topology.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_slots < self.num_experts:
            raise ValueError(f"Topology: {self.num_slots} slots cannot hold {self.num_experts} experts")
        if self.num_slots % self.num_gpus:
            raise ValueError(f"Topology: {self.num_slots} slots do not split evenly over {self.num_gpus} GPUs")
        if self.num_gpus % self.num_nodes:
            raise ValueError(f"Topology: {self.num_gpus} GPUs do not split evenly over {self.num_nodes} nodes")

    @property
    def slots_per_gpu(self) -> int:
        return self.num_slots // self.num_gpus

    @property
    def redundant(self) -> int:
        return self.num_slots - self.num_experts


@dataclass(frozen=True, slots=True, eq=False)
class Placement:
    """One placement of every MoE layer. Build with `from_phy2log`, which derives the other two maps."""

    phy2log: np.ndarray  # [L, R] int64
    log2phy: np.ndarray  # [L, E, max_replicas] int64, -1 padded
    logcnt: np.ndarray  # [L, E] int64

    @classmethod
    def from_phy2log(cls, phy2log: np.ndarray, num_experts: int) -> Placement:
        p2l = np.ascontiguousarray(phy2log, dtype=np.int64)
        if p2l.ndim != 2:
            raise ValueError(f"phy2log must be [layers, slots], got shape {p2l.shape}")
        L, R = p2l.shape
        if p2l.min() < 0 or p2l.max() >= num_experts:
            raise ValueError(f"phy2log holds expert ids outside [0, {num_experts})")
        flat = (p2l + np.arange(L)[:, None] * num_experts).ravel()
        logcnt = np.bincount(flat, minlength=L * num_experts).reshape(L, num_experts)
        order = np.argsort(p2l, axis=1, kind="stable")  # slots grouped by expert, in slot order
        sorted_e = np.take_along_axis(p2l, order, axis=1)
        starts = np.cumsum(logcnt, axis=1) - logcnt
        rank = np.arange(R)[None, :] - np.take_along_axis(starts, sorted_e, axis=1)
        log2phy = np.full((L, num_experts, max(1, int(logcnt.max()))), -1, dtype=np.int64)
        log2phy[np.arange(L)[:, None], sorted_e, rank] = order
        return cls(p2l, log2phy, logcnt)

    @property
    def num_layers(self) -> int:
        return int(self.phy2log.shape[0])

    @property
    def num_slots(self) -> int:
        return int(self.phy2log.shape[1])

    @property
    def num_experts(self) -> int:
        return int(self.logcnt.shape[1])

    def slot_weights(self) -> np.ndarray:
        """[L, R]: share of its expert's tokens each slot receives (1 / replica count)."""
        return 1.0 / np.take_along_axis(self.logcnt, self.phy2log, axis=1)

    def gpu_loads(self, loads: np.ndarray, num_gpus: int) -> np.ndarray:
        """Tokens per GPU, [..., L, num_gpus], for logical loads [..., L, E]."""
        w = np.asarray(loads, dtype=np.float64)
        slot = np.take_along_axis(w, np.broadcast_to(self.phy2log, w.shape[:-1] + self.phy2log.shape[-1:]), -1)
        slot = slot * self.slot_weights()
        return slot.reshape(*slot.shape[:-1], num_gpus, -1).sum(-1)

    def gpu_share(self, num_gpus: int) -> np.ndarray:
        """[L, E, num_gpus]: fraction of expert e's tokens that GPU g serves."""
        L, R = self.phy2log.shape
        share = np.zeros((L, self.num_experts, num_gpus))
        gpu = np.broadcast_to(np.arange(R) // (R // num_gpus), (L, R))
        np.add.at(share, (np.broadcast_to(np.arange(L)[:, None], (L, R)), self.phy2log, gpu), self.slot_weights())
        return share

    def validate(self, topology: Topology) -> None:
        """Raise ValueError unless this is a well-formed placement for `topology`."""
        L, R = self.phy2log.shape
        t = topology
        if t.num_layers != L or self.num_experts != t.num_experts:
            raise ValueError(f"placement is {L} layers x {self.num_experts} experts, topology {t.num_layers} x {t.num_experts}")
        if R % t.num_gpus or t.num_slots < R:
            raise ValueError(f"placement has {R} slots: not a multiple of {t.num_gpus} GPUs or over {t.num_slots}")
        if (self.logcnt < 1).any():
            layer, expert = np.argwhere(self.logcnt < 1)[0]
            raise ValueError(f"layer {layer}: logical expert {expert} has no replica")
        for layer in range(L):
            for e in range(self.num_experts):
                slots = self.log2phy[layer, e]
                slots = slots[slots >= 0]
                if len(slots) != self.logcnt[layer, e] or (self.phy2log[layer, slots] != e).any():
                    raise ValueError(f"layer {layer}: log2phy and phy2log disagree on expert {e}")


def balancedness(gpu_loads: np.ndarray) -> float:
    """vLLM/SGLang's balancedness: mean over layers of mean / max GPU load (layers with no load skipped)."""
    g = np.asarray(gpu_loads, dtype=np.float64)
    mx = g.max(-1)
    ok = mx > 0
    if not ok.any():
        return 1.0
    return float((g.mean(-1)[ok] / mx[ok]).mean())


def static_phy2log(topology: Topology, use_redundant: bool = False) -> np.ndarray:
    """Contiguous placement: slot r holds expert r mod E (vLLM's initial placement).

    When the experts do not split evenly over the GPUs, every slot is used (the layout wraps into the padding
    slots, whose copies halve their expert's load): the busiest GPUs host ceil(E / G) whole experts, as in
    vLLM's uneven expert map."""
    t = topology
    r = t.num_slots if use_redundant or t.num_experts % t.num_gpus else t.num_experts
    return np.broadcast_to(np.arange(r) % t.num_experts, (t.num_layers, r)).copy()


def padded_static_phy2log(topology: Topology) -> np.ndarray:
    """Static layout using all slots: each GPU keeps static's experts and fills its extra slots with copies
    of its own experts, so per-GPU loads equal static's for any load (the starting point of online placers,
    and the fallback that keeps every placer at least as balanced as static)."""
    t = topology
    if t.num_experts % t.num_gpus:
        return static_phy2log(t, use_redundant=True)
    base = static_phy2log(t).reshape(t.num_layers, t.num_gpus, -1)
    extra = t.slots_per_gpu - base.shape[-1]
    pad = base[:, :, np.arange(extra) % base.shape[-1]]
    return np.concatenate([base, pad], axis=-1).reshape(t.num_layers, t.num_slots)


def at_least_static(placement: Placement, loads: np.ndarray, topology: Topology) -> Placement:
    """Replace each layer whose balancedness for `loads` is below static's by the padded static row."""
    t = topology
    if t.num_experts % t.num_gpus or placement.num_slots != t.num_slots:
        return placement
    w = np.asarray(loads, dtype=np.float64)
    static = Placement.from_phy2log(padded_static_phy2log(t), t.num_experts)
    mine, ref = placement.gpu_loads(w, t.num_gpus), static.gpu_loads(w, t.num_gpus)
    worse = mine.max(-1) > ref.max(-1) * (1 + 1e-12)
    if not worse.any():
        return placement
    phy2log = placement.phy2log.copy()
    phy2log[worse] = static.phy2log[worse]
    return Placement.from_phy2log(phy2log, t.num_experts)


class ExpertPlacer(Configurable):
    """Places experts from recorded loads. Online placers override `observe` / `maybe_rebalance`."""

    online: ClassVar[bool] = False
    wants_flows: ClassVar[bool] = False  # True: `place` uses inter-layer flows (affinity placers)

    @abstractmethod
    def place(self, loads: np.ndarray, topology: Topology, flows: np.ndarray | None = None) -> Placement:
        """A placement for per-layer logical loads [L, E] (tokens per expert over some window).

        flows: optional [L-1, E, E] token flow from expert e of MoE layer l to expert e' of layer l+1.
        """

    def initial(self, loads: np.ndarray, topology: Topology, flows: np.ndarray | None = None) -> Placement:
        """The placement in force before any step ran; `loads` is a profile (may be a uniform guess)."""
        return self.place(loads, topology, flows)

    def observe(self, loads: np.ndarray, first_step: int) -> None:  # noqa: B027 - optional hook
        """Per-step logical loads [k, L, E] of steps first_step .. first_step + k - 1."""

    def wants(self, first_step: int, k: int) -> bool:
        """Whether loads of steps first_step .. first_step + k - 1 would be recorded (lets callers skip work)."""
        return self.online

    def observe_repeated(self, loads: np.ndarray, first_step: int, k: int) -> None:
        """The same logical loads [L, E] in each of k steps from first_step (a decode run's expected loads)."""
        self.observe(np.broadcast_to(loads, (k, *loads.shape)), first_step)

    def next_check(self) -> int | None:
        """The step at which `maybe_rebalance` may next act; None if never (offline placers)."""
        return None

    def maybe_rebalance(self, step: int, current: Placement, topology: Topology) -> Placement | None:
        """Called before step `step` runs once step >= next_check(); a new placement or None."""
        return None


EXPERT_PLACERS: Registry[ExpertPlacer] = Registry("expert")
