"""The recorder's cost on the gateway's CPU: `llmsched serve` with and without `--record`, same run, interleaved.

    python benchmarks/bench_record.py [--requests 2000] [--reps 5]

A trivial fake backend (streams 8 tokens at once) in its own process, the gateway in its own process, and an
aiohttp load generator here (streaming, Azure-conversation-sized prompts of ~1,000 tokens, 16 in flight).
Gateway CPU per request = its process's user+system time over the batch / requests. Reports the median of
`--reps` interleaved repetitions of each mode (alternating which goes first) and their ratio. On a machine
with more than one core the gateway is pinned to core 0, the backend and this load generator to core 1 (as
bench_gateway.py does), so that they do not share the gateway's core and caches.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
BACKEND = """
import asyncio, sys
from llmsched.gateway.testing import FakeBackend
async def main():
    b = FakeBackend(max_tokens_cap=8)
    await b.start("127.0.0.1", int(sys.argv[1]))
    await asyncio.Event().wait()
asyncio.run(main())
"""


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


def other_threads_cpu(pid: int) -> float:
    """CPU seconds of a process's threads other than its main one (the event loop): the recorder's writer.
    From schedstat (nanoseconds): /proc's stat counts in 10 ms ticks, too coarse for a thread this light."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        if task.name != str(pid):
            with contextlib.suppress(OSError):
                total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def faults_and_switches(pid: int) -> tuple[int, int]:
    """(minor page faults, context switches of all its threads) of a process: where system time goes."""
    minflt = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])
    sw = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.endswith("ctxt_switches:") or "ctxt_switches:" in line:
                sw += int(line.split()[1])
    return minflt, sw


async def load(url: str, n: int, conc: int) -> None:
    sem = asyncio.Semaphore(conc)
    async with aiohttp.ClientSession() as s:
        async def one(i: int) -> None:
            body = {"prompt": f"request {i} " + "lorem ipsum dolor sit amet " * 150, "max_tokens": 8, "stream": True}
            async with sem, s.post(url + "/v1/completions", json=body) as r:
                assert r.status == 200, r.status
                await r.read()

        await asyncio.gather(*(one(i) for i in range(n)))


def wait(url: str) -> None:
    import urllib.request

    for _ in range(200):
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    pin = (os.cpu_count() or 1) > 1
    if pin:
        os.sched_setaffinity(0, {1})  # the load generator; the backend inherits it
    be = subprocess.Popen([sys.executable, "-c", BACKEND, "18411"], env=env)
    tmp = Path(tempfile.mkdtemp())
    try:
        wait("http://127.0.0.1:18411")
        res: dict[str, list[float]] = {"plain": [], "record": []}
        sys_share: dict[str, list[float]] = {"plain": [], "record": []}
        faults: dict[str, list[float]] = {"plain": [], "record": []}
        switches: dict[str, list[float]] = {"plain": [], "record": []}
        writer: dict[str, list[float]] = {"plain": [], "record": []}
        for rep in range(a.reps):
            for mode in (("plain", "record") if rep % 2 == 0 else ("record", "plain")):  # alternate who goes first
                cmd = [sys.executable, "-m", "llmsched.cli", "serve", "--backend", "http://127.0.0.1:18411",
                       "--port", "18412"]
                if mode == "record":
                    cmd += ["--record", str(tmp / f"rec{rep}.jsonl")]
                gw = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                      preexec_fn=(lambda: os.sched_setaffinity(0, {0})) if pin else None)
                try:
                    wait("http://127.0.0.1:18412")
                    asyncio.run(load("http://127.0.0.1:18412", 200, 16))  # warm-up
                    u0, s0 = cpu_seconds(gw.pid)
                    f0, w0 = faults_and_switches(gw.pid)
                    o0 = other_threads_cpu(gw.pid)
                    asyncio.run(load("http://127.0.0.1:18412", a.requests, 16))
                    time.sleep(0.5)  # the recorder's writer flushes every 0.2 s: count its work too
                    u1, s1 = cpu_seconds(gw.pid)
                    f1, w1 = faults_and_switches(gw.pid)
                    writer[mode].append((other_threads_cpu(gw.pid) - o0) / a.requests * 1e6)
                    faults[mode].append((f1 - f0) / a.requests)
                    switches[mode].append((w1 - w0) / a.requests)
                    res[mode].append((u1 - u0 + s1 - s0) / a.requests * 1e6)
                    sys_share[mode].append((s1 - s0) / a.requests * 1e6)
                finally:
                    gw.terminate()
                    gw.wait()
            print(f"rep {rep}: plain {res['plain'][-1]:.0f} us/req, record {res['record'][-1]:.0f} us/req, "
                  f"load {os.getloadavg()}", flush=True)
        p, r = statistics.median(res["plain"]), statistics.median(res["record"])
        lines = sum(len(f.read_text().splitlines()) - 1 for f in tmp.glob("rec*.jsonl"))
        print(f"of which system time: plain {statistics.median(sys_share['plain']):.0f} us, --record "
              f"{statistics.median(sys_share['record']):.0f} us; per request: minor page faults plain "
              f"{statistics.median(faults['plain']):.2f}, --record {statistics.median(faults['record']):.2f}; "
              f"context switches plain {statistics.median(switches['plain']):.2f}, --record "
              f"{statistics.median(switches['record']):.2f}")
        print(f"CPU of the threads other than the event loop's (the recorder's writer) per request: plain "
              f"{statistics.median(writer['plain']):.1f} us, --record {statistics.median(writer['record']):.1f} us")
        print(f"median gateway CPU per request: plain {p:.0f} us, --record {r:.0f} us, ratio {r / p:.3f} "
              f"({a.reps} interleaved reps of {a.requests} requests; {lines} lines recorded; "
              f"load average {os.getloadavg()})")
    finally:
        be.terminate()
        be.wait()


if __name__ == "__main__":
    main()
