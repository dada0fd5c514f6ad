"""Chaos under load (issue 13): while clients keep sending streamed and non-streamed requests, a backend is
killed and restarted on its port, another's /metrics turns to garbage, slow-loris clients hold half-sent
requests and some clients drop their streams mid-way. Every request that was answered got either a complete
answer or a clear error (OpenAI JSON, or an SSE error event then [DONE]); nothing hangs; afterwards every
count (dispatcher, router, backends, connections) is back to zero."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from urllib.parse import urlsplit

import aiohttp

from llmsched.gateway.config import GatewayConfig
from llmsched.gateway.server import Gateway
from llmsched.gateway.testing import FakeBackend
from tests.test_gateway_review import _until

_DURATION = 2.5  # seconds of chaos
_GARBAGE = "\x00\xff not prometheus {{{ vllm:num_requests_running{ 12 }\n# TYPE x nonsense\n"


async def _client(url: str, rng: random.Random, tally: dict[str, int], stop: float) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        while time.monotonic() < stop:
            stream = rng.random() < 0.6
            drop = stream and rng.random() < 0.15
            body = {"prompt": "chaos " * rng.randint(1, 50), "max_tokens": rng.randint(1, 6), "stream": stream}
            async with http.post(url + "/v1/completions", json=body) as r:
                if drop:  # leave mid-stream, after the first chunk
                    await r.content.readany()
                    r.close()
                    tally["dropped"] += 1
                    continue
                raw = await r.read()
            if r.status == 200 and not stream:
                assert json.loads(raw)["choices"][0]["text"].startswith(" tok"), raw
                tally["ok"] += 1
            elif r.status == 200:
                text = raw.decode()
                assert text.endswith("data: [DONE]\n\n"), text[-300:]
                tally["stream_error" if '"error"' in text else "ok"] += 1
            else:
                assert r.status in (429, 502, 503), (r.status, raw[:300])
                assert json.loads(raw)["error"]["message"], raw
                tally["error"] += 1


async def _slow_loris(host: str, port: int, tally: dict[str, int]) -> None:
    """Send a request head one byte every 0.1 s; the gateway must cut the connection off."""
    reader, writer = await asyncio.open_connection(host, port)
    head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prompt\":"
    try:
        for k in range(len(head)):
            writer.write(head[k:k + 1])
            await writer.drain()
            await asyncio.sleep(0.1)
            if reader.at_eof():
                break
        answer = await asyncio.wait_for(reader.read(), 3)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:200]
        tally["loris_cut"] += 1
    except (ConnectionResetError, BrokenPipeError):
        tally["loris_cut"] += 1
    finally:
        writer.close()


async def test_chaos_under_load_every_request_completes_or_fails_clearly() -> None:
    backends = [FakeBackend(token_delay=0.005, max_tokens_cap=6) for _ in range(3)]
    for b in backends:
        await b.start()
    gw = Gateway(GatewayConfig(
        backends=[b.url for b in backends], router={"name": "lmetric"}, scrape_interval=0.05, retries=2,
        breaker={"failure_threshold": 2, "cooldown": 0.2}, timeouts={"client_read": 0.5, "first_byte": 2.0},
        max_in_flight_per_backend=8))
    await gw.start()
    tally = {"ok": 0, "error": 0, "stream_error": 0, "dropped": 0, "loris_cut": 0}
    rng = random.Random(7)
    stop = time.monotonic() + _DURATION
    u = urlsplit(gw.url)
    try:
        clients = [asyncio.create_task(_client(gw.url, random.Random(rng.random()), tally, stop))
                   for _ in range(12)]
        loris = [asyncio.create_task(_slow_loris(u.hostname or "", u.port or 0, tally)) for _ in range(3)]
        backends[1].metrics_text = _GARBAGE  # scrapes return garbage for the rest of the run
        for _ in range(2):  # kill and restart backend 0 on its port, twice
            await asyncio.sleep(0.5)
            port = urlsplit(backends[0].url).port
            backends[0].kill()
            await backends[0].stop()
            await asyncio.sleep(0.3)
            backends[0] = FakeBackend(token_delay=0.005, max_tokens_cap=6)
            await backends[0].start("127.0.0.1", port or 0)
        done, pending = await asyncio.wait([*clients, *loris], timeout=_DURATION + 15)
        assert not pending, f"{len(pending)} clients hung"
        for t in done:
            t.result()  # re-raise any client's assertion
        print("chaos tally", tally, "retries", gw.dispatcher.retried)
        assert tally["ok"] > 50 and tally["loris_cut"] == 3, tally
        d = gw.dispatcher
        router = d.router
        assert await _until(lambda: d.in_flight == 0 and d.queued == 0 and all(b.in_flight == 0 for b in d.backends)
                            and not any(getattr(router, "in_flight_", [])), 5.0), (
            d.in_flight, d.queued, [b.in_flight for b in d.backends], getattr(router, "in_flight_", None))
        assert await _until(lambda: all(b.running == 0 for b in backends), 5.0), [b.running for b in backends]
        assert await _until(lambda: not gw._http.connections, 5.0), len(gw._http.connections)
        async with aiohttp.ClientSession() as http, http.post(gw.url + "/v1/completions",
                                                             json={"prompt": "after", "max_tokens": 2}) as r:
            assert r.status == 200  # still serving
    finally:
        await gw.stop(drain=False)
        for b in backends:
            with contextlib.suppress(Exception):
                await b.stop()


async def test_pipelined_requests_are_answered_in_order_on_one_connection() -> None:
    be = FakeBackend(max_tokens_cap=8)
    await be.start()
    gw = Gateway(GatewayConfig(backends=[be.url]))
    await gw.start()
    u = urlsplit(gw.url)
    try:
        reader, writer = await asyncio.open_connection(u.hostname, u.port)
        reqs = b""
        for n in (1, 2, 3):
            body = json.dumps({"prompt": "p", "max_tokens": n}).encode()
            reqs += (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        writer.write(reqs + b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 10)  # until the server closes after the last one
        writer.close()
        parts = raw.split(b"HTTP/1.1 ")[1:]
        assert [p[:3] for p in parts] == [b"200", b"200", b"200", b"404"], raw[:500]
        texts = [json.loads(p.split(b"\r\n\r\n", 1)[1])["choices"][0]["text"] for p in parts[:3]]
        assert texts == [" tok", " tok tok", " tok tok tok"]
    finally:
        await gw.stop(drain=False)
        await be.stop()
