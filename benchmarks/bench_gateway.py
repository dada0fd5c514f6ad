"""Gateway benchmarks: throughput ceiling, added latency, HTTP-stack choice, and a Mooncake replay vs peers.

    python benchmarks/bench_gateway.py [--section throughput|latency|replay|all] [--quick]

Setup on a 2-core box (reported with the figures): the proxy under test is pinned to core 0 (`taskset`), the
backends and this load generator to core 1, so "one gateway process on one core" is what is measured; the
proxy's CPU time per request (from /proc, its whole process tree) gives the one-core ceiling even when the
load generator, not the proxy, saturates first.

Sections:
- throughput: closed loop (64 connections), non-streaming, tiny bodies, 4 trivial raw-asyncio backends.
  Proxies: ours (aiohttp server + aiohttp client, uvloop), the alternative stack (uvicorn+httptools+uvloop with
  starlette + httpx), vllm-router round_robin when installed; "direct" is the load generator's own ceiling.
- latency: open-loop Poisson at 500 req/s of Mooncake request bodies (prompt text synthesized from hash_ids,
  max_tokens 1) to the 4 trivial backends, direct vs through the gateway: added p50/p99.
- replay: the first Mooncake rows, time-scaled, streamed through each router in front of 4 emulated engines
  (`llmsched.emulator`, restarted fresh for every router): client-side TTFT mean/p99, E2E, router CPU/request.
  Ours (lmetric + fcfs; lmetric + sjf with a gateway admission cap; round-robin) vs vllm-router and
  sglang-router cache_aware (benchmark-only: `pip install vllm-router sglang-router`).
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
from collections.abc import Sequence
from pathlib import Path

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


async def _role_gateway(port: int, backends: list[str], router: str, policy: str, cap: int) -> None:
    from llmsched.gateway.config import GatewayConfig
    from llmsched.gateway.server import Gateway, tune_gc

    cfg = GatewayConfig(backends=backends, router={"name": router}, request_policy={"name": policy},
                        max_in_flight_per_backend=cap, scrape_interval=0.1, queue_bound=100_000)
    await Gateway(cfg).start("127.0.0.1", port)
    tune_gc()  # as `llmsched serve` does
    await asyncio.Event().wait()


def _role_alt(port: int, backends: list[str]) -> None:
    """The alternative stack: uvicorn (httptools, uvloop) + starlette, httpx client; round robin."""
    import httpx
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    client = httpx.AsyncClient(limits=httpx.Limits(max_connections=1000, max_keepalive_connections=1000),
                               timeout=60)
    state = {"i": 0}

    async def proxy(request: Request) -> Response:
        body = await request.body()
        url = backends[state["i"] % len(backends)] + request.url.path
        state["i"] += 1
        if b'"stream": true' in body:
            up = await client.send(client.build_request("POST", url, content=body), stream=True)
            return StreamingResponse(up.aiter_raw(), status_code=up.status_code,
                                     media_type=up.headers.get("content-type"), background=None)
        r = await client.post(url, content=body, headers={"content-type": "application/json"})
        return Response(r.content, status_code=r.status_code, media_type="application/json")

    app = Starlette(routes=[Route("/v1/completions", proxy, methods=["POST"]),
                            Route("/v1/chat/completions", proxy, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", access_log=False,
                log_level="warning", backlog=1024)


# ------------------------------------------------------------------------------------------ processes ---
def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _spawn(args: Sequence[str], cpu: str | None) -> subprocess.Popen[bytes]:
    cmd = list(args)
    if cpu is not None and shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        cmd = ["taskset", "-c", cpu, *cmd]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


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
                 cap: int = 256) -> subprocess.Popen[bytes] | None:
    if kind == "ours":
        p = _spawn(_role_cmd("gateway", str(port), ",".join(backends), router, policy, str(cap)), PROXY_CPU)
    elif kind == "alt":
        p = _spawn(_role_cmd("alt", str(port), ",".join(backends)), PROXY_CPU)
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
    _wait_port(port)
    return p


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
def section_throughput(quick: bool) -> None:
    n = 6000 if quick else 20000
    conc = 64
    body = json.dumps({"model": MODEL, "prompt": "Say hello to the gateway benchmark.", "max_tokens": 1}).encode()
    bports = _free_ports(4)
    backend = _spawn(_role_cmd("fast", ",".join(map(str, bports))), LOAD_CPU)
    backends = [f"http://127.0.0.1:{p}" for p in bports]
    try:
        for p in bports:
            _wait_port(p)
        print(f"\n== throughput: {n} non-streaming requests, {conc} connections, 4 trivial backends "
              f"(proxy on core {PROXY_CPU}, backends + load generator on core {LOAD_CPU})")
        print(f"{'proxy':26s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'CPU us/req':>11s} {'1-core req/s':>13s}")
        direct = statistics.median(asyncio.run(_closed_loop([b + "/v1/completions" for b in backends], n, conc,
                                                            body))[0] for _ in range(3))
        print(f"{'direct (load gen ceiling)':26s} {direct:8.0f}")
        results = {}
        for kind in ("ours", "alt", "vllm-router:round_robin"):
            port = _free_ports(1)[0]
            try:
                proc = _start_proxy(kind, port, backends)
            except (RuntimeError, ImportError) as e:
                print(f"{kind:26s} skipped: {e}")
                continue
            if proc is None:
                print(f"{kind:26s} skipped: not installed")
                continue
            try:
                url = f"http://127.0.0.1:{port}/v1/completions"
                asyncio.run(_closed_loop([url], 1000, conc, body))  # warm-up: connections, caches
                reps = []
                for _ in range(3):
                    c0 = _tree_cpu(proc.pid)
                    rps, lat = asyncio.run(_closed_loop([url], n, conc, body))
                    cpu = (_tree_cpu(proc.pid) - c0) / n
                    reps.append((rps, _pct(lat, 50), _pct(lat, 99), cpu))
                rps, p50, p99, cpu = (statistics.median(r[k] for r in reps) for k in range(4))
                results[kind] = (rps, cpu)
                print(f"{kind:26s} {rps:8.0f} {p50 * 1e3:8.2f} {p99 * 1e3:8.2f} {cpu * 1e6:11.0f} {1 / cpu:13.0f}")
            finally:
                _stop(proc)
        if "ours" in results and "alt" in results:
            print(f"ours / alt: throughput x{results['ours'][0] / results['alt'][0]:.2f}, "
                  f"CPU per request x{results['ours'][1] / results['alt'][1]:.2f}")
    finally:
        _stop(backend)


def section_latency(quick: bool) -> None:
    n = 2500 if quick else 5000
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
    m = statistics.median
    try:
        for p in bports:
            _wait_port(p)
        print(f"\n== added latency: {n} Mooncake request bodies (mean {mean_kb:.0f} KiB, max_tokens 1), Poisson "
              f"{rate:.0f} req/s, 4 trivial backends; medians of 3 runs, direct and gateway runs interleaved")
        print(f"{'path':28s} {'p50 ms':>8s} {'p99 ms':>8s} {'added p50':>10s} {'added p99':>10s} {'CPU us/req':>11s}")
        for router in ("round-robin", "lmetric"):
            port = _free_ports(1)[0]
            gw = _start_proxy("ours", port, backends, router=router)
            assert gw is not None
            via = [f"http://127.0.0.1:{port}/v1/completions"]
            try:
                asyncio.run(_open_loop(via, bodies[:500], rate, 99))  # warm-up
                d50, d99, g50, g99, cpu = [], [], [], [], []
                for rep in range(3):
                    ld = asyncio.run(_open_loop(direct, bodies, rate, rep))
                    c0 = _tree_cpu(gw.pid)
                    lg = asyncio.run(_open_loop(via, bodies, rate, rep))
                    cpu.append((_tree_cpu(gw.pid) - c0) / len(bodies))
                    d50.append(_pct(ld, 50))
                    d99.append(_pct(ld, 99))
                    g50.append(_pct(lg, 50))
                    g99.append(_pct(lg, 99))
                print(f"{'direct':28s} {m(d50) * 1e3:8.2f} {m(d99) * 1e3:8.2f}")
                print(f"{'gateway, router ' + router:28s} {m(g50) * 1e3:8.2f} {m(g99) * 1e3:8.2f} "
                      f"{(m(g50) - m(d50)) * 1e3:10.2f} {(m(g99) - m(d99)) * 1e3:10.2f} {m(cpu) * 1e6:11.0f}")
            finally:
                _stop(gw)
        print("targets: added p50 <= 1 ms, p99 <= 5 ms")
    finally:
        _stop(backend)


async def _replay(url: str, rows: list[dict[str, object]], scale: float) -> dict[str, float]:
    import aiohttp

    ttft: list[float] = []
    e2e: list[float] = []
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
                    async for _chunk in r.content.iter_any():
                        if first is None:  # vLLM sends the first completion chunk with the first token
                            first = time.perf_counter()
                    if first is None:
                        errors += 1
                        return
                    ttft.append(first - t)
                    e2e.append(time.perf_counter() - t)
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
            "e2e_mean": float(np.mean(e2e)) if e2e else float("nan"), "ok": len(ttft), "errors": errors}


def section_replay(quick: bool, speed: float, scale: float, reps: int) -> None:
    n = 150 if quick else 300
    try:
        rows = mooncake_rows(n)
    except FileNotFoundError as e:
        print(f"\n== replay: skipped ({e})")
        return
    span = (float(rows[-1]["timestamp"]) - float(rows[0]["timestamp"])) / 1000  # type: ignore[arg-type]
    print(f"\n== Mooncake replay: first {n} rows ({span:.0f} s of trace) at {scale:g}x time compression, "
          f"4 emulated {MODEL}/H100 engines at speed {speed:g} (fresh per router), streaming, max_tokens = the trace's output length")
    print(f"   real seconds at the client (x speed = emulated seconds); medians of {reps} runs; err = max")
    print(f"{'router':30s} {'TTFT mean':>10s} {'TTFT p99':>10s} {'E2E mean':>10s} {'ok':>5s} {'err':>4s} "
          f"{'CPU ms/req':>11s}")
    runs = [("ours lmetric + fcfs", "ours", "lmetric", "fcfs", 256),
            ("ours lmetric + sjf (cap 16)", "ours", "lmetric", "sjf", 16),
            ("ours round-robin + fcfs", "ours", "round-robin", "fcfs", 256),
            ("vllm-router cache_aware", "vllm-router:cache_aware", "", "", 0),
            ("sglang-router cache_aware", "sglang-router:cache_aware", "", "", 0)]
    results: dict[str, list[dict[str, float]]] = {label: [] for label, *_ in runs}
    for _rep in range(reps):  # routers interleaved within each repetition, so drifting machine load is shared
        for label, kind, router, policy, cap in runs:
            eports = _free_ports(4)
            emu = _spawn(_role_cmd("emulators", ",".join(map(str, eports)), str(speed)), LOAD_CPU)
            backends = [f"http://127.0.0.1:{p}" for p in eports]
            proc = None
            try:
                for b in backends:
                    _wait_up(b)
                port = _free_ports(1)[0]
                try:
                    proc = _start_proxy(kind, port, backends, router=router or "round-robin",
                                        policy=policy or "fcfs", cap=cap or 256)
                except RuntimeError:
                    proc = None
                if proc is None:
                    continue
                time.sleep(1.0)  # let peers finish their worker discovery
                c0 = _tree_cpu(proc.pid)
                r = asyncio.run(_replay(f"http://127.0.0.1:{port}/v1/completions", rows, scale))
                r["cpu"] = (_tree_cpu(proc.pid) - c0) / max(1, r["ok"] + r["errors"])
                results[label].append(r)
            finally:
                if proc is not None:
                    _stop(proc)
                _stop(emu)
    m = statistics.median
    for label, rs in results.items():
        if not rs:
            print(f"{label:30s} skipped (not installed or did not start)")
            continue
        print(f"{label:30s} {m(r['ttft_mean'] for r in rs):10.3f} {m(r['ttft_p99'] for r in rs):10.3f} "
              f"{m(r['e2e_mean'] for r in rs):10.3f} {m(r['ok'] for r in rs):5.0f} {max(r['errors'] for r in rs):4.0f} "
              f"{m(r['cpu'] for r in rs) * 1e3:11.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--section", choices=["throughput", "latency", "replay", "all"], default="all")
    ap.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    ap.add_argument("--speed", type=float, default=4.0, help="emulator speed (replay)")
    ap.add_argument("--scale", type=float, default=4.0, help="trace time compression (replay)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each replay run")
    ap.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.role:
        import uvloop

        role, *rest = a.role
        if role == "fast":
            uvloop.run(_role_fast([int(p) for p in rest[0].split(",")]))
        elif role == "emulators":
            uvloop.run(_role_emulators([int(p) for p in rest[0].split(",")], float(rest[1])))
        elif role == "gateway":
            uvloop.run(_role_gateway(int(rest[0]), rest[1].split(","), rest[2], rest[3], int(rest[4])))
        elif role == "alt":
            _role_alt(int(rest[0]), rest[1].split(","))
        return
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {int(LOAD_CPU)})
    print(f"machine: {os.cpu_count()} CPUs; load average at start {os.getloadavg()[0]:.2f}")
    if a.section in ("throughput", "all"):
        section_throughput(a.quick)
    if a.section in ("latency", "all"):
        section_latency(a.quick)
    if a.section in ("replay", "all"):
        section_replay(a.quick, a.speed, a.scale, a.reps)


if __name__ == "__main__":
    main()
