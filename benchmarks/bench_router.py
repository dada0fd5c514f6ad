"""Routing decision time (16 and 128 instances, 8k-token prompts, prefix lookup included) and index memory.

    python benchmarks/bench_router.py [--decisions 2000] [--repeats 5]
    python benchmarks/bench_router.py --blocks 800 --routers lmetric   # ~51 KiB prompts (~12.8k tokens)
    PYTHONPATH=/other/tree/src python benchmarks/bench_router.py ...    # the same measurement on another tree

Each router routes requests whose 512-block chains share a system prompt and a conversation history with
earlier requests; the index is warmed with `--warm` such requests first. The time of `route` alone is the
decision; `route + on_dispatch` adds the index update. Figures: median over repeats of the median
per-decision CPU time (thread time, so other processes on the machine do not inflate it), and the ratio
against round-robin measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import tracemalloc

import numpy as np

from llmsched.core.hashing import chain
from llmsched.core.snapshots import SnapshotTable
from llmsched.core.types import InstanceSnapshot, Request
from llmsched.policies.instance import ROUTERS
from llmsched.policies.instance.prefix_index import PrefixIndex

BLOCKS = 512  # 8k tokens at 16 tokens a block


def make_requests(n: int, rng: np.random.Generator, start_rid: int) -> list[Request]:
    """Prompts: one of 8 system prompts (64 blocks), one of 200 conversations (up to 3/4 of the prompt), a new
    turn; BLOCKS blocks in all."""
    out = []
    for k in range(n):
        sys_id = int(rng.integers(8))
        conv = int(rng.integers(200))
        depth = int(rng.integers(64, BLOCKS * 3 // 4 + 1))
        contents = [("sys", sys_id, b) for b in range(64)] + [("conv", conv, b) for b in range(depth)]
        contents += [("new", start_rid + k, b) for b in range(BLOCKS - len(contents))]
        out.append(Request(rid=start_rid + k, arrival=0.0, prompt_len=BLOCKS * 16, output_len=200,
                           block_hashes=chain(contents), session=f"s{conv}"))
    return out


def snapshots(n: int, rng: np.random.Generator) -> list[InstanceSnapshot]:
    return [
        InstanceSnapshot(instance=i, time=0.0, num_running=int(rng.integers(0, 64)), num_waiting=int(rng.integers(0, 8)),
                         kv_usage=float(rng.uniform(0.2, 0.9)), num_free_blocks=20_000, num_total_blocks=40_000,
                         pending_prefill_tokens=int(rng.integers(0, 20_000)))
        for i in range(n)
    ]


def bench_router(name: str, n: int, warm: int, decisions: int, seed: int) -> tuple[float, float]:
    """(median route µs, median route+dispatch µs) for one fresh router."""
    rng = np.random.default_rng(seed)
    router = ROUTERS.create(name)
    snaps = SnapshotTable.from_snapshots(snapshots(n, rng))  # what both shells hand routers
    for r in make_requests(warm, rng, 0):
        i = router.route(r, snaps, 0.0)
        router.on_dispatch(r, i, 0.0)
        router.on_finish(r, i, 0.0)
    reqs = make_requests(decisions, rng, warm)
    route_ns, both_ns = [], []
    clock = time.thread_time_ns  # CPU time: robust to other processes sharing the cores
    for r in reqs:
        t0 = clock()
        i = router.route(r, snaps, 1.0)
        t1 = clock()
        router.on_dispatch(r, i, 1.0)
        t2 = clock()
        router.on_finish(r, i, 1.0)
        route_ns.append(t1 - t0)
        both_ns.append(t2 - t0)
    return statistics.median(route_ns) / 1e3, statistics.median(both_ns) / 1e3


def index_memory(total_blocks: int, instances: int, share: int) -> float:
    """Bytes per indexed (instance, block) pair; each block held by `share` instances."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    idx = PrefixIndex(instances, capacity_blocks=total_blocks)
    distinct = total_blocks // share
    chains = [chain([("m", c, b) for b in range(BLOCKS)]) for c in range(distinct // BLOCKS)]
    for c, ch in enumerate(chains):
        for s in range(share):
            idx.touch((c + s) % instances, ch, 0.0)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    pairs = sum(idx.blocks(i) for i in range(instances))
    # The hash ints themselves belong to the requests (block_hashes tuples); count them out by building the
    # chains before measuring would double the work, so subtract their size: 32 bytes a distinct hash.
    return (after - before - 32 * len(idx)) / pairs


def index_memory_tails(requests: int, instances: int) -> float:
    """Bytes per request when each request is one of 64 shared prefixes (2-31 blocks) plus one block of its own
    (chat turns with a short unique tail): one leaf per request, the index's costliest shape per block."""
    rng = np.random.default_rng(0)
    prefixes = [tuple(int(h) for h in rng.integers(1, 2**62, int(k))) for k in rng.integers(2, 32, 64)]
    chains = [prefixes[int(p)] + (int(t),) for p, t in zip(rng.integers(0, 64, requests),
                                                            rng.integers(1, 2**62, requests), strict=True)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    idx = PrefixIndex(instances, capacity_blocks=1 << 40)
    for k, ch in enumerate(chains):
        idx.touch(k % instances, ch, float(k))
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / requests


def main() -> None:
    global BLOCKS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decisions", type=int, default=2000)
    ap.add_argument("--warm", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--instances", type=int, nargs="+", default=[16, 128])
    ap.add_argument("--routers", nargs="+", default=ROUTERS.names())
    ap.add_argument("--blocks", type=int, default=BLOCKS, help="prompt blocks of 16 tokens (800: ~51 KiB of text)")
    ap.add_argument("--no-memory", action="store_true", help="skip the index memory measurement")
    args = ap.parse_args()
    BLOCKS = args.blocks
    names = ["round-robin"] + [r for r in args.routers if r != "round-robin"]
    print(f"decision time, {BLOCKS * 16}-token prompts ({BLOCKS} blocks), median of {args.repeats} repeats of the median "
          f"over {args.decisions} decisions (index warmed with {args.warm} requests)")
    for n in args.instances:
        print(f"\n{n} instances      route µs  route+dispatch µs  vs round-robin")
        base = None
        for name in names:
            runs = [bench_router(name, n, args.warm, args.decisions, seed) for seed in range(args.repeats)]
            route = statistics.median(r[0] for r in runs)
            both = statistics.median(r[1] for r in runs)
            base = base or route
            print(f"  {name:20s} {route:8.1f}  {both:17.1f}  {route / base:9.1f}x")
    print(f"load average {os.getloadavg()[0]:.2f}")
    if args.no_memory:
        return
    print("\nprefix index memory (tracemalloc; excludes the hash ints, owned by the requests):")
    for share in (1, 2):
        b = index_memory(1_000_000, 16, share)
        print(f"  1M (instance, block) pairs, each block on {share} instance(s): {b:.0f} B/pair = "
              f"{b * 1e6 / 2**20:.0f} MiB per million blocks")
    b = index_memory_tails(100_000, 16)
    print(f"  100k requests of a shared prefix + 1 block of their own, 16 instances: {b:.0f} B/request")


if __name__ == "__main__":
    main()
