"""Defects found by the second gateway review (2026-11-30), each as the failing test that proved it: a retried
request's prefill charge left on a backend, `logprobs: 0` and `return_token_ids` lost in re-assembly, HEAD
answered with a body, chunked streams sent to HTTP/1.0 clients. Plus controls that passed before (plain retry
accounting, n=2 re-assembly, HTTP/1.1 framing)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from llmsched.gateway.testing import FakeBackend
from tests.test_gateway_review import _collect_garbage, _Custom, _gateway  # noqa: F401  (an autouse fixture)


async def sse(request: web.Request, events: list[Any], abort_after: int | None = None) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for k, e in enumerate(events):
        if abort_after is not None and k == abort_after:
            await asyncio.sleep(0.02)
            request.transport.abort()  # type: ignore[union-attr]
            return resp
        await resp.write(b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def raw_exchange(host: str, port: int, data: bytes, half_close: bool = False, timeout: float = 3.0) -> bytes:
    r, w = await asyncio.open_connection(host, port)
    w.write(data)
    await w.drain()
    if half_close:
        w.write_eof()
    out = b""
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await r.read(65536)
                if not chunk:
                    break
                out += chunk
    except TimeoutError:
        pass
    w.close()
    return out


def host_port(url: str) -> tuple[str, int]:
    h, p = url.removeprefix("http://").split(":")
    return h, int(p)


# -- accounting ------------------------------------------------------------------------------------------
EV = {"id": "c1", "object": "text_completion", "created": 1, "model": "m",
      "choices": [{"index": 0, "text": " a", "finish_reason": None}]}


async def _first_chunk_then_die(request: web.Request) -> web.StreamResponse:
    await request.read()
    return await sse(request, [EV, EV, EV], abort_after=1)  # one token, then the engine dies


async def _http_500(request: web.Request) -> web.StreamResponse:
    await request.read()
    return web.json_response({"object": "error", "message": "engine dead", "code": 500}, status=500)


def _outstanding(gw) -> tuple[list[int], dict]:  # type: ignore[no-untyped-def]
    pend: list[int] = []
    charged: dict = {}
    for _, _, r in gw.dispatcher.routers():
        pend += [int(x) for x in r.pending_prefill_]
        charged.update(r._charged)
    return pend, charged


@pytest.mark.parametrize("router", ["round-robin", "lmetric"])
async def test_prefill_charge_released_when_retry_target_fails_after_first_token_elsewhere(router: str) -> None:
    """A non-streamed request (collected internally) gets its first chunk on A (first_token: A's prefill
    charge released, req.first_token set), then A dies: retried on B (charged again at dispatch), which fails
    before any token. `Router.on_finish` only releases the charge `if req.first_token < 0`, which is already
    set from A: B's outstanding prefill keeps the prompt's tokens for ever (and `_charged` leaks the rid)."""
    a, b = _Custom(_first_chunk_then_die, models=["m"]), _Custom(_http_500, models=["m"])
    await a.start()
    await b.start()
    gw = await _gateway([a.url, b.url], scrape_interval=10.0, retries=1, router={"name": router})
    try:
        for _ in range(6):  # until a request goes to A first (lmetric breaks ties at random)
            na = len(a.bodies)
            async with aiohttp.ClientSession() as s, s.post(gw.url + "/v1/completions",
                                                            json={"prompt": "x" * 400, "max_tokens": 4}) as r:
                await r.read()
            if len(a.bodies) > na and a.first_hit_before(b):
                break
            gw.dispatcher.backends[0].breaker.success(gw.now())  # keep both breakers closed for the next try
            gw.dispatcher.backends[1].breaker.success(gw.now())
        assert a.bodies and b.bodies
        assert r.status == 502
        await asyncio.sleep(0.05)
        assert gw.dispatcher.in_flight == 0 and gw.dispatcher.queued == 0
        pend, charged = _outstanding(gw)
        assert not any(pend) and not charged, (pend, charged)
    finally:
        await gw.stop(drain=False)
        await a.stop()
        await b.stop()


async def test_prefill_charge_released_after_plain_retry() -> None:
    """Control: a failure before the first token on A, success on B: every charge released."""
    a = _Custom(_http_500, models=["m"])

    async def ok(request: web.Request) -> web.StreamResponse:
        await request.read()
        return await sse(request, [EV, {**EV, "choices": [], "usage": {"completion_tokens": 1}}])

    b = _Custom(ok, models=["m"])
    await a.start()
    await b.start()
    gw = await _gateway([a.url, b.url], scrape_interval=10.0, router={"name": "round-robin"})
    try:
        async with aiohttp.ClientSession() as s:
            for stream in (False, True):
                async with s.post(gw.url + "/v1/completions",
                                  json={"prompt": "x" * 400, "max_tokens": 4, "stream": stream}) as r:
                    assert r.status == 200, await r.text()
                    await r.read()
        pend, charged = _outstanding(gw)
        assert not any(pend) and not charged and gw.dispatcher.in_flight == 0
    finally:
        await gw.stop(drain=False)
        await a.stop()
        await b.stop()


# -- re-assembly ----------------------------------------------------------------------------------------
LP = {"tokens": [" a"], "token_logprobs": [-0.5], "top_logprobs": [{}], "text_offset": [0]}


async def _completions_with_logprobs(request: web.Request) -> web.StreamResponse:
    """vLLM's completions: `logprobs: k` (k >= 0) returns the sampled tokens' logprobs, streamed or not."""
    body = json.loads(await request.read())
    lp = LP if body.get("logprobs") is not None else None
    if not body.get("stream"):
        return web.json_response({"id": "c1", "object": "text_completion", "created": 1, "model": "m",
                                  "choices": [{"index": 0, "text": " a", "logprobs": lp, "finish_reason": "length"}],
                                  "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
    ev = {"id": "c1", "object": "text_completion", "created": 1, "model": "m",
          "choices": [{"index": 0, "text": " a", "logprobs": lp, "finish_reason": "length"}]}
    return await sse(request, [ev])


async def test_completions_logprobs_zero_is_not_dropped() -> None:
    """`logprobs: 0` (the sampled token's logprob, no alternatives) is a valid completions request; the
    gateway's `internal_stream_ok` tests `body[k] not in (None, False)` and 0 == False in Python, so the request
    is streamed internally and the re-assembled answer has `logprobs: null`."""
    be = _Custom(_completions_with_logprobs, models=["m"])
    await be.start()
    gw = await _gateway([be.url])
    try:
        async with aiohttp.ClientSession() as s, s.post(gw.url + "/v1/completions",
                                                        json={"model": "m", "prompt": "x", "max_tokens": 1,
                                                              "logprobs": 0}) as r:
            out = await r.json()
        assert r.status == 200
        assert out["choices"][0]["logprobs"] == LP, (be.bodies[-1], out["choices"][0])
    finally:
        await gw.stop(drain=False)
        await be.stop()


async def _chat_token_ids(request: web.Request) -> web.StreamResponse:
    """vLLM >= 0.10.2 with `return_token_ids: true`: the stream's first chunk carries `prompt_token_ids`, each
    choice delta its `token_ids`; the unstreamed answer has `prompt_token_ids` and each choice's `token_ids`."""
    body = json.loads(await request.read())
    assert body.get("return_token_ids") is True
    if not body.get("stream"):
        return web.json_response({"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
                                  "prompt_token_ids": [1, 2, 3],
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "ab"},
                                               "token_ids": [10, 11], "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    evs = [{**base, "prompt_token_ids": [1, 2, 3],
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
           {**base, "choices": [{"index": 0, "delta": {"content": "a"}, "token_ids": [10], "finish_reason": None}]},
           {**base, "choices": [{"index": 0, "delta": {"content": "b"}, "token_ids": [11], "finish_reason": "stop"}]},
           {**base, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}]
    return await sse(request, evs)


async def test_return_token_ids_survive_reassembly() -> None:
    """RL rollouts (verl, slime, ...) send `return_token_ids: true` unstreamed; the re-assembled answer had
    `token_ids` and `prompt_token_ids` null although the upstream stream carried them."""
    be = _Custom(_chat_token_ids, models=["m"])
    await be.start()
    gw = await _gateway([be.url])
    try:
        async with aiohttp.ClientSession() as s, s.post(gw.url + "/v1/chat/completions", json={
                "model": "m", "messages": [{"role": "user", "content": "x"}], "return_token_ids": True}) as r:
            out = await r.json()
        assert r.status == 200
        assert not be.bodies[-1].get("stream")  # passed as is: the stream's shape of these fields varies by version
        assert out["choices"][0]["token_ids"] == [10, 11], out
        assert out["prompt_token_ids"] == [1, 2, 3], out
    finally:
        await gw.stop(drain=False)
        await be.stop()


async def _n2_chat(request: web.Request) -> web.StreamResponse:
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    evs = []
    for k in (0, 1):
        evs.append({**base, "choices": [{"index": k, "delta": {"role": "assistant", "content": ""}}]})
    evs += [{**base, "choices": [{"index": 1, "delta": {"content": "B"}, "finish_reason": None}]},
            {**base, "choices": [{"index": 0, "delta": {"content": "A"}, "finish_reason": None}]},
            {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": None}]},
            {**base, "choices": [{"index": 1, "delta": {}, "finish_reason": "length", "stop_reason": None}]},
            {**base, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}]
    return await sse(request, evs)


async def test_n2_chat_reassembly_keeps_choices_finish_and_usage() -> None:
    be = _Custom(_n2_chat, models=["m"])
    await be.start()
    gw = await _gateway([be.url])
    try:
        async with aiohttp.ClientSession() as s, s.post(gw.url + "/v1/chat/completions", json={
                "model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}) as r:
            out = await r.json()
        assert [c["message"]["content"] for c in out["choices"]] == ["A", "B"]
        assert [c["finish_reason"] for c in out["choices"]] == ["stop", "length"]
        assert out["usage"]["completion_tokens"] == 2
        assert be.bodies[-1]["stream_options"] == {"include_usage": True}
    finally:
        await gw.stop(drain=False)
        await be.stop()


# -- HTTP/1.x front -------------------------------------------------------------------------------------
BODY = json.dumps({"prompt": "hello", "max_tokens": 4}).encode()


def _post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body)


async def test_head_answer_has_no_body_and_keep_alive_framing_survives() -> None:
    """RFC 9110 9.3.2: a response to HEAD carries no content. The gateway writes the body of its 405 (or any
    answer) after a HEAD, so the next answer on the kept-alive connection is read starting with stray JSON."""
    fake = FakeBackend()
    await fake.start()
    gw = await _gateway([fake.url])
    try:
        h, p = host_port(gw.url)
        data = await raw_exchange(h, p, b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n"
                                        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 200"), data[:100]  # HEAD is GET without the body
        head_end = data.index(b"\r\n\r\n") + 4
        rest = data[head_end:]
        assert rest.startswith(b"HTTP/1.1 "), f"bytes after the HEAD answer's head: {rest[:80]!r}"
    finally:
        await gw.stop(drain=False)
        await fake.stop()


async def test_chunked_request_body_and_expect_100_continue() -> None:
    fake = FakeBackend()
    await fake.start()
    gw = await _gateway([fake.url])
    try:
        h, p = host_port(gw.url)
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)
        req = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n" + chunked)
        data = await raw_exchange(h, p, req)
        assert data.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200"), data[:200]
    finally:
        await gw.stop(drain=False)
        await fake.stop()


async def test_pipelined_stream_then_plain_and_large_header() -> None:
    fake = FakeBackend(token_delay=0.005)
    await fake.start()
    gw = await _gateway([fake.url])
    try:
        h, p = host_port(gw.url)
        sbody = json.dumps({"prompt": "hi", "max_tokens": 3, "stream": True}).encode()
        big = b"X-Big: " + b"a" * 60000 + b"\r\n"
        req = _post("/v1/completions", sbody, big) + _post("/v1/completions", BODY, b"Connection: close\r\n")
        data = await raw_exchange(h, p, req)
        assert data.count(b"HTTP/1.1 200") == 2, data[:500]
        assert b"data: [DONE]" in data and b"0\r\n\r\nHTTP/1.1 200" in data
    finally:
        await gw.stop(drain=False)
        await fake.stop()


async def test_http10_client_stream_is_not_chunked() -> None:
    """RFC 9112 6.1: a server MUST NOT send chunked transfer coding to an HTTP/1.0 client; the gateway does
    for a streamed answer (the client sees the chunk sizes inside its SSE data)."""
    fake = FakeBackend()
    await fake.start()
    gw = await _gateway([fake.url])
    try:
        h, p = host_port(gw.url)
        sbody = json.dumps({"prompt": "hi", "max_tokens": 3, "stream": True}).encode()
        req = (b"POST /v1/completions HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(sbody) + sbody)
        t0 = time.monotonic()
        data = await raw_exchange(h, p, req)
        head, body = data.split(b"\r\n\r\n", 1)
        assert b"transfer-encoding: chunked" not in head.lower(), head
        # The events as the backend sent them, unframed, and the end of the stream is the end of the connection.
        assert body.startswith(b"data: ") and body.endswith(b"data: [DONE]\n\n"), body[:200]
        assert time.monotonic() - t0 < 2.0  # closed by the gateway, not by raw_exchange's 3 s timeout
        assert gw.dispatcher.in_flight == 0
    finally:
        await gw.stop(drain=False)
        await fake.stop()
