"""One EPLB rebalance at DeepSeek-V3 scale, and what the placers achieve on the routing model's loads.

58 MoE layers x 256 experts into 288 slots over 32 GPUs (4 nodes, 8 groups). Target: under 50 ms.
Baseline in the same run: the same algorithm called layer by layer (no vectorisation over layers).
Prints median of `--repeats` timings, and balancedness / cross-GPU traffic of each placer on the profile.

    python benchmarks/bench_eplb.py [--repeats 7] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from llmsched.policies.expert import EXPERT_PLACERS, Topology, balancedness
from llmsched.policies.expert.affinity import cross_gpu_fraction, cross_node_fraction
from llmsched.policies.expert.eplb_algo import rebalance_experts
from llmsched.workload.expert_routing import ExpertRoutingModel, skew_stats


def timed(fn, repeats: int) -> float:  # noqa: ANN001
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    print(f"load average {os.getloadavg()}")
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    L, E, R, G, N, groups = 58, 256, 288, 32, 4, 8
    routing = ExpertRoutingModel(L, E, 8, seed=a.seed)
    w = routing.profile() * 1e6
    print(f"loads: {L} layers x {E} experts, {R} slots, {G} GPUs, {N} nodes, {groups} groups; "
          f"skew {skew_stats(routing.profile(), G)}")
    for hier, label in ((True, "hierarchical"), (False, "global")):
        vec = timed(lambda h=hier: rebalance_experts(w, R, groups, N, G, h), a.repeats)
        per_layer = timed(lambda h=hier: [rebalance_experts(w[i : i + 1], R, groups, N, G, h) for i in range(L)], a.repeats)
        print(f"eplb {label:12s}: {vec * 1e3:7.2f} ms median of {a.repeats} (target < 50 ms); "
              f"layer-by-layer baseline {per_layer * 1e3:7.2f} ms; speed-up x{per_layer / vec:.1f}")
    topo = Topology(L, E, G, R, N, groups)
    flows = routing.flows(routing.profile())
    ref = None
    for name, params in (("static", {}), ("eplb", {"mode": "hierarchical"}), ("eplb", {"mode": "global"}),
                         ("hotspot", {"budget": 10_000, "max_moves": 16}), ("affinity", {"mode": "global"}),
                         ("affinity", {"mode": "hierarchical"})):
        t = time.perf_counter()
        pl = EXPERT_PLACERS.create(name, params).place(w, topo, flows)
        dt = time.perf_counter() - t
        cross = cross_gpu_fraction(pl, flows, G)
        if name == "eplb" and params["mode"] == "global":
            ref = cross
        cut = f"; traffic cut vs eplb-global {1 - cross / ref:+.1%}" if ref is not None and name == "affinity" else ""
        print(f"{name:8s} {params!s:38s} balancedness {balancedness(pl.gpu_loads(w, G)):.3f}  "
              f"cross-GPU share {cross:.3f}  cross-node {cross_node_fraction(pl, flows, topo):.3f}  "
              f"({dt * 1e3:.0f} ms){cut}")


if __name__ == "__main__":
    main()
    print(f"load average {os.getloadavg()}")
