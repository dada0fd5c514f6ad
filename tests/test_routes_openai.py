"""The official `openai` client through the gateway (two emulated engines, round robin) on every route it has:
models, completions, chat, embeddings, Responses (plain, streamed, retrieved, chained by previous_response_id)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import openai
import pytest
import pytest_asyncio
from routes_env import MODEL, gateway

from llmsched.emulator.routes import EMBED_DIM
from llmsched.gateway.server import Gateway


@pytest_asyncio.fixture
async def env() -> AsyncIterator[tuple[openai.AsyncOpenAI, Gateway]]:
    async with gateway(2) as (gw, url, _, _):
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=20)
        try:
            yield client, gw
        finally:
            await client.close()


async def test_models(env: tuple[openai.AsyncOpenAI, Gateway]) -> None:
    oa, _ = env
    assert [m.id async for m in oa.models.list()] == [MODEL]


async def test_completions_and_chat_plain_and_streamed(env: tuple[openai.AsyncOpenAI, Gateway]) -> None:
    oa, _ = env
    r = await oa.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4)
    assert r.usage is not None and r.usage.completion_tokens == 4 and len(r.choices[0].text.split()) == 4
    stream = await oa.completions.create(model=MODEL, prompt="Count:", max_tokens=5, stream=True)
    assert len([ch async for ch in stream if ch.choices and ch.choices[0].text]) == 5
    c = await oa.chat.completions.create(model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "hi"}])
    assert c.usage is not None and c.usage.completion_tokens == 3 and c.choices[0].message.content
    chunks = [ch async for ch in await oa.chat.completions.create(
        model=MODEL, max_tokens=6, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "hello there"}])]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6


async def test_embeddings(env: tuple[openai.AsyncOpenAI, Gateway]) -> None:
    oa, gw = env
    # The client asks for base64 by default and decodes it: float32 unit vectors of the emulator's width.
    r = await oa.embeddings.create(model=MODEL, input=["hello world", "a somewhat longer sentence to embed"])
    assert [d.index for d in r.data] == [0, 1] and r.model == MODEL
    v0 = np.array(r.data[0].embedding)
    assert v0.shape == (EMBED_DIM,) and abs(np.linalg.norm(v0) - 1) < 1e-5
    # prompt tokens: the stand-in tokenizer's 4 bytes a token
    assert r.usage.prompt_tokens == -(-len("hello world") // 4) + -(-len("a somewhat longer sentence to embed") // 4)
    # Same input, same vector (whichever backend answers); `dimensions` and float encoding too.
    again = await oa.embeddings.create(model=MODEL, input="hello world", encoding_format="float")
    assert np.allclose(again.data[0].embedding, v0, atol=1e-6)
    short = await oa.embeddings.create(model=MODEL, input=[1, 2, 3, 4], dimensions=8)
    assert len(short.data[0].embedding) == 8 and short.usage.prompt_tokens == 4
    # Routed like completions: both backends served some, the router's accounting is back to zero.
    assert all(b.served > 0 for b in gw.dispatcher.backends) and gw.dispatcher.in_flight == 0


async def test_responses_plain_streamed_retrieved_and_chained(env: tuple[openai.AsyncOpenAI, Gateway]) -> None:
    oa, gw = env
    r = await oa.responses.create(model=MODEL, input="Tell me a story", instructions="Be brief.",
                                  max_output_tokens=5)
    assert r.id.startswith("resp_") and r.object == "response" and r.model == MODEL
    assert len(r.output_text.split()) == 5 and r.usage is not None and r.usage.output_tokens == 5
    assert r.status == "incomplete" and r.incomplete_details is not None  # generation runs to max_output_tokens
    got = await oa.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text
    # Chained turns: each goes to the backend that stored the previous response (round robin would alternate,
    # and the other backend does not know the id), and its prompt holds the whole conversation.
    prev, prompt = r, r.usage.input_tokens
    for k in range(4):
        nxt = await oa.responses.create(model=MODEL, input=f"and then {k}?", previous_response_id=prev.id,
                                        max_output_tokens=3)
        assert nxt.usage is not None and nxt.usage.input_tokens > prompt + prev.usage.output_tokens
        prev, prompt = nxt, nxt.usage.input_tokens
    # Streamed: vLLM's event sequence, deltas adding up to the final text.
    types, deltas, final = [], [], None
    async with await oa.responses.create(model=MODEL, input=[{"role": "user", "content": "Stream please"}],
                                         max_output_tokens=4, stream=True) as stream:
        async for ev in stream:
            types.append(ev.type)
            if ev.type == "response.output_text.delta":
                deltas.append(ev.delta)
            if ev.type in ("response.completed", "response.incomplete"):
                final = ev.response
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types.count("response.output_text.delta") == 4 and types[-1] == "response.incomplete"
    assert final is not None and final.output_text == "".join(deltas) and final.usage.output_tokens == 4
    assert gw.dispatcher.in_flight == 0


async def test_errors_reach_the_client_typed(env: tuple[openai.AsyncOpenAI, Gateway]) -> None:
    oa, _ = env
    with pytest.raises(openai.BadRequestError) as e:
        await oa.embeddings.create(model=MODEL, input=[])
    assert e.value.body["param"] == "input"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as e2:
        await oa.responses.create(model=MODEL, input="x", max_output_tokens=0)
    assert e2.value.body["param"] == "max_output_tokens"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        await oa.responses.retrieve("resp_nobody_has_this")
