"""The gateway end to end on loopback: the official openai client through it, in front of 2 backends.

Backends are `gateway.testing.FakeBackend`s (fast, controllable); the emulator-backed run is in
test_gateway_emulated.py.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest

from llmsched.gateway.config import GatewayConfig
from llmsched.gateway.http1 import sockets_of
from llmsched.gateway.server import Gateway
from llmsched.gateway.testing import FakeBackend


@pytest.fixture
async def backends() -> AsyncIterator[list[FakeBackend]]:
    bs = [FakeBackend(token_delay=0.002) for _ in range(2)]
    for b in bs:
        await b.start()
    yield bs
    for b in bs:
        await b.stop()


async def _gateway(backends: list[FakeBackend], **kw: object) -> Gateway:
    cfg = GatewayConfig(backends=[b.url for b in backends], scrape_interval=0.05, **kw)  # type: ignore[arg-type]
    gw = Gateway(cfg)
    await gw.start()
    return gw


async def test_openai_client_chat_and_completions_stream_and_not(backends: list[FakeBackend]) -> None:
    gw = await _gateway(backends)
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    try:
        r = await client.completions.create(model="fake-model", prompt="Once upon a time", max_tokens=4)
        assert r.choices[0].text == " tok" * 4
        c = await client.chat.completions.create(model="fake-model", max_tokens=3,
                                                 messages=[{"role": "user", "content": "hello"}])
        assert c.choices[0].message.content == " tok" * 3
        s = await client.completions.create(model="fake-model", prompt="x", max_tokens=5, stream=True)
        assert "".join([ch.choices[0].text async for ch in s]) == " tok" * 5
        s2 = await client.chat.completions.create(model="fake-model", max_tokens=6, stream=True,
                                                  messages=[{"role": "user", "content": "hi"}])
        assert "".join([ch.choices[0].delta.content or "" async for ch in s2]) == " tok" * 6
        assert [m.id for m in (await client.models.list()).data] == ["fake-model"]
        assert [b.received for b in backends] == [2, 2]  # round robin spread them
        async with aiohttp.ClientSession() as http:
            async with http.get(gw.url + "/metrics") as m:
                text = await m.text()
            async with http.get(gw.url + "/health") as h:
                assert h.status == 200 and (await h.json())["backends_up"] == 2
        assert 'llmsched_gateway_requests_total{endpoint="/v1/chat/completions",status="200"} 2.0' in text
        assert 'llmsched_gateway_routing_decisions_total{model="fake-model",policy="round-robin",reason="rotate"} 4.0' in text
        assert 'llmsched_gateway_ttft_seconds_count{endpoint="/v1/completions"} 1.0' in text
        assert "llmsched_gateway_queue_time_seconds_count 4.0" in text
    finally:
        await client.close()
        await gw.stop()


async def test_api_key_and_size_limit(backends: list[FakeBackend]) -> None:
    gw = await _gateway(backends, api_keys=["sesame"], max_request_bytes=4096)
    try:
        bad = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await bad.completions.create(model="fake-model", prompt="x")
        good = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="sesame", max_retries=0)
        assert (await good.completions.create(model="fake-model", prompt="x", max_tokens=1)).choices
        with pytest.raises(openai.APIStatusError) as e:
            await good.completions.create(model="fake-model", prompt="x" * 10_000)
        assert e.value.status_code == 413 and "larger than 4096" in str(e.value)
        await bad.close()
        await good.close()
    finally:
        await gw.stop()


async def test_client_disconnect_cancels_upstream(backends: list[FakeBackend]) -> None:
    for b in backends:
        b.token_delay = 0.2
    gw = await _gateway(backends)
    try:
        async with aiohttp.ClientSession() as http:
            resp = await http.post(gw.url + "/v1/completions",
                                   json={"prompt": "x", "max_tokens": 8, "stream": True})
            await resp.content.readany()  # first chunk arrived: the stream is live
            resp.close()  # the client goes away mid-stream
        for _ in range(100):
            if sum(b.cancelled for b in backends) == 1 and gw.dispatcher.in_flight == 0:
                break
            await asyncio.sleep(0.02)
        assert sum(b.cancelled for b in backends) == 1 and gw.dispatcher.in_flight == 0
        # ...and a non-streaming request whose client leaves while the backend works.
        async with aiohttp.ClientSession() as http:
            task = asyncio.create_task(http.post(gw.url + "/v1/completions", json={"prompt": "x", "max_tokens": 8}))
            await asyncio.sleep(0.2)
            task.cancel()
        for _ in range(100):
            if sum(b.cancelled for b in backends) == 2 and gw.dispatcher.in_flight == 0:
                break
            await asyncio.sleep(0.02)
        assert sum(b.cancelled for b in backends) == 2 and gw.dispatcher.in_flight == 0
    finally:
        await gw.stop(drain=False)


async def test_add_drain_remove_backends_at_run_time_without_dropping(backends: list[FakeBackend]) -> None:
    for b in backends:
        b.token_delay = 0.02
    gw = await _gateway(backends[:1])
    try:
        async with aiohttp.ClientSession() as http:
            async def one() -> str:
                async with http.post(gw.url + "/v1/completions", json={"prompt": "x", "max_tokens": 8,
                                                                       "stream": True}) as r:
                    assert r.status == 200
                    return await r.text()

            first = [asyncio.create_task(one()) for _ in range(6)]
            await asyncio.sleep(0.05)
            async with http.post(gw.url + "/admin/backends", json={"url": backends[1].url}) as r:
                assert r.status == 200 and len((await r.json())["backends"]) == 2
            # Remove the first backend while its 6 streams are in flight: the call waits for them.
            async with http.delete(gw.url + "/admin/backends", params={"url": backends[0].url}) as r:
                assert r.status == 200, await r.text()
            texts = await asyncio.gather(*first)
            assert all(t.rstrip().endswith("data: [DONE]") for t in texts)
            before = backends[1].received
            await asyncio.gather(*(one() for _ in range(4)))
            assert backends[1].received == before + 4 and backends[0].received == 6
            async with http.get(gw.url + "/admin/backends") as r:
                assert [b["url"] for b in (await r.json())["backends"]] == [backends[1].url]
            async with http.delete(gw.url + "/admin/backends", params={"url": "http://nowhere:1"}) as r:
                assert r.status == 404 and "error" in await r.json()
    finally:
        await gw.stop()


async def test_graceful_shutdown_drains_in_flight(backends: list[FakeBackend]) -> None:
    for b in backends:
        b.token_delay = 0.03
    gw = await _gateway(backends)
    url = gw.url
    async with aiohttp.ClientSession() as http:
        async def one() -> int:
            async with http.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 8}) as r:
                await r.read()
                return r.status

        tasks = [asyncio.create_task(one()) for _ in range(8)]
        await asyncio.sleep(0.05)
        stopping = asyncio.create_task(gw.stop())
        await asyncio.sleep(0.01)
        async with http.post(url + "/v1/completions", json={"prompt": "x"}) as r:
            assert r.status == 503 and "shutting down" in (await r.json())["error"]["message"]
        assert await asyncio.gather(*tasks) == [200] * 8
        await stopping


async def test_tcp_nodelay_on_both_sides(backends: list[FakeBackend]) -> None:
    gw = await _gateway(backends)
    try:
        async with aiohttp.ClientSession() as http, \
                http.post(gw.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}) as r:
            await r.read()
            socks = sockets_of(gw._http.connections)  # the client's connection to the gateway
            assert socks and all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in socks)
        ups = sockets_of(c for pool in gw._pools.values() for c in pool.all)  # the gateway's to the backends
        assert ups and all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in ups)
    finally:
        await gw.stop()
