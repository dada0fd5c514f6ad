"""`EmulatorServer`: vLLM's OpenAI-compatible HTTP API in front of the engine model, in real time.

The handlers turn a body into a `Request` (stand-in tokenizer: prompt length and block hashes), hand it to
the `EngineDriver`, and write its tokens as they come. A client that goes away (a failed write while
streaming, or aiohttp cancelling the handler on disconnect) aborts its request in the engine, so its KV
blocks and batch slot free up as they would in vLLM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from llmsched.core.hashing import token_block_hashes
from llmsched.core.tokenizer import StandInTokenizer
from llmsched.core.types import Request
from llmsched.emulator import events, wire
from llmsched.emulator.driver import EngineDriver
from llmsched.emulator.events import json_response as _json_response
from llmsched.emulator.lora import Adapters
from llmsched.emulator.metrics import CONTENT_TYPE, EmulatorMetrics
from llmsched.emulator.protocol import (
    ApiError,
    GenRequest,
    Limits,
    chat_prompt,
    check_model,
    parse_chat,
    parse_completion,
    prompt_ids,
)
from llmsched.emulator.routes import ExtraRoutes
from llmsched.engine.config import EngineConfig
from llmsched.engine.engine import Engine
from llmsched.engine.lora import LoraConfig
from llmsched.model.base import StepCostModel

# Without max_tokens vLLM generates up to the end of the context window, which turns every client that forgets
# max_tokens into a 100k-token request; 256 tokens is a typical chat answer. Override with default_max_tokens.
DEFAULT_MAX_TOKENS = 256
# When neither the caller nor the cost model states a context window.
FALLBACK_MAX_MODEL_LEN = 32_768


def _error_response(e: ApiError) -> web.Response:
    return _json_response(e.body(), e.status)


class EmulatorServer:
    """One emulated vLLM instance.

    Args:
        model, gpu, tp: the preset priced by `llmsched.model.build_cost_model` (ignored when `cost` is given).
        speed: emulated seconds per real second.
        request_policy: name in `REQUEST_POLICIES` for the engine's waiting queue (`policy_params` its params).
        engine_config: vLLM engine parameters (block size, token budget, ...).
        served_model_name: the name clients must send (default: `model`); several names (vLLM's
            `--served-model-name a b`): all accepted and listed in `/v1/models`, the first one named in responses
            and metrics.
        seed: keys the synthetic output text (a request's own `seed` overrides it).
        cost: a ready cost model (a fitted one, or a simple one in tests).
        max_model_len: context window; default the cost model's `max_model_len`, else 32,768; never more than
            the KV cache holds.
        default_max_tokens: output length when a request gives no max_tokens.
        token_window_s, max_lag_s: see `EngineDriver`.
        lora_modules: LoRA adapters served from the start, name -> path (vLLM's `--lora-modules`); clients name
            one in `model`. See `emulator/lora.py`.
        max_loras: adapters in a batch and in GPU slots (vLLM's `--max-loras`); LoRA is on when this, or
            `lora_modules`, or `engine_config.lora` is given (default 1 slot).
    """

    def __init__(
        self,
        model: str = "llama-3.1-8b",
        gpu: str = "h100",
        tp: int | None = None,
        speed: float = 1.0,
        request_policy: str = "fcfs",
        engine_config: EngineConfig | None = None,
        served_model_name: str | Sequence[str] | None = None,
        seed: int = 0,
        *,
        cost: StepCostModel | None = None,
        policy_params: dict[str, Any] | None = None,
        max_model_len: int | None = None,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        token_window_s: float = 0.002,
        tokenizer: StandInTokenizer | None = None,
        max_lag_s: float = 0.005,
        lora_modules: dict[str, str] | None = None,
        max_loras: int | None = None,
    ) -> None:
        from llmsched.policies.request import REQUEST_POLICIES

        if cost is None:
            cost = _build_cost_model(model, gpu, tp)
        self.model = model
        names = [served_model_name] if isinstance(served_model_name, str) else list(served_model_name or ())
        self.served_model_names: tuple[str, ...] = tuple(dict.fromkeys(names)) or (model,)
        self.served_model_name = self.served_model_names[0]
        self.seed = seed
        self.config = engine_config or EngineConfig()
        if (lora_modules or max_loras) and (self.config.lora is None or max_loras):
            lcfg = (self.config.lora or LoraConfig()).model_copy(update={"max_loras": max_loras or 1})
            self.config = self.config.model_copy(update={"lora": LoraConfig.model_validate(lcfg.model_dump())})
        self.tokenizer = tokenizer or StandInTokenizer()
        policy = REQUEST_POLICIES.create(request_policy, policy_params)
        self.engine = Engine(cost, policy, self.config, instance=0)
        snap = self.engine.snapshot(0.0)
        capacity = snap.num_total_blocks * self.config.block_size
        if max_model_len is not None and max_model_len < 1:  # 0 would fall through `or` to the default
            raise ValueError(f"max_model_len must be >= 1, got {max_model_len}")
        mml = max_model_len or getattr(cost, "max_model_len", None) or FALLBACK_MAX_MODEL_LEN
        self.max_model_len = int(min(mml, capacity))
        if default_max_tokens < 1:
            raise ValueError(f"default_max_tokens must be >= 1, got {default_max_tokens}")
        self.limits = Limits((self.served_model_name,), self.max_model_len, default_max_tokens,
                             self.served_model_names[1:])
        self.adapters = Adapters(self.engine.lora, self.served_model_name, self.limits, lora_modules or {})
        cache_config = {
            "block_size": str(self.config.block_size),
            "num_gpu_blocks": str(snap.num_total_blocks),
            "gpu_memory_utilization": str(self.config.gpu_memory_utilization),
            "enable_prefix_caching": str(self.config.enable_prefix_caching),
        }
        self.metrics = EmulatorMetrics(
            self.served_model_name,
            lambda: self.engine.snapshot(self.driver.now() if self.driver.started else 0.0),
            cache_config,
            lambda: self.engine.stats.preemptions,
            self.max_model_len,
        )
        self.driver = EngineDriver(self.engine, speed, self.metrics, token_window_s=token_window_s,
                                   max_lag_s=max_lag_s)
        self.speed = self.driver.speed
        self._next_rid = 0
        self._id_prefix = secrets.token_hex(4)
        self._created = int(time.time())
        self._runner: web.AppRunner | None = None
        self.app = self._make_app()

    # -- app -------------------------------------------------------------------------------------------
    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[_errors], client_max_size=64 * 1024 * 1024)
        app[SERVER_KEY] = self
        r = app.router
        r.add_post("/v1/completions", self.completions)
        r.add_post("/v1/chat/completions", self.chat_completions)
        r.add_post("/v1/completions/render", self.render_completion)
        r.add_post("/v1/chat/completions/render", self.render_chat)
        r.add_get("/v1/models", self.models)
        r.add_post("/v1/load_lora_adapter", self.load_lora_adapter)
        r.add_post("/v1/unload_lora_adapter", self.unload_lora_adapter)
        r.add_get("/health", self.health)
        r.add_get("/ping", self.health)
        r.add_get("/metrics", self.prom)
        r.add_get("/version", self.version)
        r.add_post("/tokenize", self.tokenize)
        r.add_post("/detokenize", self.detokenize)
        for path in ("/server_info", "/get_server_info"):
            r.add_get(path, self.server_info)
        for path in ("/model_info", "/get_model_info"):
            r.add_get(path, self.model_info)
        ExtraRoutes(self, _read_json).attach(r)  # embeddings, pooling, scoring, Responses (emulator/routes.py)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, app: web.Application) -> None:
        self.driver.start()

    async def _on_cleanup(self, app: web.Application) -> None:
        await self.driver.stop()

    async def start(self, host: str = "127.0.0.1", port: int = 0, shutdown_timeout: float = 10.0) -> str:
        """Serve on host:port (0 = any free port); returns the base URL. A server starts once.

        `shutdown_timeout`: how long a graceful `stop` lets requests in flight finish.
        """
        # handler_cancellation: a client that disconnects cancels its handler, which aborts its request.
        runner = web.AppRunner(
            self.app, handler_cancellation=True, access_log=None, shutdown_timeout=shutdown_timeout
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        self._runner = runner
        bound = runner.addresses[0][1]
        return f"http://[{host}]:{bound}" if ":" in host else f"http://{host}:{bound}"

    async def stop(self, graceful: bool = True) -> None:
        """Stop serving. Graceful: requests in flight finish first (up to `shutdown_timeout`); otherwise they
        end at once, non-streamed ones with a 503 error, streamed ones with an error event (a killed engine)."""
        if not graceful:
            await self.driver.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- generation ------------------------------------------------------------------------------------
    def _make_request(self, g: GenRequest) -> Request:
        self._next_rid += 1
        bs = self.config.block_size
        hashes = token_block_hashes(g.prompt_ids, bs) if self.config.enable_prefix_caching else None
        return Request(
            rid=self._next_rid,
            arrival=0.0,
            prompt_len=len(g.prompt_ids),
            output_len=g.max_tokens,
            block_hashes=hashes,
            session=g.user,
            priority=g.priority,
            adapter=self.adapters.adapter_of(g.model),
        )

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await _read_json(request)
        return await self._generate(request, parse_completion(body, self.tokenizer, self.limits))

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await _read_json(request)
        return await self._generate(request, parse_chat(body, self.tokenizer, self.limits))

    async def _generate(self, request: web.Request, g: GenRequest) -> web.StreamResponse:
        req = self._make_request(g)
        rid = f"{'chatcmpl' if g.chat else 'cmpl'}-{self._id_prefix}{req.rid:08x}"
        return await events.run(self, request, g, req, events.CompletionEvents(g, rid))

    # -- other endpoints -------------------------------------------------------------------------------
    async def models(self, request: web.Request) -> web.Response:
        cards = [{
            "id": name,
            "object": "model",
            "created": self._created,
            "owned_by": "vllm",
            "root": self.model,
            "parent": None,
            "max_model_len": self.max_model_len,
            "permission": [wire.permission(self._created)],
        } for name in self.served_model_names]  # fmt: skip
        return _json_response({"object": "list", "data": [*cards, *self.adapters.cards()]})

    async def load_lora_adapter(self, request: web.Request) -> web.Response:
        text, read_s = self.adapters.load(await _read_json(request))
        await asyncio.sleep(read_s / self.speed)  # vLLM answers once the adapter is read (its add_lora)
        return web.Response(text=text)

    async def unload_lora_adapter(self, request: web.Request) -> web.Response:
        return web.Response(text=self.adapters.unload(await _read_json(request)))

    async def health(self, request: web.Request) -> web.Response:
        if self.driver.failed is not None:
            raise ApiError(f"the engine loop failed: {self.driver.failed!r}", 500)
        return web.Response(status=200)

    async def version(self, request: web.Request) -> web.Response:
        return _json_response({"version": "llmsched-emulator"})

    async def prom(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    def _prompt_of(self, body: dict[str, Any]) -> list[int]:
        if "messages" in body:
            return self.tokenizer.encode(chat_prompt(body, self.tokenizer))
        return prompt_ids(body.get("prompt"), self.tokenizer)

    async def tokenize(self, request: web.Request) -> web.Response:
        body = await _read_json(request)
        if not isinstance(body, dict):
            raise ApiError("The request body must be a JSON object.")
        if body.get("model") is not None:
            check_model(body, self.limits)
        ids = self._prompt_of(body)
        strs = self.tokenizer.token_texts(ids) if body.get("return_token_strs") else None
        return _json_response({"count": len(ids), "max_model_len": self.max_model_len, "tokens": ids,
                               "token_strs": strs})  # fmt: skip

    async def detokenize(self, request: web.Request) -> web.Response:
        body = await _read_json(request)
        toks = body.get("tokens") if isinstance(body, dict) else None
        if not isinstance(toks, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in toks
        ):
            raise ApiError("tokens must be a list of token ids.", param="tokens")
        return _json_response({"prompt": self.tokenizer.decode(toks)})

    def _render(self, g: GenRequest) -> dict[str, Any]:
        self._next_rid += 1
        return {
            "request_id": f"{'chatcmpl' if g.chat else 'cmpl'}-{self._id_prefix}{self._next_rid:08x}",
            "token_ids": g.prompt_ids,
            "sampling_params": {"max_tokens": g.max_tokens},
            "model": g.model,
        }

    async def render_completion(self, request: web.Request) -> web.Response:
        body = await _read_json(request)
        return _json_response([self._render(parse_completion(body, self.tokenizer, self.limits))])

    async def render_chat(self, request: web.Request) -> web.Response:
        body = await _read_json(request)
        return _json_response(self._render(parse_chat(body, self.tokenizer, self.limits)))

    async def server_info(self, request: web.Request) -> web.Response:
        # No model_path / tokenizer_path: sglang-router would try to download a tokenizer from them.
        cfg = self.config
        snap = self.engine.snapshot(self.driver.now())
        return _json_response({
            "served_model_name": self.served_model_name,
            "context_length": self.max_model_len,
            "page_size": cfg.block_size,
            "max_running_requests": cfg.max_num_seqs,
            "max_total_num_tokens": snap.num_total_blocks * cfg.block_size,
            "chunked_prefill_size": cfg.max_num_batched_tokens,
            "disable_radix_cache": not cfg.enable_prefix_caching,
            "version": "llmsched-emulator",
        })  # fmt: skip

    async def model_info(self, request: web.Request) -> web.Response:
        return _json_response({"is_generation": True, "served_model_name": self.served_model_name,
                               "context_length": self.max_model_len})  # fmt: skip


def _build_cost_model(model: str, gpu: str, tp: int | None) -> StepCostModel:
    try:
        from llmsched.model import build_cost_model  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover
        from llmsched.model.roofline import build_cost_model
    return build_cost_model(model, gpu, tp)


async def _read_json(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ApiError(f"Invalid JSON in the request body: {type(e).__name__}: {e}") from None


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """ApiError -> its OpenAI error JSON; aiohttp's own HTTP errors (404 route, 405, 413) keep their status
    but get the same JSON shape."""
    try:
        return await handler(request)
    except ApiError as e:
        return _error_response(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _error_response(ApiError(e.reason or "error", e.status, err_type=type(e).__name__))
    except asyncio.CancelledError:
        raise
    except Exception as e:  # a bug: still answer JSON, never a bare 500 page
        with contextlib.suppress(Exception):
            request.app.logger.exception("emulator handler failed")
        return _error_response(ApiError(f"{type(e).__name__}: {e}", 500))


SERVER_KEY = web.AppKey("llmsched_emulator", EmulatorServer)


def create_app(**kwargs: Any) -> web.Application:
    """An aiohttp application serving a new `EmulatorServer(**kwargs)` (it is `app[SERVER_KEY]`)."""
    return EmulatorServer(**kwargs).app
