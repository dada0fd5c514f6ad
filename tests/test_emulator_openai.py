"""The official `openai` client against the emulator over loopback: chat and completions, streamed and not."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import openai
import pytest
import pytest_asyncio

from llmsched.emulator import EmulatorServer
from llmsched.model.base import BatchStats

MODEL = "emu-openai"


class FlatCost:
    needs_class_tokens = False

    def step_time(self, b: BatchStats, now: float) -> float:
        return 0.002

    def decode_run(self, b: BatchStats, k: int, now: float) -> np.ndarray:
        return np.full(k, 0.002)

    def kv_capacity_tokens(self, gpu_memory_utilization: float) -> int:
        return 100_000


@pytest_asyncio.fixture
async def oa() -> AsyncIterator[openai.AsyncOpenAI]:
    srv = EmulatorServer(cost=FlatCost(), speed=20.0, served_model_name=MODEL, max_model_len=8192)
    url = await srv.start("127.0.0.1", 0)
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=10)
    try:
        yield client
    finally:
        await client.close()
        await srv.stop()


async def test_models(oa: openai.AsyncOpenAI) -> None:
    models = [m.id async for m in oa.models.list()]
    assert models == [MODEL]


async def test_chat(oa: openai.AsyncOpenAI) -> None:
    r = await oa.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi"}], max_completion_tokens=6
    )
    assert r.object == "chat.completion"
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].message.role == "assistant" and len((r.choices[0].message.content or "").split()) == 6
    assert r.usage is not None and r.usage.completion_tokens == 6
    assert r.usage.prompt_tokens_details is not None and r.usage.prompt_tokens_details.cached_tokens == 0


async def test_chat_stream_with_usage(oa: openai.AsyncOpenAI) -> None:
    msgs = [{"role": "system", "content": "You are terse. " * 20}, {"role": "user", "content": "Say hi"}]
    texts, usage, finish = [], None, None
    stream = await oa.chat.completions.create(
        model=MODEL, messages=msgs, max_tokens=5, stream=True, stream_options={"include_usage": True}
    )
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
            continue
        delta = chunk.choices[0].delta
        texts.append(delta.content or "")
        finish = chunk.choices[0].finish_reason or finish
    assert len("".join(texts).split()) == 5 and finish == "length"
    assert usage is not None and usage.completion_tokens == 5
    # The same conversation again hits the prefix cache.
    r = await oa.chat.completions.create(model=MODEL, messages=msgs, max_tokens=1)
    assert r.usage is not None and r.usage.prompt_tokens_details is not None
    assert r.usage.prompt_tokens_details.cached_tokens > 0


async def test_completions(oa: openai.AsyncOpenAI) -> None:
    r = await oa.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4)
    assert r.object == "text_completion" and len(r.choices[0].text.split()) == 4
    assert r.usage is not None and r.usage.total_tokens == r.usage.prompt_tokens + 4
    parts = [c.choices[0].text async for c in await oa.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=4, stream=True
    )]  # fmt: skip
    assert "".join(parts) == r.choices[0].text


async def test_errors_map_to_openai_exceptions(oa: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        await oa.completions.create(model="nope", prompt="x", max_tokens=1)
    with pytest.raises(openai.BadRequestError) as e:
        await oa.completions.create(model=MODEL, prompt="x" * 4 * 8192, max_tokens=1)
    assert "maximum context length" in str(e.value)
