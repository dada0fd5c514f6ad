"""Raw HTTP through the gateway (emulated engines behind it) on the routes the openai client does not have:
tokenisation and rendering (any healthy backend, nothing charged), scoring, reranking, classification, pooling,
Anthropic's Messages API (routed like completions), stored responses by id, the probes (/version, /ping, /liveness, /readiness,
/health_generate), and the error paths (404 naming the routes, 405, 400 with `param`). Plus the cost estimates
the router sees and the emulator's timing of a pooling request (a prefill)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from routes_env import MODEL, gateway
from stubs import LinearCost

from llmsched.gateway.openai_req import (
    CHAT,
    EMBEDDINGS,
    MESSAGES,
    RESPONSES,
    BadRequest,
    build_request,
    parse_body,
)
from llmsched.gateway.pools import pinned_cards
from llmsched.gateway.routes import assemble_message, assemble_response, internal_stream_ok, past_preamble
from llmsched.gateway.server import Gateway

Env = tuple[aiohttp.ClientSession, str, Gateway, list[str]]


@pytest_asyncio.fixture
async def env() -> AsyncIterator[Env]:
    async with gateway(2) as (gw, url, _, urls), aiohttp.ClientSession() as s:
        yield s, url, gw, urls


async def _call(s: aiohttp.ClientSession, method: str, url: str, body: Any = None,
                raw: bytes | None = None) -> tuple[int, Any]:
    kw: dict[str, Any] = {"data": raw} if raw is not None else {"json": body}
    async with s.request(method, url, **kw) as r:
        data = await r.read()
        return r.status, (await r.json(content_type=None)) if data else None


def _served(gw: Gateway) -> int:
    return sum(b.served for b in gw.dispatcher.backends)


async def test_tokenize_and_render_any_backend_uncharged(env: Env) -> None:
    s, url, gw, urls = env
    direct = await _call(s, "POST", urls[1] + "/tokenize", {"model": MODEL, "prompt": "hello world, again"})
    decisions = dict(gw.dispatcher.router.decisions)
    for _ in range(3):  # whichever backend answers: the same tokenizer
        assert await _call(s, "POST", url + "/tokenize", {"model": MODEL, "prompt": "hello world, again"}) == direct
    st, detok = await _call(s, "POST", url + "/detokenize", {"model": MODEL, "tokens": direct[1]["tokens"]})
    assert st == 200 and isinstance(detok["prompt"], str) and detok["prompt"]
    st, chat = await _call(s, "POST", url + "/tokenize", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert st == 200 and chat["count"] > 1
    st, rendered = await _call(s, "POST", url + "/v1/completions/render", {"model": MODEL, "prompt": "hello world, again"})
    assert st == 200 and rendered[0]["token_ids"] == direct[1]["tokens"]
    st, rendered = await _call(s, "POST", url + "/v1/chat/completions/render",
                               {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert st == 200 and rendered["token_ids"] == chat["tokens"]
    # No routing state charged: nothing served, nothing in flight, no router decision taken.
    assert _served(gw) == 0 and gw.dispatcher.in_flight == 0 and dict(gw.dispatcher.router.decisions) == decisions
    # The backend's own 4xx passes through.
    st, err = await _call(s, "POST", url + "/detokenize", {"model": MODEL, "tokens": "x"})
    assert st == 400 and err["error"]["param"] == "tokens"


async def test_tokenize_retries_the_next_backend_when_one_is_down() -> None:
    async with gateway(2, breaker={"failure_threshold": 50, "cooldown": 5}) as (gw, url, emus, _), \
            aiohttp.ClientSession() as s:
        await emus[0].stop(graceful=False)  # refuses connections; its breaker stays closed a while
        for _ in range(4):  # the rotation puts the dead backend first every other call
            st, body = await _call(s, "POST", url + "/tokenize", {"model": MODEL, "prompt": "still here"})
            assert st == 200 and body["count"] == 3
        assert 0 in {b.index for b in gw.routes.healthy_backends(MODEL)}  # still in the rotation: retried past


async def test_healthy_backends_skip_drained_broken_and_other_models(env: Env) -> None:
    _, _, gw, urls = env
    d = gw.dispatcher
    assert {b.index for b in gw.routes.healthy_backends(MODEL)} == {0, 1}
    d.drain(urls[0])
    assert [b.index for b in gw.routes.healthy_backends(MODEL)] == [1]
    d.add_backend(urls[0], gw.now())  # un-drain
    for _ in range(5):
        d.backends[1].breaker.failure(gw.now())
    assert [b.index for b in gw.routes.healthy_backends(None)] == [0]  # the only model served
    d.set_models(0, pinned_cards(["another-model"]))  # now known to serve something else
    assert gw.routes.healthy_backends(MODEL) == []
    assert [b.index for b in gw.routes.healthy_backends("another-model")] == [0]


async def test_scoring_reranking_classify_pooling_are_routed(env: Env) -> None:
    s, url, gw, _ = env
    st, sc = await _call(s, "POST", url + "/score", {"model": MODEL, "queries": "what is x", "documents": ["a", "bb"]})
    assert st == 200 and [d["index"] for d in sc["data"]] == [0, 1] and all(0 <= d["score"] <= 1 for d in sc["data"])
    # query (3 tokens) computed with each document: 2 * 3 + 1 + 1
    assert sc["usage"]["prompt_tokens"] == 8
    st, sc2 = await _call(s, "POST", url + "/v1/score", {"model": MODEL, "text_1": ["what is x", "y"],
                                                           "text_2": ["a", "bb"]})
    assert st == 200 and len(sc2["data"]) == 2 and sc2["data"][0]["score"] == sc["data"][0]["score"]
    docs = ["doc one", "doc two is longer", "three", "four"]
    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        st, rr = await _call(s, "POST", url + path, {"model": MODEL, "query": "which doc", "documents": docs,
                                                      "top_n": 2})
        assert st == 200 and len(rr["results"]) == 2, (path, rr)
        scores = [x["relevance_score"] for x in rr["results"]]
        assert scores == sorted(scores, reverse=True) and rr["results"][0]["document"]["text"] in docs
    st, cl = await _call(s, "POST", url + "/classify", {"model": MODEL, "input": ["good", "bad"]})
    assert st == 200 and [d["num_classes"] for d in cl["data"]] == [2, 2] and abs(sum(cl["data"][0]["probs"]) - 1) < 1e-9
    st, po = await _call(s, "POST", url + "/pooling", {"model": MODEL, "input": "pool me"})
    assert st == 200 and po["data"][0]["object"] == "pooling" and len(po["data"][0]["data"]) > 1
    st, co = await _call(s, "POST", url + "/v2/embed", {"model": MODEL, "texts": ["one", "two"], "output_dimension": 16,
                                                        "embedding_types": ["float", "binary"]})
    assert st == 200 and len(co["embeddings"]["float"]) == 2 and len(co["embeddings"]["float"][0]) == 16
    assert len(co["embeddings"]["binary"][0]) == 2 and co["meta"]["billed_units"]["input_tokens"] == 2
    st, gs = await _call(s, "POST", url + "/generative_scoring", {"model": MODEL, "query": [5, 6, 7],
                                                                   "items": [[8, 9], [10]], "label_token_ids": [1, 2]})
    assert st == 200 and [d["index"] for d in gs["data"]] == [0, 1] and gs["usage"]["prompt_tokens"] == 3 + 2 + 3 + 1
    qs = [{"type": "predicate", "instructions": "Is it rain?"},
          {"type": "score", "name": "s", "instructions": "How much?", "levels": [{"label": "a"}, {"label": "b"}]}]
    st, de = await _call(s, "POST", url + "/v1/decisions", {"model": MODEL, "input": "It rains.", "questions": qs})
    assert st == 200 and [a["type"] for a in de["answers"]] == ["predicate", "score"], de
    assert abs(sum(p["probability"] for p in de["answers"][1]["probabilities"]) - 1) < 1e-9
    assert de["usage"]["output_tokens"] == 2  # one read (one output token) a question
    st, so = await _call(s, "POST", url + "/v1/systemone", {
        "model": MODEL, "state": "It rains.", "questions": {"wet": {"type": "noul", "instructions": "Wet?"},
                                                            "lvl": {"type": "score", "criteria": ["dry", "wet"]}}})
    assert st == 200 and so["answers"]["wet"]["type"] == "noul" and so["answers"]["lvl"]["legend"] == {"0": "dry",
                                                                                                       "1": "wet"}
    assert so["usage"]["output_tokens"] == 2 and set(so["diagnostics"]) == {"wet", "lvl"}
    assert _served(gw) == 11 and gw.dispatcher.in_flight == 0  # each through admission and the router


async def test_anthropic_messages_routed_and_streamed(env: Env) -> None:
    s, url, gw, _ = env
    body = {"model": MODEL, "max_tokens": 4, "system": [{"type": "text", "text": "Be terse."}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}]}
    st, m = await _call(s, "POST", url + "/v1/messages", body)
    assert st == 200 and m["type"] == "message" and m["stop_reason"] == "max_tokens"
    assert m["usage"]["output_tokens"] == 4 and len(m["content"][0]["text"].split()) == 4
    st, c = await _call(s, "POST", url + "/v1/messages/count_tokens", {k: body[k] for k in ("model", "system", "messages")})
    assert st == 200 and c["input_tokens"] == m["usage"]["input_tokens"]
    async with s.post(url + "/v1/messages", json={**body, "stream": True}) as r:
        assert r.status == 200 and r.content_type == "text/event-stream"
        events = [ln[7:] for ln in (await r.read()).decode().splitlines() if ln.startswith("event: ")]
    assert events == ["message_start", "content_block_start", *["content_block_delta"] * 4, "content_block_stop",
                      "message_delta", "message_stop"]
    assert _served(gw) == 2 and gw.dispatcher.in_flight == 0  # both generations through the router; count_tokens not


async def test_anthropic_content_errors_alike_from_the_gateway_and_the_emulator(env: Env) -> None:
    """The gateway and the emulator read Anthropic content with one function: a bad value is the same 400 from
    either, naming the innermost offending field."""
    s, url, _, urls = env
    user = {"role": "user", "content": "x"}
    for extra, param in (({"system": 3}, "system"),
                         ({"messages": [{"role": "user", "content": 7}]}, "messages[0].content"),
                         ({"messages": [user, {"role": "assistant", "content": [{"type": "text", "text": "a"}, 5]}]},
                          "messages[1].content[1]"),
                         ({"messages": [{"role": "user", "content": [{"type": "tool_result", "content": [None]}]}]},
                          "messages[0].content[0].content[0]")):
        body = {"model": MODEL, "max_tokens": 2, "messages": [user], **extra}
        st, via = await _call(s, "POST", url + "/v1/messages", body)
        st_direct, direct = await _call(s, "POST", urls[0] + "/v1/messages", body)
        assert st == st_direct == 400 and via["error"]["param"] == direct["error"]["param"] == param, (via, direct)
        assert via["error"]["message"] == direct["error"]["message"]


async def test_chat_batch_routed_once_one_choice_per_conversation(env: Env) -> None:
    s, url, gw, _ = env
    convs = [[{"role": "user", "content": f"question {k}"}] for k in range(3)]
    st, r = await _call(s, "POST", url + "/v1/chat/completions/batch", {"model": MODEL, "messages": convs,
                                                                         "max_tokens": 2})
    assert st == 200 and [c["index"] for c in r["choices"]] == [0, 1, 2]
    assert all(len(c["message"]["content"].split()) == 2 for c in r["choices"]) and r["usage"]["completion_tokens"] == 6
    assert _served(gw) == 1  # one routed request
    body = b'{"messages": [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]], "max_tokens": 5}'
    assert build_request(parse_body(body, "/v1/chat/completions/batch"), 0, 0.0, 16, None).output_len == 10


async def test_chat_batch_text_keyed_by_the_request_seed_as_chat_is(env: Env) -> None:
    """The emulator keys a batch conversation's text as chat does: by the request's `seed`, else its own."""
    s, _, _, urls = env
    conv = [{"role": "user", "content": "tell me more"}]

    async def batch(**kw: Any) -> str:
        st, r = await _call(s, "POST", urls[0] + "/v1/chat/completions/batch",
                            {"model": MODEL, "messages": [conv], "max_tokens": 8, **kw})
        assert st == 200, r
        return r["choices"][0]["message"]["content"]

    async def chat(**kw: Any) -> str:
        st, r = await _call(s, "POST", urls[0] + "/v1/chat/completions",
                            {"model": MODEL, "messages": conv, "max_tokens": 8, **kw})
        assert st == 200, r
        return r["choices"][0]["message"]["content"]

    assert await batch(seed=1) != await batch(seed=2)
    for kw in ({"seed": 1}, {"seed": 2}, {}):
        assert await batch(**kw) == await chat(**kw), kw


async def test_sagemaker_invocations_routed_by_body_shape(env: Env) -> None:
    s, url, gw, _ = env
    st, chat = await _call(s, "POST", url + "/invocations", {"messages": [{"role": "user", "content": "hi"}],
                                                              "max_tokens": 2})
    assert st == 200 and chat["object"] == "chat.completion" and chat["usage"]["completion_tokens"] == 2
    st, cmpl = await _call(s, "POST", url + "/invocations", {"prompt": "once upon", "max_tokens": 3})
    assert st == 200 and cmpl["object"] == "text_completion" and cmpl["usage"]["completion_tokens"] == 3
    st, emb = await _call(s, "POST", url + "/invocations", {"input": "embed me"})
    assert st == 200 and emb["data"][0]["object"] == "embedding"
    st, rr = await _call(s, "POST", url + "/invocations", {"query": "q", "documents": ["a", "b"]})
    assert st == 200 and len(rr["results"]) == 2
    assert _served(gw) == 4
    # the cost estimate of the route the body is served as
    body = b'{"prompt": "' + b"p" * 40 + b'", "max_tokens": 9}'
    r = build_request(parse_body(body, "/invocations"), 0, 0.0, 16, None)
    assert (r.prompt_len, r.output_len) == (10, 9)
    st, err = await _call(s, "POST", url + "/invocations", {"messages": "not a list"})
    assert st == 400 and err["error"]["param"] == "messages"


async def test_stored_responses_by_id(env: Env) -> None:
    s, url, gw, urls = env
    st, r = await _call(s, "POST", url + RESPONSES, {"model": MODEL, "input": "hi", "max_output_tokens": 2})
    assert st == 200
    owner = gw.routes._owner[r["id"]]
    st, direct = await _call(s, "GET", urls[owner] + f"/v1/responses/{r['id']}")
    assert st == 200 and direct["id"] == r["id"]
    assert (await _call(s, "GET", urls[1 - owner] + f"/v1/responses/{r['id']}"))[0] == 404  # only its maker has it
    for _ in range(3):
        assert await _call(s, "GET", url + f"/v1/responses/{r['id']}") == (200, direct)
    st, err = await _call(s, "POST", url + f"/v1/responses/{r['id']}/cancel")
    assert st == 400 and "synchronous" in err["error"]["message"]  # vLLM's answer, from the owner
    # An id the gateway never saw (made on a backend directly) is asked of each backend.
    st, made = await _call(s, "POST", urls[1] + RESPONSES, {"model": MODEL, "input": "direct", "max_output_tokens": 1})
    assert (await _call(s, "GET", url + f"/v1/responses/{made['id']}"))[0] == 200
    st, err = await _call(s, "GET", url + "/v1/responses/resp_unknown")
    assert st == 404 and err["error"]["param"] == "response_id"
    gw.dispatcher.drain(urls[owner])  # its maker is gone: say so rather than "not found"
    st, err = await _call(s, "GET", url + f"/v1/responses/{r['id']}")
    assert st == 503 and urls[owner] in err["error"]["message"]
    gw.dispatcher.add_backend(urls[owner], gw.now())
    # A client's own request_id names the response.
    st, r2 = await _call(s, "POST", url + RESPONSES, {"model": MODEL, "input": "x", "max_output_tokens": 1,
                                                      "request_id": "resp_mine"})
    assert st == 200 and r2["id"] == "resp_mine" and "resp_mine" in gw.routes._owner


async def test_probes(env: Env) -> None:
    s, url, gw, urls = env
    st, v = await _call(s, "GET", url + "/version")
    assert st == 200 and v["version"]
    for method, path in (("GET", "/ping"), ("POST", "/ping"), ("GET", "/readiness"), ("GET", "/health_generate"),
                         ("GET", "/health"), ("GET", "/liveness")):
        assert (await _call(s, method, url + path))[0] == 200, path
    for u in urls:
        gw.dispatcher.drain(u)
    for path in ("/ping", "/readiness", "/health_generate", "/health"):
        assert (await _call(s, "GET", url + path))[0] == 503, path  # no backend can serve
    assert (await _call(s, "GET", url + "/liveness"))[0] == 200  # the process itself is alive


async def test_error_paths(env: Env) -> None:
    s, url, _, _ = env
    st, err = await _call(s, "GET", url + "/v1/nothing")
    assert st == 404 and err["error"]["type"] == "not_found_error"
    msg = err["error"]["message"]
    for route in ("POST /v1/embeddings", "POST /v1/responses", "POST /tokenize", "POST /v2/rerank", "POST /v1/messages",
                  "GET/POST /ping", "GET /v1/responses/{id}", "GET /version", "GET /liveness"):
        assert route in msg, route
    for method, path, allowed in (("GET", "/v1/embeddings", "POST"), ("GET", "/tokenize", "POST"),
                                  ("DELETE", "/ping", "GET, POST"), ("POST", "/version", "GET"),
                                  ("POST", "/v1/responses/resp_x", "GET")):
        st, err = await _call(s, method, url + path)
        assert st == 405 and allowed in err["error"]["message"], (method, path, err)
    bad = [("/v1/embeddings", {"model": MODEL}, "input"),
           ("/v1/embeddings", {"model": MODEL, "input": "x", "stream": True}, "stream"),
           ("/rerank", {"model": MODEL, "documents": ["a"]}, "query"),
           ("/v1/rerank", {"model": MODEL, "query": "q", "documents": ["a"], "top_n": -1}, "top_n"),
           ("/score", {"model": MODEL, "queries": ["a", "b", "c"], "documents": ["x", "y"]}, "queries"),
           ("/score", {"model": MODEL, "text_1": "a"}, "text_2"),
           ("/classify", {"model": MODEL, "input": {"not": "text"}}, "input"),
           ("/v2/embed", {"model": MODEL, "texts": ["a"], "inputs": [{"content": []}]}, "texts"),
           ("/generative_scoring", {"model": MODEL, "query": 5, "items": ["a"], "label_token_ids": [1]}, "query"),
           ("/generative_scoring", {"model": MODEL, "query": "q", "items": ["a"]}, "label_token_ids"),
           ("/v1/decisions", {"model": MODEL, "input": "x"}, "questions"),
           ("/v1/decisions", {"model": MODEL, "input": 3, "questions": [{"type": "predicate", "instructions": "?"}]},
            "input"),
           ("/v1/decisions", {"model": MODEL, "input": "x", "questions": [{"type": "choice", "instructions": "?",
                                                                           "choices": [{"value": "a"}]}]},
            "questions[0].choices"),
           ("/v1/systemone", {"model": MODEL, "questions": {"a": {"type": "noul"}}}, "state"),
           ("/v1/systemone", {"model": MODEL, "state": "s", "questions": {"a": {"type": "choice", "criteria": []}}},
            "questions.a.criteria"),
           ("/v1/systemone", {"model": MODEL, "state": "s", "questions": {"a": {"type": "rank"}}}, "questions.a"),
           ("/v1/responses", {"model": MODEL, "input": 5}, "input"),
           ("/v1/responses", {"model": MODEL, "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
           ("/v1/responses", {"model": MODEL, "input": "x", "request_id": 7}, "request_id"),
           ("/v1/responses", {"model": MODEL, "input": "x", "instructions": ["no"]}, "instructions"),
           ("/v1/messages", {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
           ("/v1/messages", {"model": MODEL, "max_tokens": 2, "messages": [{"role": "system", "content": "x"}]},
            "messages[0]"),
           ("/v1/chat/completions/batch", {"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
            "messages"),
           ("/v1/chat/completions/batch", {"model": MODEL, "messages": [[{"role": "user", "content": "x"}]],
                                           "stream": True}, "stream"),
           ("/tokenize", {"model": 3, "prompt": "x"}, "model")]
    for path, body, param in bad:
        st, err = await _call(s, "POST", url + path, body)
        assert st == 400 and err["error"]["param"] == param, (path, body, err)
    for path in ("/v1/embeddings", "/tokenize", "/pooling"):
        st, err = await _call(s, "POST", url + path, raw=b"{not json")
        assert st == 400 and "JSON" in err["error"]["message"], path


def test_cost_estimates() -> None:
    """What the router and the admission queue see: prompt tokens (4 bytes a token), output tokens."""
    e = build_request(parse_body(b'{"input": ["' + b"x" * 400 + b'", "' + b"y" * 40 + b'"]}', EMBEDDINGS),
                      0, 0.0, 16, None)
    assert e.output_len == 1 and 100 <= e.prompt_len <= 112  # 100 + 10 tokens (and the separator)
    q, docs = "q" * 80, ["d" * 40] * 5  # 20-token query, five 10-token documents
    body = f'{{"query": "{q}", "documents": {str(docs).replace(chr(39), chr(34))}}}'.encode()
    r = build_request(parse_body(body, "/rerank"), 1, 0.0, 16, None, hash_blocks=True)
    assert r.output_len == 1 and r.prompt_len == 5 * 20 + 5 * 10 + 2  # the query once per document (+ separators)
    resp = build_request(parse_body(b'{"input": "' + b"z" * 80 + b'", "instructions": "' + b"i" * 40
                                    + b'", "max_output_tokens": 33}', RESPONSES), 2, 0.0, 16, None)
    assert resp.output_len == 33 and resp.prompt_len == 31  # 20 + 10 tokens (+ separator)
    items = b'{"input": [{"role": "user", "content": [{"type": "input_text", "text": "' + b"w" * 40 + b'"}]}]}'
    assert build_request(parse_body(items, RESPONSES), 3, 0.0, 16, None).prompt_len == 10
    with pytest.raises(BadRequest):
        parse_body(b'{"input": [3]}', RESPONSES)
    # decisions: each question reads the input (40 tokens) and itself; one output token a question
    q = b'{"type": "predicate", "instructions": "' + b"q" * 60 + b'"}'  # 100 bytes: 25 tokens
    dec = build_request(parse_body(b'{"input": "' + b"i" * 160 + b'", "questions": [' + q + b", " + q + b", " + q
                                   + b"]}", "/v1/decisions"), 4, 0.0, 16, None)
    assert dec.output_len == 3 and 3 * (40 + 25) <= dec.prompt_len <= 3 * (40 + 25) + 3


def test_stream_preamble_and_reassembly() -> None:
    created = b'event: response.created\ndata: {"type":"response.created","response":{"status":"in_progress"}}\n\n'
    progress = b'event: response.in_progress\ndata: {"type":"response.in_progress","response":{}}\n\n'
    delta = b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"a"}\n\n'
    assert not past_preamble(created + progress)
    assert not past_preamble(created + progress + delta[:-2])  # an event is complete at its blank line
    assert past_preamble(created + progress + delta)
    final = {"id": "resp_1", "object": "response", "usage": {"output_tokens": 1, "input_tokens": 3}}
    done = b'event: response.incomplete\ndata: {"type":"response.incomplete","response":' + \
        str(final).replace("'", '"').encode() + b"}\n\n"
    assert assemble_response(created + progress + delta + done) == (200, b'{"id":"resp_1","object":"response",'
                                                                        b'"usage":{"output_tokens":1,"input_tokens":3}}', 1)
    err = b'event: error\ndata: {"type":"error","code":"server_error","message":"boom","param":null}\n\n'
    st, body, _ = assemble_response(created + err)
    assert st == 502 and b"boom" in body
    with pytest.raises(ValueError):
        assemble_response(created + progress)  # ended before its terminal event: retried elsewhere
    start = b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",' \
        b'"role":"assistant","content":[],"model":"m","stop_reason":null,"usage":{"input_tokens":5,"output_tokens":0}}}\n\n'
    block = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta",' \
        b'"text":"%s"}}\n\n'
    end = b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"max_tokens"},' \
        b'"usage":{"output_tokens":2}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n'
    st, body, n = assemble_message(start + block % b" a" + block % b" b" + end)
    assert (st, n) == (200, 2) and body == (b'{"id":"msg_1","type":"message","role":"assistant","content":[{"type":'
                                            b'"text","text":" a b"}],"model":"m","stop_reason":"max_tokens",'
                                            b'"usage":{"input_tokens":5,"output_tokens":2}}')
    assert assemble_message(start + b'event: error\ndata: {"type":"error","error":{"type":"api_error",'
                            b'"message":"boom"}}\n\n')[0] == 502
    with pytest.raises(ValueError):
        assemble_message(block % b"x")
    assert internal_stream_ok(MESSAGES, {}) and not internal_stream_ok(MESSAGES, {"thinking": {"type": "enabled"}})
    assert internal_stream_ok(RESPONSES, {"tools": [], "top_logprobs": 0})
    assert not internal_stream_ok(RESPONSES, {"background": True})
    assert not internal_stream_ok(CHAT, {"logprobs": True}) and internal_stream_ok(CHAT, {})
    assert not internal_stream_ok(EMBEDDINGS, {})


async def test_responses_first_token_after_the_prefill_not_at_response_created() -> None:
    """vLLM sends response.created before the prefill: the gateway's TTFT (its router's first-token event) is
    at the first event past it. A 4,000-token prompt at 0.1 ms a token prefills in ~0.4 s."""
    async with gateway(1, speed=1.0, cost=LinearCost(base=0.001, per_prefill=1e-4)) as (gw, url, _, _), \
            aiohttp.ClientSession() as s:
        body = {"model": MODEL, "input": "w" * 16000, "max_output_tokens": 2, "stream": True}
        async with s.post(url + RESPONSES, json=body) as r:
            assert r.status == 200 and b"response.created" in await r.read()
        text = gw.metrics.render().decode()
        line = next(x for x in text.splitlines() if x.startswith('llmsched_gateway_ttft_seconds_sum{endpoint="/v1/responses"'))
        assert float(line.split()[-1]) > 0.3, line


async def test_embedding_costs_a_prefill() -> None:
    """A pooling request is priced as its prompt's prefill: ~0.4 s for 4,000 tokens at 0.1 ms a token, a few
    ms for a short one (speed 1)."""
    async with gateway(1, speed=1.0, cost=LinearCost(base=0.001, per_prefill=1e-4)) as (_, url, _, _), \
            aiohttp.ClientSession() as s:
        t0 = time.monotonic()
        assert (await _call(s, "POST", url + EMBEDDINGS, {"model": MODEL, "input": "w" * 16000}))[0] == 200
        long = time.monotonic() - t0
        t0 = time.monotonic()
        assert (await _call(s, "POST", url + EMBEDDINGS, {"model": MODEL, "input": "w"}))[0] == 200
        short = time.monotonic() - t0
    assert 0.35 < long < 2.0 and short < 0.2, (long, short)


async def test_api_keys_guard_every_route_that_reaches_a_backend() -> None:
    async with gateway(1, api_keys=["sekret"]) as (_, url, _, _), aiohttp.ClientSession() as s:
        auth = {"Authorization": "Bearer sekret"}
        for path, body in (("/tokenize", {"prompt": "x"}), ("/v1/embeddings", {"input": "x"}),
                           ("/v1/responses/resp_x", None), ("/v1/messages/count_tokens", {"messages": []})):
            method = "GET" if body is None else "POST"
            async with s.request(method, url + path, json=body) as r:
                assert r.status == 401, path
        async with s.post(url + "/tokenize", json={"prompt": "x"}, headers=auth) as r:
            assert r.status == 200
        for path in ("/ping", "/version", "/liveness", "/readiness", "/health"):  # probes stay open
            async with s.get(url + path) as r:
                assert r.status == 200, path
