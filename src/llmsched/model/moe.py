"""MoE step cost under expert parallelism: the dense model plus imbalanced experts and their all-to-all.

step time = dense part (the base model's step minus its perfectly balanced routed experts and dispatch)
          + sum over MoE layers of max over GPUs of (expert compute of the GPU's token assignments
            + 2 x all-to-all of the assignments that reach it from other GPUs (dispatch, combine))
          + a migration stall in the step where a rebalance lands (`migration: stall`).

Per-step loads: the routing model (or a recorded load file) gives each class's expert popularity p [L, E]
per drift epoch; under the placement in force it is folded once into each GPU's share P [L, G] (cached per
class, epoch and placement), a step mixes its classes' P by their token counts, and the step's noise is
drawn on the GPU loads directly (n = tokens x top_k assignments per layer, multinomial or its Gaussian
approximation: `routing.noise`). So the hot path is O(L x G), never per token or per expert; online placers
observe each step's expected per-expert loads (n x p, the step's classes mixed), which is what their window
sums converge to. Cross-GPU traffic: the first MoE layer
dispatches from the token's home GPU (a share 1 - 1/G is remote); between consecutive layers a token's state
sits on the GPU of its previous expert (the ExFlow communication model), so a hop is local with probability
(1 - affinity) u_l . u_{l+1} + affinity sum_e p_l[e] d_l[e], u = share of the layer's tokens per GPU and
d_l[e] = chance that e and its successor share a GPU. Over several nodes the same expression over node shares
gives the chance a hop stays in its node: remote hops inside the node ride NVLink, the others InfiniBand (in
parallel; the slower sets the time). When attention is tensor parallel over the whole instance (one DP group),
the MoE output rides the layer's all-reduce as in the base model: no all-to-all.

State and the engine's decode runs: the engine may cut a run short (`Engine.interrupt`); the model learns it
at its next call (the `now` of that call tells how many of the run's steps ended) and commits only those
steps' loads to the placer and the statistics. `decode_run(b, k)[i]` equals the i-th of k `step_time` calls
with the same random stream, except that (1) a rebalance due inside the run waits for the next call, and
(2) the popularity is that of the run's first step's drift epoch for the whole run.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from llmsched.model.base import BatchStats
from llmsched.policies.expert import EXPERT_PLACERS, ExpertPlacer, Placement, Topology
from llmsched.workload.expert_loads import RecordedRouting, load_expert_loads
from llmsched.workload.expert_routing import ExpertRoutingModel


class MoEParams(BaseModel):
    """Cost-model keys of `expert_params` (every other key goes to the placer)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    redundant_slots: int | None = Field(
        None, ge=0, description="extra expert slots; default one per GPU (the padding to a multiple of the GPUs "
        "when the experts do not split evenly)")
    num_groups: int | None = Field(None, ge=1, description="expert groups; default 8 for deepseek presets, else 1")
    migration: Literal["stall", "background"] = "stall"
    migration_gbps: float | None = Field(None, gt=0, description="GB/s per GPU for weight copies; default link")
    balance_window: int = Field(100, ge=1, description="steps per balancedness sample")
    routing: dict[str, Any] = Field(default_factory=dict, description="ExpertRoutingModel parameters")
    loads_file: str | None = Field(None, description="replay recorded loads (EPLB/vLLM JSON) instead")
    profile_classes: dict[str, float] | None = Field(
        None, description="class mix of the history offline placers are given (default: the shared profile)"
    )


class MoECostModel:
    needs_class_tokens = True

    def __init__(
        self,
        base: Any,
        placer: ExpertPlacer,
        routing: ExpertRoutingModel | RecordedRouting,
        params: MoEParams | None = None,
        seed: int = 0,
    ) -> None:
        llm = base.llm
        if not llm.is_moe:
            raise ValueError(f"{llm.name} is not a MoE model")
        self.base, self.placer, self.routing = base, placer, routing
        self.params = p = params or MoEParams()
        G = base.num_gpus
        per_node = base.gpu.gpus_per_node
        nodes = max(1, -(-G // per_node))
        groups = p.num_groups or (8 if llm.name.startswith("deepseek") else 1)
        pad = -llm.num_experts % G  # uneven expert parallelism: slots padded up to a multiple of the GPUs
        red = (pad or G) if p.redundant_slots is None else p.redundant_slots
        if (llm.num_experts + red) % G:
            raise ValueError(f"redundant_slots ({red}) + {llm.num_experts} experts must be a multiple of the {G} GPUs")
        self.topology = Topology(base.num_moe_layers, llm.num_experts, G, llm.num_experts + red, nodes, groups)
        if (routing.num_layers, routing.num_experts) != (base.num_moe_layers, llm.num_experts):
            raise ValueError(f"routing model is {routing.num_layers} x {routing.num_experts}, model "
                             f"{base.num_moe_layers} x {llm.num_experts}")
        self.rng = np.random.default_rng([seed, 0x30E])
        self._top_k = llm.top_k
        self._act_bytes = float(llm.hidden * llm.dtype_bytes)
        self._expert_bytes = 3.0 * llm.hidden * llm.expert_ffn * llm.dtype_bytes
        self._a2a = base.dp > 1
        self._nodes = nodes
        self._multi_node = nodes > 1
        bw = p.migration_gbps * 1e9 if p.migration_gbps else (base.gpu.internode_bw if nodes > 1 else base.gpu.nvlink_bw)
        self._migration_bw = float(bw)

        profile = routing.profile()
        if p.profile_classes and isinstance(routing, ExpertRoutingModel):
            profile = routing.popularity(p.profile_classes, 0.0)
        flows = routing.flows(profile) if placer.wants_flows else None
        self._set_placement(placer.initial(profile, self.topology, flows))
        self._step = 0
        self._pending: tuple[np.ndarray, np.ndarray, np.ndarray, int, dict[str, float], int] | None = None
        self._stall = 0.0
        self._dense_cache: dict[int, float] = {}
        self._switch: tuple[float, Placement, int] | None = None  # background copy: (time, placement, copies)
        # statistics
        self._tokens = 0.0
        self._a2a_bytes = 0.0
        self._a2a_far_bytes = 0.0
        self._copies = 0
        self._rebalances = 0
        self._stall_total = 0.0
        self._win_gpu = np.zeros((self.topology.num_layers, G))
        self._win_steps = 0
        self._win_tokens = 0.0
        self._bal_sum = 0.0
        self._bal_w = 0.0
        self._bal_steps_sum = 0.0
        self._bal_steps_n = 0
        self.series: list[tuple[float, float]] = []  # (end time of a window, its balancedness)

    # ---- placement --------------------------------------------------------------------------------------

    def _set_placement(self, placement: Placement) -> None:
        t = self.topology
        if placement.num_layers * placement.num_experts <= 4096:  # the full check is O(L x E) in Python
            placement.validate(t)
        self.placement = placement
        self._terms: dict[tuple[str, int], tuple[np.ndarray, np.ndarray | None]] = {}
        L, R = placement.phy2log.shape
        self._slots_per_gpu = R // t.num_gpus
        self._gather = (placement.phy2log + np.arange(L)[:, None] * t.num_experts).ravel()
        self._inv_cnt = placement.slot_weights().ravel()
        a = getattr(self.routing, "affinity", 0.0)
        self._succ_local = self._succ_node = None
        if self._a2a and a > 0 and L > 1:
            share = placement.gpu_share(t.num_gpus)
            succ = self.routing.successor
            nxt = np.take_along_axis(share[1:], succ[:, :, None], axis=1)
            self._succ_local = (share[:-1] * nxt).sum(-1)  # [L-1, E]: e and its successor on one GPU
            if self._multi_node:
                node = lambda x: x.reshape(*x.shape[:2], self._nodes, -1).sum(-1)  # noqa: E731
                self._succ_node = (node(share[:-1]) * node(nxt)).sum(-1)  # ... on one node

    def _migration(self, new: Placement) -> tuple[float, int]:
        """(seconds, expert copies) to switch to `new`: slots whose expert changed, per GPU, over the link."""
        old, G = self.placement.phy2log, self.topology.num_gpus
        nw = new.phy2log
        changed = np.ones(nw.shape, dtype=bool) if old.shape != nw.shape else old != nw
        per_gpu = changed.reshape(nw.shape[0], G, -1).sum((0, 2))
        return float(per_gpu.max() * self._expert_bytes / self._migration_bw), int(changed.sum())

    # ---- pricing ----------------------------------------------------------------------------------------

    def _class_terms(self, cls: str, epoch: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(GPU shares P [L, G] of a layer's assignments, successor-local shares A [2, L-1]: same GPU, same
        node) of one class."""
        key = (cls, epoch)
        hit = self._terms.get(key)
        if hit is None:
            p = self.routing.class_popularity(cls or None, epoch)
            P = (p.ravel()[self._gather] * self._inv_cnt).reshape(p.shape[0], self.topology.num_gpus, -1).sum(-1)
            A = None
            if self._succ_local is not None:
                A = np.stack([(p[:-1] * s).sum(-1) for s in (self._succ_local, self._succ_node) if s is not None])
            if len(self._terms) > 64:
                self._terms.clear()
            hit = self._terms[key] = (P, A)
        return hit

    def _mix(self, b: BatchStats, now: float) -> tuple[np.ndarray, np.ndarray | None, dict[str, float], int]:
        epoch = self.routing.epoch_of(now, self._step)
        ct = b.class_tokens
        items = [(c or "", float(v)) for c, v in ct.items() if v > 0] if ct else [("", 1.0)]
        if not items:
            items = [("", 1.0)]
        if len(items) == 1:
            P, A = self._class_terms(items[0][0], epoch)
            return P, A, {items[0][0]: 1.0}, epoch
        tot = sum(v for _, v in items)
        P, A, weights = 0.0, 0.0, {}
        for c, v in items:
            Pc, Ac = self._class_terms(c, epoch)
            w = v / tot
            weights[c] = w
            P = P + w * Pc
            A = A + w * Ac if Ac is not None else None
        return P, A, weights, epoch  # type: ignore[return-value]

    def _moe(self, gpu: np.ndarray, A: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Times [k] and all-to-all bytes [2, k] (all remote, inter-node) of per-step GPU loads [k, L, G]."""
        k, L, G = gpu.shape
        t = self.base.expert_layer_time_per_gpu(gpu, self._slots_per_gpu)
        if self._a2a:
            tot = gpu.sum(-1)
            u = gpu / np.where(tot > 0, tot, 1.0)[..., None]
            local = self._same(u, A, 0, 1.0 / G)
            if self._multi_node:
                # Remote hops split by where the previous expert sat: another GPU of the node (NVLink) or
                # another node (InfiniBand), from the placement's node shares.
                same_node = np.maximum(self._same(u.reshape(k, L, self._nodes, -1).sum(-1), A, 1, 1.0 / self._nodes),
                                       local)
                recv = gpu * (1.0 - local)[..., None] * self._act_bytes
                far = gpu * (1.0 - same_node)[..., None] * self._act_bytes
                comm = np.maximum(self.base.all_to_all_time(recv - far, True), self.base.all_to_all_time(far, False))
                a2a = 2.0 * np.stack([recv.sum((1, 2)), far.sum((1, 2))])
            else:
                recv = gpu * (1.0 - local)[..., None] * self._act_bytes
                comm = self.base.all_to_all_time(recv, True)
                a2a = 2.0 * np.stack([recv.sum((1, 2)), np.zeros(k)])
            t = t + 2.0 * comm
        else:
            a2a = np.zeros((2, k))
        return np.ascontiguousarray(t.max(-1)).sum(-1), a2a

    def _same(self, u: np.ndarray, A: np.ndarray | None, level: int, first: float) -> np.ndarray:
        """[k, L]: chance a layer's assignment is served where the token's previous expert sat (one GPU or one
        node: shares u [k, L, units]); the first MoE layer dispatches from a uniformly spread home."""
        k, L = u.shape[:2]
        out = np.empty((k, L))
        out[:, 0] = first
        if L > 1:
            a = self.routing.affinity
            out[:, 1:] = (1 - a) * (u[:, :-1] * u[:, 1:]).sum(-1)
            if A is not None:
                out[:, 1:] += a * A[level]
        return np.clip(out, 0.0, 1.0)

    def _dense(self, n: int) -> float:
        """The base model's balanced expert + dispatch time for n tokens (memoised: n repeats a lot)."""
        t = self._dense_cache.get(n)
        if t is None:
            t = self._dense_cache[n] = float(self.base.routed_expert_time(n) + self.base.moe_comm_time(n))
        return t

    def _price(self, b: BatchStats, now: float, k: int) -> tuple[np.ndarray, tuple]:
        n = b.prefill_tokens + b.decode_tokens
        P, A, weights, epoch = self._mix(b, now)
        gpu = self.routing.sample(P, n * self._top_k, self.rng, k)
        moe, a2a = self._moe(gpu, A)
        return moe - self._dense(n), (gpu, a2a, n, weights, epoch)

    def step_time(self, b: BatchStats, now: float) -> float:
        self._sync(now)
        t = self.base.step_time(b, now)
        if b.prefill_tokens + b.decode_tokens <= 0:
            return t
        extra, info = self._price(b, now, 1)
        t = t + float(extra[0]) + self._take_stall()
        self._pending = (np.array([now + t]), *info)
        return t

    def decode_run(self, b: BatchStats, k: int, now: float) -> np.ndarray:
        self._sync(now)
        durs = np.asarray(self.base.decode_run(b, k, now), dtype=np.float64)
        if k <= 0 or b.prefill_tokens + b.decode_tokens <= 0:
            return durs
        extra, info = self._price(b, now, k)
        durs = durs + extra
        durs[0] += self._take_stall()
        self._pending = (now + np.cumsum(durs), *info)
        return durs

    def kv_capacity_tokens(self, gpu_memory_utilization: float) -> int:
        return int(self.base.kv_capacity_tokens(gpu_memory_utilization))

    def _take_stall(self) -> float:
        s, self._stall = self._stall, 0.0
        return s

    # ---- state: commit executed steps, rebalance ------------------------------------------------------

    def _sync(self, now: float) -> None:
        if self._pending is not None:
            ends, gpu, a2a, n, weights, epoch = self._pending
            self._pending = None
            done = max(1, int(np.searchsorted(ends, now * (1 + 1e-12) + 1e-12, side="right")))
            self._commit(ends[:done], gpu[:done], a2a[:, :done], n, weights, epoch)
        if self._switch is not None and now >= self._switch[0]:
            _, placement, copies = self._switch
            self._switch = None
            self._set_placement(placement)
        nc = self.placer.next_check()
        if nc is not None and self._step >= nc and self._switch is None:
            new = self.placer.maybe_rebalance(self._step, self.placement, self.topology)
            if new is not None:
                secs, copies = self._migration(new)
                if copies == 0:
                    return
                self._rebalances += 1
                self._copies += copies
                if self.params.migration == "stall":
                    self._stall += secs
                    self._stall_total += secs
                    self._set_placement(new)
                else:
                    self._switch = (now + secs, new, copies)

    def _commit(
        self, ends: np.ndarray, gpu: np.ndarray, a2a: np.ndarray, n: int, weights: dict[str, float], epoch: int
    ) -> None:
        k = len(ends)
        if self.placer.online and self.placer.wants(self._step, k):
            expected = sum(w * self.routing.class_popularity(c or None, epoch) for c, w in weights.items())
            self.placer.observe_repeated(expected * (n * self._top_k), self._step, k)
        self._step += k
        self._tokens += n * k
        self._a2a_bytes += float(a2a[0, :k].sum())
        self._a2a_far_bytes += float(a2a[1, :k].sum())
        w = self.params.balance_window
        i = 0
        while i < k:
            take = min(k - i, w - self._win_steps)
            self._win_gpu += gpu[i : i + take].sum(0)
            self._win_steps += take
            self._win_tokens += n * take
            i += take
            if self._win_steps >= w:
                self._close_window(float(ends[i - 1]))

    def _close_window(self, t: float) -> None:
        g = self._win_gpu
        mx = g.max(-1)
        ok = mx > 0
        if ok.any():
            bal = float((g.mean(-1)[ok] / mx[ok]).mean())
            self._bal_sum += bal * self._win_tokens
            self._bal_w += self._win_tokens
            self._bal_steps_sum += bal * self._win_steps
            self._bal_steps_n += self._win_steps
            if 2 * self._win_steps >= self.params.balance_window:  # a short last window is noise on a plot
                self.series.append((t, bal))
        self._win_gpu = np.zeros_like(g)
        self._win_steps = 0
        self._win_tokens = 0.0

    def moe_stats(self) -> dict[str, Any]:
        """Expert-level figures for `simulate --json` (pending steps are committed as executed)."""
        if self._pending is not None:
            self._sync(float(self._pending[0][-1]))
        if self._win_steps:
            self._close_window(self.series[-1][0] if self.series else 0.0)
        return {
            "expert_balancedness": self._bal_sum / self._bal_w if self._bal_w else 1.0,
            "expert_balancedness_steps": self._bal_steps_sum / self._bal_steps_n if self._bal_steps_n else 1.0,
            "a2a_bytes_per_token": self._a2a_bytes / self._tokens if self._tokens else 0.0,
            "a2a_inter_node_bytes_per_token": self._a2a_far_bytes / self._tokens if self._tokens else 0.0,
            "expert_migrations": self._copies,
            "expert_rebalances": self._rebalances,
            "migration_stall_s": self._stall_total,
            "expert_policy": self.placer.name,
            "moe_steps": self._step,
            "balancedness_series": [[t, b] for t, b in self.series],
        }


def build_moe_cost(base: Any, expert_policy: str | None, expert_params: dict[str, Any] | None, seed: int) -> MoECostModel:
    """The simulator's entry point for MoE presets: one call per engine instance (the model keeps state).

    `expert_params` mixes cost-model keys (`MoEParams`) and the placer's own parameters.
    """
    params = dict(expert_params or {})
    own = {k: params.pop(k) for k in list(params) if k in MoEParams.model_fields}
    try:
        mp = MoEParams(**own)
    except Exception as e:  # pydantic ValidationError: say which layer
        raise ValueError(f"invalid MoE cost-model parameters: {e}") from None
    placer = EXPERT_PLACERS.create(expert_policy or "static", params)
    llm = base.llm
    if mp.loads_file:
        routing: ExpertRoutingModel | RecordedRouting = RecordedRouting(load_expert_loads(mp.loads_file))
    else:
        routing = ExpertRoutingModel(base.num_moe_layers, llm.num_experts, llm.top_k, seed, **mp.routing)
    return MoECostModel(base, placer, routing, mp, seed)
