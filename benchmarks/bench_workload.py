"""Workload load and generation times.

Prints the median of several repeats of: loading the real traces in ../shared/traces (skipped when absent),
with a naive csv + datetime parser as the same-run baseline for the Azure loader; generating 1,000,000
`chat` requests (columns, then `Request` objects) and the memory they take.
Usage: python benchmarks/bench_workload.py [--repeats N] [--n N]
"""

from __future__ import annotations

import argparse
import csv
import gc
import statistics
import time
import tracemalloc
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np

from llmsched.workload import WorkloadSpec, load_columns, load_traces, load_workload

TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "traces"
AZURE = {
    "azure conv": TRACES / "azure-2023" / "AzureLLMInferenceTrace_conv.csv",
    "azure code": TRACES / "azure-2023" / "AzureLLMInferenceTrace_code.csv",
}
MOONCAKE = TRACES / "mooncake" / "conversation_trace.jsonl"


def median_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    times = []
    out: object = None
    for _ in range(repeats):
        gc.collect()
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
        del out
        out = None
    out = fn()
    return statistics.median(times), out


def naive_azure(path: Path) -> list[tuple[float, int, int]]:
    """Baseline: the obvious loader, csv.reader and datetime per row."""
    rows = []
    with path.open(newline="") as f:
        r = csv.reader(f)
        next(r)
        for ts, ctx, gen in r:
            rows.append((datetime.fromisoformat(ts).timestamp(), int(ctx), int(gen)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n", type=int, default=1_000_000, help="chat requests to generate")
    args = ap.parse_args()
    rep = args.repeats

    print(f"{'case':<44} {'median s':>10} {'rows':>9}  note")
    for name, path in AZURE.items():
        if not path.is_file():
            print(f"{name:<44} {'skipped (trace not present)':>10}")
            continue
        tp, cols = median_time(lambda path=path: load_traces(str(path)), rep)
        tb, _ = median_time(lambda path=path: naive_azure(path), rep)
        note = f"naive csv+datetime {tb:.4f} s: x{tb / tp:.1f} faster"
        print(f"{name + ' -> columns (parse)':<44} {tp:>10.4f} {len(cols):>9}  {note}")  # type: ignore[arg-type]
        spec = WorkloadSpec(kind="trace", path=str(path))
        t, reqs = median_time(lambda spec=spec: load_workload(spec), rep)
        print(f"{name + ' -> requests':<44} {t:>10.4f} {len(reqs):>9}")  # type: ignore[arg-type]
    if MOONCAKE.is_file():
        for bs in (16, 512):
            spec = WorkloadSpec(kind="trace", path=str(MOONCAKE))
            t, reqs = median_time(
                lambda spec=spec, bs=bs: load_workload(spec, block_size=bs), max(1, rep // 2)
            )
            nh = sum(len(r.block_hashes or ()) for r in reqs)
            print(
                f"{f'mooncake -> requests (block {bs})':<44} {t:>10.4f} {len(reqs):>9}  {nh:,} block hashes"
            )
        mixed = f"{AZURE['azure conv']},{AZURE['azure code']}"
        if all(p.is_file() for p in AZURE.values()):
            t, reqs = median_time(lambda: load_workload(WorkloadSpec(kind="trace", path=mixed)), rep)
            print(f"{'azure conv+code mix -> requests':<44} {t:>10.4f} {len(reqs):>9}")
    else:
        print(f"{'mooncake':<44} {'skipped (trace not present)':>10}")
    t, reqs = median_time(lambda: load_workload(WorkloadSpec(kind="trace", path="builtin:sample")), rep)
    print(f"{'builtin:sample -> requests':<44} {t:>10.4f} {len(reqs):>9}")

    n = args.n
    spec = WorkloadSpec(name="chat", rate=100.0, num_requests=n)
    r = max(1, rep // 2)
    tc, cols = median_time(lambda: load_columns(spec, seed=0), r)
    print(f"{f'chat x{n:,} -> columns':<44} {tc:>10.4f} {len(cols):>9}")  # type: ignore[arg-type]
    del cols
    tr, reqs = median_time(lambda: load_workload(spec, seed=0), r)
    print(f"{f'chat x{n:,} -> requests':<44} {tr:>10.4f} {len(reqs):>9}  {tr / n * 1e6:.2f} us a request")
    del reqs
    gc.collect()
    tracemalloc.start()
    reqs = load_workload(spec, seed=0)
    cur, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"{f'chat x{n:,} memory':<44} {'':>10} {len(reqs):>9}  held {cur / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB"
    )
    rate = (len(reqs) - 1) / reqs[-1].arrival
    print(f"{'chat achieved rate (target 100/s)':<44} {rate:>10.3f}")
    ph = WorkloadSpec(name="prefix-heavy", rate=20.0, num_requests=100_000)
    t, reqs = median_time(lambda: load_workload(ph, seed=0), 1)
    seen: set[int] = set()
    refs = hits = 0
    for q in reqs:
        for h in q.block_hashes or ():
            refs += 1
            hits += h in seen
            seen.add(h)
    print(
        f"{'prefix-heavy x100,000 -> requests':<44} {t:>10.4f} {len(reqs):>9}  block reuse {hits / refs:.0%}"
    )
    _ = np  # numpy is imported for its version in bug reports
    print(f"numpy {np.__version__}")


if __name__ == "__main__":
    main()
