"""The gateway's route table: the routes of vLLM's OpenAI-compatible server that a router can serve, and how each
is routed (docs/gateway.md, "Routes").

Four kinds:
- **admitted** (`ADMITTED`): completions, chat (and its batch), Responses, Anthropic Messages, SageMaker
  invocations, embeddings (and Cohere's), classification, pooling, scoring, generative scoring, reranking and
  decisions (and structured decisions) go through the admission queue and the router of the pool of the body's
  `model` (`gateway.pools`), like completions; their cost estimate is the prompt (a cross-encoder's score/rerank:
  every (query, document) pair; decisions: the input with each question) and the output tokens asked for (1 for
  the pooling routes: one forward pass, the pooled result at the end of the prefill; one a question for
  decisions). `gateway.server` proxies them.
- **any backend** (`ANY_BACKEND`): tokenisation, prompt rendering and token counting run on a backend's API
  server, not its engine: any healthy backend of the named model's pool answers (`Pools.healthy_backends`: only
  backends serving that model), no routing state is charged; an unknown model is the same 404 as elsewhere.
- **response id** (`/v1/responses/{id}`, `/v1/responses/{id}/cancel`): a stored response lives in the memory
  of the server that made it, so these go to that backend (the gateway names each response it routes, through
  vLLM's `request_id` field, and remembers where it went); an id it does not know is asked of each backend.
- **local**: `/version`, `/ping`, `/liveness`, `/readiness`, `/health_generate` (and `/health`, `/metrics`,
  `/v1/models`, `/admin/*` in `gateway.server`) are answered by the gateway itself.

LoRA loading and unloading (`/v1/load_lora_adapter`, `/v1/unload_lora_adapter`) are `gateway.server`'s: sent to
every live backend (of a base model), then the model lists are read again. Everything else is a 404 whose message
lists the supported routes. vLLM's other per-engine control routes (sleep, wake_up, reset caches, weights,
profiling, collective_rpc) are not proxied: they act on one engine, and a router would pick an arbitrary one.
"""

from __future__ import annotations

import itertools
import re
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec

from llmsched import __version__
from llmsched.gateway.http1 import HttpRequest
from llmsched.gateway.openai_req import (
    CHAT,
    CHAT_BATCH,
    COMPLETIONS,
    DECISIONS,
    INVOCATIONS,
    MESSAGES,
    POOLING_ROUTES,
    RESPONSES,
    SYSTEMONE,
    BadRequest,
    Parsed,
    error_body,
    json_object,
)

if TYPE_CHECKING:
    from llmsched.core.types import Request
    from llmsched.gateway.dispatcher import Backend
    from llmsched.gateway.server import Gateway

Handler = Callable[[HttpRequest], Awaitable[tuple[int, bytes, bytes]]]

ADMITTED = frozenset((COMPLETIONS, CHAT, CHAT_BATCH, RESPONSES, MESSAGES, INVOCATIONS, DECISIONS, SYSTEMONE,
                      *POOLING_ROUTES))
ANY_BACKEND = ("/tokenize", "/detokenize", "/v1/completions/render", "/v1/chat/completions/render",
               "/v1/messages/count_tokens")
RESPONSE_ID = re.compile(r"/v1/responses/([A-Za-z0-9_.:-]{1,200})(/cancel)?/?")
_JSON = b"application/json"
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode
# Body fields whose answer a re-assembled stream cannot reproduce: such non-streamed requests go upstream as is.
# vLLM's extras too: `return_token_ids` (RL rollouts: per-choice `token_ids`, top-level `prompt_token_ids`) and
# `kv_transfer_params` (disaggregated prefill: echoed in the answer) have no place in the re-assembled answer.
_NO_INTERNAL_STREAM = frozenset(("logprobs", "top_logprobs", "echo", "tools", "functions", "tool_choice", "best_of",
                                 "prompt_logprobs", "use_beam_search", "background", "include", "thinking",
                                 "return_token_ids", "kv_transfer_params"))
_REASSEMBLED = frozenset((COMPLETIONS, CHAT, RESPONSES, MESSAGES))
_PREAMBLE = (b'"response.created"', b'"response.in_progress"')
_TERMINAL = ("response.completed", "response.incomplete", "response.failed")


def internal_stream_ok(endpoint: str, body: dict[str, Any]) -> bool:
    """May a non-streamed request on `endpoint` go upstream as a stream and be re-assembled (see server.py)?"""
    if endpoint not in _REASSEMBLED:
        return False
    responses = endpoint == RESPONSES
    return all(_absent(body[k], responses) for k in _NO_INTERNAL_STREAM.intersection(body))  # a set lookup per key


def _absent(v: Any, responses: bool) -> bool:
    """A field left at "off": None or False (by identity: `logprobs: 0` asks for the sampled token's logprob, and
    0 == False in Python); for Responses also its defaults 0 and []."""
    return v is None or v is False or (responses and (v == [] or (type(v) is int and v == 0)))


def past_preamble(buf: bytes | bytearray) -> bool:
    """Does the start of a Responses stream hold a complete event past its preamble? vLLM sends
    `response.created` and `response.in_progress` before the prefill; the first event after them (a delta, or
    the end) is the first token."""
    end = buf.rfind(b"\n\n")
    if end < 0:
        return False
    head = bytes(buf[:end])
    n = head.count(b"data:")
    for p in _PREAMBLE:
        n -= head.count(p)
    return n > 0


def assemble_response(data: bytes) -> tuple[int, bytes, int | None]:
    """A non-streamed Responses answer (status, JSON, output tokens) from the SSE events of the same request:
    the `response` of its terminal event, which is the object vLLM answers without streaming."""
    evs = _events(data)
    if not evs:
        raise ValueError("stream without a terminal event")
    obj = evs[-1]
    if obj.get("type") == "error" or "error" in obj and obj.get("type") not in _TERMINAL:
        err = obj.get("error") if isinstance(obj.get("error"), dict) else obj
        code = err.get("code")
        status = code if isinstance(code, int) and 400 <= code < 600 else 502
        msg = err.get("message") or "upstream error"
        return status, error_body(str(msg), str(err.get("type") or "upstream_error"), err.get("param"), status), None
    if obj.get("type") in _TERMINAL and isinstance(obj.get("response"), dict):
        resp = obj["response"]
        usage = resp.get("usage")
        tokens = usage.get("output_tokens") if isinstance(usage, dict) else None
        return 200, _encode(resp), tokens if isinstance(tokens, int) else None
    raise ValueError(f"stream ends with a {obj.get('type')!r} event, not a terminal one")


def _events(data: bytes) -> list[dict[str, Any]]:
    """The JSON objects of an SSE body's `data:` lines, in order (an event's lines joined)."""
    out = []
    for ev in data.split(b"\n\n"):
        payload = b"".join(line[5:].strip() for line in ev.split(b"\n") if line.startswith(b"data:"))
        if payload and payload != b"[DONE]":
            out.append(_decode(payload))
    return out


def assemble_message(data: bytes) -> tuple[int, bytes, int | None]:
    """A non-streamed Anthropic Messages answer (status, JSON, output tokens) from the stream of the same
    request: `message_start`'s message with the text of its blocks and `message_delta`'s stop reason and usage.
    Only requests without tools or thinking are streamed internally, so the blocks are text."""
    msg: dict[str, Any] | None = None
    texts: dict[int, list[str]] = {}
    for obj in _events(data):
        kind = obj.get("type")
        if kind == "error":
            err = obj.get("error") if isinstance(obj.get("error"), dict) else {}  # Anthropic's shape, as vLLM's
            return 502, _encode({"type": "error", "error": {"type": str(err.get("type") or "api_error"),
                                                            "message": str(err.get("message") or "upstream error")}}), None
        if kind == "message_start":
            msg = dict(obj["message"])
        elif kind == "content_block_delta" and isinstance(obj.get("delta"), dict):
            texts.setdefault(obj.get("index", 0), []).append(obj["delta"].get("text") or "")
        elif kind == "content_block_start":
            texts.setdefault(obj.get("index", 0), [])
        elif kind == "message_delta" and msg is not None:
            msg.update({k: v for k, v in (obj.get("delta") or {}).items() if k in ("stop_reason", "stop_sequence")})
            if isinstance(obj.get("usage"), dict):
                msg["usage"] = {**(msg.get("usage") or {}), **obj["usage"]}
    if msg is None:
        raise ValueError("stream without a message_start event")
    msg["content"] = [{"type": "text", "text": "".join(texts[k])} for k in sorted(texts)]
    usage = msg.get("usage")
    tokens = usage.get("output_tokens") if isinstance(usage, dict) else None
    return 200, _encode(_no_nulls(msg)), tokens if isinstance(tokens, int) else None


def _no_nulls(obj: Any) -> Any:
    """`obj` without its null fields, at every depth: vLLM sends a whole Messages answer so (exclude_none)."""
    if isinstance(obj, dict):
        return {k: _no_nulls(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_no_nulls(v) for v in obj]
    return obj


def assemble_other(endpoint: str, data: bytes) -> tuple[int, bytes, int | None]:
    """The re-assembly of the Responses and Messages streams (`internal_stream_ok`)."""
    return assemble_response(data) if endpoint == RESPONSES else assemble_message(data)


class Routes:
    """The routes served besides completions and chat's data path; owned by one `Gateway`."""

    def __init__(self, gw: Gateway, max_owned: int = 100_000) -> None:
        self.gw = gw
        self._owner: OrderedDict[str, int] = OrderedDict()  # response id -> backend index (LRU, bounded)
        self._max_owned = max_owned
        self._rr = itertools.count()
        self._session: aiohttp.ClientSession | None = None
        self.local: dict[str, dict[str, Handler]] = {
            "/version": {"GET": self._version},
            "/ping": {"GET": gw._health, "POST": gw._health},
            "/readiness": {"GET": gw._health},
            "/health_generate": {"GET": gw._health},
            "/liveness": {"GET": self._liveness},
        }
        self.forwarded: dict[str, dict[str, Handler]] = {p: {"POST": self._any_backend} for p in ANY_BACKEND}

    # -- the table ---------------------------------------------------------------------------------------
    def table(self) -> dict[str, dict[str, Handler]]:
        return {**self.local, **self.forwarded}

    def match(self, path: str) -> dict[str, Handler] | None:
        """Routes with a parameter in the path."""
        m = RESPONSE_ID.fullmatch(path)
        if m is None:
            return None
        return {"POST": self._response_id} if m.group(2) else {"GET": self._response_id}

    def proxied(self, path: str) -> bool:
        """Does `path` reach a backend (so the client API keys apply)?"""
        return path in self.forwarded or RESPONSE_ID.fullmatch(path) is not None

    def supported(self) -> str:
        """Every route, with its methods, for the 404 message."""
        rows = [f"POST {p}" for p in sorted(ADMITTED)]
        rows += [f"{'/'.join(ms)} {p}" for p, ms in sorted(self.gw._routes.items())]
        rows += ["GET /v1/responses/{id}", "POST /v1/responses/{id}/cancel"]
        return ", ".join(rows)

    def not_found(self, path: str) -> str:
        return f"no route {path}; supported: {self.supported()}"

    # -- requests on the data path -----------------------------------------------------------------------
    @staticmethod
    def prepare(parsed: Parsed, endpoint: str, raw: bytes) -> tuple[bytes, str | None]:
        """The body to forward and the response id a Responses request will have: the client's `request_id`,
        else one the gateway adds (vLLM names the response after it), so the backend that stores it is known."""
        if endpoint != RESPONSES:
            return raw, None
        rid = parsed.body.get("request_id")
        if isinstance(rid, str) and rid:
            return raw, rid
        if rid is not None:
            raise BadRequest("'request_id' must be a non-empty string", "request_id")
        rid = f"resp_{secrets.token_hex(16)}"
        return raw[:len(raw.rstrip()) - 1] + b',"request_id":"' + rid.encode() + b'"}', rid

    def pin(self, req: Request, parsed: Parsed, endpoint: str, now: float) -> int | None:
        """The backend a request must go to, charged as the router's pick, or None (the router decides): a
        Responses request with a `previous_response_id` goes to the backend that stored that response (its
        history lives in that server's memory), past the admission queue, as a retry would."""
        if endpoint != RESPONSES:
            return None
        i = self._owner.get(parsed.body.get("previous_response_id"))  # type: ignore[arg-type]
        if i is None:
            return None
        d = self.gw.dispatcher.pool_of(req)  # the request's model pool (`Pools.assign`): its router is charged
        i = d.route(req, now, exclude=frozenset(b.index for b in d.backends if b.index != i), cap=False)
        if i is not None:
            req.first_scheduled = now
        return i

    def owned(self, response_id: str, backend: int) -> None:
        """`backend` answered the Responses request `response_id` (and may store it)."""
        o = self._owner
        o[response_id] = backend
        o.move_to_end(response_id)
        if len(o) > self._max_owned:
            o.popitem(last=False)

    # -- any healthy backend -----------------------------------------------------------------------------
    def healthy_backends(self, model: str | None) -> list[Backend]:
        """Backends that may answer a request for `model` now, in a rotating order: those of the model's pool
        (`Pools.healthy_backends`: serving `model`, not draining, breaker closed or probing). BadRequest: 404
        naming the served models for a model none serves, 400 without `model` when several base models are."""
        return self._rotate(self.gw.dispatcher.healthy_backends(model, self.gw.now()))

    def _rotate(self, ok: list[Backend]) -> list[Backend]:
        if ok:
            k = next(self._rr) % len(ok)
            ok = ok[k:] + ok[:k]
        return ok

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            t = self.gw.cfg.timeouts
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=t.total, connect=t.connect),
                skip_auto_headers=("User-Agent",))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _send(self, b: Backend, method: str, path: str, body: bytes | None) -> tuple[int, bytes, bytes]:
        headers = {"Content-Type": "application/json"} if body is not None else None
        async with self._client().request(method, b.url + path, data=body, headers=headers) as resp:
            return resp.status, await resp.read(), (resp.content_type or "application/json").encode()

    async def _any_backend(self, r: HttpRequest) -> tuple[int, bytes, bytes]:
        model = json_object(r.body or b"{}").get("model")
        backends = self.healthy_backends(model)
        if not backends:
            return 503, error_body(f"no healthy backend serves model {model!r}" if model else
                                   "no healthy backend", "service_unavailable", None, 503), _JSON
        last = ""
        for b in backends[:self.gw.cfg.retries + 1]:
            try:
                status, data, ctype = await self._send(b, "POST", r.path, r.body)
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                last = f"backend {b.url}: {type(e).__name__}: {e}"
                b.breaker.failure(self.gw.now())
                continue
            if status < 500:
                return status, data, ctype
            last = f"backend {b.url}: HTTP {status}"
        return 502, error_body(f"upstream failed ({last})", "upstream_error", None, 502), _JSON

    async def _response_id(self, r: HttpRequest) -> tuple[int, bytes, bytes]:
        m = RESPONSE_ID.fullmatch(r.path)
        assert m is not None
        rid = m.group(1)
        i = self._owner.get(rid)
        now = self.gw.now()  # any model: a response id names no model
        live = self._rotate([b for b in self.gw.dispatcher.live() if not b.draining and b.breaker.available(now)])
        backends = [b for b in live if b.index == i] if i is not None else live
        if i is not None and not backends:
            url = self.gw.dispatcher.backends[i].url
            return 503, error_body(f"the backend that holds response '{rid}' ({url}) is not available",
                                   "service_unavailable", None, 503), _JSON
        path = r.path + (f"?{r.query_string}" if r.query_string else "")
        for b in backends:
            try:
                status, data, ctype = await self._send(b, r.method, path, r.body if r.method == "POST" else None)
            except (aiohttp.ClientError, TimeoutError, OSError):
                continue
            if status != 404 or i is not None:
                return status, data, ctype
        return 404, error_body(f"Response with id '{rid}' not found.", "invalid_request_error", "response_id",
                               404), _JSON

    # -- answered here -----------------------------------------------------------------------------------
    async def _version(self, r: HttpRequest) -> tuple[int, bytes, bytes]:
        return 200, _encode({"version": __version__}), _JSON

    async def _liveness(self, r: HttpRequest) -> tuple[int, bytes, bytes]:
        return 200, _encode({"status": "alive"}), _JSON
