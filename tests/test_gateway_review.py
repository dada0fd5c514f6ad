"""Adversarial review of the gateway (and the emulator's input handling): bugs a production user would hit.

Each test is loopback-only and bounded. Each reproduces a defect the review found (saturated backends marked
dead by their own scrapes, first-token signalled at the response headers, prefill crashes not retried, long
non-streamed answers cut by the first-byte timeout, NaN metrics killing the scrape loop, ...); all are fixed and
these tests guard against their return.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from llmsched.gateway.config import GatewayConfig
from llmsched.gateway.server import Gateway
from llmsched.gateway.testing import FakeBackend

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_BODY = {"prompt": "hello", "max_tokens": 4}


class _Custom:
    """A one-off backend: completions (and chat) and /metrics answered by the given handlers (health always 200);
    `models`: the ids its /v1/models lists (None: no such route). It keeps each request's arrival time and body."""

    def __init__(self, complete: Handler | None = None, metrics: str | None = None,
                 models: list[str] | None = None) -> None:
        self.app = web.Application()
        self.hits = 0
        self.times: list[float] = []
        self.raw_bodies: list[bytes] = []

        async def _complete(request: web.Request) -> web.StreamResponse:
            self.hits += 1
            self.times.append(time.monotonic())
            self.raw_bodies.append(await request.read())  # aiohttp keeps it: the handler may read it again
            assert complete is not None
            return await complete(request)

        async def _metrics(request: web.Request) -> web.Response:
            return web.Response(text=metrics or "", content_type="text/plain")

        async def _health(request: web.Request) -> web.Response:
            return web.Response(status=200)

        async def _models(request: web.Request) -> web.Response:
            return web.json_response({"object": "list", "data": [{"id": m, "object": "model"} for m in models or ()]})

        self.app.router.add_post("/v1/completions", _complete)
        self.app.router.add_post("/v1/chat/completions", _complete)
        self.app.router.add_get("/metrics", _metrics)
        self.app.router.add_get("/health", _health)
        if models is not None:
            self.app.router.add_get("/v1/models", _models)
        self.runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True, shutdown_timeout=0.1)
        self.url = ""

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(b) for b in self.raw_bodies]

    def first_hit_before(self, other: _Custom) -> bool:
        """Did the last request reach this backend before `other` (no later hit on `other` before it)?"""
        return bool(self.times) and bool(other.times) and other.times[-1] > self.times[-1]

    async def start(self) -> str:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        h, p = site._server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
        self.url = f"http://{h}:{p}"
        return self.url

    async def stop(self) -> None:
        await self.runner.cleanup()


async def _gateway(urls: list[str], **kw: object) -> Gateway:
    gw = Gateway(GatewayConfig(backends=urls, **{"scrape_interval": 0.05, **kw}))  # type: ignore[arg-type]
    await gw.start()
    return gw


@pytest.fixture(autouse=True)
def _collect_garbage() -> object:
    """Run finalizers of cancelled clients here, not inside a later import (CPython 3.11.7 then fails pytest's
    assertion rewriting with "AST constructor recursion depth mismatch")."""
    yield
    gc.collect()


@pytest.fixture
async def fake() -> AsyncIterator[FakeBackend]:
    b = FakeBackend(token_delay=0.01, max_tokens_cap=50)
    await b.start()
    yield b
    await b.stop()


async def _until(cond: Callable[[], bool], timeout: float = 2.0) -> bool:
    """Poll `cond` (robust on a loaded 2-core machine, where fixed sleeps are not)."""
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        await asyncio.sleep(0.01)
    return cond()


def first_token_spy(gw: Gateway) -> list[float]:
    """Times (monotonic) at which the gateway reports a first token to the dispatcher (router)."""
    seen: list[float] = []
    orig = gw.dispatcher.first_token

    def spy(req, i, now):  # type: ignore[no-untyped-def]
        seen.append(time.monotonic())
        orig(req, i, now)

    gw.dispatcher.first_token = spy  # type: ignore[method-assign]
    return seen


def _assert_idle(gw: Gateway) -> None:
    assert gw.dispatcher.queued == 0
    assert all(b.in_flight == 0 for b in gw.dispatcher.backends), [b.in_flight for b in gw.dispatcher.backends]


# -- client disconnects ---------------------------------------------------------------------------------------


async def test_client_disconnect_while_queued_frees_everything(fake: FakeBackend) -> None:
    """A client that leaves while queued leaves no queue entry and no in-flight slot behind."""
    gw = await _gateway([fake.url], max_in_flight_per_backend=1)
    try:
        async with aiohttp.ClientSession() as http:
            hold = asyncio.create_task(http.post(gw.url + "/v1/completions", json={**_BODY, "max_tokens": 40}))
            await asyncio.sleep(0.05)
            queued = asyncio.create_task(http.post(gw.url + "/v1/completions", json=_BODY))
            assert await _until(lambda: gw.dispatcher.queued == 1)
            queued.cancel()
            assert await _until(lambda: gw.dispatcher.queued == 0)
            r = await asyncio.wait_for(hold, 3)
            assert r.status == 200
            r.release()
            # The slot is free: a new request goes straight through.
            async with http.post(gw.url + "/v1/completions", json=_BODY) as r2:
                assert r2.status == 200
        await asyncio.sleep(0.05)
        _assert_idle(gw)
    finally:
        await gw.stop(drain=False)


async def test_client_disconnect_mid_stream_is_not_a_backend_fault(fake: FakeBackend) -> None:
    """Clients that hang up on a stream must not trip the backend's circuit breaker.

    aiohttp >= 3.10 raises ClientConnectionResetError (a subclass of aiohttp.ClientError) when writing to a
    client that left; `_attempt` catches aiohttp.ClientError first as "upstream stream broke" and reports
    backend_fault=True, so a few impatient clients open the breaker of a healthy backend.
    """
    gw = await _gateway([fake.url], breaker={"failure_threshold": 100, "cooldown": 5.0})
    try:
        for _ in range(4):
            async with aiohttp.ClientSession() as http:
                r = await http.post(gw.url + "/v1/completions", json={**_BODY, "max_tokens": 40, "stream": True})
                await r.content.readany()
                r.close()  # hang up mid-stream
            await asyncio.sleep(0.1)
        b = gw.dispatcher.backends[0]
        _assert_idle(gw)
        assert b.failed == 0, f"{b.failed} client disconnects were counted as backend faults"
    finally:
        await gw.stop(drain=False)


# -- failures before the first token ---------------------------------------------------------------------------


async def test_router_first_token_is_the_first_token_not_the_response_headers() -> None:
    """vLLM (and the emulator, and FakeBackend) send the 200 + SSE headers at once and the first token after
    prefill. `_attempt` calls `dispatcher.first_token` (router.on_first_token, breaker success) when the
    headers arrive, so prefill-aware routers think prefill finished instantly."""
    async def slow_stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(0.3)  # "prefill"
        await resp.write(b'data: {"choices":[{"index":0,"text":"x","finish_reason":"length"}]}\n\n')
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    be = _Custom(slow_stream)
    await be.start()
    gw = await _gateway([be.url])
    seen = first_token_spy(gw)
    try:
        async with aiohttp.ClientSession() as http:
            t0 = time.monotonic()
            async with http.post(gw.url + "/v1/completions", json={**_BODY, "stream": True}) as r:
                assert r.status == 200
                await r.read()
        assert len(seen) == 1
        assert seen[0] - t0 >= 0.25, f"on_first_token after {seen[0] - t0:.3f} s, first token after 0.3 s"
    finally:
        await gw.stop(drain=False)
        await be.stop()


async def test_backend_dying_after_headers_before_first_token_is_retried() -> None:
    """A replica that crashes during prefill (headers sent, no token yet) should be retried elsewhere: the
    client has received nothing. The gateway prepares its own 200 on the upstream headers, so the client
    gets 200 + an error event instead of the healthy backend's answer."""
    async def die(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(0.02)
        assert request.transport is not None
        request.transport.abort()
        return resp

    bad = _Custom(die)
    good = FakeBackend()
    await bad.start()
    await good.start()
    gw = await _gateway([bad.url, good.url], router={"name": "round-robin"})
    try:
        async with aiohttp.ClientSession() as http:
            texts = []
            for _ in range(2):  # round robin: one of the two goes to `bad` first
                async with http.post(gw.url + "/v1/completions", json={**_BODY, "stream": True}) as r:
                    texts.append((r.status, await r.text()))
        for status, text in texts:
            assert status == 200
            assert '"error"' not in text, text
            assert text.count(" tok") == 4
    finally:
        await gw.stop(drain=False)
        await bad.stop()
        await good.stop()


async def test_stream_break_mid_event_keeps_sse_framing() -> None:
    """The upstream dies half way through an SSE event: the error event appended by the gateway must start
    on a fresh event boundary, or the client's SSE parser glues it to the broken JSON line."""
    async def half(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices":[{"index":0,"text":"a","finish_reason":null}]}\n\n')
        await resp.write(b'data: {"choices":[{"index":0,"te')
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()
        return resp

    be = _Custom(half)
    await be.start()
    gw = await _gateway([be.url])
    try:
        async with aiohttp.ClientSession() as http, \
                http.post(gw.url + "/v1/completions", json={**_BODY, "stream": True}) as r:
            text = await r.text()
        events = [e for e in text.split("\n\n") if e.strip()]
        assert events[-1] == "data: [DONE]"
        err = events[-2]
        assert err.startswith("data: {"), err
        assert "error" in json.loads(err[6:]), err
    finally:
        await gw.stop(drain=False)
        await be.stop()


async def test_upstream_500_with_all_retries_failing_is_a_clean_502() -> None:
    async def boom(request: web.Request) -> web.StreamResponse:
        return web.json_response({"object": "error", "message": "x"}, status=500)

    bs = [_Custom(boom), _Custom(boom)]
    for b in bs:
        await b.start()
    gw = await _gateway([b.url for b in bs], retries=5)
    try:
        async with aiohttp.ClientSession() as http, http.post(gw.url + "/v1/completions", json=_BODY) as r:
            body = await r.json()
        assert r.status == 502 and body["error"]["type"] == "upstream_error"
        assert sum(b.hits for b in bs) == 2  # each backend tried once, no more
        _assert_idle(gw)
    finally:
        await gw.stop(drain=False)
        for b in bs:
            await b.stop()


async def test_retry_metric_counts_only_real_redispatches() -> None:
    async def boom(request: web.Request) -> web.StreamResponse:
        return web.json_response({"object": "error", "message": "x"}, status=500)

    be = _Custom(boom)
    await be.start()
    gw = await _gateway([be.url], retries=2)
    try:
        async with aiohttp.ClientSession() as http, http.post(gw.url + "/v1/completions", json=_BODY) as r:
            assert r.status == 502
        assert be.hits == 1
        assert gw.dispatcher.retried == 0  # nothing was re-dispatched
    finally:
        await gw.stop(drain=False)
        await be.stop()


# -- health checks ---------------------------------------------------------------------------------------------


async def test_nan_gauge_in_backend_metrics_does_not_kill_the_scrape_loop() -> None:
    """`vllm:num_requests_running NaN` is valid Prometheus text; `snapshot_from_metrics` does int(nan) ->
    ValueError, which `_scrape_one` does not catch, so gather() raises and the scrape loop task dies for
    good: no more health checks or periodic pumps for ANY backend."""
    async def ok(request: web.Request) -> web.StreamResponse:
        return web.json_response({"choices": [{"index": 0, "text": "x"}]})

    be = _Custom(ok, metrics="# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running NaN\n")
    await be.start()
    gw = await _gateway([be.url])
    try:
        await asyncio.sleep(0.2)
        assert gw._scraper is not None and not gw._scraper.done(), "scrape loop died"
    finally:
        await gw.stop(drain=False)
        await be.stop()


async def test_unparseable_metrics_do_not_open_the_breaker_of_a_serving_backend() -> None:
    """A backend whose /metrics is not vLLM-parseable (other exporter, proxy page) but whose /health is 200
    and which answers completions must stay usable; scrape parse errors feed the breaker as failures, so it
    opens after `failure_threshold` scrapes and keeps re-opening."""
    async def ok(request: web.Request) -> web.StreamResponse:
        return web.json_response({"choices": [{"index": 0, "text": "x"}]})

    be = _Custom(ok, metrics="this is { not prometheus\n")
    await be.start()
    gw = await _gateway([be.url])
    try:
        await asyncio.sleep(0.3)
        assert gw.dispatcher.backends[0].breaker.state.value == "closed"
    finally:
        await gw.stop(drain=False)
        await be.stop()


# -- admin membership ------------------------------------------------------------------------------------------


async def test_admin_remove_removes_only_the_named_backend() -> None:
    """DELETE /admin/backends?url=A calls `dispatcher.reap()`, which removes EVERY idle draining backend,
    so a backend an operator only drained (to re-add later) disappears too."""
    bs = [FakeBackend() for _ in range(3)]
    for b in bs:
        await b.start()
    gw = await _gateway([b.url for b in bs])
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(gw.url + "/admin/backends/drain", params={"url": bs[1].url}) as r:
                assert r.status == 200
            async with http.delete(gw.url + "/admin/backends", params={"url": bs[0].url}) as r:
                assert r.status == 200
        states = {b.url: b.state for b in gw.dispatcher.backends}
        assert states[bs[0].url] == "removed"
        assert states[bs[1].url] == "draining"
    finally:
        await gw.stop(drain=False)
        for b in bs:
            await b.stop()


async def test_queued_requests_fail_fast_when_every_backend_is_drained(fake: FakeBackend) -> None:
    """Requests queued behind the in-flight cap when the last backend is drained can never be dispatched;
    they sit in the queue until `timeouts.queue` (60 s by default) instead of getting a prompt 503."""
    gw = await _gateway([fake.url], max_in_flight_per_backend=1, timeouts={"queue": 2.0})
    try:
        async with aiohttp.ClientSession() as http:
            hold = asyncio.create_task(http.post(gw.url + "/v1/completions", json={**_BODY, "max_tokens": 30}))
            await asyncio.sleep(0.03)
            queued = asyncio.create_task(http.post(gw.url + "/v1/completions", json=_BODY))
            assert await _until(lambda: gw.dispatcher.queued == 1)
            async with http.post(gw.url + "/admin/backends/drain", params={"url": fake.url}) as r:
                assert r.status == 200
            (await asyncio.wait_for(hold, 3)).release()
            t = time.monotonic()
            r2 = await asyncio.wait_for(queued, 4)
            waited = time.monotonic() - t
            r2.release()
            assert r2.status == 503
            assert waited < 1.0, f"queued request waited {waited:.1f} s for a backend that can never come"
    finally:
        await gw.stop(drain=False)


# -- request size / errors / metrics ---------------------------------------------------------------------------


async def test_chunked_upload_over_limit_gets_413_json(fake: FakeBackend) -> None:
    gw = await _gateway([fake.url], max_request_bytes=2048)

    async def gen() -> AsyncIterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"x" * 1024
        yield b'"}'

    try:
        async with aiohttp.ClientSession() as http, http.post(gw.url + "/v1/completions", data=gen(),
                                                             headers={"Content-Type": "application/json"}) as r:
            assert r.status == 413
            body = await r.json()
        assert "2048" in body["error"]["message"]
        assert fake.received == 0
    finally:
        await gw.stop(drain=False)


async def test_metrics_record_413_for_chunked_oversize_not_500(fake: FakeBackend) -> None:
    """The 413 for a chunked body comes from aiohttp's read() via the middleware, after `_proxy`'s finally
    has already counted the request as status 500: client errors show up as gateway 5xx on dashboards."""
    gw = await _gateway([fake.url], max_request_bytes=1024)

    async def gen() -> AsyncIterator[bytes]:
        yield b'{"prompt": "' + b"x" * 4096 + b'"}'

    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(gw.url + "/v1/completions", data=gen()) as r:
                assert r.status == 413
            async with http.get(gw.url + "/metrics") as m:
                text = await m.text()
        assert 'status="413"' in text
        assert 'status="500"' not in text
    finally:
        await gw.stop(drain=False)


@pytest.mark.parametrize("body", [
    b'{"prompt": [[1, 2], [3, 4]], "max_tokens": 2}',  # batched token ids: valid for OpenAI and vLLM
])
async def test_valid_openai_prompt_shapes_are_accepted(fake: FakeBackend, body: bytes) -> None:
    gw = await _gateway([fake.url])
    try:
        async with aiohttp.ClientSession() as http, http.post(gw.url + "/v1/completions", data=body,
                                                             headers={"Content-Type": "application/json"}) as r:
            assert r.status == 200, await r.text()
    finally:
        await gw.stop(drain=False)


@pytest.mark.parametrize("body", [
    b'{"prompt": "x", "max_tokens": 1e400}',
    b'{"prompt": "x", "max_tokens": 99999999999999999999999999999}',
    b'{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]}',
    b'{"messages": [{"role": "user", "content": "hi", "tool_calls": null}], "max_tokens": 2}',
    b'{"prompt": "\\ud800", "max_tokens": 2}',
    b'{"prompt": "x", "stream": true, "stream_options": {"include_usage": true}, "max_tokens": 2}',
])
async def test_odd_bodies_never_get_5xx_from_the_gateway(fake: FakeBackend, body: bytes) -> None:
    gw = await _gateway([fake.url])
    try:
        async with aiohttp.ClientSession() as http:
            path = "/v1/chat/completions" if b"messages" in body else "/v1/completions"
            async with http.post(gw.url + path, data=body, headers={"Content-Type": "application/json"}) as r:
                text = await r.text()
                assert r.status < 500, (r.status, text)
                if r.status >= 400:
                    assert json.loads(text)["error"]["message"]
    finally:
        await gw.stop(drain=False)


# -- shutdown --------------------------------------------------------------------------------------------------


async def test_stop_without_drain_returns_promptly_with_a_hung_stream(fake: FakeBackend) -> None:
    fake.mode = "hang"
    gw = await _gateway([fake.url])
    async with aiohttp.ClientSession() as http:
        t = asyncio.create_task(http.post(gw.url + "/v1/completions", json={**_BODY, "stream": True}))
        await asyncio.sleep(0.1)
        stopping = asyncio.create_task(gw.stop(drain=False))
        done, _ = await asyncio.wait({stopping}, timeout=1.5)
        fake.kill()  # unblock the upstream request so a slow stop() still ends within the test
        await asyncio.wait_for(stopping, 5)
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            (await asyncio.wait_for(t, 3)).release()
    assert done, "stop(drain=False) still waiting for an in-flight request after 1.5 s"


async def test_stop_with_drain_refuses_new_and_finishes_queued(fake: FakeBackend) -> None:
    gw = await _gateway([fake.url], max_in_flight_per_backend=1, drain_timeout=5.0)
    async with aiohttp.ClientSession() as http:
        a = asyncio.create_task(http.post(gw.url + "/v1/completions", json={**_BODY, "max_tokens": 5}))
        await asyncio.sleep(0.03)
        b = asyncio.create_task(http.post(gw.url + "/v1/completions", json={**_BODY, "max_tokens": 5}))
        await asyncio.sleep(0.03)
        stopping = asyncio.create_task(gw.stop(drain=True))
        await asyncio.sleep(0.01)
        async with http.post(gw.url + "/v1/completions", json=_BODY) as r:
            assert r.status == 503
        ra, rb = await asyncio.wait_for(asyncio.gather(a, b), 5)
        assert (ra.status, rb.status) == (200, 200)
        assert (await ra.json())["choices"][0]["text"] == " tok" * 5
        assert (await rb.json())["choices"][0]["text"] == " tok" * 5
        await asyncio.wait_for(stopping, 5)


async def test_saturated_backend_is_not_marked_dead_by_its_own_health_scrapes() -> None:
    """Scrapes share the upstream connection pool, whose per-host limit equals max_in_flight_per_backend.
    With the cap reached by long streams, /metrics and /health wait for a pooled connection, time out, and
    count as breaker failures: a busy, healthy backend is opened (taken out of rotation) for being busy."""
    fb = FakeBackend(token_delay=0.05, max_tokens_cap=40)
    await fb.start()
    gw = await _gateway([fb.url], max_in_flight_per_backend=2, timeouts={"scrape": 0.1})
    try:
        async with aiohttp.ClientSession() as http:
            streams = [asyncio.create_task(http.post(gw.url + "/v1/completions",
                                                     json={**_BODY, "max_tokens": 40, "stream": True}))
                       for _ in range(2)]
            b = gw.dispatcher.backends[0]
            await _until(lambda: b.in_flight == 2)
            await _until(lambda: b.breaker.state.value != "closed", 1.2)  # 2 s streams: 1.2 s of saturation
            state = b.breaker.state.value
            for t in streams:
                (await asyncio.wait_for(t, 3)).close()
        assert state == "closed", f"breaker {state} on a backend that was only busy"
    finally:
        await gw.stop(drain=False)
        await fb.stop()


async def test_compressing_backend_reaches_the_client_readable() -> None:
    """The upstream client sends aiohttp's default Accept-Encoding (gzip, deflate) but runs with
    auto_decompress=False and forwards only Content-Type: a backend (or proxy in front of it) that compresses
    makes the gateway pass gzip bytes labelled as plain JSON."""
    async def gz(request: web.Request) -> web.StreamResponse:
        resp = web.json_response({"choices": [{"index": 0, "text": "x" * 2000}]})
        resp.enable_compression()
        return resp

    be = _Custom(gz)
    await be.start()
    gw = await _gateway([be.url])
    try:
        async with aiohttp.ClientSession() as http, http.post(gw.url + "/v1/completions", json=_BODY) as r:
            assert r.status == 200
            raw = await r.read()
        assert json.loads(raw)["choices"][0]["text"] == "x" * 2000
    finally:
        await gw.stop(drain=False)
        await be.stop()


# -- emulator --------------------------------------------------------------------------------------------------


_EMU_DEEP = """
import asyncio, aiohttp
from llmsched.emulator import EmulatorServer
async def main():
    srv = EmulatorServer(speed=50.0, served_model_name="m")
    url = await srv.start()
    async with aiohttp.ClientSession() as http, http.post(url + "/v1/completions",
                                                         data=b"[" * 100_000 + b"]" * 100_000) as r:
        print(r.status)
    await srv.stop()
asyncio.run(main())
"""


def test_emulator_deeply_nested_json_is_a_400() -> None:
    # In a subprocess: a RecursionError inside json's C decoder upsets CPython 3.11's AST recursion counter
    # for the rest of the process (pytest then fails with "AST constructor recursion depth mismatch").
    out = subprocess.run([sys.executable, "-c", _EMU_DEEP], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip().splitlines()[-1] == "400", out.stdout + out.stderr[-2000:]


async def test_long_non_streamed_generation_is_not_cut_by_the_first_byte_timeout() -> None:
    fb = FakeBackend(token_delay=0.1, max_tokens_cap=6)  # 0.6 s to the whole (only) response
    await fb.start()
    gw = await _gateway([fb.url], timeouts={"first_byte": 0.3}, retries=0)
    try:
        async with aiohttp.ClientSession() as http, http.post(gw.url + "/v1/completions",
                                                             json={**_BODY, "max_tokens": 6}) as r:
            text = await r.text()
        assert r.status == 200, text
        assert gw.dispatcher.backends[0].failed == 0
    finally:
        await gw.stop(drain=False)
        await fb.stop()
