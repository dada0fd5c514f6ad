"""OpenAI request bodies -> validated fields and a `Request` for the policies; OpenAI-style error bodies.

Validation is the gateway's first duty to a backend: a malformed body gets a 400 here with a message naming
the field, and never reaches (or crashes) an engine. Only what the gateway needs is checked strictly; other
fields pass through untouched for the engine to judge.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from llmsched.core.tokenizer import DEFAULT_TOKENIZER
from llmsched.core.types import Request
from llmsched.gateway.prefix import BlockHashes, Scratch, block_hash_array

_decode = msgspec.json.Decoder().decode  # ~3x json.loads on 51 KiB prompts; same objects, stricter (no NaN)

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
MESSAGES = "/v1/messages"  # Anthropic's Messages API, which vLLM serves too
CHAT_BATCH = "/v1/chat/completions/batch"  # vLLM's: several conversations, one choice each, never streamed
EMBEDDINGS = "/v1/embeddings"
CLASSIFY = "/classify"
POOLING = "/pooling"
SCORE = ("/score", "/v1/score")
RERANK = ("/rerank", "/v1/rerank", "/v2/rerank")
# Pooling routes (one forward pass, no decode): the engine model sees them as a request with one output token,
# the pooled result sampled at the end of the prefill.
INVOCATIONS = "/invocations"  # SageMaker's: vLLM serves the body as the first route whose request it fits
COHERE_EMBED = "/v2/embed"
GENERATIVE_SCORING = "/generative_scoring"  # vLLM's: P(label tokens) after query + item, one token per item
POOLING_ROUTES = (EMBEDDINGS, CLASSIFY, POOLING, COHERE_EMBED, GENERATIVE_SCORING, *SCORE, *RERANK)
# vLLM's Decisions API: each question is one read of the input + the question's prompt, one output token
# (the label's probability); the reads of a request run together.
DECISIONS = "/v1/decisions"
SYSTEMONE = "/v1/systemone"  # vLLM's structured decisions: the same reads, questions keyed by id
# Score fields vLLM accepts, as (queries, documents) pairs, in the order vLLM's request models try them.
SCORE_PAIRS = (("queries", "documents"), ("queries", "items"), ("data_1", "data_2"), ("text_1", "text_2"))


class BadRequest(ValueError):
    """A client error: becomes an OpenAI-style JSON error with `status`."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.code = code


# The fields vLLM 0.33 sends with every non-streamed completion / chat answer (it dumps its whole response
# model), null in a plain deployment (no logprobs, KV transfer or per-request metrics asked for). The emulator
# answers with them, the gateway adds them to the answers it assembles from streams.
COMPLETION_NULLS = {"service_tier": None, "system_fingerprint": None, "kv_transfer_params": None,
                    "ec_transfer_params": None, "metrics": None}
CHAT_NULLS = {**COMPLETION_NULLS, "prompt_logprobs": None, "prompt_token_ids": None, "prompt_text": None}
CHOICE_NULLS = {"token_ids": None, "routed_experts": None, "weight_versions": None}
COMPLETION_CHOICE_NULLS = {**CHOICE_NULLS, "prompt_logprobs": None, "prompt_token_ids": None}
MESSAGE_NULLS = {"refusal": None, "annotations": None, "audio": None, "function_call": None, "reasoning": None}


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | int | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()


@dataclass(slots=True)
class Parsed:
    body: dict[str, Any]
    text: str
    stream: bool
    max_tokens: int
    user: str | None
    priority: int = 0  # vLLM's extra field: lower is served first (read by priority-aware admission queues)
    # Prompt tokens the engine computes beyond `text`'s own: a cross-encoder scores each (query, document) pair
    # as one sequence, so the query is computed once per document.
    extra_tokens: int = 0


def _text_of_content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        parts = []
        for k, p in enumerate(content):
            if not isinstance(p, dict) or not isinstance(p.get("type"), str):
                raise BadRequest(f"{where}[{k}] must be an object with a string 'type'", f"{where}[{k}]")
            if p["type"] == "text":
                if not isinstance(p.get("text"), str):
                    raise BadRequest(f"{where}[{k}].text must be a string", f"{where}[{k}].text")
                parts.append(p["text"])
        return "".join(parts)
    raise BadRequest(f"{where} must be a string or a list of content parts", where)


def _int_field(body: dict[str, Any], name: str, lo: int) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise BadRequest(f"'{name}' must be an integer >= {lo}", name)
    return v


def json_object(raw: bytes) -> dict[str, Any]:
    """A request body: a JSON object whose `model`, if any, is a string; else `BadRequest`."""
    try:
        body = _decode(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("'model' must be a string", "model")
    return body


def invocation_route(body: dict[str, Any]) -> str:
    """The route vLLM's `/invocations` serves a body as, by its fields, in vLLM's order (chat, completions, then
    the pooling routes)."""
    if "messages" in body:
        return CHAT
    if "prompt" in body:
        return COMPLETIONS
    if "query" in body:
        return RERANK[0]
    if any(a in body or b in body for a, b in SCORE_PAIRS):
        return SCORE[0]
    return EMBEDDINGS


def parse_body(raw: bytes, endpoint: str) -> Parsed:
    """Parse and check a request body for `endpoint`; raises `BadRequest` with the offending field."""
    body = json_object(raw)
    if endpoint == INVOCATIONS:
        endpoint = invocation_route(body)
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean", "stream")
    so = body.get("stream_options")
    if so is not None and not isinstance(so, dict):
        raise BadRequest("'stream_options' must be an object", "stream_options")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise BadRequest("'user' must be a string", "user")
    priority = body.get("priority")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
        raise BadRequest("'priority' must be an integer (lower is served first)", "priority")
    n = _int_field(body, "n", 1)
    if n is not None and n > 128:
        raise BadRequest("'n' must be <= 128", "n")
    extra = 0
    if endpoint == CHAT:
        max_tokens = _int_field(body, "max_completion_tokens", 1) or _int_field(body, "max_tokens", 1) or 256
        text = _chat_text(body.get("messages"), "messages")
    elif endpoint == RESPONSES:
        max_tokens = _int_field(body, "max_output_tokens", 1) or 256
        text = _responses_text(body)
    elif endpoint == CHAT_BATCH:
        if stream:
            raise BadRequest(f"{endpoint} does not stream", "stream")
        convs = body.get("messages")
        if not isinstance(convs, list) or not convs or not all(isinstance(c, list) for c in convs):
            raise BadRequest("'messages' must be a non-empty list of conversations (lists of messages)", "messages")
        # One generation per conversation: the work of all of them, as one request for the router.
        per = _int_field(body, "max_completion_tokens", 1) or _int_field(body, "max_tokens", 1) or 256
        max_tokens = per * len(convs)
        text = "\n".join(_chat_text(c, f"messages[{k}]") for k, c in enumerate(convs))
    elif endpoint == MESSAGES:
        max_tokens = _int_field(body, "max_tokens", 1)
        if max_tokens is None:
            raise BadRequest("'max_tokens' is required", "max_tokens")
        text = _anthropic_text(body)
    elif endpoint in (DECISIONS, SYSTEMONE):
        text, extra, max_tokens = _decisions_text(body, endpoint)
    elif endpoint in POOLING_ROUTES:
        if stream:
            raise BadRequest(f"{endpoint} does not stream", "stream")
        max_tokens = 1
        text, extra = _pooling_text(body, endpoint)
    else:
        max_tokens = _int_field(body, "max_tokens", 1) or 16  # OpenAI's completions default
        text = _prompt_text(body.get("prompt"), "prompt")
    return Parsed(body, text, stream, max_tokens, user, priority or 0, extra)


def _chat_text(msgs: Any, param: str) -> str:
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest(f"'{param}' must be a non-empty list", param)
    texts = []
    for k, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not m["role"]:
            raise BadRequest(f"{param}[{k}] must be an object with a non-empty string 'role'", f"{param}[{k}]")
        texts.append(m["role"] + "\n" + _text_of_content(m.get("content"), f"{param}[{k}].content"))
    try:
        # The shared stand-in tokenizer's chat template: the same text, hence blocks, as the emulator sees.
        return DEFAULT_TOKENIZER.apply_chat_template(msgs)
    except ValueError:  # non-text parts (images...) pass through to the engine; index the text alone
        return "\n".join(texts)


def is_token_ids(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(p, int) and not isinstance(p, bool) for p in v)


def _prompt_text(prompt: Any, param: str) -> str:
    """A completions-style prompt: a string, a list of strings, token ids, or a list of token-id lists."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return "\n".join(prompt)
    if is_token_ids(prompt):
        return " ".join(map(str, prompt))
    if isinstance(prompt, list) and prompt and all(is_token_ids(q) for q in prompt):
        return "\n".join(" ".join(map(str, q)) for q in prompt)  # a batch of token-id prompts
    raise BadRequest(f"'{param}' must be a string, a list of strings, a list of token ids or a list of such "
                     "lists", param)


def _responses_text(body: dict[str, Any]) -> str:
    """The text of a Responses API request: `instructions` and every text found in `input` (a string, or a list
    of items: messages with string or part-list content, function-call outputs...)."""
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise BadRequest("'instructions' must be a string", "instructions")
    inp = body.get("input")
    parts = [instructions] if instructions else []
    if isinstance(inp, str):
        parts.append(inp)
    elif isinstance(inp, list) and inp:
        for k, item in enumerate(inp):
            if not isinstance(item, dict):
                raise BadRequest(f"input[{k}] must be an object (a message or another input item)", f"input[{k}]")
            content = item.get("content", item.get("output", item.get("arguments")))
            if isinstance(content, list):
                for j, p in enumerate(content):
                    if not isinstance(p, dict):
                        raise BadRequest(f"input[{k}].content[{j}] must be an object", f"input[{k}].content[{j}]")
                    if isinstance(p.get("text"), str):
                        parts.append(p["text"])
            elif isinstance(content, str):
                parts.append(content)
    else:
        raise BadRequest("'input' must be a string or a non-empty list of input items", "input")
    return "\n".join(parts)


def blocks_text(content: Any, param: str) -> str:
    """An Anthropic content value: a string or a list of blocks (text; a tool_result's content). The emulator's
    Messages routes read content with it too, so that a bad value is the same 400 from either."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for k, b in enumerate(content):
            if not isinstance(b, dict):
                raise BadRequest(f"{param}[{k}] must be a content block object", f"{param}[{k}]")
            if isinstance(b.get("text"), str):
                out.append(b["text"])
            elif b.get("type") == "tool_result":
                out.append(blocks_text(b.get("content", ""), f"{param}[{k}].content"))
        return "".join(out)
    raise BadRequest(f"'{param}' must be a string or a list of content blocks", param)


def _anthropic_text(body: dict[str, Any]) -> str:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("'messages' must be a non-empty list", "messages")
    parts = [] if body.get("system") is None else [blocks_text(body["system"], "system")]
    for k, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise BadRequest(f"messages[{k}] must be an object with role 'user' or 'assistant'", f"messages[{k}]")
        parts.append(m["role"] + "\n" + blocks_text(m.get("content"), f"messages[{k}].content"))
    return "\n".join(parts)


def _score_texts(v: Any, param: str) -> list[str]:
    """One side of a score request: a string, token ids, a multimodal `{"content": [parts]}`, or a list of those."""
    items = [v] if not isinstance(v, list) or is_token_ids(v) else v
    out = []
    for k, it in enumerate(items):
        if isinstance(it, str):
            out.append(it)
        elif is_token_ids(it):
            out.append(" ".join(map(str, it)))
        elif isinstance(it, dict) and isinstance(it.get("content"), list):
            out.append(_text_of_content(it["content"], f"{param}[{k}].content"))
        else:
            raise BadRequest(f"'{param}' must be a string, an object with 'content' parts, or a list of those",
                             param)
    if not out:
        raise BadRequest(f"'{param}' must not be empty", param)
    return out


def decision_parts(body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """(input text, questions) of a /v1/decisions body; the input's messages joined as vLLM joins them."""
    inp = body.get("input")
    if isinstance(inp, list) and inp and all(isinstance(m, dict) and m.get("role") == "user" for m in inp):
        inp = "\n\n".join(_text_of_content(m.get("content"), f"input[{k}].content") for k, m in enumerate(inp))
    if not isinstance(inp, str):
        raise BadRequest("'input' must be a string or a non-empty list of user messages", "input")
    qs = body.get("questions")
    if not isinstance(qs, list) or not qs or len(qs) > 200:
        raise BadRequest("'questions' must be a list of 1 to 200 questions", "questions")
    for k, q in enumerate(qs):
        if not isinstance(q, dict) or q.get("type") not in ("predicate", "choice", "score") \
                or not isinstance(q.get("instructions"), str):
            raise BadRequest(f"questions[{k}] must be an object with a 'type' (predicate, choice, score) and "
                             "string 'instructions'", f"questions[{k}]")
        options, key = {"choice": ("choices", "value"), "score": ("levels", "label")}.get(q["type"], (None, None))
        if options and (not isinstance(q.get(options), list) or len(q[options]) < 2
                        or not all(isinstance(o, dict) and key in o for o in q[options])):
            raise BadRequest(f"questions[{k}].{options} must list at least 2 objects with a '{key}'",
                             f"questions[{k}].{options}")
    return inp, qs


_SYSTEMONE_TYPES = ("choice", "noul", "score")


def systemone_parts(body: dict[str, Any]) -> tuple[str, dict[str, dict[str, Any]]]:
    """(context + state text, questions by id) of a /v1/systemone body; a state that is not text is its JSON."""
    if "state" not in body:
        raise BadRequest("'state' is required", "state")
    state = body["state"] if isinstance(body["state"], str) else json.dumps(body["state"])
    context = body.get("instructions")
    if context is not None and not isinstance(context, str):
        raise BadRequest("'instructions' must be a string", "instructions")
    qs = body.get("questions")
    if not isinstance(qs, dict) or not qs:
        raise BadRequest("'questions' must be a non-empty object of questions by id", "questions")
    for qid, q in qs.items():
        where = f"questions.{qid}"
        if not isinstance(q, dict) or q.get("type") not in _SYSTEMONE_TYPES:
            raise BadRequest(f"{where} must be an object with a 'type' ({', '.join(_SYSTEMONE_TYPES)})", where)
        c = q.get("criteria")
        if (q["type"] == "choice" and (not isinstance(c, dict) or not c)) \
                or (q["type"] == "score" and (not isinstance(c, list) or len(c) < 2)) \
                or (q["type"] == "noul" and c is not None and (not isinstance(c, dict) or not c.keys() <= {"true",
                                                                                                       "false"})):
            raise BadRequest(f"{where}.criteria does not fit a {q['type']} question", f"{where}.criteria")
    return (context + "\n\n" if context else "") + state, qs


def _decisions_text(body: dict[str, Any], endpoint: str) -> tuple[str, int, int]:
    """(text to index, extra prompt tokens, output tokens) of a /v1/decisions or /v1/systemone body: every read
    starts with the input (indexed with the first question); the others add the input again and their question."""
    inp, questions = decision_parts(body) if endpoint == DECISIONS else systemone_parts(body)
    qs = list(questions.values()) if isinstance(questions, dict) else questions
    if body.get("stream"):
        raise BadRequest(f"{endpoint} does not stream", "stream")
    texts = [json.dumps(q) for q in qs]
    tokens = [DEFAULT_TOKENIZER.count(t) for t in [inp, *texts]]
    return inp + "\n" + texts[0], (len(qs) - 1) * tokens[0] + sum(tokens[2:]), len(qs)


def _pooling_text(body: dict[str, Any], endpoint: str) -> tuple[str, int]:
    """(text to index, extra prompt tokens) of an embeddings / classify / pooling / score / rerank body."""
    if endpoint in SCORE or endpoint in RERANK or endpoint == GENERATIVE_SCORING:
        if endpoint in RERANK or endpoint == GENERATIVE_SCORING:
            if not isinstance(body.get("query"), str | dict) and not is_token_ids(body.get("query")):
                raise BadRequest("'query' must be a string, token ids, or an object with 'content' parts", "query")
            pair = ("query", "items" if endpoint == GENERATIVE_SCORING else "documents")
        else:
            pair = next((p for p in SCORE_PAIRS if p[0] in body or p[1] in body), SCORE_PAIRS[0])
        if body.get(pair[1]) is None:
            raise BadRequest(f"'{pair[1]}' is required", pair[1])
        queries = _score_texts(body.get(pair[0]), pair[0])
        docs = _score_texts(body[pair[1]], pair[1])
        if len(queries) != 1 and len(queries) != len(docs):
            raise BadRequest(f"'{pair[0]}' must hold one item or as many as '{pair[1]}' ({len(docs)})", pair[0])
        top_n = body.get("top_n")
        if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 0):
            raise BadRequest("'top_n' must be an integer >= 0", "top_n")
        # A cross-encoder computes each (query, document) pair: the query once per document. Indexed text: the
        # first pair (every pair starts with the query, so its blocks are what a prefix cache can share).
        if len(queries) == 1:
            extra = (len(docs) - 1) * DEFAULT_TOKENIZER.count(queries[0])
            return queries[0] + "\n" + "\n".join(docs), extra
        return "\n".join(q + "\n" + d for q, d in zip(queries, docs, strict=True)), 0
    if endpoint == COHERE_EMBED:  # Cohere's: exactly one of texts, images, inputs (content parts)
        given = [k for k in ("texts", "images", "inputs") if body.get(k) is not None]
        if len(given) != 1 or not isinstance(body[given[0]], list) or not body[given[0]]:
            raise BadRequest("exactly one of 'texts', 'images', 'inputs' must be a non-empty list", "texts")
        items = body[given[0]]
        if given[0] == "texts" and all(isinstance(t, str) for t in items):
            return "\n".join(items), 0
        if given[0] == "inputs" and all(isinstance(i, dict) and isinstance(i.get("content"), list) for i in items):
            return "\n".join(_text_of_content(i["content"], f"inputs[{k}].content") for k, i in enumerate(items)), 0
        if given[0] == "images" and all(isinstance(i, str) for i in items):
            return "", 0  # image tokens: not estimated
        raise BadRequest(f"'{given[0]}' has items of the wrong type", given[0])
    if body.get("messages") is not None:  # vLLM's chat-style pooling input
        return _chat_text(body["messages"], "messages"), 0
    inp = body.get("input")
    if isinstance(inp, list) and inp and all(isinstance(m, dict) and "role" in m for m in inp):
        return _chat_text(inp, "input"), 0
    return _prompt_text(inp, "input"), 0


def token_ids(text: str) -> np.ndarray:
    """The stand-in tokenizer's tokens (4 UTF-8 bytes each, same count and boundaries) without its id mixing.

    The gateway only needs counts and prefix identity; `prefix.block_hash_array` mixes the content anyway, so the
    tokenizer's per-token hash would be paid twice.
    """
    data = text.encode("utf-8", errors="surrogatepass")
    pad = -len(data) % 4
    if pad:
        data += b"\xff" * pad  # as the tokenizer pads: a byte that never occurs in UTF-8
    return np.frombuffer(data, dtype="<u4")


def build_request(parsed: Parsed, rid: int, now: float, block_size: int, session: str | None,
                  hash_blocks: bool = True, scratch: Scratch | None = None) -> Request:
    """The policies' view of a request. Block hashes only when `hash_blocks` (a prefix-aware router): the
    prompt length alone is cheap (the stand-in tokenizer's 4 UTF-8 bytes a token). `scratch`: the calling
    thread's hashing buffer (a 50 KiB prompt's halves as float64 are ~200 KiB: allocated afresh per request,
    they cost page faults)."""
    if hash_blocks:
        ids = token_ids(parsed.text)
        n = len(ids) + parsed.extra_tokens
        hashes: BlockHashes | tuple[()] = BlockHashes(block_hash_array(ids, block_size, scratch))
    else:
        text = parsed.text
        n = -(-(len(text) if text.isascii() else len(text.encode("utf-8", errors="surrogatepass"))) // 4)
        n += parsed.extra_tokens
        hashes = ()
    return Request(
        rid=rid,
        arrival=now,
        prompt_len=max(1, n),
        output_len=parsed.max_tokens,
        block_hashes=hashes or None,
        session=session or parsed.user,
        priority=parsed.priority,
    )
