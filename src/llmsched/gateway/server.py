"""The asyncio shell of the gateway: aiohttp server in front, aiohttp client behind.

It moves bytes and reports events to the sans-I/O `Dispatcher`, which makes every decision. Why aiohttp for
both sides: one mature stack with a C HTTP parser, keep-alive connection pooling, streaming in both directions
and handler cancellation on client disconnect; measured against uvicorn+starlette+httpx in
benchmarks/bench_gateway.py (see docs/gateway.md for the figures).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from typing import Any

import aiohttp
from aiohttp import web

from llmsched.core.types import Request
from llmsched.gateway.breaker import CircuitBreaker
from llmsched.gateway.config import GatewayConfig
from llmsched.gateway.dispatcher import Dispatcher
from llmsched.gateway.metrics import GatewayMetrics
from llmsched.gateway.openai_req import CHAT, COMPLETIONS, BadRequest, build_request, error_body, parse_body
from llmsched.gateway.record import Recorder, body_output_tokens, stream_output_tokens
from llmsched.gateway.scrape import MetricsParseError, parse_vllm_metrics, snapshot_from_metrics
from llmsched.policies.instance import ROUTERS
from llmsched.policies.request import REQUEST_POLICIES

log = logging.getLogger("llmsched.gateway")

_JSON = "application/json"
_HOP = {"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}


def _err(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
         headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=error_body(message, kind, param, status), content_type=_JSON,
                        headers=headers)


_NO_BACKEND = -1  # a queued request's future gets this when no backend is left to serve it


class _UpstreamFailure(Exception):
    """The backend failed before the client got a byte: the request may go elsewhere."""


class Gateway:
    """One gateway process. `await start(host, port)`, then `await stop()` drains and closes."""

    def __init__(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg
        policy = REQUEST_POLICIES.create(cfg.request_policy.name, cfg.request_policy.params)
        router = ROUTERS.create(cfg.router.name, cfg.router.params)
        b = cfg.breaker
        self.dispatcher = Dispatcher(policy, router, cfg.max_in_flight_per_backend, cfg.queue_bound,
                                     lambda: CircuitBreaker(b.failure_threshold, b.cooldown))
        self.metrics = GatewayMetrics(self.dispatcher, cfg.router.name, cfg.request_policy.name)
        self._t0 = time.monotonic()
        for url in cfg.backends:
            self.dispatcher.add_backend(url, 0.0)
        self._rid = itertools.count()
        self._keys = {f"Bearer {k}" for k in cfg.api_keys}
        self._admin_keys = {f"Bearer {k}" for k in cfg.admin_api_keys} or self._keys
        self.closing = False
        self._session: aiohttp.ClientSession | None = None
        self._probe: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._scraper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # fire-and-forget scrapes, kept alive until done
        self._idle = asyncio.Event()
        # No per-read limit: vLLM answers a non-streamed request only when generation ends, and a stream may
        # pause between tokens. `first_byte` bounds the wait for a stream's first chunk (see `_attempt`).
        self._timeout = aiohttp.ClientTimeout(total=cfg.timeouts.total, sock_connect=cfg.timeouts.connect)
        self._scrape_timeout = aiohttp.ClientTimeout(total=cfg.timeouts.scrape)
        self.app = self._make_app()
        self.url = ""
        self.recorder: Recorder | None = None
        if cfg.record is not None:
            r = cfg.record
            self.recorder = Recorder(r.path, cfg.block_size, r.class_header, r.max_bytes, r.buffer,
                                     time_scale=r.time_scale, backends=list(cfg.backends), t0=self.now())
            self.metrics.registry.register(self.recorder.collector())

    def now(self) -> float:
        return time.monotonic() - self._t0

    # -- lifecycle --------------------------------------------------------------------------------------
    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=self.cfg.max_request_bytes, middlewares=[self._guard])
        app.router.add_post(COMPLETIONS, self._completions)
        app.router.add_post(CHAT, self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/admin/backends", self._admin_list)
        app.router.add_post("/admin/backends", self._admin_add)
        app.router.add_post("/admin/backends/drain", self._admin_drain)
        app.router.add_delete("/admin/backends", self._admin_remove)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        # Keep-alive pool sized to the in-flight caps: one connection per concurrent upstream request.
        # A few more than the cap: retries may go past it.
        conn = aiohttp.TCPConnector(limit=0, limit_per_host=self.cfg.max_in_flight_per_backend + 4,
                                    ttl_dns_cache=300, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(connector=conn, timeout=self._timeout, auto_decompress=False,
                                              skip_auto_headers=("User-Agent",))
        # Scrapes, health probes and /v1/models get their own small pool: behind a backend's full pool of
        # long streams they would time out and open the breaker of a backend that is only busy.
        self._probe = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, limit_per_host=2),
                                            timeout=self._scrape_timeout, skip_auto_headers=("User-Agent",))
        # handler_cancellation: a client that disconnects cancels its handler, hence its upstream request.
        # A short shutdown_timeout: `stop` drains on its own first; what is left then is abandoned.
        self._runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=1024)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        h, p = sock.getsockname()[:2]
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
        if self._scraper:
            self._scraper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scraper
        if self._runner:
            await self._runner.cleanup()
        if self._session:
            await self._session.close()
        if self._probe:
            await self._probe.close()
        if self.recorder is not None:
            self.recorder.close()

    # -- middleware: auth, size limit, no bare 500s -----------------------------------------------------
    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path
        if path.startswith("/admin"):
            if self._admin_keys and request.headers.get("Authorization") not in self._admin_keys:
                return _err(401, "missing or invalid admin API key", "authentication_error")
        elif path.startswith("/v1/") and self._keys and request.headers.get("Authorization") not in self._keys:
            return _err(401, "missing or invalid API key (expected 'Authorization: Bearer <key>')",
                        "authentication_error")
        try:
            return await handler(request)
        except BadRequest as e:
            return _err(e.status, e.message, param=e.param)
        except web.HTTPRequestEntityTooLarge:
            return _err(413, f"request body larger than {self.cfg.max_request_bytes} bytes")
        except web.HTTPException as e:
            if e.status >= 400:
                return _err(e.status, e.reason)
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:  # a bug must still answer in OpenAI's format, and be logged
            log.exception("unhandled error on %s", path)
            return _err(500, "internal gateway error", "internal_error")

    # -- OpenAI endpoints -------------------------------------------------------------------------------
    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._proxy(request, COMPLETIONS)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._proxy(request, CHAT)

    def _pump(self) -> None:
        d = self.dispatcher
        if d.queued and not d.any_usable(self.now()):
            for req in d.take_all(self.now()):  # every backend drained or removed: fail fast, don't wait
                fut = req.shell_data
                if isinstance(fut, asyncio.Future) and not fut.done():
                    fut.set_result(_NO_BACKEND)
        for req, i in self.dispatcher.dispatch(self.now()):
            fut = req.shell_data
            if isinstance(fut, asyncio.Future) and not fut.done():
                fut.set_result(i)
            else:  # its client left between dispatch and now: give the slot back
                self.dispatcher.finish(req, i, self.now(), ok=False, backend_fault=False)
        if not self.dispatcher.queued and not self.dispatcher.in_flight:
            self._idle.set()

    async def _proxy(self, request: web.Request, endpoint: str) -> web.StreamResponse:
        t_arr = self.now()
        status = 500
        req: Request | None = None
        parsed = None
        try:
            if self.closing:
                status = 503
                return _err(503, "gateway is shutting down", "service_unavailable")
            if request.content_length is not None and request.content_length > self.cfg.max_request_bytes:
                status = 413
                return _err(413, f"request body larger than {self.cfg.max_request_bytes} bytes")
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge:  # no Content-Length (chunked upload): found while reading
                status = 413
                return _err(413, f"request body larger than {self.cfg.max_request_bytes} bytes")
            try:
                parsed = parse_body(raw, endpoint)
            except BadRequest as e:
                status = e.status
                return _err(e.status, e.message, param=e.param)
            d = self.dispatcher
            if not d.any_usable(t_arr):
                status = 503
                return _err(503, "no backend configured or all are draining", "service_unavailable")
            session = request.headers.get(self.cfg.session_header)
            req = build_request(parsed, next(self._rid), t_arr, self.cfg.block_size, session)
            fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            req.shell_data = fut
            if not d.submit(req, t_arr):
                status = 429
                return _err(429, "gateway queue is full; retry later", "rate_limit_exceeded",
                            headers={"Retry-After": str(self.cfg.retry_after)})
            self._pump()
            try:
                i = fut.result() if fut.done() else await asyncio.wait_for(fut, self.cfg.timeouts.queue)
                if i == _NO_BACKEND:
                    status = 503
                    return _err(503, "every backend was drained or removed while the request was queued",
                                "service_unavailable", headers={"Retry-After": str(self.cfg.retry_after)})
            except TimeoutError:
                d.cancel(req)
                status = 503
                return _err(503, f"no backend could take the request within {self.cfg.timeouts.queue} s",
                            "service_unavailable", headers={"Retry-After": str(self.cfg.retry_after)})
            except asyncio.CancelledError:
                if not d.cancel(req) and fut.done() and not fut.cancelled():
                    d.finish(req, fut.result(), self.now(), ok=False, backend_fault=False)
                    self._pump()
                status = 499
                raise
            self.metrics.queue.observe(self.now() - t_arr)
            try:
                resp, status = await self._forward(request, req, parsed.stream, raw, endpoint, i)
            except asyncio.CancelledError:
                status = 499  # nginx's "client closed request"
                raise
            return resp
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            if self.recorder is not None and req is not None and parsed is not None:
                self.recorder.record(req, status, parsed.stream, request.headers.get(self.recorder.class_header),
                                     parsed.body.get("priority"))

    async def _forward(self, request: web.Request, req: Request, stream: bool, raw: bytes, endpoint: str,
                       i: int) -> tuple[web.StreamResponse, int]:
        """Send to backend `i`, retrying elsewhere on failure before the client's first byte."""
        d = self.dispatcher
        tried: frozenset[int] = frozenset()
        last = ""
        while True:
            b = d.backends[i]
            try:
                out = await self._attempt(request, req, stream, raw, endpoint, i)
            except _UpstreamFailure as e:
                last = f"backend {b.url}: {e}"
                d.finish(req, i, self.now(), ok=False)
                tried = tried | {i}
                nxt = d.retry(req, i, tried, self.now()) if len(tried) <= self.cfg.retries else None
                if nxt is None:
                    self._pump()
                    return _err(502, f"upstream failed before responding ({last}); no backend left to retry",
                                "upstream_error"), 502
                i = nxt
                continue
            except BaseException:  # client gone (CancelledError): the upstream request closes with this task
                d.finish(req, i, self.now(), ok=False, backend_fault=False)
                self._pump()
                raise
            resp, status, fault = out
            d.finish(req, i, self.now(), ok=status < 400, backend_fault=fault)
            self._pump()
            return resp, status

    async def _attempt(self, request: web.Request, req: Request, stream: bool, raw: bytes, endpoint: str,
                       i: int) -> tuple[web.StreamResponse, int, bool]:
        """One upstream exchange. Returns (response, status, backend_fault) or raises `_UpstreamFailure`."""
        assert self._session is not None
        d = self.dispatcher
        url = d.backends[i].url + endpoint
        # identity: the body goes back to the client as is, so it must not come compressed.
        headers = {"Content-Type": _JSON, "Accept-Encoding": "identity"}
        try:
            if stream:
                async with asyncio.timeout(self.cfg.timeouts.first_byte):
                    up = await self._session.post(url, data=raw, headers=headers)
            else:
                up = await self._session.post(url, data=raw, headers=headers)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise _UpstreamFailure(f"{type(e).__name__}: {e}") from None
        try:
            if up.status >= 500:
                try:
                    detail = (await up.read())[:300].decode(errors="replace")
                except (aiohttp.ClientError, TimeoutError, OSError):
                    detail = ""
                raise _UpstreamFailure(f"HTTP {up.status} {detail}")
            ctype = up.headers.get("Content-Type", _JSON)
            if not (stream and up.status == 200):
                try:
                    body = await up.read()
                except (aiohttp.ClientError, TimeoutError, OSError) as e:
                    raise _UpstreamFailure(f"{type(e).__name__} while reading the body: {e}") from None
                d.first_token(req, i, self.now())  # a whole answer: its first token came with it
                req.num_output = body_output_tokens(body)
                self.metrics.e2e.labels(endpoint).observe(self.now() - req.arrival)
                return web.Response(status=up.status, body=body, headers={"Content-Type": ctype}), up.status, False
            # Streaming. vLLM sends its headers before the prefill; the first chunk is the first token. Until it
            # comes the client has nothing, so a backend that dies during the prefill is retried elsewhere.
            chunks_in = up.content.iter_any()
            try:
                async with asyncio.timeout(self.cfg.timeouts.first_byte):
                    first = await anext(chunks_in)
            except StopAsyncIteration:
                raise _UpstreamFailure("stream ended before its first chunk") from None
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                raise _UpstreamFailure(f"{type(e).__name__} before the first chunk: {e}") from None
            t_first = self.now()
            d.first_token(req, i, t_first)
            self.metrics.ttft.labels(endpoint).observe(t_first - req.arrival)
            out = web.StreamResponse(status=200, headers={"Content-Type": ctype, "Cache-Control": "no-cache"})
            await out.prepare(request)
            chunks = first.count(b"data: ")
            t_last = t_first
            tail = first[-2:]
            chunk = first
            try:
                await out.write(first)
                async for chunk in chunks_in:
                    chunks += chunk.count(b"data: ")
                    t_last = self.now()
                    tail = (tail + chunk)[-2:]
                    await out.write(chunk)
            except (ConnectionResetError, aiohttp.ClientConnectionResetError):
                up.close()  # client left mid-stream: abort the upstream request
                raise asyncio.CancelledError from None
            except (aiohttp.ClientError, TimeoutError) as e:
                # Bytes already reached the client: no retry; end the stream with an explicit error event,
                # after closing any event the upstream left half-sent (SSE events end with a blank line).
                msg = error_body(f"upstream stream broke: {type(e).__name__}: {e}", "upstream_error", None, 502)
                sep = b"" if tail == b"\n\n" else b"\n\n"
                with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
                    await out.write(sep + b"data: " + msg + b"\n\ndata: [DONE]\n\n")
                    await out.write_eof()
                return out, 502, True
            with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
                await out.write_eof()
            req.num_output = stream_output_tokens(first, chunk, chunks, endpoint == CHAT)
            now = self.now()
            self.metrics.e2e.labels(endpoint).observe(now - req.arrival)
            if chunks > 2:  # the last event is [DONE]
                self.metrics.tpot.labels(endpoint).observe((t_last - t_first) / (chunks - 2))
            return out, 200, False
        finally:
            up.release()

    # -- other endpoints --------------------------------------------------------------------------------
    async def _models(self, request: web.Request) -> web.Response:
        assert self._session is not None
        now = self.now()
        for b in self.dispatcher.live():
            if b.draining or not b.breaker.available(now):
                continue
            try:
                async with self._probe.get(b.url + "/v1/models") as r:  # type: ignore[union-attr]
                    if r.status == 200:
                        return web.Response(body=await r.read(), content_type=_JSON)
            except (aiohttp.ClientError, TimeoutError, OSError):
                continue
        data = [{"id": self.cfg.model_name, "object": "model", "owned_by": "llmsched"}] if self.cfg.model_name else []
        return web.json_response({"object": "list", "data": data})

    async def _health(self, request: web.Request) -> web.Response:
        now = self.now()
        up = sum(1 for b in self.dispatcher.live() if not b.draining and b.breaker.available(now))
        ok = up > 0 and not self.closing
        return web.json_response({"status": "ok" if ok else "unavailable", "backends_up": up,
                                  "queued": self.dispatcher.queued, "in_flight": self.dispatcher.in_flight},
                                 status=200 if ok else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

    # -- admin ------------------------------------------------------------------------------------------
    def _backend_info(self) -> list[dict[str, Any]]:
        return [{"index": b.index, "url": b.url, "state": b.state, "in_flight": b.in_flight, "served": b.served,
                 "failed": b.failed, "scraped": b.scraped} for b in self.dispatcher.live()]

    async def _admin_url(self, request: web.Request) -> str:
        url = request.query.get("url")
        if url is None:
            try:
                body = json.loads(await request.read() or b"{}")
            except ValueError:
                raise BadRequest("body must be JSON like {\"url\": \"http://host:port\"}") from None
            url = body.get("url") if isinstance(body, dict) else None
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise BadRequest("'url' must be an http(s) URL", "url")
        return url.rstrip("/")

    async def _admin_list(self, request: web.Request) -> web.Response:
        return web.json_response({"backends": self._backend_info(), "queued": self.dispatcher.queued})

    async def _admin_add(self, request: web.Request) -> web.Response:
        b = self.dispatcher.add_backend(await self._admin_url(request), self.now())
        task = asyncio.create_task(self._scrape_one(b.index))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._pump()
        return web.json_response({"added": b.url, "index": b.index, "backends": self._backend_info()})

    async def _admin_drain(self, request: web.Request) -> web.Response:
        url = await self._admin_url(request)
        try:
            self.dispatcher.drain(url)
        except KeyError:
            raise BadRequest(f"no backend {url}", "url", status=404) from None
        return web.json_response({"draining": url, "backends": self._backend_info()})

    async def _admin_remove(self, request: web.Request) -> web.Response:
        """Drain, wait for the backend's in-flight requests to finish, then forget it."""
        url = await self._admin_url(request)
        try:
            b = self.dispatcher.drain(url)
        except KeyError:
            raise BadRequest(f"no backend {url}", "url", status=404) from None
        deadline = time.monotonic() + self.cfg.drain_timeout
        while b.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if b.in_flight:
            return _err(409, f"{url} still has {b.in_flight} requests in flight after {self.cfg.drain_timeout} s; "
                        "it stays draining", "conflict")
        if not b.draining:  # re-added meanwhile: keep it
            return _err(409, f"{url} was re-added while it drained; not removed", "conflict")
        b.removed = True
        return web.json_response({"removed": url, "backends": self._backend_info()})

    # -- health & metrics scraping ----------------------------------------------------------------------
    async def _scrape_one(self, i: int) -> None:
        """Metrics if the backend serves vLLM's; else (none, or unparseable) its /health decides."""
        probe = self._probe
        assert probe is not None
        b = self.dispatcher.backends[i]
        try:
            try:
                async with probe.get(b.url + "/metrics") as r:
                    if r.status == 200:
                        text = await r.text()
                        snap = snapshot_from_metrics(parse_vllm_metrics(text), i, self.now())
                        self.dispatcher.scraped(i, snap, self.now())
                        return
            except (MetricsParseError, UnicodeDecodeError) as e:
                log.warning("backend %s: /metrics not usable (%s); probing /health", b.url, e)
            async with probe.get(b.url + "/health") as r:
                if r.status == 200:
                    self.dispatcher.scraped(i, None, self.now())
                    return
            self.dispatcher.scrape_failed(i, self.now())
        except (aiohttp.ClientError, TimeoutError, OSError):
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
                self._pump()  # breakers may have closed, snapshots changed: queued requests may go now
            except Exception:  # the loop is the gateway's heartbeat: log and carry on
                log.exception("scrape loop iteration failed")
            await asyncio.sleep(self.cfg.scrape_interval)
