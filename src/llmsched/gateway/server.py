"""The asyncio shell of the gateway: a lean HTTP/1.1 data path (`gateway.http1`: asyncio protocols with httptools'
parser, keep-alive pools per backend) in front and behind, /metrics scrapes included; aiohttp only for /health
probes, /v1/models discovery, LoRA load/unload forwarding and the routes' any-backend forwarding (gateway.routes).

It moves bytes and reports events to the sans-I/O `Dispatcher`, which makes every decision. Why not aiohttp on
the data path any more: measured in benchmarks/bench_gateway.py, see docs/gateway.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import msgspec

from llmsched.core.types import Request
from llmsched.gateway.config import GatewayConfig
from llmsched.gateway.http1 import (
    Deadlines,
    HttpRequest,
    HttpServer,
    Pool,
    ServerConnection,
    Upstream,
    UpstreamError,
)
from llmsched.gateway.metrics import GatewayMetrics
from llmsched.gateway.openai_req import (
    CHAT,
    CHAT_NULLS,
    CHOICE_NULLS,
    COMPLETION_CHOICE_NULLS,
    COMPLETION_NULLS,
    COMPLETIONS,
    MESSAGE_NULLS,
    RESPONSES,
    BadRequest,
    Parsed,
    build_request,
    error_body,
    parse_body,
)
from llmsched.gateway.pools import Pools, parse_model_list, with_lora
from llmsched.gateway.prefix import Scratch
from llmsched.gateway.record import Recorder
from llmsched.gateway.routes import ADMITTED, Routes, assemble_other, internal_stream_ok, past_preamble
from llmsched.gateway.scrape import MetricsParseError, metrics_values, read_samples, snapshot_from_metrics

log = logging.getLogger("llmsched.gateway")

_JSON = b"application/json"
_NO_BACKEND = -1  # a queued request's future gets this when no backend is left to serve it
_OPENAI = (COMPLETIONS, CHAT)  # re-assembled by `assemble`; the Responses and Messages streams by routes.py
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode
_COMPLETION_TOKENS = re.compile(rb'"(?:completion|output)_tokens"\s*:\s*(\d+)')  # Responses: output_tokens
_NOT_TOKENS = (b'"text":""', b'"text": ""', b'"content":""', b'"content": ""', b'"choices":[]', b'"choices": []',
               b"data: [DONE]")


def tune_gc() -> None:
    """For a long-running gateway process: move everything allocated at start-up (modules, policies, numpy) out
    of the cyclic collector's reach and collect the young generation less often. Each request allocates a
    few dozen short-lived objects; with the defaults, collections took ~13% of the CPU of a proxied request."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


class _UpstreamFailure(Exception):
    """The backend failed before the client got a byte: the request may go elsewhere."""


class Outcome:
    """What is known of one request when it completes (the gateway's single completion point, `_complete`)."""

    __slots__ = ("endpoint", "arrival", "stream", "status", "backend", "ttft", "e2e", "tokens", "tpot", "recorded",
                 "response_id", "model")

    def __init__(self, endpoint: str, arrival: float) -> None:
        self.endpoint = endpoint
        self.model: str | None = None  # the label of the model pool it went to (gateway.pools), once resolved
        self.arrival = arrival
        self.stream = False
        self.status = 500
        self.backend = -1  # index of the backend that answered (the last one tried), -1 if none
        self.ttft: float | None = None  # arrival to the first token (s)
        self.e2e: float | None = None  # arrival to the last byte (s)
        self.tokens: int | None = None  # generated tokens (usage, else content events)
        self.tpot: float | None = None
        # Only while `serve --record` is on: (the request, its class header, its prompt text when its pool's
        # router did not hash it) for the recorder.
        self.recorded: tuple[Request, str | None, str | None] | None = None
        self.response_id: str | None = None  # a Responses request: the id its backend stores the answer under


_WHOLE, _WAIT_FIRST, _STREAM, _COLLECT = range(4)


class _Attempt:
    """One upstream exchange, driven by the upstream protocol's callbacks: the handler awaits only its end.

    At the headers it picks a mode: a whole answer (error statuses, non-SSE bodies) is buffered; a stream waits
    for its first chunk, the first token (vLLM sends its headers before the prefill), which reports it to the
    router at once; then chunks are either written straight to the client (no task switch per chunk; the
    upstream is paused while the client is slow) or, for a non-streamed request sent as a stream, collected
    for re-assembly. Tokens are counted on the way: `usage.completion_tokens` when the stream carries usage,
    else the events that carry text (role-only, finish-only and usage-only events and [DONE] are not tokens).
    """

    __slots__ = ("gw", "conn", "req", "i", "out", "up", "ex", "internal", "mode", "fb_timer", "events",
                 "usage_tokens", "t_first", "t_last", "tail", "sent", "hold")

    def __init__(self, gw: Gateway, conn: ServerConnection, req: Request, i: int, out: Outcome, up: Upstream,
                 internal: bool) -> None:
        self.gw = gw
        self.conn = conn
        self.req = req
        self.i = i
        self.out = out
        self.up = up
        self.ex: Any = None
        self.internal = internal
        self.mode = _WHOLE
        self.fb_timer: tuple[int, int] | None = None  # the first-chunk deadline (`Gateway._deadlines`)
        self.events = 0
        self.usage_tokens = -1
        self.t_first = 0.0
        self.t_last = 0.0
        self.tail = b""
        self.sent = False  # bytes of the answer reached the client: no retry possible
        # A Responses stream opens with events sent before the prefill: held until one past them (routes.py).
        self.hold: bytearray | None = bytearray() if out.endpoint == RESPONSES else None

    # -- callbacks from the upstream protocol ------------------------------------------------------------
    def on_head(self, ex: Any) -> None:
        if ex.status == 200 and ex.ctype.startswith("text/event-stream"):
            self.mode = _WAIT_FIRST
            ex.on_body = self._first
        elif self.fb_timer is not None:
            self.gw._deadlines.cancel(self.fb_timer)
            self.fb_timer = None

    def _first(self, data: bytes) -> None:
        if self.hold is not None:
            self.hold += data
            if not past_preamble(self.hold):
                return
            data, self.hold = bytes(self.hold), None
        if self.fb_timer is not None:
            self.gw._deadlines.cancel(self.fb_timer)
            self.fb_timer = None
        gw = self.gw
        self.t_first = now = gw.now()
        gw.dispatcher.first_token(self.req, self.i, now)
        self.out.ttft = now - self.req.arrival
        ex = self.ex
        if self.internal:
            self.mode = _COLLECT
            ex.parts.append(data)
            ex.on_body = ex.parts.append
            return
        self.mode = _STREAM
        self.sent = True
        self.conn.start_chunked(200, ex.ctype.encode("latin-1"))
        ex.on_body = self._forward
        self.conn.on_writable = self._writable
        self._forward(data)

    def _forward(self, data: bytes) -> None:
        conn = self.conn
        if conn.closed:
            self.up.abort()
            return
        n = data.count(b"data: ")
        if n:
            if b'""' in data or b"[]" in data or b"[DONE]" in data:  # every pattern below holds one of these
                for pat in _NOT_TOKENS:
                    n -= data.count(pat)
            self.events += n
            if b'"usage"' in data:
                m = _COMPLETION_TOKENS.findall(data)
                if m:
                    self.usage_tokens = int(m[-1])
            self.t_last = self.gw.now()
        self.tail = data[-2:]
        conn.write_chunk(data)
        if not conn.writable:
            self.up.pause()

    def _writable(self) -> None:
        if self.conn.closed:
            self.up.abort()
        else:
            self.up.resume()

    # -- the handler's side, once the exchange ended ----------------------------------------------------
    def finish(self, endpoint: str) -> tuple[int, bool]:
        """The exchange completed: answer the client. Raises `_UpstreamFailure` when it may be retried."""
        ex, out, conn = self.ex, self.out, self.conn
        gw = self.gw
        if self.mode == _WHOLE:
            if ex.status >= 500:
                raise _UpstreamFailure(f"HTTP {ex.status} {ex.body()[:300].decode(errors='replace')}")
            now = gw.now()
            gw.dispatcher.first_token(self.req, self.i, now)  # a whole answer: its first token came with it
            out.e2e = now - self.req.arrival
            body = ex.body()
            if ex.status < 400:  # usage sits at the end of an OpenAI answer: read only its tail
                m = _COMPLETION_TOKENS.findall(body, max(0, len(body) - 2048))
                if m:
                    out.tokens = int(m[-1])
            conn.respond(ex.status, body, ex.ctype.encode("latin-1"))
            return ex.status, False
        if self.mode == _WAIT_FIRST:
            raise _UpstreamFailure("stream ended before its first chunk")
        if self.mode == _COLLECT:
            try:
                status, body, out.tokens = (assemble(ex.body(), endpoint == CHAT) if endpoint in _OPENAI
                                            else assemble_other(endpoint, ex.body()))
            except (ValueError, TypeError, AttributeError) as e:
                raise _UpstreamFailure(f"unreadable stream: {e}") from None
            out.e2e = gw.now() - self.req.arrival
            conn.respond(status, body, _JSON)
            return status, status >= 500
        if conn.closed:
            raise asyncio.CancelledError
        conn.end_chunked()
        out.e2e = gw.now() - self.req.arrival
        out.tokens = n = self.usage_tokens if self.usage_tokens >= 0 else self.events
        if n > 1:
            out.tpot = (self.t_last - self.t_first) / (n - 1)
        return 200, False

    def failed(self, e: Exception) -> tuple[int, bool]:
        """The exchange broke. Before the client got a byte: `_UpstreamFailure` (retry elsewhere)."""
        if not self.sent:
            where = {_WHOLE: "", _WAIT_FIRST: " before the first chunk", _COLLECT: " after the first chunk"}
            raise _UpstreamFailure(f"{e}{where.get(self.mode, '')}")
        conn = self.conn
        if conn.closed:
            raise asyncio.CancelledError
        # Bytes already reached the client: no retry; end the stream with an explicit error event,
        # after closing any event the upstream left half-sent (SSE events end with a blank line).
        msg = error_body(f"upstream stream broke: {e}", "upstream_error", None, 502)
        conn.write_chunk((b"" if self.tail == b"\n\n" else b"\n\n") + b"data: " + msg + b"\n\ndata: [DONE]\n\n")
        conn.end_chunked()
        self.out.e2e = self.gw.now() - self.req.arrival
        return 502, True


_STREAM_KEYS = b',"stream":true,"stream_options":{"include_usage":true}}'


def _as_stream(raw: bytes) -> tuple[bytes | memoryview, ...]:
    """The body with `stream: true` and usage asked for, appended so they win over the client's own keys; as
    pieces for one `writelines` (the body is not copied)."""
    end = len(raw.rstrip())  # a JSON object (parse_body checked): its last non-blank byte is the closing brace
    return memoryview(raw)[:end - 1], _STREAM_KEYS


def assemble(data: bytes, chat: bool) -> tuple[int, bytes, int | None]:
    """A non-streamed answer (status, JSON, completion tokens) from the SSE events of the same request."""
    choices: dict[int, dict[str, Any]] = {}
    meta: dict[str, Any] | None = None
    usage = None
    for ev in data.split(b"\n\n"):
        ev = ev.strip()
        if not ev.startswith(b"data:"):
            continue
        payload = ev[5:].strip()
        if payload == b"[DONE]":
            break
        obj = _decode(payload)
        if "error" in obj:
            err = obj["error"]
            code = err.get("code") if isinstance(err, dict) else None
            return (code if isinstance(code, int) and 400 <= code < 600 else 502), _encode(obj), None
        meta = meta or obj
        if obj.get("usage"):
            usage = obj["usage"]
        for c in obj.get("choices") or ():
            acc = choices.setdefault(c.get("index", 0), {"text": [], "reasoning": [], "finish_reason": None,
                                                         "stop_reason": None})
            part = c.get("delta") or {} if chat else c
            if part.get("content" if chat else "text"):
                acc["text"].append(part["content" if chat else "text"])
            if chat and (part.get("reasoning") or part.get("reasoning_content")):  # vLLM 0.33: reasoning
                acc["reasoning"].append(part.get("reasoning") or part["reasoning_content"])
            for k in ("finish_reason", "stop_reason"):
                if c.get(k) is not None:
                    acc[k] = c[k]
    if meta is None:
        raise ValueError("stream without a completion chunk")
    out_choices = []
    for k in sorted(choices):
        acc = choices[k]
        text = "".join(acc["text"])
        if chat:  # vLLM's fields (openai_req.*_NULLS), the reasoning under vLLM 0.33's name
            msg = {"role": "assistant", "content": text, **MESSAGE_NULLS,
                   "reasoning": "".join(acc["reasoning"]) if acc["reasoning"] else None}
            ch: dict[str, Any] = {"index": k, "message": msg, "logprobs": None, **CHOICE_NULLS}
        else:
            ch = {"index": k, "text": text, "logprobs": None, **COMPLETION_CHOICE_NULLS}
        ch["finish_reason"] = acc["finish_reason"]
        ch["stop_reason"] = acc["stop_reason"]
        out_choices.append(ch)
    body = {"id": meta.get("id"), "object": "chat.completion" if chat else "text_completion",
            "created": meta.get("created"), "model": meta.get("model"), "choices": out_choices,
            **(CHAT_NULLS if chat else COMPLETION_NULLS)}
    if usage is not None:
        body["usage"] = usage
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return 200, _encode(body), tokens


class Gateway:
    """One gateway process. `await start(host, port)`, then `await stop()` drains and closes."""

    def __init__(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg
        # One model pool (queue, router) per served model id, over one backend list (gateway/pools.py).
        self.dispatcher = Pools(cfg, 0.0)
        self.metrics = GatewayMetrics(self.dispatcher)
        self._t0 = time.monotonic()
        self._discovered = -math.inf  # when the backends' /v1/models were last read
        self._discovery: asyncio.Task[None] | None = None  # a discovery run by the scrape loop, in the background
        self._rid = itertools.count()
        self._keys = {f"Bearer {k}" for k in cfg.api_keys}
        self._admin_keys = {f"Bearer {k}" for k in cfg.admin_api_keys} or self._keys
        self._session_header = cfg.session_header.lower()
        # Only prefix-aware routers read the prompt's block hashes on the data path (`Pool.uses_index`); the recorder
        # hashes the prompts of other pools on its writer thread, a batch at a time.
        self._scratch = Scratch()  # the event loop's hashing buffer (the recorder's writer thread has its own)
        self._retry_after = {"Retry-After": str(cfg.retry_after)}
        self.closing = False
        self._pools: dict[int, Pool] = {}
        self._probe_pools: dict[int, Pool] = {}
        self._probe: aiohttp.ClientSession | None = None
        self._http = HttpServer(self._handle, cfg.max_request_bytes, cfg.timeouts.client_read, self._error_body,
                                self._too_large, self._log_exception)
        self._scraper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # fire-and-forget scrapes, kept alive until done
        self._idle = asyncio.Event()
        self._scrape_timeout = aiohttp.ClientTimeout(total=cfg.timeouts.scrape)
        self._counters: dict[tuple[str, int], Any] = {}  # labelled children, looked up once
        self._hists: dict[str, tuple[Any, Any, Any]] = {}
        self._routes: dict[str, dict[str, Callable[[HttpRequest], Awaitable[tuple[int, bytes, bytes]]]]] = {
            "/v1/models": {"GET": self._models},
            "/v1/load_lora_adapter": {"POST": self._load_lora},
            "/v1/unload_lora_adapter": {"POST": self._unload_lora},
            "/health": {"GET": self._health},
            "/metrics": {"GET": self._metrics},
            "/admin/backends": {"GET": self._admin_list, "POST": self._admin_add, "DELETE": self._admin_remove},
            "/admin/backends/drain": {"POST": self._admin_drain},
        }
        self.routes = Routes(self)  # the other routes of vLLM's server (gateway/routes.py)
        self._routes.update(self.routes.table())
        self.url = ""
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by start()
        self._deadlines: Deadlines = None  # type: ignore[assignment]  # upstream timeouts; set by start()
        self._why_total = f"no complete answer within {cfg.timeouts.total} s"
        self._why_first = f"no first chunk within {cfg.timeouts.first_byte} s"
        self.recorder: Recorder | None = None
        if cfg.record is not None:
            r = cfg.record
            self.recorder = Recorder(r.path, cfg.block_size, r.class_header, r.max_bytes, r.buffer,
                                     time_scale=r.time_scale, backends=list(cfg.backends), t0=self.now())
            self.metrics.registry.register(self.recorder.collector())
        self._class_header = cfg.record.class_header.lower() if cfg.record is not None else ""  # headers: lower case

    def now(self) -> float:
        return time.monotonic() - self._t0

    # -- lifecycle --------------------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0, reuse_port: bool = False) -> str:
        # Scrapes, health probes and /v1/models use their own small pool: behind a backend's connections full
        # of long streams they would time out and open the breaker of a backend that is only busy.
        self._probe = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, limit_per_host=2),
                                            timeout=self._scrape_timeout, skip_auto_headers=("User-Agent",))
        self._loop = asyncio.get_running_loop()  # kept: each get_running_loop() is a getpid() system call
        self._deadlines = Deadlines(self._loop)
        await self._discover_all()  # which backend serves which model, before the first request
        h, p = await self._http.start(host, port, reuse_port)
        self.url = f"http://{h}:{p}"
        self._scraper = asyncio.create_task(self._scrape_loop())
        return self.url

    async def stop(self, drain: bool = True) -> None:
        """Refuse new requests, let queued and in-flight ones finish (up to drain_timeout), then close."""
        self.closing = True
        if drain:
            deadline = time.monotonic() + self.cfg.drain_timeout
            while (self.dispatcher.queued or self.dispatcher.in_flight) and time.monotonic() < deadline:
                self._idle.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._idle.wait(), 0.05)
        for task in (self._scraper, self._discovery):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._http.close()
        await asyncio.sleep(0)  # let cancelled handlers run their clean-up
        for pool in (*self._pools.values(), *self._probe_pools.values()):
            pool.close()
        if self._probe:
            await self._probe.close()
        await self.routes.close()
        if self.recorder is not None:
            self.recorder.close()

    # -- front door: routing of paths, auth, errors ------------------------------------------------------
    def _error_body(self, status: int, message: str) -> bytes:
        kind = "invalid_request_error" if status < 500 else "internal_error"
        return error_body(message, kind, None, status)

    def _log_exception(self, r: HttpRequest) -> None:
        log.exception("unhandled error on %s %s", r.method, r.path)

    def _too_large(self, conn: ServerConnection, r: HttpRequest) -> None:
        msg = f"request body larger than {self.cfg.max_request_bytes} bytes"
        conn.respond(413, error_body(msg, "invalid_request_error", None, 413), close=True)
        if r.path in ADMITTED:
            self._count(r.path, 413)

    def _count(self, endpoint: str, status: int) -> None:
        c = self._counters.get((endpoint, status))
        if c is None:
            c = self._counters[(endpoint, status)] = self.metrics.requests.labels(endpoint, str(status))
        c.inc()

    @staticmethod
    def _err(conn: ServerConnection, status: int, message: str, kind: str = "invalid_request_error",
             param: str | None = None, headers: dict[str, str] | None = None) -> int:
        conn.respond(status, error_body(message, kind, param, status), headers=headers)
        return status

    @classmethod
    def _bad(cls, conn: ServerConnection, e: BadRequest) -> int:
        """A client error as OpenAI's JSON: a 404 (an unknown model) is a `not_found_error`."""
        return cls._err(conn, e.status, e.message, "not_found_error" if e.status == 404 else "invalid_request_error",
                        e.param)

    async def _handle(self, conn: ServerConnection, r: HttpRequest) -> None:
        path = r.path
        if path in ADMITTED:
            if r.method != "POST":
                self._err(conn, 405, f"method {r.method} not allowed on {path} (use POST)")
            elif self._keys and r.headers.get("authorization") not in self._keys:
                self._err(conn, 401, "missing or invalid API key (expected 'Authorization: Bearer <key>')",
                          "authentication_error")
            else:
                await self._proxy(conn, r, path)
            return
        methods = self._routes.get(path.rstrip("/") or "/") or self.routes.match(path)
        if methods is None:
            self._err(conn, 404, self.routes.not_found(path), "not_found_error")
            return
        handler = methods.get(r.method) or (methods.get("GET") if r.method == "HEAD" else None)  # head only
        if handler is None:
            self._err(conn, 405, f"method {r.method} not allowed on {path} (allowed: {', '.join(methods)})")
            return
        if path.startswith("/admin") and self._admin_keys and r.headers.get("authorization") not in self._admin_keys:
            self._err(conn, 401, "missing or invalid admin API key", "authentication_error")
            return
        if self._keys and self.routes.proxied(path) and r.headers.get("authorization") not in self._keys:
            self._err(conn, 401, "missing or invalid API key (expected 'Authorization: Bearer <key>')",
                      "authentication_error")
            return
        try:
            status, body, ctype = await handler(r)
        except BadRequest as e:  # e.g. a tokenize for a model no backend serves: 404 naming the served ones
            self._bad(conn, e)
            return
        except Exception:  # a bug must still answer in OpenAI's format, and be logged
            log.exception("unhandled error on %s", path)
            self._err(conn, 500, "internal gateway error", "internal_error")
            return
        conn.respond(status, body, ctype)

    # -- the data path ----------------------------------------------------------------------------------
    def _pump(self) -> None:
        d = self.dispatcher
        if not d.queued:  # nothing waits (the common case after a finish): nothing to dispatch
            if not d.in_flight:
                self._idle.set()
            return
        now = self.now()
        for req in d.take_stranded(now):  # no backend of its pool left (drained, removed): fail fast
            fut = req.shell_data
            if isinstance(fut, asyncio.Future) and not fut.done():
                fut.set_result(_NO_BACKEND)
        for req, i in d.dispatch(now):
            fut = req.shell_data
            if isinstance(fut, asyncio.Future) and not fut.done():
                fut.set_result(i)
            else:  # its client left between dispatch and now: give the slot back
                d.finish(req, i, self.now(), ok=False, backend_fault=False)
        if not d.queued and not d.in_flight:
            self._idle.set()

    async def _proxy(self, conn: ServerConnection, r: HttpRequest, endpoint: str) -> None:
        out = Outcome(endpoint, self.now())
        try:
            out.status = await self._admit_and_forward(conn, r, endpoint, out)
        except asyncio.CancelledError:
            out.status = 499  # nginx's "client closed request"
            raise
        finally:
            self._complete(out)

    def _complete(self, out: Outcome) -> None:
        """The one place where a request's outcome is final: backend, TTFT, E2E, tokens, status."""
        self._count(out.endpoint, out.status)
        ttft, e2e, tpot = self._histograms(out.endpoint)
        if out.ttft is not None and out.stream:  # the histogram is the client-visible TTFT: streams only
            ttft.observe(out.ttft)
        if out.e2e is not None:
            e2e.observe(out.e2e)
        if out.tpot is not None:
            tpot.observe(out.tpot)
        if out.response_id is not None and out.status == 200:
            self.routes.owned(out.response_id, out.backend)
        if out.model is not None:
            self.metrics.by_model(out.model, out.status, out.ttft if out.stream else None, out.e2e)
        if out.recorded is not None:
            req, cls, text = out.recorded
            self.recorder.record(req, out, cls, text)  # type: ignore[union-attr]  # set only with a recorder

    def _histograms(self, endpoint: str) -> tuple[Any, Any, Any]:
        h = self._hists.get(endpoint)
        if h is None:
            m = self.metrics
            h = self._hists[endpoint] = (m.ttft.labels(endpoint), m.e2e.labels(endpoint), m.tpot.labels(endpoint))
        return h

    async def _admit_and_forward(self, conn: ServerConnection, r: HttpRequest, endpoint: str, out: Outcome) -> int:
        if self.closing:
            return self._err(conn, 503, "gateway is shutting down", "service_unavailable")
        try:
            parsed = parse_body(r.body, endpoint)
            raw, out.response_id = self.routes.prepare(parsed, endpoint, r.body)
        except BadRequest as e:
            return self._bad(conn, e)
        out.stream = parsed.stream
        d = self.dispatcher
        try:
            pool = d.resolve(parsed.body.get("model"))  # the model's pool: its queue and router (gateway/pools.py)
        except BadRequest as e:
            return self._bad(conn, e)
        out.model = pool.label
        t_arr = out.arrival
        if not pool.d.any_usable(t_arr):
            return self._err(conn, 503, "no backend configured or all are draining", "service_unavailable")
        req = build_request(parsed, next(self._rid), t_arr, self.cfg.block_size, r.headers.get(self._session_header),
                            pool.uses_index, self._scratch)
        d.assign(req, pool)
        if self.recorder is not None:
            out.recorded = (req, r.headers.get(self._class_header), None if pool.uses_index else parsed.text)
        pinned = self.routes.pin(req, parsed, endpoint, t_arr)  # a Responses follow-up: where its history is
        if pinned is not None:
            return await self._forward(conn, req, parsed, raw, endpoint, pinned, out)
        fut: asyncio.Future[int] = self._loop.create_future()
        req.shell_data = fut
        if not d.submit(req, t_arr):
            return self._err(conn, 429, "gateway queue is full; retry later", "rate_limit_exceeded",
                             headers=self._retry_after)
        self._pump()
        if fut.done():
            i = fut.result()
        else:
            try:
                i = await asyncio.wait_for(fut, self.cfg.timeouts.queue)
            except TimeoutError:
                if d.cancel(req) or not fut.done() or fut.cancelled():
                    return self._err(conn, 503, f"no backend could take the request within {self.cfg.timeouts.queue} s",
                                     "service_unavailable", headers=self._retry_after)
                # The race of Python >= 3.12's wait_for: the timeout fired after the request was dispatched
                # (it holds a slot and the router's counts): serve it, as it was in time.
                i = fut.result()
            except asyncio.CancelledError:
                if not d.cancel(req) and fut.done() and not fut.cancelled() and fut.result() != _NO_BACKEND:
                    d.finish(req, fut.result(), self.now(), ok=False, backend_fault=False)
                    self._pump()
                raise
        if i == _NO_BACKEND:
            return self._err(conn, 503, "every backend was drained or removed while the request was queued",
                             "service_unavailable", headers=self._retry_after)
        self.metrics.queue.observe(self.now() - t_arr)
        return await self._forward(conn, req, parsed, raw, endpoint, i, out)

    async def _forward(self, conn: ServerConnection, req: Request, parsed: Parsed, raw: bytes, endpoint: str,
                       i: int, out: Outcome) -> int:
        """Send to backend `i`, retrying elsewhere on failure before the client's first byte."""
        d = self.dispatcher
        tried: frozenset[int] = frozenset()
        while True:
            out.backend = i
            try:
                status, fault = await self._attempt(conn, req, parsed, raw, endpoint, i, out)
            except _UpstreamFailure as e:
                last = f"backend {d.backends[i].url}: {e}"
                d.finish(req, i, self.now(), ok=False)
                tried = tried | {i}
                nxt = d.retry(req, i, tried, self.now()) if len(tried) <= self.cfg.retries else None
                if nxt is None:
                    self._pump()
                    return self._err(conn, 502, f"upstream failed before responding ({last}); no backend left to "
                                     "retry", "upstream_error")
                i = nxt
                continue
            except BaseException:  # client gone (CancelledError): the upstream request was aborted
                d.finish(req, i, self.now(), ok=False, backend_fault=False)
                self._pump()
                raise
            d.finish(req, i, self.now(), ok=status < 400, backend_fault=fault)
            self._pump()
            return status

    def _probe_pool(self, i: int) -> Pool:
        """Scrapes' own keep-alive connections to backend `i` (never queued behind its long streams)."""
        pool = self._probe_pools.get(i)
        if pool is None:
            pool = self._probe_pools[i] = Pool(self.dispatcher.backends[i].url, self.cfg.timeouts.connect)
        return pool

    def _pool(self, i: int) -> Pool:
        pool = self._pools.get(i)
        if pool is None:
            pool = self._pools[i] = Pool(self.dispatcher.backends[i].url, self.cfg.timeouts.connect)
        return pool

    @staticmethod
    def _expire(up: Upstream, ex: Any, why: str) -> None:
        ex._fail(UpstreamError(why))
        up.abort()

    async def _attempt(self, conn: ServerConnection, req: Request, parsed: Parsed, raw: bytes, endpoint: str,
                       i: int, out: Outcome) -> tuple[int, bool]:
        """One upstream exchange. Returns (status, backend_fault) or raises `_UpstreamFailure`."""
        pool = self._pool(i)
        tm = self.cfg.timeouts
        internal = not parsed.stream and self.cfg.stream_internally and internal_stream_ok(endpoint, parsed.body)
        body = _as_stream(raw) if internal else (raw,)
        head = pool.head(endpoint, sum(map(len, body)))
        deadlines = self._deadlines
        for fresh in (False, True):
            try:
                up = await pool.acquire(fresh)
            except (OSError, TimeoutError) as e:
                raise _UpstreamFailure(f"{type(e).__name__}: {e}") from None
            att = _Attempt(self, conn, req, i, out, up, internal)
            ex = att.ex = up.send(head, body, att.on_head)
            timer = deadlines.add(tm.total, self._expire, up, ex, self._why_total)
            if parsed.stream or internal:  # the first chunk is the first token: bounded by first_byte
                att.fb_timer = deadlines.add(tm.first_byte, self._expire, up, ex, self._why_first)
            try:
                try:
                    await ex.done
                except UpstreamError as e:
                    if up.reused and ex.received == 0 and not fresh:
                        continue  # a kept-alive connection the backend had closed: once more on a new one
                    return att.failed(e)
                return att.finish(endpoint)
            finally:
                deadlines.cancel(timer)
                if att.fb_timer is not None:
                    deadlines.cancel(att.fb_timer)
                conn.on_writable = None
                ex.on_head = ex.on_body = None  # no cycle attempt <-> exchange left for the collector
                if not ex.done.done() or ex.done.cancelled():  # abandoned (client gone: the task's cancel
                    # cancels the future it awaits; or an error): the backend sees the close and aborts
                    up.abort()
        raise AssertionError("unreachable")

    # -- other endpoints --------------------------------------------------------------------------------
    @staticmethod
    def _json(obj: Any, status: int = 200) -> tuple[int, bytes, bytes]:
        return status, json.dumps(obj).encode(), _JSON

    async def _models(self, r: HttpRequest) -> tuple[int, bytes, bytes]:
        """The union of the models the backends serve (vLLM's cards; adapters with `parent`)."""
        data = self.dispatcher.model_cards()
        if not data and self.cfg.model_name:
            data = [{"id": self.cfg.model_name, "object": "model", "owned_by": "llmsched"}]
        return self._json({"object": "list", "data": data})

    async def _discover_one(self, i: int) -> None:
        """Read backend `i`'s /v1/models into its pools (kept as it was when the backend does not answer)."""
        b = self.dispatcher.backends[i]
        if b.removed or self.dispatcher.pinned(b.url):
            return
        try:
            async with self._probe.get(b.url + "/v1/models") as resp:  # type: ignore[union-attr]
                raw = await resp.read()
                cards = parse_model_list(raw) if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, OSError):
            return
        if self.dispatcher.set_models(i, cards):
            log.info("backend %s serves %s", b.url, ", ".join(sorted(b.models)) if b.models else "unknown models")

    async def _discover_all(self, only_new: bool = False) -> None:
        """Read every live backend's /v1/models (`only_new`: those that never answered one)."""
        if not only_new:
            self._discovered = time.monotonic()
        todo = [b.index for b in self.dispatcher.live() if not (only_new and b.probed)]
        await asyncio.gather(*(self._discover_one(i) for i in todo), return_exceptions=True)
        self._pump()  # a request may have a backend now, or none any more

    async def _lora_admin(self, r: HttpRequest, path: str) -> tuple[int, bytes, bytes]:
        """vLLM's runtime adapter loading, forwarded to every live backend (`?model=BASE`: only those serving
        BASE); the backends' model lists are read again at once, so the adapter's pool forms (or goes)."""
        if self._admin_keys and r.headers.get("authorization") not in self._admin_keys:
            raise BadRequest("missing or invalid admin API key", status=401, code="authentication_error")
        base = r.query.get("model")
        targets = [b for b in self.dispatcher.live()
                   if not b.draining and (base is None or (b.models is not None and base in b.models))]
        if not targets:
            raise BadRequest("no backend to forward to" + (f" serving {base}" if base else ""), "model", 404)
        results: list[tuple[str, int, bytes]] = []

        async def one(url: str) -> None:
            try:
                async with self._probe.post(url + path, data=r.body,  # type: ignore[union-attr]
                                            headers={"Content-Type": "application/json"}) as resp:
                    results.append((url, resp.status, await resp.read()))
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                results.append((url, 502, str(e).encode()))

        await asyncio.gather(*(one(b.url) for b in targets))
        await self._discover_all()
        failed = [(u, s, body) for u, s, body in results if s >= 300]
        if not failed:
            return 200, results[0][2], b"text/plain; charset=utf-8"
        detail = "; ".join(f"{u}: HTTP {s} {body[:200].decode(errors='replace')}" for u, s, body in failed)
        ok = [u for u, s, _ in results if s < 300]
        msg = f"{len(failed)} of {len(results)} backends failed ({detail})" + (f"; succeeded: {', '.join(ok)}" if ok
                                                                              else "")
        status = failed[0][1] if 400 <= failed[0][1] < 600 else 502
        return status, error_body(msg, "invalid_request_error" if status < 500 else "upstream_error", None, status), \
            _JSON

    async def _load_lora(self, r: HttpRequest) -> tuple[int, bytes, bytes]:
        return await self._lora_admin(r, "/v1/load_lora_adapter")

    async def _unload_lora(self, r: HttpRequest) -> tuple[int, bytes, bytes]:
        return await self._lora_admin(r, "/v1/unload_lora_adapter")

    async def _health(self, r: HttpRequest) -> tuple[int, bytes, bytes]:
        now = self.now()
        up = sum(1 for b in self.dispatcher.live() if not b.draining and b.breaker.available(now))
        ok = up > 0 and not self.closing
        return self._json({"status": "ok" if ok else "unavailable", "backends_up": up,
                           "queued": self.dispatcher.queued, "in_flight": self.dispatcher.in_flight},
                          200 if ok else 503)

    async def _metrics(self, r: HttpRequest) -> tuple[int, bytes, bytes]:
        return 200, self.metrics.render(), b"text/plain; version=0.0.4; charset=utf-8"

    # -- admin ------------------------------------------------------------------------------------------
    def _backend_info(self) -> list[dict[str, Any]]:
        return [{"index": b.index, "url": b.url, "state": b.state, "in_flight": b.in_flight, "served": b.served,
                 "failed": b.failed, "scraped": b.scraped} for b in self.dispatcher.live()]

    @staticmethod
    def _admin_url(r: HttpRequest) -> str:
        url = r.query.get("url")
        if url is None:
            try:
                body = json.loads(r.body or b"{}")
            except ValueError:
                raise BadRequest("body must be JSON like {\"url\": \"http://host:port\"}") from None
            url = body.get("url") if isinstance(body, dict) else None
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise BadRequest("'url' must be an http(s) URL", "url")
        return url.rstrip("/")

    async def _admin_list(self, r: HttpRequest) -> tuple[int, bytes, bytes]:
        return self._json({"backends": self._backend_info(), "queued": self.dispatcher.queued})

    async def _admin_add(self, r: HttpRequest) -> tuple[int, bytes, bytes]:
        b = self.dispatcher.add_backend(self._admin_url(r), self.now())
        await self._discover_one(b.index)
        task = asyncio.create_task(self._scrape_one(b.index))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._pump()
        return self._json({"added": b.url, "index": b.index, "backends": self._backend_info()})

    async def _admin_drain(self, r: HttpRequest) -> tuple[int, bytes, bytes]:
        url = self._admin_url(r)
        try:
            self.dispatcher.drain(url)
        except KeyError:
            raise BadRequest(f"no backend {url}", "url", status=404) from None
        return self._json({"draining": url, "backends": self._backend_info()})

    async def _admin_remove(self, r: HttpRequest) -> tuple[int, bytes, bytes]:
        """Drain, wait for the backend's in-flight requests to finish, then forget it."""
        url = self._admin_url(r)
        try:
            b = self.dispatcher.drain(url)
        except KeyError:
            raise BadRequest(f"no backend {url}", "url", status=404) from None
        deadline = time.monotonic() + self.cfg.drain_timeout
        while b.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if b.in_flight:
            raise BadRequest(f"{url} still has {b.in_flight} requests in flight after {self.cfg.drain_timeout} s; "
                             "it stays draining", status=409, code="conflict")
        if not b.draining:  # re-added meanwhile: keep it
            raise BadRequest(f"{url} was re-added while it drained; not removed", status=409, code="conflict")
        b.removed = True
        for pools in (self._pools, self._probe_pools):
            pool = pools.pop(b.index, None)
            if pool is not None:
                pool.close()
        return self._json({"removed": url, "backends": self._backend_info()})

    # -- health & metrics scraping ----------------------------------------------------------------------
    async def _scrape_one(self, i: int) -> None:
        """Metrics if the backend serves vLLM's; else (none, or unparseable) its /health decides."""
        probe = self._probe
        assert probe is not None
        b = self.dispatcher.backends[i]
        try:
            try:
                status, page = await self._probe_pool(i).get("/metrics", self.cfg.timeouts.scrape)
                if status == 200:
                    samples = read_samples(page.decode())
                    snap = with_lora(snapshot_from_metrics(metrics_values(samples), i, self.now()), samples)
                    self.dispatcher.scraped(i, snap, self.now())
                    return
            except (MetricsParseError, UnicodeDecodeError) as e:
                log.warning("backend %s: /metrics not usable (%s); probing /health", b.url, e)
            async with probe.get(b.url + "/health") as r:
                if r.status == 200:
                    self.dispatcher.scraped(i, None, self.now())
                    return
            self.dispatcher.scrape_failed(i, self.now())
        except (aiohttp.ClientError, UpstreamError, TimeoutError, OSError):
            self.dispatcher.scrape_failed(i, self.now())
        except Exception:  # never let one backend's oddity stop the scrape loop
            log.exception("scraping backend %s failed", b.url)
            self.dispatcher.scrape_failed(i, self.now())

    async def _scrape_loop(self) -> None:
        while True:
            try:
                live = [b.index for b in self.dispatcher.live()]
                if live:
                    await asyncio.gather(*(self._scrape_one(i) for i in live), return_exceptions=True)
                if self._discovery is None or self._discovery.done():
                    # In the background (a slow /v1/models must not delay scrapes): all backends every
                    # discovery_interval, and at once those that never answered (e.g. down at start, now up).
                    due = time.monotonic() - self._discovered >= self.cfg.discovery_interval
                    if due or any(not b.probed for b in self.dispatcher.live()):
                        self._discovery = asyncio.create_task(self._discover_all(only_new=not due))
                self._pump()  # breakers may have closed, snapshots changed: queued requests may go now
            except Exception:  # the loop is the gateway's heartbeat: log and carry on
                log.exception("scrape loop iteration failed")
            await asyncio.sleep(self.cfg.scrape_interval)
