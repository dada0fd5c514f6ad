"""Requests per second one emulator process sustains at a high speed factor (its CPU is the limit, not the model).

The emulator runs in its own process (uvloop); an aiohttp client in this process keeps `--concurrency`
requests in flight. Baseline, measured in the same run: a bare aiohttp server in the same kind of process that
answers every POST with a fixed completion body (the HTTP stack's own ceiling on this box); the ratio says how
much of that ceiling the emulator keeps. Prints the median of `--repeats` runs per case.

    python benchmarks/bench_emulator.py [--requests 2000] [--concurrency 32] [--speed 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import aiohttp

PROMPT = "Benchmark prompt about scheduling LLM requests across engines. " * 6  # ~100 tokens
FIXED = json.dumps(
    {
        "id": "cmpl-0",
        "object": "text_completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "text": " x" * 16, "logprobs": None, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 16, "total_tokens": 116},
    }
).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def serve(kind: str, port: int, speed: float) -> None:
    from aiohttp import web

    if kind == "emulator":
        from llmsched.emulator import EmulatorServer

        srv = EmulatorServer(speed=speed, served_model_name="m")
        await srv.start("127.0.0.1", port)
    else:

        async def fixed(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(body=FIXED, content_type="application/json")

        async def health(request: web.Request) -> web.Response:
            return web.Response()

        app = web.Application()
        app.router.add_post("/v1/completions", fixed)
        app.router.add_get("/health", health)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


def start_server(kind: str, speed: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, __file__, "--serve", kind, "--port", str(port), "--speed", str(speed)]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{kind} server did not start")


async def load(url: str, n: int, concurrency: int, max_tokens: int, stream: bool) -> tuple[float, int]:
    """Seconds for n requests with `concurrency` in flight, and output bytes read."""
    body = {"model": "m", "prompt": PROMPT, "max_tokens": max_tokens, "stream": stream}
    conn = aiohttp.TCPConnector(limit=concurrency)
    got = 0
    async with aiohttp.ClientSession(connector=conn) as s:

        async def one(i: int) -> int:
            async with s.post(url + "/v1/completions", json={**body, "prompt": f"{i} {PROMPT}"}) as r:
                data = await r.read()
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}: {data[:200]!r}")
                return len(data)

        async def worker(k: int) -> int:
            total = 0
            for i in range(k, n, concurrency):
                total += await one(i)
            return total

        await asyncio.gather(*(one(-1 - i) for i in range(concurrency)))  # warm connections
        t0 = time.perf_counter()
        got = sum(await asyncio.gather(*(worker(k) for k in range(concurrency))))
        return time.perf_counter() - t0, got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--speed", type=float, default=1000.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--serve", choices=["emulator", "fixed"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        uvloop = None  # type: ignore[assignment]
    run = uvloop.run if uvloop is not None else asyncio.run
    if a.serve:
        run(serve(a.serve, a.port, a.speed))
        return

    print(f"# {a.requests} requests, concurrency {a.concurrency}, max_tokens {a.max_tokens}, speed {a.speed}x, "
          f"median of {a.repeats}; {os.cpu_count()} CPUs")  # fmt: skip
    results: dict[tuple[str, bool], float] = {}
    for kind in ("fixed", "emulator"):
        proc, url = start_server(kind, a.speed)
        try:
            for stream in (False, True) if kind == "emulator" else (False,):
                rates = []
                for _ in range(a.repeats):
                    secs, _ = run(load(url, a.requests, a.concurrency, a.max_tokens, stream))
                    rates.append(a.requests / secs)
                med = statistics.median(rates)
                results[(kind, stream)] = med
                label = f"{kind:8s} {'stream' if stream else 'json  '}"
                print(f"{label}  {med:8.0f} req/s  {med * a.max_tokens:9.0f} output tok/s  "
                      f"(runs: {', '.join(f'{r:.0f}' for r in rates)})")  # fmt: skip
        finally:
            proc.terminate()
            proc.wait()
    base = results[("fixed", False)]
    print(f"ratio emulator/fixed-body baseline: json {results[('emulator', False)] / base:.2f}, "
          f"stream {results[('emulator', True)] / base:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
