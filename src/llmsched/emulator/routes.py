"""The emulator's routes beyond completions and chat, in vLLM 0.33's wire shapes: embeddings, classification,
pooling, scoring and reranking (one forward pass each), and the Responses API (generation, streamed as vLLM's
typed SSE events, stored for retrieval and `previous_response_id`).

Timing is the engine model's: a pooling input is one engine request with one output token, i.e. a prefill (vLLM
runs a pooling model's forward pass over the prompt and reads the pooled state, no decode); a cross-encoder
score or rerank runs one such request per (query, document) pair, all in the same batch if they fit. A Responses
request is a chat generation. Output values are synthetic and deterministic: an embedding is a unit vector drawn
from the prompt's token ids, a score is that of the pair's ids.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from aiohttp import web

from llmsched.emulator import events, wire
from llmsched.emulator.events import json_response
from llmsched.emulator.protocol import ApiError, GenRequest, _finish, check_model, parse_chat, prompt_ids
from llmsched.emulator.stream import TokenStream
from llmsched.gateway.openai_req import (
    CHAT,
    COMPLETIONS,
    DECISIONS,
    RERANK,
    SCORE,
    SCORE_PAIRS,
    SYSTEMONE,
    BadRequest,
    blocks_text,
    decision_parts,
    invocation_route,
    is_token_ids,
    systemone_parts,
)

if TYPE_CHECKING:
    from llmsched.core.types import Request
    from llmsched.emulator.server import EmulatorServer

EMBED_DIM = 1024  # the emulator's embedding width (a request's `dimensions` asks for fewer)
MAX_STORED = 10_000  # stored Responses answers (oldest dropped first)


def _seed_of(ids: list[int]) -> int:
    return hash(tuple(ids)) & 0xFFFF_FFFF


def _vector(ids: list[int], dim: int) -> np.ndarray:
    v = np.random.default_rng(_seed_of(ids)).standard_normal(dim)
    return (v / np.linalg.norm(v)).astype(np.float32)


def _score(ids: list[int]) -> float:
    return float(np.random.default_rng(_seed_of(ids)).random())


def _label_probs(ids: list[int], n: int) -> list[float]:
    """Synthetic probabilities of `n` labels after a read of `ids` (they sum to 1)."""
    return np.random.default_rng(_seed_of(ids)).dirichlet(np.ones(n)).tolist()


def _token_ids(ids: list[int], vocab: int, param: str) -> list[int]:
    if any(t < 0 or t >= vocab for t in ids):
        raise ApiError(f"{param} has token ids outside [0, {vocab}).", param=param)
    return ids


def _text_parts(content: Any, where: str) -> str:
    """Text of a Responses content value: a string or a list of parts with `text` (input_text, output_text)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str))
    raise ApiError(f"{where} must be a string or a list of content parts.", param=where)


class ExtraRoutes:
    """Handlers bound to one `EmulatorServer`."""

    def __init__(self, srv: EmulatorServer, read_json: Callable[[web.Request], Awaitable[Any]]) -> None:
        self.srv = srv
        self._read_json = read_json
        self.stored: OrderedDict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = OrderedDict()

    def attach(self, r: web.UrlDispatcher) -> None:
        r.add_post("/v1/embeddings", self.embeddings)
        r.add_post("/v2/embed", self.cohere_embed)
        r.add_post("/classify", self.classify)
        r.add_post("/pooling", self.pooling)
        for p in SCORE:
            r.add_post(p, self.score)
        for p in RERANK:
            r.add_post(p, self.rerank)
        r.add_post("/generative_scoring", self.generative_scoring)
        r.add_post(DECISIONS, self.decisions)
        r.add_post(SYSTEMONE, self.systemone)
        r.add_post("/v1/responses", self.responses)
        r.add_get("/v1/responses/{rid}", self.get_response)
        r.add_post("/v1/responses/{rid}/cancel", self.cancel_response)
        r.add_post("/v1/chat/completions/batch", self.chat_batch)
        r.add_post("/v1/messages", self.messages)
        r.add_post("/v1/messages/count_tokens", self.count_tokens)
        r.add_post("/ping", self.srv.health)
        r.add_post("/invocations", self.invocations)

    # -- running prompts through the engine -------------------------------------------------------------
    async def _prefill(self, prompts: list[list[int]], body: Mapping[str, Any], model: str) -> list[int]:
        """Run each prompt as one engine request with one output token (a forward pass); cached tokens each.
        `model` (base or LoRA adapter) sets the request's adapter, so an adapter's load is priced as for generation."""
        srv = self.srv
        cap = srv.max_model_len
        for p in prompts:
            if not p:
                raise ApiError("The input cannot be empty.", param="input")
            if len(p) > cap:
                raise ApiError(f"This model's maximum context length is {cap} tokens. However, your request has "
                               f"{len(p)} input tokens. Please reduce the length of the input.", param="input")
        user = body.get("user") if isinstance(body.get("user"), str) else None
        prio = body.get("priority") if isinstance(body.get("priority"), int) else 0
        reqs = [srv._make_request(GenRequest(False, model, p, 1, False, False, user, None, prio)) for p in prompts]
        return [s.req.num_cached for s in await self._run_all(reqs)]

    async def _run_all(self, reqs: list[Request]) -> list[TokenStream]:
        """Submit `reqs` together (they batch in the engine) and wait for all of them to finish."""
        streams: list[TokenStream] = []
        try:
            for q in reqs:
                streams.append(events.submit(self.srv, q))
            for s in streams:
                await events.finished(s)
            return streams
        finally:
            for s in streams:
                events.abort_unfinished(self.srv, s)

    def _inputs(self, body: Any) -> tuple[str, list[list[int]]]:
        """(model, token ids of each input) of an embeddings / classify / pooling body."""
        if not isinstance(body, Mapping):
            raise ApiError("The request body must be a JSON object.")
        model = check_model(body, self.srv.limits)
        tok = self.srv.tokenizer
        msgs = body.get("messages")
        inp = body.get("input")
        if msgs is None and isinstance(inp, list) and inp and all(isinstance(m, Mapping) and "role" in m for m in inp):
            msgs = inp
        if msgs is not None:
            if not isinstance(msgs, list) or not msgs:
                raise ApiError("messages must be a non-empty list of messages.", param="messages")
            try:
                return model, [tok.encode(tok.apply_chat_template(msgs, bool(body.get("add_generation_prompt"))))]
            except ValueError as e:
                raise ApiError(str(e), param="messages") from None
        if inp is None:
            raise ApiError("Field required: input.", param="input")
        if isinstance(inp, list) and inp and all(isinstance(x, str | list) for x in inp):
            return model, [prompt_ids(x, tok) for x in inp]  # a batch: one engine request each
        try:
            return model, [prompt_ids(inp, tok)]
        except ApiError as e:
            raise ApiError(e.message.replace("prompt", "input"), param="input") from None

    def _base(self, prefix: str, model: str) -> dict[str, Any]:
        srv = self.srv
        srv._next_rid += 1
        return {"id": f"{prefix}-{srv._id_prefix}{srv._next_rid:08x}", "object": "list", "created": int(time.time()),
                "model": model}

    @staticmethod
    def _usage(n: int) -> dict[str, Any]:
        return {"prompt_tokens": n, "total_tokens": n, "completion_tokens": 0, "prompt_tokens_details": None,
                "completion_tokens_details": None}

    # -- pooling routes ----------------------------------------------------------------------------------
    async def embeddings(self, request: web.Request) -> web.Response:
        body = await self._read_json(request)
        model, prompts = self._inputs(body)
        dim = body.get("dimensions")
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= EMBED_DIM):
            raise ApiError(f"dimensions must be an integer in [1, {EMBED_DIM}].", param="dimensions")
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise ApiError("encoding_format must be 'float' or 'base64'.", param="encoding_format")
        await self._prefill(prompts, body, model)
        data = []
        for k, p in enumerate(prompts):
            v = _vector(p, dim or EMBED_DIM)
            emb: Any = base64.b64encode(v.tobytes()).decode() if fmt == "base64" else v.tolist()
            data.append({"index": k, "object": "embedding", "embedding": emb})
        return json_response({**self._base("embd", model), "data": data, "usage": self._usage(sum(map(len, prompts)))})

    async def cohere_embed(self, request: web.Request) -> web.Response:
        """Cohere's /v2/embed as vLLM serves it: `texts` or `inputs` (text parts), `output_dimension`,
        `embedding_types` (float, base64, binary, ubinary)."""
        body = await self._read_json(request)
        if not isinstance(body, Mapping):
            raise ApiError("The request body must be a JSON object.")
        model = check_model(body, self.srv.limits)
        given = [k for k in ("texts", "images", "inputs") if body.get(k) is not None]
        if len(given) != 1 or not isinstance(body[given[0]], list) or not body[given[0]]:
            raise ApiError("Exactly one of texts, images, or inputs must be provided, and it must be non-empty",
                           param="texts")
        if given[0] == "images":
            raise ApiError("images are not supported by the emulator.", param="images")
        texts = [t if given[0] == "texts" else _text_parts(t.get("content") if isinstance(t, Mapping) else None,
                                                           f"inputs[{k}].content")
                 for k, t in enumerate(body[given[0]])]
        if not all(isinstance(t, str) for t in texts):
            raise ApiError("texts must be strings.", param="texts")
        dim = body.get("output_dimension") or EMBED_DIM
        if isinstance(dim, bool) or not isinstance(dim, int) or not 8 <= dim <= EMBED_DIM or dim % 8:
            raise ApiError(f"output_dimension must be a multiple of 8 in [8, {EMBED_DIM}].", param="output_dimension")
        kinds = body.get("embedding_types") or ["float"]
        if not isinstance(kinds, list) or not set(kinds) <= {"float", "base64", "binary", "ubinary"}:
            raise ApiError("embedding_types must be a list of float, base64, binary, ubinary.",
                           param="embedding_types")
        prompts = [self.srv.tokenizer.encode(t) for t in texts]
        await self._prefill(prompts, body, model)
        vecs = [_vector(p, dim) for p in prompts]
        out: dict[str, Any] = {}
        for kind in kinds:
            if kind == "float":
                out[kind] = [v.tolist() for v in vecs]
            elif kind == "base64":
                out[kind] = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vecs]
            else:
                packed = [np.packbits(v >= 0).astype(np.int16) for v in vecs]
                out[kind] = [(p - 128 if kind == "binary" else p).tolist() for p in packed]
        srv = self.srv
        srv._next_rid += 1
        return json_response({"id": f"embd-{srv._id_prefix}{srv._next_rid:08x}", "embeddings": out, "texts": texts,
                      "meta": {"api_version": {"version": "2"},
                               "billed_units": {"input_tokens": sum(map(len, prompts))}},
                      "response_type": "embeddings_by_type"})

    async def classify(self, request: web.Request) -> web.Response:
        body = await self._read_json(request)
        model, prompts = self._inputs(body)
        await self._prefill(prompts, body, model)
        data = []
        for k, p in enumerate(prompts):
            s = _score(p)
            probs = [1.0 - s, s]
            data.append({"index": k, "label": f"LABEL_{int(s >= 0.5)}", "probs": probs, "num_classes": 2})
        return json_response({**self._base("classify", model), "data": data, "usage": self._usage(sum(map(len, prompts)))})

    async def pooling(self, request: web.Request) -> web.Response:
        body = await self._read_json(request)
        model, prompts = self._inputs(body)
        await self._prefill(prompts, body, model)
        data = [{"index": k, "object": "pooling", "data": _vector(p, EMBED_DIM).tolist()} for k, p in enumerate(prompts)]
        return json_response({**self._base("pool", model), "data": data, "usage": self._usage(sum(map(len, prompts)))})

    def _side(self, v: Any, param: str) -> list[str | list[int]]:
        """One side of a score body: a string, token ids, an object with content parts, or a list of those."""
        items = [v] if not isinstance(v, list) or is_token_ids(v) else v
        out: list[str | list[int]] = []
        for it in items:
            if isinstance(it, str) or is_token_ids(it):
                out.append(it)
            elif isinstance(it, Mapping) and isinstance(it.get("content"), list):
                out.append(_text_parts(it["content"], param))
            else:
                raise ApiError(f"{param} must be a string, an object with content parts, or a list of those.",
                               param=param)
        if not out:
            raise ApiError(f"{param} must not be empty.", param=param)
        return out

    async def _pairs(self, body: Any, pair: tuple[str, str] | None) -> tuple[str, list[Any], list[list[int]]]:
        """(model, documents, token ids of each (query, document) pair) of a score body (fields `pair`, else
        found as vLLM does); runs them."""
        if not isinstance(body, Mapping):
            raise ApiError("The request body must be a JSON object.")
        model = check_model(body, self.srv.limits)
        if pair is None:
            pair = next((p for p in SCORE_PAIRS if p[0] in body or p[1] in body), SCORE_PAIRS[0])
        if body.get(pair[0]) is None or body.get(pair[1]) is None:
            raise ApiError(f"Field required: {pair[0]} and {pair[1]}.", param=pair[0] if body.get(pair[0]) is None
                           else pair[1])
        queries, docs = self._side(body[pair[0]], pair[0]), self._side(body[pair[1]], pair[1])
        if len(queries) == 1:
            queries = queries * len(docs)
        elif len(queries) != len(docs):
            raise ApiError(f"{pair[0]} must hold one item or as many as {pair[1]}.", param=pair[0])
        tok = self.srv.tokenizer

        def enc(x: str | list[int]) -> list[int]:
            return tok.encode(x) if isinstance(x, str) else _token_ids(x, tok.vocab_size, pair[0])

        prompts = [enc(q) + enc(d) for q, d in zip(queries, docs, strict=True)]  # query, then document
        await self._prefill(prompts, body, model)
        return model, docs, prompts

    async def score(self, request: web.Request) -> web.Response:
        model, _, prompts = await self._pairs(await self._read_json(request), None)
        data = [{"index": k, "object": "score", "score": _score(p)} for k, p in enumerate(prompts)]
        return json_response({**self._base("score", model), "data": data, "usage": self._usage(sum(map(len, prompts)))})

    async def rerank(self, request: web.Request) -> web.Response:
        body = await self._read_json(request)
        top_n = body.get("top_n", 0) if isinstance(body, Mapping) else 0
        if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 0:
            raise ApiError("top_n must be an integer >= 0.", param="top_n")
        model, docs, prompts = await self._pairs(body, ("query", "documents"))
        results = sorted(({"index": k, "document": {"text": d, "multi_modal": None}, "relevance_score": _score(p)}
                          for k, (d, p) in enumerate(zip(docs, prompts, strict=True))),
                         key=lambda x: -x["relevance_score"])
        n = sum(map(len, prompts))
        base = self._base("rerank", model)
        return json_response({"id": base["id"], "model": model, "usage": {"prompt_tokens": n, "total_tokens": n},
                      "results": results[:top_n] if top_n else results})

    async def generative_scoring(self, request: web.Request) -> web.Response:
        """vLLM's /generative_scoring: for each item, P(first label token) after query + item; one forward pass
        each (max_tokens 1)."""
        body = await self._read_json(request)
        labels = body.get("label_token_ids") if isinstance(body, Mapping) else None
        if not isinstance(labels, list) or not labels or not all(isinstance(t, int) for t in labels):
            raise ApiError("label_token_ids must be a non-empty list of token ids.", param="label_token_ids")
        model, _, prompts = await self._pairs(body, ("query", "items"))
        data = [{"index": k, "object": "score", "score": _score([*p, labels[0]])} for k, p in enumerate(prompts)]
        return json_response({**self._base("gen-score", model), "data": data,
                              "usage": self._usage(sum(map(len, prompts)))})

    async def _reads(self, request: web.Request, parts: Callable[[dict[str, Any]], tuple[str, Any]]) -> tuple[
            Mapping[str, Any], str, Any, list[list[int]], list[int]]:
        """A decisions body's reads: (body, model, questions, token ids of each read, cached tokens of each), run
        together, one output token each (the label probabilities)."""
        body = await self._read_json(request)
        if not isinstance(body, Mapping):
            raise ApiError("The request body must be a JSON object.")
        try:
            text, qs = parts(dict(body))
        except BadRequest as e:
            raise ApiError(e.message, param=e.param) from None
        model = check_model(body, self.srv.limits)
        tok = self.srv.tokenizer
        prompts = [tok.encode(f"{text}\n\n{q.get('instructions') or ''}")
                   for q in (qs.values() if isinstance(qs, dict) else qs)]
        return body, model, qs, prompts, await self._prefill(prompts, body, model)

    def _cache_writes(self, prompts: list[list[int]], cached: list[int]) -> int:
        return sum(cache_writes(len(p), c, self.srv.config.block_size) for p, c in zip(prompts, cached, strict=True))

    async def decisions(self, request: web.Request) -> web.Response:
        """vLLM's /v1/decisions: each question one read (input + the question's prompt). Probabilities are
        synthetic, drawn from the read's token ids."""
        _, model, qs, prompts, cached = await self._reads(request, decision_parts)
        answers = []
        for q, p in zip(qs, prompts, strict=True):
            name = q.get("name")
            if q["type"] == "predicate":
                answers.append({"type": "predicate", "name": name, "probability": _score(p)})
                continue
            options = q["choices"] if q["type"] == "choice" else q["levels"]
            probs = _label_probs(p, len(options))
            top = int(np.argmax(probs))
            if q["type"] == "choice":
                answers.append({"type": "choice", "name": name, "choice": options[top]["value"],
                                "probabilities": [{"value": o["value"], "probability": pr}
                                                  for o, pr in zip(options, probs, strict=True)],
                                "confidence": probs[top]})
            else:
                answers.append({"type": "score", "name": name, "score": sum(i * pr for i, pr in enumerate(probs)),
                                "probabilities": [{"value": i, "label": o["label"], "probability": pr}
                                                  for i, (o, pr) in enumerate(zip(options, probs, strict=True))],
                                "confidence": probs[top]})
        n_in = sum(map(len, prompts))
        usage = {"input_tokens": n_in, "output_tokens": len(qs), "total_tokens": n_in + len(qs),
                 "input_tokens_details": {"cached_tokens": sum(cached),
                                          "cache_write_tokens": self._cache_writes(prompts, cached)},
                 "output_tokens_details": {"reasoning_tokens": 0}}
        return json_response({"model": model, "answers": answers, "usage": usage})

    async def systemone(self, request: web.Request) -> web.Response:
        """vLLM's /v1/systemone (structured decisions): questions by id (choice, noul, score), each one read of
        the context, the state and the question. Synthetic probabilities; every label mass 1."""
        body, model, qs, prompts, _ = await self._reads(request, systemone_parts)
        answers: dict[str, dict[str, Any]] = {}
        for (qid, q), p in zip(qs.items(), prompts, strict=True):
            c = q.get("criteria")
            names = list(c) if q["type"] == "choice" else ["yes", "no"] if q["type"] == "noul" else [str(x) for x in c]
            probs = _label_probs(p, len(names))
            top = int(np.argmax(probs))
            if q["type"] == "choice":
                a: dict[str, Any] = {"choice": names[top], "probabilities": dict(zip(names, probs, strict=True))}
            elif q["type"] == "noul":
                a = {"noul": probs[0], "probabilities": {"yes": probs[0], "no": probs[1]}}
            else:
                a = {"score": sum(i * pr for i, pr in enumerate(probs)),
                     "legend": {str(i): n for i, n in enumerate(names)},
                     "probabilities": {str(i): pr for i, pr in enumerate(probs)}}
            answers[qid] = {"type": q["type"], **a, "confidence": probs[top]}
        base = self._base("decision", model)
        rid = body.get("request_id")
        return json_response({"id": f"decision-{rid}" if isinstance(rid, str) else base["id"],
                              "object": "structured_decision", "created": base["created"], "model": model,
                              "answers": answers,
                              "usage": {"input_tokens": sum(map(len, prompts)), "output_tokens": len(qs)},
                              "diagnostics": {qid: {"label_mass": 1.0, "argmax_is_label": True} for qid in qs},
                              "joint": None})

    # -- Responses API -----------------------------------------------------------------------------------
    def _messages(self, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The conversation of a Responses request: the stored one of `previous_response_id`, instructions,
        then `input` (a string, or a list of items: messages, function-call outputs)."""
        msgs: list[dict[str, Any]] = []
        prev = body.get("previous_response_id")
        if prev is not None:
            if not isinstance(prev, str) or prev not in self.stored:
                raise ApiError(f"Response with id '{prev}' not found.", 404, "previous_response_id",
                               err_type="invalid_request_error")
            msgs.extend(self.stored[prev][1])
        instructions = body.get("instructions")
        if instructions is not None:
            if not isinstance(instructions, str):
                raise ApiError("instructions must be a string.", param="instructions")
            msgs.insert(0, {"role": "system", "content": instructions})
        inp = body.get("input")
        if isinstance(inp, str):
            msgs.append({"role": "user", "content": inp})
        elif isinstance(inp, list) and inp:
            for k, item in enumerate(inp):
                if not isinstance(item, Mapping):
                    raise ApiError(f"input[{k}] must be an object.", param=f"input[{k}]")
                if "role" in item:
                    role = item["role"]
                    if not isinstance(role, str) or not role:
                        raise ApiError(f"input[{k}].role must be a non-empty string.", param=f"input[{k}].role")
                    msgs.append({"role": role, "content": _text_parts(item.get("content", ""), f"input[{k}].content")})
                elif item.get("type") == "function_call_output":
                    msgs.append({"role": "tool", "content": _text_parts(item.get("output", ""), f"input[{k}].output")})
        else:
            raise ApiError("input must be a string or a non-empty list of input items.", param="input")
        return msgs

    async def responses(self, request: web.Request) -> web.StreamResponse:
        srv = self.srv
        body = await self._read_json(request)
        if not isinstance(body, Mapping):
            raise ApiError("The request body must be a JSON object.")
        model = check_model(body, srv.limits)
        rid = body.get("request_id") or f"resp_{secrets.token_hex(16)}"
        if not isinstance(rid, str):
            raise ApiError("request_id must be a string.", param="request_id")
        msgs = self._messages(body)
        g = self._gen(model, msgs, body, "max_output_tokens", "input")
        w = _ResponseState(rid, model, body, g.max_tokens, msgs, self._store, srv.config.block_size)
        return await events.run(srv, request, g, srv._make_request(g), w)

    def _gen(self, model: str, msgs: list[dict[str, Any]], body: Mapping[str, Any], max_key: str,
             prompt_key: str) -> GenRequest:
        """A chat generation of `msgs` with the sampling fields of `body` (its output cap named `max_key`)."""
        tok = self.srv.tokenizer
        try:
            ids = tok.encode(tok.apply_chat_template(msgs))
        except ValueError as e:
            raise ApiError(str(e), param=prompt_key) from None
        gen_body = {k: body.get(k) for k in ("temperature", "top_p", "user", "priority", "stream")}
        gen_body["max_tokens"] = body.get(max_key)
        try:
            return _finish(True, model, ids, gen_body, self.srv.limits)
        except ApiError as e:
            e.param = {"max_tokens": max_key, "messages": prompt_key}.get(e.param or "", e.param)
            raise

    def _store(self, body: Mapping[str, Any], rid: str, obj: dict[str, Any], msgs: list[dict[str, Any]],
               text: str) -> None:
        if body.get("store", True) is False:
            return
        st = self.stored
        st[rid] = (obj, [*msgs, {"role": "assistant", "content": text}])
        while len(st) > MAX_STORED:
            st.popitem(last=False)

    async def chat_batch(self, request: web.Request) -> web.Response:
        """vLLM's /v1/chat/completions/batch: one generation per conversation, all at once, one choice each."""
        srv = self.srv
        body = await self._read_json(request)
        convs = body.get("messages") if isinstance(body, Mapping) else None
        if not isinstance(convs, list) or not convs or not all(isinstance(c, list) for c in convs):
            raise ApiError("messages must be a non-empty list of conversations.", param="messages")
        if body.get("stream"):
            raise ApiError("Streaming is not supported by the batch endpoint.", param="stream")
        gens = []
        for k, conv in enumerate(convs):
            try:
                gens.append(parse_chat({**body, "messages": conv}, srv.tokenizer, srv.limits))
            except ApiError as e:
                e.param = f"messages[{k}]" if e.param == "messages" else e.param
                raise
        reqs = [srv._make_request(g) for g in gens]
        streams = await self._run_all(reqs)
        tok = srv.tokenizer
        choices = []
        for k, (g, st) in enumerate(zip(gens, streams, strict=True)):
            text = tok.decode(tok.generated_ids(events.text_key(srv, g), 0, st.generated))
            choices.append(wire.chat_choice(k, text, st.finish_reason))
        use = wire.usage(sum(q.prompt_len for q in reqs), sum(st.generated for st in streams),
                         sum(q.num_cached for q in reqs))
        base = self._base("chatcmpl", gens[0].model)
        return json_response(wire.chat_body_of(base["id"], base["created"], base["model"], choices, use))

    async def invocations(self, request: web.Request) -> web.StreamResponse:
        """SageMaker's route: the body is served as the first route whose request it fits (vLLM's order)."""
        body = await self._read_json(request)
        if not isinstance(body, Mapping):
            raise ApiError("The request body must be a JSON object.")
        srv = self.srv
        handler = {CHAT: srv.chat_completions, COMPLETIONS: srv.completions, RERANK[0]: self.rerank,
                   SCORE[0]: self.score}.get(invocation_route(dict(body)), self.embeddings)
        return await handler(request)  # the body is read again from aiohttp's cache

    # -- Anthropic Messages API (vLLM serves it next to OpenAI's) -----------------------------------------
    def _anthropic(self, body: Any) -> list[dict[str, Any]]:
        """The chat messages of a /v1/messages or count_tokens body: `system`, then `messages`. Its errors are
        request validation errors, OpenAI-shaped as vLLM answers them."""
        if not isinstance(body, Mapping):
            raise ApiError("The request body must be a JSON object.")
        msgs = []
        try:
            system = body.get("system")
            if system is not None:
                msgs.append({"role": "system", "content": blocks_text(system, "system")})
            ms = body.get("messages")
            if not isinstance(ms, list) or not ms:
                raise ApiError("messages must be a non-empty list of messages.", param="messages")
            for k, m in enumerate(ms):
                if not isinstance(m, Mapping) or m.get("role") not in ("user", "assistant"):
                    raise ApiError(f"messages[{k}].role must be 'user' or 'assistant'.", param=f"messages[{k}].role")
                msgs.append({"role": m["role"], "content": blocks_text(m.get("content"), f"messages[{k}].content")})
        except BadRequest as e:  # the content's errors: the gateway's wording (blocks_text)
            raise ApiError(e.message, param=e.param) from None
        return msgs

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_json(request)
        msgs = self._anthropic(body)
        mt = body.get("max_tokens")
        if mt is None:
            raise ApiError("Field required: max_tokens.", param="max_tokens")
        srv = self.srv
        try:  # the serving's errors in Anthropic's shape (vLLM translates them)
            model = check_model(body, srv.limits)
            g = self._gen(model, msgs, body, "max_tokens", "messages")
            req = srv._make_request(g)
            return await events.run(srv, request, g, req, _MessageState(f"msg_{srv._id_prefix}{req.rid:08x}", model))
        except ApiError as e:
            return anthropic_error(e)

    async def count_tokens(self, request: web.Request) -> web.Response:
        body = await self._read_json(request)
        msgs = self._anthropic(body)
        try:
            check_model(body, self.srv.limits)
        except ApiError as e:
            return anthropic_error(e)
        tok = self.srv.tokenizer
        # vLLM sends the answer without nulls: no context_management unless asked for
        return json_response({"input_tokens": tok.count(tok.apply_chat_template(msgs))})

    async def get_response(self, request: web.Request) -> web.Response:
        rid = request.match_info["rid"]
        if rid not in self.stored:
            raise ApiError(f"Response with id '{rid}' not found.", 404, "response_id", err_type="invalid_request_error")
        return json_response(self.stored[rid][0])

    async def cancel_response(self, request: web.Request) -> web.Response:
        rid = request.match_info["rid"]
        if rid not in self.stored:
            raise ApiError(f"Response with id '{rid}' not found.", 404, "response_id", err_type="invalid_request_error")
        raise ApiError("Cannot cancel a synchronous response.", 400, "response_id", err_type="invalid_request_error")


_ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                          404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                          503: "overloaded_error"}


def anthropic_error(e: ApiError) -> web.Response:
    """An error of the Messages API's serving as vLLM answers it: Anthropic's shape and error types."""
    kind = _ANTHROPIC_ERROR_TYPES.get(e.status, "api_error" if e.status >= 500 else "invalid_request_error")
    return json_response({"type": "error", "error": {"type": kind, "message": e.message}}, e.status)


def cache_writes(prompt_len: int, cached: int, block_size: int) -> int:
    """The prompt tokens a request writes to the prefix cache: its full blocks beyond those it hit (vLLM's
    num_cache_creation_tokens)."""
    return max(0, prompt_len // block_size * block_size - cached)


class _ResponseState(events.Events):
    """One Responses answer: its object at each stage and its SSE events (vLLM's sequence, numbered)."""

    def __init__(self, rid: str, model: str, body: Mapping[str, Any], max_tokens: int, msgs: list[dict[str, Any]],
                 store: Callable[[Mapping[str, Any], str, dict[str, Any], list[dict[str, Any]], str], None],
                 block_size: int) -> None:
        self.rid = rid
        self.block_size = block_size
        self.msgs = msgs
        self.store = store
        self.model = model
        self.body = body
        self.max_tokens = max_tokens
        self.created = int(time.time())
        self.item_id = f"msg_{secrets.token_hex(16)}"
        self.seq = 0

    def _obj(self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None) -> dict[str, Any]:
        b = self.body
        return {
            "id": self.rid, "object": "response", "created_at": self.created, "model": self.model,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": b.get("instructions"), "metadata": b.get("metadata"), "output": output,
            "parallel_tool_calls": True, "temperature": b.get("temperature", 1.0), "tool_choice": "auto",
            "tools": [], "top_p": b.get("top_p", 1.0), "background": False, "max_output_tokens": self.max_tokens,
            "max_tool_calls": None, "previous_response_id": b.get("previous_response_id"), "prompt": None,
            "prompt_cache_options": None, "prompt_cache_key": b.get("prompt_cache_key"),
            "prompt_cache_retention": None, "reasoning": None, "safety_identifier": None, "service_tier": "auto",
            "status": status, "text": {"format": {"type": "text"}, "verbosity": None}, "top_logprobs": None,
            "truncation": "disabled", "usage": usage, "user": b.get("user"),
            # vLLM sends the sampling parameters it used: 0.0 penalties unless asked for
            "presence_penalty": b.get("presence_penalty") or 0.0, "frequency_penalty": b.get("frequency_penalty") or 0.0,
            "kv_transfer_params": None, "ec_transfer_params": None, "input_messages": None, "output_messages": None,
        }

    def in_progress(self) -> dict[str, Any]:
        return self._obj("in_progress", [], None)

    def _message(self, text: str, status: str) -> dict[str, Any]:
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        return {"id": self.item_id, "type": "message", "role": "assistant", "status": status,
                "content": [part] if status == "completed" else [], "phase": None}

    def whole(self, text: str, req: Request, n: int, finish_reason: str | None = "length") -> dict[str, Any]:
        # Generation runs to max_output_tokens ("length"): vLLM reports the response as incomplete.
        usage = {"input_tokens": req.prompt_len,
                 "input_tokens_details": {"cached_tokens": req.num_cached,
                                          "cache_write_tokens": cache_writes(req.prompt_len, req.num_cached,
                                                                             self.block_size),
                                          "input_tokens_per_turn": [req.prompt_len],
                                          "cached_tokens_per_turn": [req.num_cached]},
                 "output_tokens": n,
                 "output_tokens_details": {"reasoning_tokens": 0, "tool_output_tokens": 0,
                                           "output_tokens_per_turn": [n], "tool_output_tokens_per_turn": [0]},
                 "total_tokens": req.prompt_len + n}
        obj = self._obj("incomplete", [self._message(text, "completed")], usage)
        self.store(self.body, self.rid, obj, self.msgs, text)
        return obj

    def head(self) -> bytes:
        return (self.event("response.created", response=self.in_progress())
                + self.event("response.in_progress", response=self.in_progress()))

    def deltas(self, texts: list[str], final: bool) -> bytes:
        return b"".join(self.event("response.output_text.delta", item_id=self.item_id, output_index=0,
                                   content_index=0, delta=t, logprobs=[]) for t in texts)

    def failed(self, e: ApiError, req: Request, n: int) -> bytes:
        return self.event("error", code="server_error", message=e.message, param=None)

    def event(self, kind: str, **fields: Any) -> bytes:
        ev = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return f"event: {kind}\ndata: {wire.dumps(ev)}\n\n".encode()

    def opening(self, req: Request) -> bytes:
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return (self.event("response.output_item.added", output_index=0, item=self._message("", "in_progress"))
                + self.event("response.content_part.added", output_index=0, item_id=self.item_id, content_index=0,
                             part=part))

    def closing(self, text: str, req: Request, n: int) -> bytes:
        final = self.whole(text, req, n)
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": None}  # none asked for
        return (self.event("response.output_text.done", output_index=0, content_index=0, text=text, logprobs=[],
                           item_id=self.item_id)
                + self.event("response.content_part.done", item_id=self.item_id, output_index=0, content_index=0,
                             part=part)
                + self.event("response.output_item.done", output_index=0, item=self._message(text, "completed"))
                + self.event("response.incomplete", response=final))


class _MessageState(events.Events):
    """One Anthropic Messages answer and its SSE events (message_start with the first token, as vLLM sends it)."""

    def __init__(self, mid: str, model: str) -> None:
        self.mid = mid
        self.model = model

    @staticmethod
    def _usage(req: Request, n: int) -> dict[str, Any]:
        return {"input_tokens": req.prompt_len, "output_tokens": n, "cache_read_input_tokens": req.num_cached}

    @staticmethod
    def _ev(kind: str, **fields: Any) -> bytes:
        return f"event: {kind}\ndata: {wire.dumps({'type': kind, **fields})}\n\n".encode()

    def whole(self, text: str, req: Request, n: int, finish_reason: str | None) -> dict[str, Any]:
        # vLLM leaves the null fields out of a whole answer (no stop_sequence)
        return {"id": self.mid, "type": "message", "role": "assistant", "content": [{"type": "text", "text": text}],
                "model": self.model, "stop_reason": "max_tokens", "usage": self._usage(req, n)}

    def opening(self, req: Request) -> bytes:
        msg = {"id": self.mid, "type": "message", "role": "assistant", "content": [], "model": self.model,
               "stop_reason": None, "stop_sequence": None, "usage": self._usage(req, 0)}
        return (self._ev("message_start", message=msg)
                + self._ev("content_block_start", index=0, content_block={"type": "text", "text": ""}))

    def deltas(self, texts: list[str], final: bool) -> bytes:
        return b"".join(self._ev("content_block_delta", index=0, delta={"type": "text_delta", "text": t})
                        for t in texts)

    def closing(self, text: str, req: Request, n: int) -> bytes:
        return (self._ev("content_block_stop", index=0)
                + self._ev("message_delta", delta={"stop_reason": "max_tokens", "stop_sequence": None},
                           usage=self._usage(req, n))
                + self._ev("message_stop"))

    def failed(self, e: ApiError, req: Request, n: int) -> bytes:
        return self._ev("error", error={"type": "api_error", "message": e.message})
