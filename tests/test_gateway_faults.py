"""Faults and overload: a failing backend never silently drops an accepted request; overload gives 429s."""

from __future__ import annotations

import asyncio
import gc
import json
import tracemalloc
from collections.abc import AsyncIterator

import aiohttp
import pytest

from llmsched.gateway.config import GatewayConfig
from llmsched.gateway.server import Gateway
from llmsched.gateway.testing import FakeBackend


@pytest.fixture
async def backends() -> AsyncIterator[list[FakeBackend]]:
    bs = [FakeBackend(token_delay=0.005) for _ in range(2)]
    for b in bs:
        await b.start()
    yield bs
    for b in bs:
        await b.stop()


async def _gateway(urls: list[str], **kw: object) -> Gateway:
    gw = Gateway(GatewayConfig(backends=urls, **{"scrape_interval": 0.05, **kw}))  # type: ignore[arg-type]
    await gw.start()
    return gw


def _outcome(status: int, text: str, stream: bool) -> str:
    """'ok' for a complete answer, 'error' for a clear error; anything else fails the test."""
    if status == 200 and not stream:
        assert json.loads(text)["choices"][0]["text"] == " tok" * 8
        return "ok"
    if status == 200 and stream:
        assert text.rstrip().endswith("data: [DONE]"), text[-200:]
        events = [json.loads(x[6:]) for x in text.split("\n\n") if x.startswith("data: {")]
        if "error" in events[-1]:
            assert "upstream" in events[-1]["error"]["message"]
            return "error"
        assert sum(e["choices"][0]["text"] == " tok" for e in events) == 8
        return "ok"
    body = json.loads(text)
    assert status >= 400 and body["error"]["message"], (status, text)
    return "error"


async def test_backend_killed_mid_load_loses_no_accepted_request(backends: list[FakeBackend]) -> None:
    gw = await _gateway([b.url for b in backends], retries=2)
    try:
        async with aiohttp.ClientSession() as http:
            async def one(k: int) -> str:
                await asyncio.sleep(0.002 * k)
                stream = k % 2 == 0
                async with http.post(gw.url + "/v1/completions",
                                     json={"prompt": f"p{k}", "max_tokens": 8, "stream": stream}) as r:
                    return _outcome(r.status, await r.text(), stream) + ("-stream" if stream else "")

            tasks = [asyncio.create_task(one(k)) for k in range(120)]
            await asyncio.sleep(0.08)
            backends[0].kill()  # in the middle of the run
            outcomes = await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)  # none hangs
        assert len(outcomes) == 120
        # Only streams already under way on the dead backend may fail (with an explicit SSE error event);
        # every non-streaming request was retried on the live backend, later ones never went to the dead one.
        assert outcomes.count("ok") == 60, outcomes
        assert outcomes.count("ok-stream") >= 30, outcomes
        assert backends[1].received >= 60
        assert gw.dispatcher.in_flight == 0 and gw.dispatcher.queued == 0
        assert gw.dispatcher.backends[0].breaker.state.value != "closed"
    finally:
        await gw.stop(drain=False)


async def test_failure_before_first_byte_is_retried_elsewhere(backends: list[FakeBackend]) -> None:
    backends[0].mode = "error"
    gw = await _gateway([b.url for b in backends], scrape_interval=10.0)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(6):
                async with http.post(gw.url + "/v1/completions", json={"prompt": "x", "max_tokens": 8}) as r:
                    assert r.status == 200
        b0 = gw.dispatcher.backends[0]
        assert b0.breaker.state.value == "open" and backends[0].received == 3  # threshold 3, then skipped
        assert gw.dispatcher.retried == 3
    finally:
        await gw.stop()


@pytest.mark.parametrize("stream", [True, False])
async def test_hung_backend_times_out_and_is_retried(backends: list[FakeBackend], stream: bool) -> None:
    """A stream must show its first chunk within `first_byte`; a non-streamed answer (it comes whole when
    generation ends, so `first_byte` cannot tell a hung backend from a long generation) within `total`."""
    backends[0].mode = "hang"
    timeouts = {"first_byte": 0.3} if stream else {"total": 0.5}
    gw = await _gateway([b.url for b in backends], timeouts=timeouts)
    try:
        async with aiohttp.ClientSession() as http:
            rs = []
            for _ in range(2):
                async with http.post(gw.url + "/v1/chat/completions",
                                     json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 2,
                                           "stream": stream}) as r:
                    await r.read()
                    rs.append(r.status)
        assert rs == [200, 200]
        assert backends[0].cancelled >= 1  # the gateway hung up on the hung request
    finally:
        await gw.stop(drain=False)


async def test_all_backends_down_gives_clear_errors_fast() -> None:
    dead = FakeBackend()
    url = await dead.start()
    dead.kill()
    await dead.stop()
    gw = await _gateway([url, url.replace("127.0.0.1", "localhost")], timeouts={"queue": 0.5})
    try:
        async with aiohttp.ClientSession() as http:
            statuses = []
            for _ in range(5):
                async with http.post(gw.url + "/v1/completions", json={"prompt": "x"}) as r:
                    body = await r.json()
                    statuses.append(r.status)
                    assert body["error"]["message"]
        assert set(statuses) <= {502, 503}
    finally:
        await gw.stop(drain=False)


async def test_overload_gives_429_with_retry_after_and_bounded_memory(backends: list[FakeBackend]) -> None:
    for b in backends:
        b.token_delay = 0.01
    gw = await _gateway([b.url for b in backends], max_in_flight_per_backend=2, queue_bound=6, retry_after=2)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            async def one() -> int:
                async with http.post(gw.url + "/v1/completions", json={"prompt": "x", "max_tokens": 4}) as r:
                    await r.read()
                    if r.status == 429:
                        assert r.headers["Retry-After"] == "2"
                        assert (await r.json())["error"]["type"] == "rate_limit_exceeded"
                    return r.status

            async def wave() -> list[int]:
                return await asyncio.gather(*(one() for _ in range(100)))

            first = await wave()
            assert first.count(200) >= 10 and first.count(429) >= 50 and set(first) == {200, 429}
            tracemalloc.start()
            sizes = []
            for _ in range(8):
                statuses = await wave()
                assert gw.dispatcher.queued <= 6 and statuses.count(429) >= 50
                gc.collect()
                sizes.append(tracemalloc.get_traced_memory()[0])
            tracemalloc.stop()
            # Warm-up (pools, caches) aside, 400 more refused requests leave nothing behind.
            assert sizes[-1] - sizes[3] < 200_000, sizes
    finally:
        await gw.stop()
