"""Simulator speed at cluster scale: lmetric over 128 and 512 instances, against round robin in the same run.

Each configuration runs in its own process (so peak RSS is that run's), `--repeat` times; the figure is the
median. Simulated requests per wall-second and per CPU-second (process time: less inflated when other jobs
share the cores) are printed with the load average. `--baseline-src DIR` runs the same configurations on
another source tree too (e.g. `git archive main src | tar -x -C /tmp/main`), for before/after in one run.

    python benchmarks/bench_scale.py                     # 200,000 chat requests, 128 and 512 instances
    python benchmarks/bench_scale.py --requests 20000    # quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def one(instances: int, router: str, requests: int, rate_per_instance: float, interval: float, seed: int) -> dict:
    """One run in this process: the figures as a dict."""
    from llmsched.sim.config import SimConfig
    from llmsched.sim.run import build_cluster, load_requests
    from llmsched.workload.spec import WorkloadSpec

    cfg = SimConfig(
        workload=WorkloadSpec(kind="synthetic", name="chat", num_requests=requests, rate=rate_per_instance * instances),
        instances=instances, router=router, metrics_interval_s=interval, seed=seed,
    )
    reqs = load_requests(cfg)
    cluster = build_cluster(cfg)
    w0, c0 = time.perf_counter(), time.process_time()
    cluster.run(reqs)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    done = [r for r in reqs if r.finish >= 0]
    ttft = statistics.fmean(r.first_token - r.arrival for r in done) if done else float("nan")
    return {
        "wall_s": wall, "cpu_s": cpu, "per_wall_s": requests / wall, "per_cpu_s": requests / cpu,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "completed": len(done),
        "mean_ttft_ms": ttft * 1e3, "load": os.getloadavg()[0],
    }


def spawn(args: list[str], src: str | None) -> dict:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    out = subprocess.run([sys.executable, __file__, "--one", *args], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--instances", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--routers", nargs="+", default=["round-robin", "lmetric"])
    ap.add_argument("--rate-per-instance", type=float, default=15.0, help="arrivals/s per instance (~60%% busy)")
    ap.add_argument("--interval", type=float, default=0.0, help="metrics interval (0: live snapshots)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--baseline-src", default=None, help="another source tree to run the same configurations on")
    ap.add_argument("--baseline-requests", type=int, default=None, help="requests for the baseline tree's runs")
    ap.add_argument("--baseline-instances", type=int, nargs="+", default=None,
                    help="instance counts for the baseline tree (default: all)")
    ap.add_argument("--one", nargs=6, metavar=("N", "ROUTER", "REQ", "RATE", "INTERVAL", "SEED"),
                    help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        n, router, req, rate, interval, seed = a.one
        print(json.dumps(one(int(n), router, int(req), float(rate), float(interval), int(seed))))
        return
    trees = [("this tree", None)] + ([("baseline", a.baseline_src)] if a.baseline_src else [])
    print(f"simulated: llama-3.1-8b on h100 (tp 1), {a.requests:,} synthetic chat requests at "
          f"{a.rate_per_instance:g}/s per instance, metrics interval {a.interval:g} s; median of {a.repeat}")
    print(f"{'instances':>9} {'router':12} {'tree':9} {'requests':>8} {'req/wall-s':>11} {'req/cpu-s':>10} {'vs rr':>6} "
          f"{'peak RSS MiB':>12} {'mean TTFT ms':>12} {'load':>5}")
    for n in a.instances:
        base: dict[str, float] = {}
        for router in a.routers:
            for name, src in trees:
                nreq = a.requests
                if src is not None:
                    if a.baseline_instances is not None and n not in a.baseline_instances:
                        continue
                    nreq = a.baseline_requests or a.requests
                runs = [spawn([str(n), router, str(nreq), str(a.rate_per_instance), str(a.interval), "0"], src)
                        for _ in range(a.repeat)]
                wall = statistics.median(r["per_wall_s"] for r in runs)
                cpu = statistics.median(r["per_cpu_s"] for r in runs)
                rss = max(r["peak_rss_mib"] for r in runs)
                if router == "round-robin":
                    base[name] = cpu
                ratio = cpu / base[name] if name in base else float("nan")
                print(f"{n:9d} {router:12} {name:9} {nreq:8d} {wall:11,.0f} {cpu:10,.0f} {ratio:6.2f} {rss:12.0f} "
                      f"{runs[0]['mean_ttft_ms']:12.1f} {statistics.median(r['load'] for r in runs):5.2f}",
                      flush=True)


if __name__ == "__main__":
    main()
