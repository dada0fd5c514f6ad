"""The model pools' cost per request, sans I/O: `Pools` with one model against a bare `Dispatcher` (the gateway
before pools) in the same run, and `Pools` with 2 models and 20 adapters (lora-affinity for the adapters).

    python benchmarks/bench_pools.py [--requests 20000] [--reps 5]

Each request: resolve its pool, submit, dispatch, first token, finish (4 backends, fcfs, round-robin).
Medians over the repetitions; prints the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from llmsched.core.types import Request
from llmsched.gateway.config import build_config
from llmsched.gateway.dispatcher import Dispatcher
from llmsched.gateway.pools import Pools
from llmsched.policies.instance import ROUTERS
from llmsched.policies.request import REQUEST_POLICIES

URLS = [f"http://b{i}:1" for i in range(4)]


def per_request_us(n: int, pools: Pools | None, d: Dispatcher | None, names: list[str]) -> float:
    t = time.perf_counter()
    for k in range(n):
        r = Request(k, 0.0, 100, 4)
        if pools is not None:
            pools.assign(r, pools.resolve(names[k % len(names)]))
            x: Pools | Dispatcher = pools
        else:
            assert d is not None
            x = d
        x.submit(r, 0.0)
        for req, i in x.dispatch(0.0):
            x.first_token(req, i, 0.0)
            x.finish(req, i, 0.0, ok=True)
        _ = x.queued, x.in_flight
    return (time.perf_counter() - t) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    res: dict[str, list[float]] = {"dispatcher (no pools)": [], "pools, 1 model": [], "pools, 2 models + 20 adapters": []}
    for _ in range(args.reps):
        d = Dispatcher(REQUEST_POLICIES.create("fcfs"), ROUTERS.create("round-robin"))
        for u in URLS:
            d.add_backend(u, 0.0)
        res["dispatcher (no pools)"].append(per_request_us(args.requests, None, d, []))
        one = Pools(build_config({"backends": URLS}))
        for i in range(4):
            one.set_models(i, [{"id": "m"}])
        res["pools, 1 model"].append(per_request_us(args.requests, one, None, ["m"]))
        many = Pools(build_config({"backends": URLS}))
        for i in range(4):
            base = "m1" if i < 2 else "m2"
            many.set_models(i, [{"id": base}, *({"id": f"{base}-a{j}", "parent": base} for j in range(10))])
        names = ["m1", "m2", *(f"m{1 + j % 2}-a{j % 10}" for j in range(20))]
        res["pools, 2 models + 20 adapters"].append(per_request_us(args.requests, many, None, names))
    base = statistics.median(res["dispatcher (no pools)"])
    for k, v in res.items():
        m = statistics.median(v)
        print(f"{k}: {m:.1f} us/request, x{m / base:.2f} the dispatcher (median of {args.reps})")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
