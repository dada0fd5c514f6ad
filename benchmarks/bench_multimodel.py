"""Two models and their LoRA adapters behind one gateway, live: per-model figures, adapter-aware vs adapter-blind.

    python benchmarks/bench_multimodel.py [--reps 3] [--requests 400] [--rate 8] [--speed 2]

Four `llmsched emulate` processes (emulated H100s): two serve `--m1` (Llama-3.1-8B) with adapters a1..a6, two
serve `--m2` (Llama-2-13B) with adapters b1..b4, each `--max-loras 2`. One `llmsched serve --config` in front,
discovering the models and adapters from each backend's /v1/models. A Poisson client (seeded) sends streamed
completions: per family 30% base model, 70% its adapters with Zipf(1) popularity, prompts of 100-1,500 tokens,
16-128 output tokens. Each repetition runs the same requests twice, fresh processes each time, in alternating
order: adapter-aware (`router` and `adapter_router` `lora-affinity`: one router per model family) and
adapter-blind (both `least-requests`: balanced, blind to adapters). TTFT is measured by the client, in emulated seconds (wall x speed). Medians over the repetitions; the
ratio is aware / blind in the same repetition. Prints the load average (a busy box inflates the live figures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

LLMSCHED = [sys.executable, "-m", "llmsched.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _families(args: argparse.Namespace) -> dict[str, tuple[str, list[str]]]:
    return {args.m1: ("llama-3.1-8b", [f"a{k}" for k in range(1, 7)]),
            args.m2: ("llama-2-13b", [f"b{k}" for k in range(1, 5)])}


def plan(args: argparse.Namespace, seed: int) -> list[tuple[float, str, str, int]]:
    """(arrival s, model named, prompt, max_tokens) per request: the same for both routings of a repetition."""
    rng = random.Random(seed)
    fams = list(_families(args).items())
    t, out = 0.0, []
    for k in range(args.requests):
        t += rng.expovariate(args.rate)
        base, (_, adapters) = fams[rng.randrange(len(fams))]
        if rng.random() < 0.3:
            model = base
        else:
            w = [1 / (i + 1) for i in range(len(adapters))]
            model = rng.choices(adapters, w)[0]
        words = rng.randint(100, 1500)  # ~1 token a word of 3 letters + space (4 bytes)
        prompt = f"{k} " + " ".join(rng.choice(("the", "cat", "sat", "mat", "dog", "ran")) for _ in range(words))
        out.append((t, model, prompt, rng.randint(16, 128)))
    return out


async def _wait(url: str, want: int, deadline: float) -> None:
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(url + "/v1/models") as r:
                    if r.status == 200 and len((await r.json())["data"]) >= want:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} not ready")


async def run_once(args: argparse.Namespace, router: str, reqs: list[tuple[float, str, str, int]]) -> list[Any]:
    procs: list[subprocess.Popen[bytes]] = []
    fams = _families(args)
    urls = []
    try:
        for name, (preset, adapters) in fams.items():
            for _ in range(2):
                port = _free_port()
                procs.append(subprocess.Popen(
                    [*LLMSCHED, "emulate", "--port", str(port), "--model", preset, "--served-model-name", name,
                     "--speed", str(args.speed), "--max-loras", "2", "--lora-modules",
                     *(f"{a}=/adapters/{a}" for a in adapters)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                urls.append(f"http://127.0.0.1:{port}")
        cfg = {"backends": urls, "router": {"name": router}, "adapter_router": {"name": router},
               "scrape_interval": 0.5 / args.speed, "discovery_interval": 5.0}
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            json.dump(cfg, f)  # JSON is YAML
        gport = _free_port()
        gw = f"http://127.0.0.1:{gport}"
        deadline = time.monotonic() + 60
        for u in urls:
            await _wait(u, 1, deadline)
        procs.append(subprocess.Popen([*LLMSCHED, "serve", "--config", f.name, "--port", str(gport)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        await _wait(gw, sum(1 + len(a) for _, a in fams.values()), deadline)
        os.unlink(f.name)
        return await _client(gw, reqs, args.speed)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


async def _client(gw: str, reqs: list[tuple[float, str, str, int]], speed: float) -> list[Any]:
    out: list[Any] = []
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=600)) as http:
        t0 = time.monotonic()

        async def one(at: float, model: str, prompt: str, max_tokens: int) -> None:
            await asyncio.sleep(max(0.0, t0 + at / speed - time.monotonic()))
            start = time.monotonic()
            ttft = None
            try:
                body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True}
                async with http.post(gw + "/v1/completions", json=body) as r:
                    ok = r.status == 200
                    async for line in r.content:
                        if ttft is None and line.startswith(b"data: {") and b'"text"' in line:
                            ttft = (time.monotonic() - start) * speed
                        if b'"error"' in line:
                            ok = False
            except aiohttp.ClientError:
                ok = False
            out.append((model, ok and ttft is not None, ttft))

        await asyncio.gather(*(one(*r) for r in reqs))
    return out


def figures(rows: list[Any], model_of: dict[str, str]) -> dict[str, dict[str, float]]:
    """Per model named and per family: requests, errors, TTFT mean and p90 (emulated s)."""
    groups: dict[str, list[Any]] = {}
    for m, ok, ttft in rows:
        groups.setdefault(m, []).append((ok, ttft))
        groups.setdefault(f"{model_of[m]} (all)", []).append((ok, ttft))
    out = {}
    for g, xs in groups.items():
        t = np.array([x for ok, x in xs if ok])
        out[g] = {"n": len(xs), "errors": sum(1 for ok, _ in xs if not ok),
                  "ttft_mean": float(t.mean()) if len(t) else float("nan"),
                  "ttft_p90": float(np.percentile(t, 90)) if len(t) else float("nan")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--rate", type=float, default=8.0, help="arrivals per emulated second")
    ap.add_argument("--speed", type=float, default=2.0, help="emulated seconds per real second")
    ap.add_argument("--m1", default="m1")
    ap.add_argument("--m2", default="m2")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    model_of = {}
    for name, (_, adapters) in _families(args).items():
        model_of[name] = name
        model_of.update({a: name for a in adapters})
    aware, blind = "lora-affinity", "least-requests"
    runs: dict[str, list[dict[str, dict[str, float]]]] = {aware: [], blind: []}
    loads = []
    for rep in range(args.reps):
        reqs = plan(args, rep)
        order = [aware, blind] if rep % 2 == 0 else [blind, aware]
        for router in order:
            rows = asyncio.run(run_once(args, router, reqs))
            runs[router].append(figures(rows, model_of))
            loads.append(os.getloadavg()[0])
            print(f"rep {rep} {router}: {sum(1 for r in rows if r[1])}/{len(rows)} ok, load {loads[-1]:.2f}",
                  flush=True)
    keys = sorted(runs[aware][0], key=lambda k: (not k.endswith("(all)"), k))
    print(f"\nlive emulated (llama-3.1-8b and llama-2-13b on h100, emulator speed {args.speed}), {args.requests} "
          f"requests at {args.rate}/s, median of {args.reps} reps; TTFT in emulated s; aware = {aware}, blind = "
          f"{blind}; ratio aware/blind per rep, median; load average {min(loads):.2f}-{max(loads):.2f}")
    print("model | requests | errors aware/blind | TTFT mean aware | TTFT mean blind | ratio | TTFT p90 aware | "
          "TTFT p90 blind | p90 ratio")
    print("---|---|---|---|---|---|---|---|---")
    result: dict[str, Any] = {}
    for k in keys:
        a = [r[k] for r in runs[aware]]
        b = [r[k] for r in runs[blind]]

        def med(xs: list[dict[str, float]], f: str) -> float:
            return statistics.median(x[f] for x in xs)

        ratio = statistics.median(x["ttft_mean"] / y["ttft_mean"] for x, y in zip(a, b, strict=True))
        r90 = statistics.median(x["ttft_p90"] / y["ttft_p90"] for x, y in zip(a, b, strict=True))
        result[k] = {"aware": {f: med(a, f) for f in a[0]}, "blind": {f: med(b, f) for f in b[0]},
                     "ratio_mean": ratio, "ratio_p90": r90}
        print(f"{k} | {med(a, 'n'):.0f} | {med(a, 'errors'):.0f}/{med(b, 'errors'):.0f} | {med(a, 'ttft_mean'):.3f} |"
              f" {med(b, 'ttft_mean'):.3f} | {ratio:.2f} | {med(a, 'ttft_p90'):.3f} | {med(b, 'ttft_p90'):.3f} |"
              f" {r90:.2f}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "loads": loads,
                                         "figures": result}, indent=1))


if __name__ == "__main__":
    main()
