"""Soak: many requests through one `llmsched serve` process in front of emulated engines; RSS must stay flat,
every in-flight count must come back to 0 and no request may be lost.

    python benchmarks/soak_gateway.py [--requests 1000000] [--max-seconds 1800] [--router lmetric]

The gateway runs as the real command (`llmsched serve`, its own process, pinned to core 0); 4 emulated
engines (`llmsched.emulator`, one process, fast `--speed`) and this load generator share core 1. Traffic:
`--concurrency` closed-loop clients, 60% streamed and 40% not, prompts of 50-4,000 tokens drawn from 64
shared prefixes (the prefix index and its LRU work all along), 1-16 output tokens. Every `--every` requests
it prints the count, the rate, the gateway's RSS and the load average. A request is "lost" when it got
neither a complete answer nor an HTTP error (a connection error, a timeout, a stream without [DONE]).
At the end the gateway's /health must read 0 in flight and 0 queued. Exit status 1 if anything failed.
Stops at `--requests` or `--max-seconds`, whichever comes first (say which when you quote it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))

from bench_gateway import LOAD_CPU, PROXY_CPU, _free_ports, _stop, _wait_port, _wait_up  # noqa: E402


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def _gateway_pid(launcher: subprocess.Popen[bytes]) -> int:
    """The `llmsched serve` process (taskset execs into it, so it is the launcher's pid)."""
    return launcher.pid


async def _load(url: str, total: int, conc: int, deadline: float, every: int, pid: int,
                log: list[dict[str, float]]) -> dict[str, int]:
    import aiohttp

    rng = random.Random(0)
    prefixes = ["".join(rng.choice("abcdefghij klmnop") for _ in range(rng.randint(200, 8000))) for _ in range(64)]
    tally = {"sent": 0, "ok": 0, "http_error": 0, "lost": 0}
    t0 = time.perf_counter()
    last = [t0, 0]

    async def worker(k: int) -> None:
        r = random.Random(k)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            while tally["sent"] < total and time.monotonic() < deadline:
                tally["sent"] += 1
                stream = r.random() < 0.6
                prompt = f"{r.choice(prefixes)} q{r.randint(0, 10**6)}"
                body = {"prompt": prompt[: r.randint(200, 16000)], "max_tokens": r.randint(1, 16), "stream": stream}
                try:
                    async with http.post(url + "/v1/completions", json=body) as resp:
                        raw = await resp.read()
                    if resp.status != 200:
                        tally["http_error"] += 1
                        json.loads(raw)["error"]  # noqa: B018 - an HTTP error must be OpenAI JSON
                    elif stream and not raw.endswith(b"data: [DONE]\n\n"):
                        tally["lost"] += 1
                    else:
                        tally["ok"] += 1
                except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
                    tally["lost"] += 1
                n = tally["ok"] + tally["http_error"] + tally["lost"]
                if n % every == 0:
                    now = time.perf_counter()
                    row = {"done": n, "elapsed_s": now - t0, "rate": (n - last[1]) / (now - last[0]),
                           "rss_kib": _rss_kib(pid), "load": os.getloadavg()[0], **tally}
                    last[:] = [now, n]
                    log.append(row)
                    print(f"{n:9d} requests  {row['elapsed_s']:7.0f} s  {row['rate']:6.0f} req/s  "
                          f"RSS {row['rss_kib'] / 1024:7.1f} MiB  lost {tally['lost']}  http errors "
                          f"{tally['http_error']}  [load {row['load']:.1f}]", flush=True)

    await asyncio.gather(*(worker(k) for k in range(conc)))
    return tally


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--max-seconds", type=float, default=1800)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--router", default="lmetric")
    ap.add_argument("--speed", type=float, default=200.0, help="emulator speed (emulated s per real s)")
    ap.add_argument("--every", type=int, default=20_000, help="print a progress line every N requests")
    ap.add_argument("--json", type=Path, help="write the progress log and the totals here")
    a = ap.parse_args()
    eports = _free_ports(4)
    taskset = ["taskset", "-c"] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else None
    bench = str(HERE.parent / "bench_gateway.py")
    emu = subprocess.Popen([*(taskset + [LOAD_CPU] if taskset else []), sys.executable, bench, "--role",
                            "emulators", ",".join(map(str, eports)), str(a.speed)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    port = _free_ports(1)[0]
    cmd = [sys.executable, "-m", "llmsched.cli", "serve", "--router", a.router, "--port", str(port)]
    for p in eports:
        cmd += ["--backend", f"http://127.0.0.1:{p}"]
    gw = subprocess.Popen([*(taskset + [PROXY_CPU] if taskset else []), *cmd], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
    with_affinity = hasattr(os, "sched_setaffinity")
    if with_affinity:
        os.sched_setaffinity(0, {int(LOAD_CPU)})
    url = f"http://127.0.0.1:{port}"
    log: list[dict[str, float]] = []
    try:
        for p in eports:
            _wait_up(f"http://127.0.0.1:{p}")
        _wait_port(port)
        pid = _gateway_pid(gw)
        rss0 = _rss_kib(pid)
        print(f"soak: up to {a.requests} requests / {a.max_seconds:.0f} s, router {a.router}, {a.concurrency} "
              f"clients, 4 emulators at speed {a.speed:g}; gateway pid {pid} RSS at start {rss0 / 1024:.1f} MiB "
              f"[load {os.getloadavg()[0]:.1f}]", flush=True)
        t0 = time.perf_counter()
        tally = asyncio.run(_load(url, a.requests, a.concurrency, time.monotonic() + a.max_seconds, a.every, pid,
                                  log))
        wall = time.perf_counter() - t0
        import httpx

        time.sleep(1.0)
        health = httpx.get(url + "/health", timeout=5).json()
        admin = httpx.get(url + "/admin/backends", timeout=5).json()
        rss1 = _rss_kib(pid)
        answered = tally["ok"] + tally["http_error"] + tally["lost"]
        print(f"\nsent {tally['sent']}, answered {answered} in {wall:.0f} s ({answered / wall:.0f} req/s): ok "
              f"{tally['ok']}, HTTP errors {tally['http_error']}, lost {tally['lost']}")
        print(f"gateway RSS start {rss0 / 1024:.1f} MiB, end {rss1 / 1024:.1f} MiB; /health in_flight "
              f"{health['in_flight']} queued {health['queued']}; per backend in_flight "
              f"{[b['in_flight'] for b in admin['backends']]} [load {os.getloadavg()[0]:.1f}]")
        if len(log) >= 4:  # flat: the second half of the run grows by less than 5% of the RSS at its middle
            mid, end = log[len(log) // 2]["rss_kib"], log[-1]["rss_kib"]
            print(f"RSS at the middle of the run {mid / 1024:.1f} MiB, at the end {end / 1024:.1f} MiB "
                  f"({(end - mid) / mid:+.1%})")
        if a.json:
            a.json.write_text(json.dumps({"log": log, "tally": tally, "rss_start_kib": rss0, "rss_end_kib": rss1,
                                          "health": health, "wall_s": wall}, indent=1))
        bad = tally["lost"] or health["in_flight"] or health["queued"] or answered != tally["sent"]
        return 1 if bad else 0
    finally:
        for proc in (gw, emu):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        _stop(gw)
        _stop(emu)


if __name__ == "__main__":
    raise SystemExit(main())
