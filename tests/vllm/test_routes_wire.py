"""Wire fidelity of every routed API against vLLM 0.33's own pydantic models: each request body the route tests
send is one vLLM accepts, and each answer that comes back through the gateway from the emulator (JSON bodies and
every SSE event of streams) is one vLLM's response model accepts, with no field vLLM does not have and, where
vLLM serialises its model whole, no field vLLM always sends missing. The gateway's own error bodies too."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, get_args

import aiohttp
import pytest
import pytest_asyncio
from openai.types.responses import ResponseTextDeltaEvent, ResponseTextDoneEvent
from pydantic import BaseModel, TypeAdapter

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/: routes_env, stubs

from routes_env import MODEL, gateway  # noqa: E402
from vllm.entrypoints.anthropic.protocol import (  # noqa: E402
    AnthropicCountTokensRequest,
    AnthropicCountTokensResponse,
    AnthropicErrorResponse,
    AnthropicMessagesRequest,
    AnthropicMessagesResponse,
    AnthropicStreamEvent,
)
from vllm.entrypoints.generate.generative_scoring.serving import (  # noqa: E402
    GenerativeScoringRequest,
    GenerativeScoringResponse,
)
from vllm.entrypoints.generate.structured_decisions.protocol import (  # noqa: E402
    StructuredDecisionRequest,
    StructuredDecisionResponse,
)
from vllm.entrypoints.openai.chat_completion.protocol import (  # noqa: E402
    BatchChatCompletionRequest,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamResponse,
)
from vllm.entrypoints.openai.completion.protocol import (  # noqa: E402
    CompletionRequest,
    CompletionResponse,
    CompletionStreamResponse,
)
from vllm.entrypoints.openai.decisions.protocol import DecisionRequest, DecisionResponse  # noqa: E402
from vllm.entrypoints.openai.responses.protocol import (  # noqa: E402
    ResponsesRequest,
    ResponsesResponse,
    StreamingResponsesResponse,
)
from vllm.entrypoints.pooling.classify.protocol import (  # noqa: E402
    ClassificationCompletionRequest,
    ClassificationResponse,
)
from vllm.entrypoints.pooling.embed.protocol import (  # noqa: E402
    CohereEmbedRequest,
    CohereEmbedResponse,
    EmbeddingCompletionRequest,
    EmbeddingResponse,
)
from vllm.entrypoints.pooling.pooling.protocol import PoolingCompletionRequest, PoolingResponse  # noqa: E402
from vllm.entrypoints.pooling.scoring.protocol import (  # noqa: E402
    RerankRequest,
    RerankResponse,
    ScoreQueriesDocumentsRequest,
    ScoreResponse,
    ScoreTextRequest,
)
from vllm.entrypoints.serve.engine.protocol import ErrorResponse, ModelList  # noqa: E402
from vllm.entrypoints.serve.tokenize.protocol import (  # noqa: E402
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    TokenizeResponse,
)

from llmsched.gateway.server import assemble  # noqa: E402

# -- checking a body against a vLLM model --------------------------------------------------------------------


def _unknown(raw: Any, m: Any, path: str) -> list[str]:
    """Keys of `raw` the validated model `m` has no field for (vLLM would never send them / ignores them)."""
    if isinstance(m, BaseModel) and isinstance(raw, Mapping):
        fields = type(m).model_fields
        names = {n: n for n in fields} | {f.alias: n for n, f in fields.items() if f.alias}
        out = []
        for k, v in raw.items():
            if k not in names:
                out.append(f"{path}.{k}")
            else:
                out += _unknown(v, getattr(m, names[k]), f"{path}.{k}")
        return out
    if isinstance(m, list | tuple) and isinstance(raw, list):
        return [x for k, (r, v) in enumerate(zip(raw, m, strict=False)) for x in _unknown(r, v, f"{path}[{k}]")]
    if isinstance(m, Mapping) and isinstance(raw, Mapping):
        return [x for k, v in raw.items() if k in m for x in _unknown(v, m[k], f"{path}.{k}")]
    return []


def _key_diff(raw: Any, full: Any, path: str) -> list[str]:
    """Keys vLLM's serialisation `full` has that `raw` lacks ("-key") and keys `raw` has that it leaves out
    ("+key", e.g. an empty tool_calls list or, where vLLM drops None, a null)."""
    if isinstance(full, Mapping) and isinstance(raw, Mapping):
        return ([f"+{path}.{k}" for k in raw if k not in full]
                + [x for k, v in full.items()
                   for x in ([f"-{path}.{k}"] if k not in raw else _key_diff(raw[k], v, f"{path}.{k}"))])
    if isinstance(full, list) and isinstance(raw, list):
        return [x for k, (r, f) in enumerate(zip(raw, full, strict=False)) for x in _key_diff(r, f, f"{path}[{k}]")]
    return []


def check(model: Any, raw: Any, dump: str | None = "full") -> BaseModel:
    """Validate `raw` with vLLM's `model` (a class or a union); no unknown keys; with `dump` ("full", "no_none":
    how vLLM serialises it), the same keys as vLLM's serialisation of it (none missing, none it leaves out)."""
    m = model.model_validate(raw) if isinstance(model, type) else TypeAdapter(model).validate_python(raw)
    name = model_name(model)
    assert not _unknown(raw, m, name), (_unknown(raw, m, name), raw)
    if dump is not None:
        full = m.model_dump(mode="json", by_alias=True, exclude_none=dump == "no_none")
        assert not _key_diff(raw, full, name), (_key_diff(raw, full, name), raw)
    return m


def model_name(model: Any) -> str:
    return getattr(model, "__name__", str(model))


# vLLM's union of stream events, and the text events it sends as the openai package's types
_RESPONSE_EVENTS = {get_args(c.model_fields["type"].annotation)[0]: c
                    for c in (*get_args(StreamingResponsesResponse), ResponseTextDeltaEvent, ResponseTextDoneEvent)}


def sse(data: bytes) -> list[tuple[str | None, Any]]:
    """(event name, JSON data) of each SSE event; the [DONE] sentinel as (None, "[DONE]")."""
    out = []
    for block in data.decode().split("\n\n"):
        if not block.strip():
            continue
        name, payload = None, []
        for ln in block.splitlines():
            if ln.startswith("event: "):
                name = ln[7:]
            elif ln.startswith("data: "):
                payload.append(ln[6:])
        text = "\n".join(payload)
        out.append((name, text if text == "[DONE]" else json.loads(text)))
    return out


# -- the gateway in front of emulators ------------------------------------------------------------------------

Env = tuple[aiohttp.ClientSession, str]


@pytest_asyncio.fixture
async def env() -> AsyncIterator[Env]:
    async with gateway(2) as (_, url, _, _), aiohttp.ClientSession() as s:
        yield s, url


@pytest_asyncio.fixture
async def emulator() -> AsyncIterator[Env]:
    """An emulator's own URL (the gateway re-assembles non-streamed completions and chat from streams; its
    own answers are checked here)."""
    async with gateway(1) as (_, _, _, urls), aiohttp.ClientSession() as s:
        yield s, urls[0]


async def post(s: aiohttp.ClientSession, url: str, body: Any, request_model: Any = None,
               method: str = "POST") -> tuple[int, bytes]:
    if request_model is not None:
        check(request_model, body, dump=None)
    async with s.request(method, url, json=body) as r:
        return r.status, await r.read()


async def call(s: aiohttp.ClientSession, url: str, body: Any, request_model: Any, response_model: Any,
               dump: str | None = "full") -> dict[str, Any]:
    st, data = await post(s, url, body, request_model)
    assert st == 200, (url, data)
    obj = json.loads(data)
    check(response_model, obj, dump)
    return obj


MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]


async def completion_and_chat(s: aiohttp.ClientSession, url: str) -> None:
    """A non-streamed completion and chat answer, checked."""
    await call(s, url + "/v1/completions", {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 4},
               CompletionRequest, CompletionResponse)
    await call(s, url + "/v1/chat/completions", {"model": MODEL, "messages": MSGS, "max_completion_tokens": 3},
               ChatCompletionRequest, ChatCompletionResponse)


async def test_completions_and_chat(env: Env) -> None:
    s, url = env
    await completion_and_chat(s, url)
    body = {"model": MODEL, "messages": [MSGS[1:], [{"role": "user", "content": "again"}]], "max_tokens": 2}
    await call(s, url + "/v1/chat/completions/batch", body, BatchChatCompletionRequest, ChatCompletionResponse)
    for path, body, req, chunk in (
            ("/v1/completions", {"model": MODEL, "prompt": "Count:", "max_tokens": 5, "stream": True,
                                 "stream_options": {"include_usage": True}}, CompletionRequest,
             CompletionStreamResponse),
            ("/v1/chat/completions", {"model": MODEL, "messages": MSGS, "max_completion_tokens": 5, "stream": True,
                                      "stream_options": {"include_usage": True}}, ChatCompletionRequest,
             ChatCompletionStreamResponse)):
        st, data = await post(s, url + path, body, req)
        events = sse(data)
        assert st == 200 and events[-1] == (None, "[DONE]") and len(events) >= 7
        for _, ev in events[:-1]:
            check(chunk, ev, dump=None)  # vLLM leaves unset fields out of chunks (exclude_unset)


async def test_emulator_answers_unassembled(emulator: Env) -> None:
    s, url = emulator
    await completion_and_chat(s, url)
    # SageMaker's /invocations answers as the route the body is served as
    await call(s, url + "/invocations", {"messages": MSGS, "max_completion_tokens": 2}, ChatCompletionRequest,
               ChatCompletionResponse)
    await call(s, url + "/invocations", {"input": "embed me"}, EmbeddingCompletionRequest, EmbeddingResponse)
    await call(s, url + "/invocations", {"query": "q", "documents": ["a", "b"]}, RerankRequest, RerankResponse)


def test_gateway_assembles_chat_with_vllms_reasoning_field() -> None:
    """vLLM 0.33 streams reasoning as `delta.reasoning`; the assembled answer carries it as `message.reasoning`."""
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return b"data: " + json.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                                       "model": MODEL, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                                    "finish_reason": finish}]}).encode() + b"\n\n"
    usage = {"prompt_tokens": 3, "total_tokens": 5, "completion_tokens": 2, "prompt_tokens_details": None,
             "completion_tokens_details": None}
    data = (chunk({"role": "assistant", "content": ""}) + chunk({"reasoning": "think"}) + chunk({"content": "ok"})
            + chunk({"content": "!"}, "stop")
            + b"data: " + json.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                                      "model": MODEL, "choices": [], "usage": usage}).encode() + b"\n\n"
            + b"data: [DONE]\n\n")
    for _, ev in sse(data)[:-1]:
        check(ChatCompletionStreamResponse, ev, dump=None)
    st, body, tokens = assemble(data, chat=True)
    r = check(ChatCompletionResponse, json.loads(body))
    assert (st, tokens) == (200, 2)
    msg = r.choices[0].message  # type: ignore[attr-defined]
    assert (msg.content, msg.reasoning, r.choices[0].finish_reason) == ("ok!", "think", "stop")  # type: ignore[attr-defined]


async def test_pooling_scoring_reranking(env: Env) -> None:
    s, url = env
    await call(s, url + "/v1/embeddings", {"model": MODEL, "input": ["hello world", "a longer sentence"]},
               EmbeddingCompletionRequest, EmbeddingResponse)
    await call(s, url + "/v1/embeddings", {"model": MODEL, "input": [1, 2, 3], "dimensions": 8,
                                           "encoding_format": "base64"}, EmbeddingCompletionRequest,
               EmbeddingResponse)
    await call(s, url + "/v2/embed", {"model": MODEL, "texts": ["one", "two"], "output_dimension": 16,
                                      "embedding_types": ["float", "base64", "binary", "ubinary"]},
               CohereEmbedRequest, CohereEmbedResponse, dump="no_none")
    await call(s, url + "/classify", {"model": MODEL, "input": ["good", "bad"]}, ClassificationCompletionRequest,
               ClassificationResponse)
    await call(s, url + "/pooling", {"model": MODEL, "input": "pool me"}, PoolingCompletionRequest, PoolingResponse)
    for path in ("/score", "/v1/score"):
        await call(s, url + path, {"model": MODEL, "queries": "what is x", "documents": ["a", "bb"]},
                   ScoreQueriesDocumentsRequest, ScoreResponse)
        await call(s, url + path, {"model": MODEL, "text_1": ["what is x", "y"], "text_2": ["a", "bb"]},
                   ScoreTextRequest, ScoreResponse)
    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        await call(s, url + path, {"model": MODEL, "query": "which doc", "documents": ["doc one", "two", "3"],
                                   "top_n": 2}, RerankRequest, RerankResponse)
    questions = [{"type": "predicate", "instructions": "Is it about the weather?"},
                 {"type": "choice", "name": "mood", "instructions": "The mood?",
                  "choices": [{"value": "happy"}, {"value": "sad", "description": "down"}, {"value": True}]},
                 {"type": "score", "instructions": "How formal?", "levels": [{"label": "low"}, {"label": "high"}]}]
    for inp in ("It rains today.", [{"role": "user", "content": [{"type": "input_text", "text": "It rains."}]}]):
        d = await call(s, url + "/v1/decisions", {"model": MODEL, "input": inp, "questions": questions},
                       DecisionRequest, DecisionResponse)
        assert [a["type"] for a in d["answers"]] == ["predicate", "choice", "score"] and d["answers"][1]["name"] == "mood"
    sys1 = {"model": MODEL, "instructions": "You read tickets.", "state": {"ticket": "It broke", "prio": 2},
            "questions": {"area": {"type": "choice", "instructions": "Which area?",
                                   "criteria": {"billing": None, "hardware": "devices"}},
                          "urgent": {"type": "noul", "instructions": "Urgent?", "criteria": {"true": "now"}},
                          "tone": {"type": "score", "instructions": "How angry?", "criteria": ["calm", "angry"]}}}
    d1 = await call(s, url + "/v1/systemone", sys1, StructuredDecisionRequest, StructuredDecisionResponse)
    assert [d1["answers"][q]["type"] for q in ("area", "urgent", "tone")] == ["choice", "noul", "score"]
    await call(s, url + "/generative_scoring", {"model": MODEL, "query": [5, 6, 7], "items": [[8, 9], [10]],
                                                "label_token_ids": [1, 2]},
               GenerativeScoringRequest, GenerativeScoringResponse)


async def test_tokenize_detokenize_models_version(env: Env) -> None:
    s, url = env
    tok = await call(s, url + "/tokenize", {"model": MODEL, "prompt": "hello world, again"},
                     TokenizeCompletionRequest, TokenizeResponse)
    await call(s, url + "/tokenize", {"model": MODEL, "messages": MSGS}, TokenizeChatRequest, TokenizeResponse)
    await call(s, url + "/detokenize", {"model": MODEL, "tokens": tok["tokens"]}, DetokenizeRequest,
               DetokenizeResponse)
    async with s.get(url + "/v1/models") as r:
        check(ModelList, await r.json())
    async with s.get(url + "/version") as r:
        assert r.status == 200 and set(await r.json()) == {"version"}  # vLLM: {"version": VLLM_VERSION}


async def test_responses_plain_and_streamed(env: Env) -> None:
    s, url = env
    r = await call(s, url + "/v1/responses", {"model": MODEL, "input": "Tell me a story",
                                              "instructions": "Be brief.", "max_output_tokens": 5},
                   ResponsesRequest, ResponsesResponse)
    async with s.get(url + f"/v1/responses/{r['id']}") as got:
        check(ResponsesResponse, await got.json())
    body = {"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_text", "text": "Stream"}]}],
            "previous_response_id": r["id"], "max_output_tokens": 4, "stream": True}
    st, data = await post(s, url + "/v1/responses", body, ResponsesRequest)
    events = sse(data)
    assert st == 200 and len(events) >= 9
    for k, (name, ev) in enumerate(events):
        assert name == ev["type"] and ev["sequence_number"] == k
        check(_RESPONSE_EVENTS[ev["type"]], ev)  # vLLM sends each event whole


async def test_anthropic_messages(env: Env) -> None:
    s, url = env
    body = {"model": MODEL, "max_tokens": 4, "system": [{"type": "text", "text": "Be terse."}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}]}
    await call(s, url + "/v1/messages", body, AnthropicMessagesRequest, AnthropicMessagesResponse, dump="no_none")
    await call(s, url + "/v1/messages/count_tokens", {k: body[k] for k in ("model", "system", "messages")},
               AnthropicCountTokensRequest, AnthropicCountTokensResponse, dump="no_none")
    st, data = await post(s, url + "/v1/messages", {**body, "stream": True}, AnthropicMessagesRequest)
    events = sse(data)
    assert st == 200 and len(events) == 9
    for name, ev in events:
        assert name == ev["type"]
        check(AnthropicStreamEvent, ev, dump=None)


async def test_error_bodies(env: Env) -> None:
    """vLLM's ErrorResponse, from the gateway itself (404, 405, 400 it checks) and from the emulator behind it."""
    s, url = env
    cases: list[tuple[str, str, Any, int]] = [
        ("GET", "/v1/nothing", None, 404), ("GET", "/v1/embeddings", None, 405),
        ("POST", "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": -1}, 400),
        ("POST", "/v1/embeddings", {"model": MODEL}, 400),
        ("POST", "/v1/responses", {"model": MODEL, "input": 5}, 400),
        ("POST", "/v1/chat/completions", {"model": "no-such-model", "messages": MSGS}, 404),
        ("POST", "/detokenize", {"model": MODEL, "tokens": "x"}, 400),
        ("GET", "/v1/responses/resp_unknown", None, 404)]
    for method, path, body, status in cases:
        st, data = await post(s, url + path, body, method=method)
        assert st == status, (path, data)
        err = check(ErrorResponse, json.loads(data))
        assert err.error.code == status, (path, data)  # type: ignore[attr-defined]
    # Anthropic's routes: a body vLLM's request model refuses gets its ErrorResponse (FastAPI's validation
    # handler), an error of the serving Anthropic's shape (vLLM translates it).
    st, data = await post(s, url + "/v1/messages", {"model": MODEL, "messages": MSGS[1:]})
    assert st == 400
    check(ErrorResponse, json.loads(data))
    too_long = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "w" * 40_000}]}
    for stream in (False, True):
        st, data = await post(s, url + "/v1/messages", {**too_long, "stream": stream}, AnthropicMessagesRequest)
        assert st == 400, data
        err = check(AnthropicErrorResponse, json.loads(data))
        assert err.error.type == "invalid_request_error"  # type: ignore[attr-defined]


@pytest.mark.parametrize("body", [{"model": MODEL, "prompt": "x", "max_tokens": 1}])
def test_the_checker_catches_unknown_and_missing_fields(body: dict[str, Any]) -> None:
    """The checks above can fail: an unknown field, a missing one, a wrong type."""
    with pytest.raises(AssertionError):
        check(CompletionRequest, {**body, "no_such_field": 1}, dump=None)
    good = {"id": "x", "object": "list", "created": 1, "model": "m", "usage": {"prompt_tokens": 1, "total_tokens": 1},
            "data": [{"index": 0, "object": "score", "score": 0.5}]}
    with pytest.raises(AssertionError):
        check(ScoreResponse, good)  # usage lacks completion_tokens and the details vLLM sends
    with pytest.raises(Exception, match="validation error"):
        check(ScoreResponse, {**good, "data": [{"index": "zero", "score": 0.5}]}, dump=None)
