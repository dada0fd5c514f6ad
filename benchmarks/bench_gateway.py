"""Gateway benchmarks, ours vs vllm-router vs sglang-router in the same run: CPU per request, throughput, added
latency, and a Mooncake replay where routing matters.

    python benchmarks/bench_gateway.py [--section throughput|latency|replay|all] [--quick] [--reps N]
        [--baseline-src DIR] [--only TEXT ...] [--json out.json]

`--baseline-src` is another tree's src/ folder, e.g. the aiohttp gateway:
`git archive 87a92b7 src | tar -x -C /tmp/old` then `--baseline-src /tmp/old/src`.

Setup on a 2-core box shared with other work (load average printed with every row): the proxy under test is
pinned to core 0 (`taskset`), backends, emulators and this load generator to core 1. CPU per request is the
proxy's whole process tree from /proc (user + system; the Rust routers' worker threads included). Every
section interleaves the proxies within each repetition, so drifting machine load is shared; compare ratios
within one run, not absolute figures across runs.

Sections:
- throughput: closed loop (64 connections), non-streaming, tiny bodies, 4 trivial raw-asyncio backends,
  round robin everywhere. `--baseline-src` adds a row for another checkout's gateway (e.g. the aiohttp one).
- latency: open-loop Poisson at 500 req/s of Mooncake request bodies (prompt text synthesized from hash_ids,
  mean ~51 KiB, max_tokens 1) to the 4 trivial backends, direct vs through each proxy: added p50/p99 and CPU.
  Ours with round robin and with lmetric + sjf (tokenising, block hashing, prefix index, request queue).
- replay: the Mooncake conversation trace's first rows through 8 emulated llama-3.1-8b/H100 engines
  (`llmsched.emulator`, fresh for every run) at 85% of their capacity as the simulator's `prefix` scenario
  defines it (capacity and time scale from `llmsched compare` on the same rows, run first: its simulated
  TTFTs are the prediction). Time compression: the emulators run at `--speed` S, and the trace is replayed
  S x faster on top of the load scaling, so emulated time follows the trace at 85% load; our scrape interval
  is divided by S too (0.5 s emulated). The Rust routers' cache_aware policies use their own in-flight counts
  (no scrapes), so compression costs them nothing. Client-side TTFT is reported in emulated seconds (real x S).
  Routers: ours lmetric, ours round robin, vllm-router cache_aware, sglang-router cache_aware.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve()
TRACE = HERE.parents[2] / "shared" / "traces" / "mooncake" / "conversation_trace.jsonl"
MODEL = "llama-3.1-8b"
PROXY_CPU, LOAD_CPU = "0", "1"


# ---------------------------------------------------------------------------------------------- roles ---
_OK_BODY = json.dumps({"id": "cmpl-0", "object": "text_completion", "created": 0, "model": MODEL,
                       "choices": [{"index": 0, "text": " ok", "finish_reason": "length", "logprobs": None}],
                       "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
_STREAM_BODY = (b"data: " + json.dumps({"id": "cmpl-0", "object": "text_completion", "created": 0, "model": MODEL,
                                         "choices": [{"index": 0, "text": " ok", "finish_reason": "length"}]}).encode()
                + b"\n\ndata: [DONE]\n\n")
_METRICS = (b"vllm:num_requests_running{model_name=\"m\"} 0\nvllm:num_requests_waiting{model_name=\"m\"} 0\n"
            b"vllm:kv_cache_usage_perc{model_name=\"m\"} 0\n")
_MODELS = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "x"}]}).encode()


def _response(status: bytes, body: bytes, ctype: bytes = b"application/json") -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype + b"\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


class _FastHTTP(asyncio.Protocol):
    """A trivial keep-alive HTTP/1.1 backend: answers every completion at once (throughput ceiling tests)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport
        self.buf = b""
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            k = head.find(b"content-length:")
            n = int(head[k + 15: head.find(b"\r\n", k) if head.find(b"\r\n", k) > 0 else None]) if k >= 0 else 0
            if len(self.buf) < end + 4 + n:
                return
            body = self.buf[end + 4: end + 4 + n]
            self.buf = self.buf[end + 4 + n:]
            path = head.split(b" ", 2)[1]
            if head.startswith(b"post"):
                if b'"stream": true' in body or b'"stream":true' in body:
                    out = _response(b"200 OK", _STREAM_BODY, b"text/event-stream")
                else:
                    out = _response(b"200 OK", _OK_BODY)
            elif path.startswith(b"/metrics"):
                out = _response(b"200 OK", _METRICS, b"text/plain")
            elif path.startswith(b"/v1/models"):
                out = _response(b"200 OK", _MODELS)
            else:
                out = _response(b"200 OK", b"{}")
            self.t.write(out)  # type: ignore[attr-defined]


async def _role_fast(ports: list[int]) -> None:
    loop = asyncio.get_running_loop()
    for p in ports:
        await loop.create_server(_FastHTTP, "127.0.0.1", p, backlog=1024)
    await asyncio.Event().wait()


async def _role_emulators(ports: list[int], speed: float) -> None:
    from llmsched.emulator import EmulatorServer

    for p in ports:
        await EmulatorServer(speed=speed, max_model_len=131072).start("127.0.0.1", p)
    await asyncio.Event().wait()


async def _role_gateway(port: int, backends: list[str], router: str, policy: str, cap: int, scrape: float) -> None:
    from llmsched.gateway.config import GatewayConfig
    from llmsched.gateway.server import Gateway

    cfg = GatewayConfig(backends=backends, router={"name": router}, request_policy={"name": policy},
                        max_in_flight_per_backend=cap, scrape_interval=scrape, queue_bound=100_000)
    await Gateway(cfg).start("127.0.0.1", port)
    with contextlib.suppress(ImportError):  # an older checkout (--baseline-src) may not have it
        from llmsched.gateway.server import tune_gc

        tune_gc()  # as `llmsched serve` does
    await asyncio.Event().wait()


# ------------------------------------------------------------------------------------------ processes ---
def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _spawn(args: Sequence[str], cpu: str | None, src: str | None = None) -> subprocess.Popen[bytes]:
    cmd = list(args)
    if cpu is not None and shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        cmd = ["taskset", "-c", cpu, *cmd]
    env = {**os.environ, "PYTHONPATH": src} if src else None
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=env)


def _role_cmd(*args: str) -> list[str]:
    return [sys.executable, str(HERE), "--role", *args]


def _wait_up(url: str, timeout: float = 60.0, path: str = "/health") -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + path, timeout=1.0).status_code < 500:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout} s")


def _wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open in {timeout} s")


def _stop(p: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGTERM)
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def _tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of `pid` and its descendants, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                f = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            rest = f[f.rindex(")") + 2:].split()
            stats[int(d)] = (int(rest[1]), (int(rest[11]) + int(rest[12])) / tick)
    total, todo = 0.0, [pid]
    while todo:
        q = todo.pop()
        if q in stats:
            total += stats[q][1]
        todo += [c for c, (pp, _) in stats.items() if pp == q]
    return total


def _start_proxy(kind: str, port: int, backends: list[str], router: str = "round-robin", policy: str = "fcfs",
                 cap: int = 256, scrape: float = 0.1, src: str | None = None) -> subprocess.Popen[bytes] | None:
    """kind: "ours" (this checkout, or `src`'s), "vllm-router:POLICY", "sglang-router:POLICY"."""
    if kind == "ours":
        p = _spawn(_role_cmd("gateway", str(port), ",".join(backends), router, policy, str(cap), str(scrape)),
                   PROXY_CPU, src)
    elif kind.startswith("vllm-router"):
        exe = shutil.which("vllm-router")
        if exe is None:
            return None
        pol = kind.split(":")[1]
        p = _spawn([exe, "--host", "127.0.0.1", "--port", str(port), "--worker-urls", *backends, "--policy", pol,
                    "--log-level", "warning", "--prometheus-host", "127.0.0.1",
                    "--prometheus-port", str(_free_ports(1)[0])], PROXY_CPU)
    elif kind.startswith("sglang-router"):
        exe = shutil.which("sglang-router")
        if exe is None:
            return None
        pol = kind.split(":")[1]
        p = _spawn([exe, "launch", "--host", "127.0.0.1", "--port", str(port), "--worker-urls", *backends,
                    "--policy", pol, "--log-level", "warn", "--prometheus-host", "127.0.0.1",
                    "--prometheus-port", str(_free_ports(1)[0])], PROXY_CPU)
    else:
        raise ValueError(kind)
    try:
        _wait_port(port)
    except RuntimeError:
        _stop(p)
        raise
    return p


def _load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


# ------------------------------------------------------------------------------------------ load gen ----
def _pct(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


async def _closed_loop(urls: list[str], n: int, conc: int, body: bytes) -> tuple[float, list[float]]:
    import aiohttp

    lat: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        left = n
        k = 0

        async def worker() -> None:
            nonlocal left, errors, k
            while left > 0:
                left -= 1
                url = urls[k % len(urls)]
                k += 1
                t = time.perf_counter()
                async with s.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                lat.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        dt = time.perf_counter() - t0
    if errors:
        print(f"    ({errors} non-200 answers)")
    return n / dt, lat


async def _open_loop(urls: list[str], bodies: list[bytes], rate: float, seed: int) -> list[float]:
    import aiohttp

    gaps = np.random.default_rng(seed).exponential(1.0 / rate, len(bodies))
    lat: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        async def one(k: int, body: bytes) -> None:
            t = time.perf_counter()
            async with s.post(urls[k % len(urls)], data=body, headers={"Content-Type": "application/json"}) as r:
                await r.read()
                if r.status == 200:
                    lat.append(time.perf_counter() - t)

        tasks = []
        t0 = time.perf_counter()
        due = 0.0
        for k, body in enumerate(bodies):
            due += gaps[k]
            delay = t0 + due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(k, body)))
        await asyncio.gather(*tasks)
    return lat


# ------------------------------------------------------------------------------------------- mooncake ---
_BLOCK_TEXT: dict[int, str] = {}


def block_text(h: int) -> str:
    """512 tokens (2,048 ASCII bytes: the stand-in tokenizer's 4 bytes a token) of text keyed by block id h."""
    t = _BLOCK_TEXT.get(h)
    if t is None:
        rng = np.random.default_rng(h)
        letters = rng.integers(97, 123, 2048, dtype=np.uint8)
        letters[rng.random(2048) < 0.18] = 32  # spaces, so it reads like words
        t = _BLOCK_TEXT[h] = letters.tobytes().decode()
    return t


def mooncake_rows(n: int) -> list[dict[str, object]]:
    if not TRACE.exists():
        raise FileNotFoundError(f"Mooncake trace not found at {TRACE}")
    rows = []
    with TRACE.open() as f:
        for line_no, line in enumerate(f, 1):
            if len(rows) >= n:
                break
            try:
                rows.append(json.loads(line))
            except ValueError as e:
                raise ValueError(f"{TRACE}:{line_no}: bad JSON: {e}") from None
    return rows


def prompt_of(row: dict[str, object]) -> str:
    """Equal hash_ids give equal text, so the trace's prefix sharing survives into the engines' caches."""
    ids = row["hash_ids"]
    assert isinstance(ids, list)
    text = "".join(block_text(int(h)) for h in ids)
    return text[: int(row["input_length"]) * 4]  # type: ignore[call-overload]


# ------------------------------------------------------------------------------------------- sections ---
Proxy = tuple[str, str, str, str, str | None]  # label, kind, router, request policy, source folder


ONLY: list[str] = []  # --only: keep the proxies whose label holds one of these


def _proxies(rows: list[Proxy], baseline: str | None) -> list[Proxy]:
    """`rows`, and with `baseline` a copy of each of our rows running the other tree's gateway; `--only` filters."""
    extra = [(label.replace("ours", "ours --baseline-src", 1), kind, router, policy, baseline)
             for label, kind, router, policy, _ in rows if kind == "ours"] if baseline else []
    return [p for p in rows + extra if not ONLY or any(o in p[0] for o in ONLY)]


def _span(xs: Sequence[float], scale: float = 1.0, fmt: str = "{:.2f}") -> str:
    """median [min-max] of repeated figures."""
    return (fmt.format(statistics.median(xs) * scale) + " [" + fmt.format(min(xs) * scale) + "-"
            + fmt.format(max(xs) * scale) + "]")


def _each_run(proxies: list[Proxy], reps: int, backends: list[str]) -> Iterator[tuple[int, str, int, str]]:
    """(rep, label, pid, completions URL) for every repetition and proxy, interleaved, each proxy fresh."""
    for rep in range(reps):
        for label, kind, router, policy, src in proxies:
            port = _free_ports(1)[0]
            proc = _start_proxy(kind, port, backends, router or "round-robin", policy or "fcfs", src=src)
            if proc is None:
                continue
            try:
                yield rep, label, proc.pid, f"http://127.0.0.1:{port}/v1/completions"
            finally:
                _stop(proc)


def _table(header: str, res: dict[str, list[Any]]) -> Iterator[tuple[str, list[Any]]]:
    """Print the header, then yield each proxy's results (and say which were skipped)."""
    print(header)
    for label, rs in res.items():
        if rs:
            yield label, rs
        else:
            print(f"{label:38s} skipped (not installed)")


def section_throughput(quick: bool, reps: int, baseline: str | None, out: dict[str, object]) -> None:
    n = 4000 if quick else 12000
    conc = 64
    body = json.dumps({"model": MODEL, "prompt": "Say hello to the gateway benchmark.", "max_tokens": 1}).encode()
    bports = _free_ports(4)
    backend = _spawn(_role_cmd("fast", ",".join(map(str, bports))), LOAD_CPU)
    backends = [f"http://127.0.0.1:{p}" for p in bports]
    proxies = _proxies([("ours round-robin", "ours", "round-robin", "fcfs", None),
                        ("vllm-router round_robin", "vllm-router:round_robin", "", "", None),
                        ("sglang-router round_robin", "sglang-router:round_robin", "", "", None)], baseline)
    res: dict[str, list[tuple[float, float, float, float]]] = {p[0]: [] for p in proxies}
    try:
        for p in bports:
            _wait_port(p)
        print(f"\n== throughput: {n} non-streaming tiny requests, {conc} connections, 4 trivial backends "
              f"(proxy on core {PROXY_CPU}, backends + load generator on core {LOAD_CPU}); {reps} interleaved reps")
        direct = statistics.median(asyncio.run(_closed_loop([b + "/v1/completions" for b in backends], n, conc,
                                                            body))[0] for _ in range(2))
        print(f"direct (load generator's ceiling): {direct:.0f} req/s [load {_load()}]")
        for _rep, label, pid, url in _each_run(proxies, reps, backends):
            asyncio.run(_closed_loop([url], 500, conc, body))  # warm-up: connections, caches
            c0 = _tree_cpu(pid)
            rps, lat = asyncio.run(_closed_loop([url], n, conc, body))
            res[label].append((rps, _pct(lat, 50), _pct(lat, 99), (_tree_cpu(pid) - c0) / n))
        for label, rs in _table(f"{'proxy':38s} {'req/s':>8s} {'p50 ms':>7s} {'p99 ms':>7s} "
                                f"{'CPU us/req [min-max]':>22s} {'1-core req/s':>12s} {'load':>5s}", res):
            cpu = [r[3] for r in rs]
            print(f"{label:38s} {statistics.median(r[0] for r in rs):8.0f} "
                  f"{statistics.median(r[1] for r in rs) * 1e3:7.2f} {statistics.median(r[2] for r in rs) * 1e3:7.2f} "
                  f"{_span(cpu, 1e6, '{:.0f}'):>22s} {1 / statistics.median(cpu):12.0f} {_load():>5s}")
        out["throughput"] = {k: v for k, v in res.items() if v}
        ours = res["ours round-robin"]
        for label, rs in res.items():
            if rs and ours and label != "ours round-robin":
                print(f"CPU per request, ours / {label}: x"
                      f"{statistics.median(r[3] for r in ours) / statistics.median(r[3] for r in rs):.2f}")
    finally:
        _stop(backend)


def section_latency(quick: bool, reps: int, baseline: str | None, out: dict[str, object]) -> None:
    n = 1500 if quick else 3000
    rate = 500.0
    try:
        rows = mooncake_rows(n)
    except FileNotFoundError as e:
        print(f"\n== latency: skipped ({e})")
        return
    bodies = [json.dumps({"model": MODEL, "prompt": prompt_of(r), "max_tokens": 1}).encode() for r in rows]
    mean_kb = sum(map(len, bodies)) / len(bodies) / 1024
    bports = _free_ports(4)
    backend = _spawn(_role_cmd("fast", ",".join(map(str, bports))), LOAD_CPU)
    backends = [f"http://127.0.0.1:{p}" for p in bports]
    direct = [b + "/v1/completions" for b in backends]
    proxies = _proxies([("ours round-robin", "ours", "round-robin", "fcfs", None),
                        ("ours lmetric + sjf", "ours", "lmetric", "sjf", None),
                        ("vllm-router round_robin", "vllm-router:round_robin", "", "", None),
                        ("sglang-router round_robin", "sglang-router:round_robin", "", "", None)], baseline)
    res: dict[str, list[tuple[float, float, float, float, float, float]]] = {p[0]: [] for p in proxies}
    m = statistics.median
    try:
        for p in bports:
            _wait_port(p)
        print(f"\n== added latency: {n} Mooncake request bodies (mean {mean_kb:.0f} KiB, max_tokens 1), Poisson "
              f"{rate:.0f} req/s, 4 trivial backends; {reps} reps, each proxy's run next to a direct run")
        for rep, label, pid, url in _each_run(proxies, reps, backends):
            asyncio.run(_open_loop([url], bodies[:300], rate, 99))  # warm-up
            ld = asyncio.run(_open_loop(direct, bodies, rate, rep))
            c0 = _tree_cpu(pid)
            lg = asyncio.run(_open_loop([url], bodies, rate, rep))
            cpu = (_tree_cpu(pid) - c0) / len(bodies)
            res[label].append((_pct(ld, 50), _pct(ld, 99), _pct(lg, 50), _pct(lg, 99), cpu, len(lg) / len(bodies)))
        for label, rs in _table(f"{'proxy':38s} {'direct p50/p99':>15s} {'via p50/p99':>15s} {'added p50 ms':>20s} "
                                f"{'added p99 ms':>20s} {'CPU us/req':>16s} {'ok':>5s} {'load':>5s}", res):
            a50 = [r[2] - r[0] for r in rs]
            a99 = [r[3] - r[1] for r in rs]
            print(f"{label:38s} {m(r[0] for r in rs) * 1e3:7.2f}/{m(r[1] for r in rs) * 1e3:7.2f} "
                  f"{m(r[2] for r in rs) * 1e3:7.2f}/{m(r[3] for r in rs) * 1e3:7.2f} {_span(a50, 1e3):>20s} "
                  f"{_span(a99, 1e3):>20s} {_span([r[4] for r in rs], 1e6, '{:.0f}'):>16s} "
                  f"{min(r[5] for r in rs):5.0%} {_load():>5s}")
        out["latency"] = {k: v for k, v in res.items() if v}
        print("targets (issue 13): added p50 <= 0.3 ms, p99 <= 1.5 ms; CPU <= 250 us/req lmetric + request policy")
    finally:
        _stop(backend)


async def _replay(url: str, rows: list[dict[str, object]], scale: float) -> dict[str, float]:
    import aiohttp

    ttft: list[float] = []
    e2e: list[float] = []
    events: list[int] = []
    errors = 0
    prompts = [prompt_of(r) for r in rows]
    t_first = float(rows[0]["timestamp"])  # type: ignore[arg-type]

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=600)) as s:
        async def one(row: dict[str, object], prompt: str) -> None:
            nonlocal errors
            body = {"model": MODEL, "prompt": prompt, "max_tokens": int(row["output_length"]),  # type: ignore
                    "stream": True}
            t = time.perf_counter()
            try:
                async with s.post(url, json=body) as r:
                    if r.status != 200:
                        errors += 1
                        await r.read()
                        return
                    first = None
                    n = 0
                    async for chunk in r.content.iter_any():
                        if first is None:  # vLLM sends the first completion chunk with the first token
                            first = time.perf_counter()
                        n += chunk.count(b"data: ")
                    if first is None:
                        errors += 1
                        return
                    ttft.append(first - t)
                    e2e.append(time.perf_counter() - t)
                    events.append(n)
            except (aiohttp.ClientError, TimeoutError):
                errors += 1

        t0 = time.perf_counter()
        tasks = []
        for row, prompt in zip(rows, prompts, strict=True):
            due = (float(row["timestamp"]) - t_first) / 1000.0 / scale  # type: ignore[arg-type]
            delay = t0 + due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(row, prompt)))
        await asyncio.gather(*tasks)
    return {"ttft_mean": float(np.mean(ttft)) if ttft else float("nan"), "ttft_p99": _pct(ttft, 99),
            "e2e_mean": float(np.mean(e2e)) if e2e else float("nan"), "ok": len(ttft), "errors": errors,
            "events": float(np.mean(events)) if events else float("nan")}


_SIM_SCENARIO = """name: gateway-replay
description: benchmarks/bench_gateway.py's replay setting (the prefix scenario on the first {n} Mooncake rows)
base: {{model: {model}, gpu: h100, instances: 8, seed: 0}}
workloads:
  - {{label: mooncake-conversation, kind: trace, name: mooncake, path: mooncake/conversation_trace.jsonl,
      num_requests: {n}, requires_trace: true}}
loads: [0.85]
policies:
  - {{label: round-robin, router: round-robin}}
  - {{label: sglang-cache-aware, router: sglang-cache-aware}}
  - {{label: lmetric, router: lmetric}}
"""


def simulate_replay(n: int) -> tuple[float, dict[str, float]]:
    """The simulator on the same rows at 85% load: (trace time scale, simulated TTFT mean per router)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        yml = Path(tmp) / "replay.yaml"
        yml.write_text(_SIM_SCENARIO.format(n=n, model=MODEL))
        run = subprocess.run([sys.executable, "-m", "llmsched.cli", "compare", "-s", str(yml), "--json", "--jobs",
                              "1", "--traces", str(TRACE.parents[1]), "--out", str(Path(tmp) / "rep")],
                             capture_output=True, text=True, timeout=900)
    if run.returncode != 0:
        raise RuntimeError(f"llmsched compare failed: {run.stderr[-2000:]}")
    runs = json.loads(run.stdout)["runs"]
    return float(runs[0]["rate_scale"]), {r["label"]: float(r["result"]["ttft_s"]["mean"]) for r in runs}


def section_replay(quick: bool, speed: float, reps: int, rows_n: int, out: dict[str, object]) -> None:
    n = 150 if quick else rows_n
    try:
        rows = mooncake_rows(n)
    except FileNotFoundError as e:
        print(f"\n== replay: skipped ({e})")
        return
    t = time.perf_counter()
    rate_scale, sim = simulate_replay(n)
    print(f"\n== Mooncake replay: first {n} rows through 8 emulated {MODEL}/H100 engines at 85% load "
          f"(simulator: trace time / {rate_scale:.3f}; {time.perf_counter() - t:.0f} s to simulate)")
    print(f"   emulator speed {speed:g}, trace replayed {rate_scale * speed:.2f}x faster than recorded; TTFT in "
          f"emulated seconds (real x {speed:g}); {reps} interleaved reps, fresh emulators per run")
    runs = [("ours lmetric", "ours", "lmetric", "fcfs"),
            ("ours round-robin", "ours", "round-robin", "fcfs"),
            ("vllm-router cache_aware", "vllm-router:cache_aware", "", ""),
            ("sglang-router cache_aware", "sglang-router:cache_aware", "", "")]
    results: dict[str, list[dict[str, float]]] = {label: [] for label, *_ in runs}
    for _rep in range(reps):
        for label, kind, router, policy in runs:
            eports = _free_ports(8)
            emu = _spawn(_role_cmd("emulators", ",".join(map(str, eports)), str(speed)), LOAD_CPU)
            backends = [f"http://127.0.0.1:{p}" for p in eports]
            proc = None
            try:
                for b in backends:
                    _wait_up(b)
                port = _free_ports(1)[0]
                proc = _start_proxy(kind, port, backends, router=router or "round-robin", policy=policy or "fcfs",
                                    scrape=0.5 / speed)
                if proc is None:
                    continue
                time.sleep(1.0)  # let peers finish their worker discovery
                c0 = _tree_cpu(proc.pid)
                r = asyncio.run(_replay(f"http://127.0.0.1:{port}/v1/completions", rows, rate_scale * speed))
                r["cpu"] = (_tree_cpu(proc.pid) - c0) / max(1, r["ok"] + r["errors"])
                r["load"] = os.getloadavg()[0]
                results[label].append(r)
                print(f"   {label:28s} TTFT mean {r['ttft_mean'] * speed:6.3f} s  ok {r['ok']:.0f} "
                      f"err {r['errors']:.0f}  [load {r['load']:.1f}]", flush=True)
            finally:
                if proc is not None:
                    _stop(proc)
                _stop(emu)
    m = statistics.median
    print(f"{'router':28s} {'TTFT mean s [min-max]':>24s} {'TTFT p99 s':>11s} {'E2E mean s':>11s} {'ok':>5s} "
          f"{'err':>4s} {'CPU ms/req':>11s} {'CPU us/chunk':>13s} {'simulated TTFT':>15s}")
    sim_of = {"ours lmetric": "lmetric", "ours round-robin": "round-robin",
              "vllm-router cache_aware": "sglang-cache-aware", "sglang-router cache_aware": "sglang-cache-aware"}
    for label, rs in results.items():
        if not rs:
            print(f"{label:28s} skipped (not installed or did not start)")
            continue
        cpu = m(r["cpu"] for r in rs)
        chunks = m(r["events"] for r in rs)
        print(f"{label:28s} {_span([r['ttft_mean'] for r in rs], speed, '{:.3f}'):>24s} "
              f"{m(r['ttft_p99'] for r in rs) * speed:11.3f} {m(r['e2e_mean'] for r in rs) * speed:11.3f} "
              f"{m(r['ok'] for r in rs):5.0f} {max(r['errors'] for r in rs):4.0f} {cpu * 1e3:11.2f} "
              f"{cpu / chunks * 1e6:13.1f} {sim.get(sim_of[label], float('nan')):15.3f}")
    print("simulated column: the simulator's TTFT mean for the same rows and load (its sglang-cache-aware "
          "stands for both Rust routers' cache_aware)")
    out["replay"] = {"rate_scale": rate_scale, "speed": speed, "simulated": sim, "runs": results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--section", choices=["throughput", "latency", "replay", "all"], default="all")
    ap.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (interleaved across proxies)")
    ap.add_argument("--speed", type=float, default=2.0, help="emulator speed (replay)")
    ap.add_argument("--rows", type=int, default=300, help="Mooncake rows replayed (replay)")
    ap.add_argument("--baseline-src", help="another checkout's src/ folder: its gateway gets a row too")
    ap.add_argument("--json", type=Path, help="write every figure to this file")
    ap.add_argument("--only", nargs="+", default=[], metavar="TEXT",
                    help="throughput/latency: only the proxies whose label holds TEXT (e.g. 'lmetric + sjf' with "
                         "--baseline-src: one policy, old tree against new, without the others' interleaving)")
    ap.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    ONLY[:] = a.only
    if a.role:
        import uvloop

        role, *rest = a.role
        if role == "fast":
            uvloop.run(_role_fast([int(p) for p in rest[0].split(",")]))
        elif role == "emulators":
            uvloop.run(_role_emulators([int(p) for p in rest[0].split(",")], float(rest[1])))
        elif role == "gateway":
            uvloop.run(_role_gateway(int(rest[0]), rest[1].split(","), rest[2], rest[3], int(rest[4]),
                                     float(rest[5])))
        return
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {int(LOAD_CPU)})
    print(f"machine: {os.cpu_count()} CPUs; load average at start {os.getloadavg()}")
    out: dict[str, object] = {"load_start": os.getloadavg()}
    try:
        if a.section in ("throughput", "all"):
            section_throughput(a.quick, a.reps, a.baseline_src, out)
        if a.section in ("latency", "all"):
            section_latency(a.quick, a.reps, a.baseline_src, out)
        if a.section in ("replay", "all"):
            section_replay(a.quick, a.speed, a.reps, a.rows, out)
    finally:
        out["load_end"] = os.getloadavg()
        print(f"load average at end {os.getloadavg()}")
        if a.json:
            a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
