"""Demo: llmsched.vllm.Scheduler (sjf, ewsjf) inside vLLM's scheduler loop admits short requests first, vs fcfs.

vLLM's real v1 scheduler runs on the CPU with the fake model runner of `llmsched.vllm.harness`; time is
virtual: each step lasts what our cost model says for its batch (SIMULATED, llama-2-13b on one A100-80G),
and the scheduler's clock follows it. The stream mixes short interactive prompts with long batch prompts
(Poisson arrivals above the engine's prefill capacity, so a queue forms). Same seed, same log.

Usage: python scripts/vllm_demo.py [--requests 80] [--seed 0] [--show 12]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llmsched.model import build_cost_model  # noqa: E402
from llmsched.vllm.harness import FakeRunnerLoop, Limits, build_scheduler, make_request  # noqa: E402

MODEL, GPU = "llama-2-13b", "a100-80g"
POLICIES = {"fcfs": {}, "sjf": {}, "ewsjf": {"min_samples": 20, "repartition_every": 40}}


def stream(n: int, seed: int) -> list[tuple[float, str, int, int]]:
    """(arrival s, class, prompt tokens, output tokens): 70% short (20-200), 30% long (2000-4000)."""
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(20.0)
        if rng.random() < 0.3:
            out.append((t, "long", rng.randint(2000, 4000), rng.randint(50, 200)))
        else:
            out.append((t, "short", rng.randint(20, 200), rng.randint(20, 100)))
    return out


def run(policy: str, reqs: list[tuple[float, str, int, int]], show: int) -> dict[str, float]:
    os.environ["LLMSCHED_REQUEST_POLICY"] = policy
    os.environ["LLMSCHED_REQUEST_PARAMS"] = json.dumps(POLICIES[policy])
    os.environ["LLMSCHED_COST_MODEL"] = f"{MODEL}@{GPU}"
    from llmsched.vllm import Scheduler

    limits = Limits(max_num_batched_tokens=2048, max_num_seqs=32, num_blocks=4000)
    sched = build_scheduler(limits, scheduler_cls=Scheduler)
    cm = build_cost_model(MODEL, GPU)
    now = [0.0]
    sched.clock = lambda: now[0]
    loop = FakeRunnerLoop(sched)
    cls = {f"q{i}": c for i, (_, c, _, _) in enumerate(reqs)}
    arrival = {f"q{i}": a for i, (a, _, _, _) in enumerate(reqs)}
    ttft: dict[str, float] = {}
    admitted: set[str] = set()
    added: list[str] = []
    contested = short_wins = shown = 0
    pending = list(enumerate(reqs))
    print(f"-- {policy} {POLICIES[policy] or ''}")
    while pending or loop.has_work:
        while pending and pending[0][1][0] <= now[0]:
            i, (a, c, p, o) = pending.pop(0)
            loop.add(make_request(f"q{i}", [1 + i % 97] * p, o, limits.block_size, arrival_time=a))
            added.append(f"q{i}")
        if not loop.has_work:
            now[0] = pending[0][1][0]
            continue
        r = loop.step()
        for d in r.output.scheduled_new_reqs:  # in admission order
            waiting = [q for q in added if q not in admitted]
            kinds = {cls[q] for q in waiting}
            if kinds == {"short", "long"}:  # a real choice: both kinds were waiting
                contested += 1
                short_wins += cls[d.req_id] == "short"
                if shown < show:
                    n_long = sum(cls[q] == "long" for q in waiting)
                    print(
                        f"   t={now[0]:6.3f}s admit {d.req_id:>4} {cls[d.req_id]:5}"
                        f" (waiting: {len(waiting) - n_long} short, {n_long} long;"
                        f" oldest {min(waiting, key=arrival.get)} {cls[min(waiting, key=arrival.get)]})"
                    )
                    shown += 1
            admitted.add(d.req_id)
        now[0] += cm.step_time(sched._batch_stats(r.output), now[0]) if r.scheduled else 1e-3
        for rid in r.first_token:
            ttft[rid] = now[0] - arrival[rid]
    res = {
        "admissions with both kinds waiting": contested,
        "share of them given to a short request": short_wins / max(contested, 1),
        "mean TTFT short s": statistics.mean(v for k, v in ttft.items() if cls[k] == "short"),
        "mean TTFT long s": statistics.mean(v for k, v in ttft.items() if cls[k] == "long"),
        "makespan s": now[0],
    }
    print("   " + ", ".join(f"{k} {v:.3g}" for k, v in res.items()))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=80)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show", type=int, default=8, help="contested admissions to log per policy")
    args = ap.parse_args()
    reqs = stream(args.requests, args.seed)
    n_short = sum(c == "short" for _, c, _, _ in reqs)
    print(
        f"SIMULATED ({MODEL} on 1x {GPU}, our cost model): {len(reqs)} requests, {n_short} short, seed {args.seed}"
    )
    results = {p: run(p, reqs, args.show) for p in POLICIES}
    base = results["fcfs"]["mean TTFT short s"]
    for p, r in results.items():
        print(
            f"{p:6} mean TTFT of short requests {r['mean TTFT short s']:.3f} s = {r['mean TTFT short s'] / base:.2f} x fcfs"
        )


if __name__ == "__main__":
    main()
