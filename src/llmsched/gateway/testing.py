"""A tiny OpenAI/vLLM-compatible fake backend for the gateway's tests and throughput benchmark.

No engine model: it answers at once (or after `token_delay` per streamed token), exports vLLM's metric names
with its own counts, and can be told to fail (`mode`), so tests can kill or break a backend on demand. The
engine emulator (`llmsched.emulator`) is the realistic backend; this one is the trivial fast one.
"""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web


class FakeBackend:
    """Args:
        token_delay: seconds between streamed tokens (0: all at once).
        max_tokens_cap: most tokens produced per request (keeps tests fast whatever max_tokens says).
        model: the model id it serves.
    Attributes:
        mode: "ok"; "error" (HTTP 500 on completions); "hang" (never answers); "break" (streams 2 chunks then
            drops the connection).
        received: completions requests received; cancelled: handlers cancelled by a client disconnect.
    """

    def __init__(self, token_delay: float = 0.0, max_tokens_cap: int = 8, model: str = "fake-model") -> None:
        self.token_delay = token_delay
        self.max_tokens_cap = max_tokens_cap
        self.model = model
        self.mode = "ok"
        self.metrics_text: str | None = None  # when set, /metrics answers this instead (e.g. garbage)
        self.received = 0
        self.cancelled = 0
        self.running = 0
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        app = web.Application()
        app.router.add_post("/v1/completions", self._complete)
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        self.app = app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = self._site = web.TCPSite(self._runner, host, port)
        await site.start()
        h, p = site._server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
        self.url = f"http://{h}:{p}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def kill(self) -> None:
        """Die like a crashed process: stop listening and reset every open connection at once."""
        if self._site is not None and self._site._server is not None:
            self._site._server.close()
        if self._runner is not None and self._runner.server is not None:
            for proto in list(self._runner.server.connections):
                if proto.transport is not None:
                    proto.transport.abort()

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model",
                                                              "owned_by": "fake"}]})

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.mode != "error" else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.metrics_text is not None:
            return web.Response(text=self.metrics_text, content_type="text/plain")
        text = (
            "# TYPE vllm:num_requests_running gauge\n"
            f'vllm:num_requests_running{{model_name="{self.model}"}} {self.running}\n'
            "# TYPE vllm:num_requests_waiting gauge\n"
            f'vllm:num_requests_waiting{{model_name="{self.model}"}} 0\n'
            "# TYPE vllm:kv_cache_usage_perc gauge\n"
            f'vllm:kv_cache_usage_perc{{model_name="{self.model}"}} {min(1.0, self.running / 100):.3f}\n'
        )
        return web.Response(text=text, content_type="text/plain")

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        self.received += 1
        body = await request.json()
        chat = request.path.endswith("chat/completions")
        if self.mode == "error":
            return web.json_response({"object": "error", "message": "injected failure", "code": 500}, status=500)
        self.running += 1
        try:
            if self.mode == "hang":
                await asyncio.sleep(3600)
            n = min(int(body.get("max_tokens") or body.get("max_completion_tokens") or 16), self.max_tokens_cap)
            rid = f"cmpl-{self.received}"
            created = int(time.time())
            obj = "chat.completion" if chat else "text_completion"
            if not body.get("stream"):
                if self.token_delay:
                    await asyncio.sleep(self.token_delay * n)
                text = " tok" * n
                choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                          if chat else {"index": 0, "text": text, "finish_reason": "length", "logprobs": None})
                return web.json_response({"id": rid, "object": obj, "created": created, "model": self.model,
                                          "choices": [choice], "usage": {"prompt_tokens": 1, "completion_tokens": n,
                                                                         "total_tokens": n + 1}})
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            obj += ".chunk" if chat else ""
            for k in range(n):
                if self.mode == "break" and k == 2:
                    assert request.transport is not None
                    request.transport.close()
                    return resp
                if self.token_delay:
                    await asyncio.sleep(self.token_delay)
                delta = {"index": 0, "delta": {"content": " tok"}, "finish_reason": None} if chat else \
                    {"index": 0, "text": " tok", "finish_reason": None, "logprobs": None}
                if k == n - 1:
                    delta["finish_reason"] = "length"
                chunk = {"id": rid, "object": obj, "created": created, "model": self.model, "choices": [delta]}
                await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            so = body.get("stream_options")
            if isinstance(so, dict) and so.get("include_usage"):
                use = {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}
                usage = {"id": rid, "object": obj, "created": created, "model": self.model, "choices": [], "usage": use}
                await resp.write(b"data: " + json.dumps(usage).encode() + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1
