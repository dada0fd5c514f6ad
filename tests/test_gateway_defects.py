"""Issue 13's gateway defects (2 and 3), each forced deterministically: the queue-timeout race, KV usage of
data-parallel backends, the non-streamed first token, and TPOT counted in tokens."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

import aiohttp
from aiohttp import web

from llmsched.gateway import server as server_mod
from llmsched.gateway.config import GatewayConfig
from llmsched.gateway.scrape import parse_vllm_metrics, snapshot_from_metrics
from llmsched.gateway.server import Gateway
from llmsched.gateway.testing import FakeBackend
from tests.test_gateway_review import _Custom, _until, first_token_spy


async def _gateway(urls: list[str], **kw: Any) -> Gateway:
    gw = Gateway(GatewayConfig(backends=urls, **{"scrape_interval": 0.05, **kw}))
    await gw.start()
    return gw


def _idle(gw: Gateway) -> bool:
    r = gw.dispatcher.router
    return (gw.dispatcher.queued == 0 and all(b.in_flight == 0 for b in gw.dispatcher.backends)
            and all(x == 0 for x in getattr(r, "in_flight_", [0])))


async def test_queue_timeout_that_loses_the_race_to_dispatch_frees_the_slot(monkeypatch: Any) -> None:
    """Python >= 3.12's wait_for can raise TimeoutError after the future got its result (the request was
    dispatched: the dispatcher's and router's counts include it). Forced here on any Python version: the
    admission wait delivers the result and then raises TimeoutError, as the race does."""
    orig = asyncio.wait_for
    forced = []

    async def racy(aw: Awaitable[Any], timeout: float | None) -> Any:
        result = await orig(aw, timeout)
        if isinstance(aw, asyncio.Future) and not isinstance(aw, asyncio.Task):  # the admission future
            forced.append(result)
            raise TimeoutError
        return result

    monkeypatch.setattr(server_mod.asyncio, "wait_for", racy)
    be = FakeBackend(token_delay=0.05, max_tokens_cap=4)
    await be.start()
    gw = await _gateway([be.url], router={"name": "lmetric"}, max_in_flight_per_backend=1)
    try:
        async with aiohttp.ClientSession() as http:
            async def one() -> int:
                async with http.post(gw.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 4}) as r:
                    await r.read()
                    return r.status
            # the first takes the only slot; the second waits in the admission queue, then is dispatched
            statuses = await asyncio.gather(one(), one())
        assert forced, "the race was not forced (no request waited in the admission queue)"
        assert statuses[0] == 200 and statuses[1] in (200, 503), statuses
        assert await _until(lambda: _idle(gw)), (
            [b.in_flight for b in gw.dispatcher.backends], gw.dispatcher.router.in_flight_)  # type: ignore
    finally:
        await gw.stop(drain=False)
        await be.stop()


def test_kv_usage_of_a_data_parallel_backend_is_not_summed() -> None:
    """vLLM with data parallelism exports one series per engine (label `engine`): 0.5 and 0.7 used read
    as 1.0 (saturated) when summed; the backend's usage is the block-weighted mean, 0.6."""
    text = (
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5\n'
        'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.7\n'
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0",model_name="m"} 3\n'
        'vllm:num_requests_running{engine="1",model_name="m"} 4\n'
        "# TYPE vllm:cache_config_info gauge\n"
        'vllm:cache_config_info{engine="0",num_gpu_blocks="1000",block_size="16"} 1\n'
        'vllm:cache_config_info{engine="1",num_gpu_blocks="1000",block_size="16"} 1\n'
    )
    snap = snapshot_from_metrics(parse_vllm_metrics(text), 0, 0.0)
    assert abs(snap.kv_usage - 0.6) < 1e-9
    assert snap.num_running == 7  # counts add up
    assert snap.num_total_blocks == 2000
    assert snap.num_free_blocks == 800


async def test_non_streamed_request_fires_first_token_at_the_first_token() -> None:
    """A non-streamed answer arrives whole at the end of generation; the router must still learn of the
    first token when it happens (its prefill charge ends then), not at completion."""
    be = FakeBackend(token_delay=0.1, max_tokens_cap=8)  # first token at ~0.1 s, answer at ~0.8 s
    await be.start()
    gw = await _gateway([be.url])
    seen = first_token_spy(gw)
    try:
        async with aiohttp.ClientSession() as http:
            t0 = time.monotonic()
            async with http.post(gw.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 8}) as r:
                body = await r.json()
                t_end = time.monotonic()
        assert r.status == 200 and body["choices"][0]["text"] == " tok" * 8, body
        assert body["object"] == "text_completion" and body["usage"]["completion_tokens"] == 8, body
        assert len(seen) == 1
        assert seen[0] - t0 < 0.5 * (t_end - t0), (seen[0] - t0, t_end - t0)
    finally:
        await gw.stop(drain=False)
        await be.stop()


async def test_tpot_counts_tokens_not_sse_events() -> None:
    """A stream whose first event holds one token and whose second holds 20 (a multi-token chunk), then a
    finish-only event and a usage event: TPOT is 0.4 s over 20 tokens (~0.02 s), not over 3 events."""
    async def multi(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices":[{"index":0,"text":"a","finish_reason":null}]}\n\n')
        await asyncio.sleep(0.4)
        await resp.write(b'data: {"choices":[{"index":0,"text":"' + b"b" * 20 + b'","finish_reason":null}]}\n\n'
                         b'data: {"choices":[{"index":0,"text":"","finish_reason":"length"}]}\n\n'
                         b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":21,'
                         b'"total_tokens":22}}\n\ndata: [DONE]\n\n')
        await resp.write_eof()
        return resp

    be = _Custom(multi)
    await be.start()
    gw = await _gateway([be.url])
    try:
        async with aiohttp.ClientSession() as http, http.post(
            gw.url + "/v1/completions",
            json={"prompt": "hi", "max_tokens": 21, "stream": True, "stream_options": {"include_usage": True}},
        ) as r:
            await r.read()
        tpot = gw.metrics.tpot.labels("/v1/completions")
        count = [s.value for m in tpot.collect() for s in m.samples if s.name.endswith("_count")][0]
        total = [s.value for m in tpot.collect() for s in m.samples if s.name.endswith("_sum")][0]
        assert count == 1
        assert 0.019 < total < 0.035, total  # 0.4 s / 20 gaps; counting events gives 0.4 / 3 = 0.13
    finally:
        await gw.stop(drain=False)
        await be.stop()


async def test_fast_metrics_read_matches_the_full_prometheus_parser() -> None:
    """The scrape reads only the wanted sample lines (the full parser took ~2.4 ms per scrape of the
    emulator's ~150-line page); on a real page both must give the same figures."""
    from llmsched.emulator import EmulatorServer
    from llmsched.gateway import scrape

    emu = EmulatorServer(speed=10.0)
    url = await emu.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as r:
            text = await r.text()
    finally:
        await emu.stop()
    text += 'vllm:num_requests_running{engine="1",model_name="m"} 3\n'  # a second engine's series
    fast = scrape.parse_vllm_metrics(text)
    wanted = scrape._wanted_samples(text)
    assert wanted, "the fast path found nothing: it would not be the one tested"
    full = [x for x in scrape._all_samples(text) if x[0] in scrape._WANTED or x[0] == scrape.CACHE_CONFIG]
    assert sorted(wanted, key=repr) == sorted(full, key=repr)
    assert fast["vllm:num_requests_running"] == 3.0 and fast["num_gpu_blocks"] > 0
