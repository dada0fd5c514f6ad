"""A lean HTTP/1.1 layer for the gateway's data path: asyncio protocols (uvloop's transports when installed) with
httptools' C parser on both sides.

Why not aiohttp (which the gateway used before): per proxied request it built a `web.Request`, a middleware
chain, a `ClientResponse` and several stream readers, which cost ~140 us of CPU for a tiny request and ~45 us per
streamed chunk on this box. Here a request is parsed straight into a small `HttpRequest`, the body is joined once,
forwarded with one `writelines` (no copy), and the answer's chunks are written to the client from the upstream
protocol's callback (no task switch per chunk). See docs/gateway.md for the measurements.

Server side: `serve()` starts a listening server whose connections parse requests and hand each complete one to
`handler(conn, request)` in its own task, one at a time per connection (pipelined requests wait their turn). A
connection that closes cancels its running handler (so an upstream request is aborted when its client leaves).
Heads and bodies must arrive within `read_timeout` (slow clients are cut off) and bodies over `max_body` get 413.

Client side: `Pool` keeps idle keep-alive connections per backend; `Upstream.send()` writes one request and
returns an `Exchange` whose status/headers, body chunks and end arrive through callbacks and futures.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httptools

_REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 404: b"Not Found", 405: b"Method Not Allowed",
            408: b"Request Timeout", 409: b"Conflict", 413: b"Payload Too Large", 429: b"Too Many Requests",
            499: b"Client Closed Request", 500: b"Internal Server Error", 502: b"Bad Gateway",
            503: b"Service Unavailable", 504: b"Gateway Timeout"}
_STATUS_LINES: dict[int, bytes] = {}


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Status"))
    return line


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# ------------------------------------------------------------------------------------------------ server ---
class HttpRequest:
    """One parsed request: method, path, query string, lower-cased headers, body; `http10`: an HTTP/1.0 client."""

    __slots__ = ("method", "path", "query_string", "headers", "body", "keep_alive", "http10", "_url", "_parts",
                 "_size")

    def __init__(self) -> None:
        self.method = ""
        self.path = ""
        self.query_string = ""
        self.headers: dict[str, str] = {}
        self.body = b""
        self.keep_alive = True
        self.http10 = False
        self._url = b""
        self._parts: list[bytes] = []
        self._size = 0

    @property
    def query(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(self.query_string).items()}


Handler = Callable[["ServerConnection", HttpRequest], Awaitable[None]]
_JOIN_BELOW = 16384  # bodies up to this size are copied next to their head and sent as one buffer
_MAX_PIPELINED = 32  # complete requests waiting on one connection before it stops reading


class ServerConnection(asyncio.Protocol):
    """One client connection: parse, run the handler per request, write answers (plain or chunked)."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.cur: HttpRequest | None = None
        self.ready: deque[HttpRequest] = deque()
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.too_large = False
        self._paused = False
        self._drain: asyncio.Future[None] | None = None
        self.since = 0.0  # loop time when the connection went idle or a request began (slow-client sweep)
        self.on_writable: Callable[[], None] | None = None  # a relay that paused its upstream waits on this
        # The request being answered: HEAD (the answer's head only, RFC 9110 9.3.2) or from an HTTP/1.0 client
        # (no chunked coding, RFC 9112 6.1: a stream is sent raw and ended by closing the connection).
        self.head_only = False
        self.http10 = False

    # -- asyncio.Protocol ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        _nodelay(transport)
        self.server.connections.add(self)
        self.since = self.server.loop.time()

    def data_received(self, data: bytes) -> None:
        if self.parser is None:  # lost already
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as e:
            if not self.too_large:
                self._fail(400, f"malformed HTTP request: {e}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.parser = None  # type: ignore[assignment]  # parser <-> protocol: no cycle left for the collector
        self.server.connections.discard(self)
        if self.task is not None and not self.task.done():
            self.task.cancel()  # the client left: its handler (and upstream request) stops
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(ConnectionResetError("client closed the connection"))
        if self.on_writable is not None:
            self.on_writable()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if self.on_writable is not None:
            self.on_writable()

    # -- httptools callbacks ---------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.cur = HttpRequest()
        if self.task is None:
            self.since = self.server.loop_time()

    def on_url(self, url: bytes) -> None:
        self.cur._url += url  # type: ignore[union-attr]

    def on_header(self, name: bytes, value: bytes) -> None:
        self.cur.headers[name.decode("latin-1").lower()] = value.decode("latin-1")  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        r = self.cur
        assert r is not None
        r.method = self.parser.get_method().decode("latin-1")
        u = r._url
        q = u.find(b"?")
        if q >= 0:
            r.path, r.query_string = u[:q].decode("latin-1"), u[q + 1:].decode("latin-1")
        else:
            r.path = u.decode("latin-1")
        r.keep_alive = self.parser.should_keep_alive()
        r.http10 = self.parser.get_http_version() == "1.0"
        n = r.headers.get("content-length")
        if n is not None and n.isdigit() and int(n) > self.server.max_body:
            self._too_large(r)
        elif r.headers.get("expect", "").lower() == "100-continue" and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        r = self.cur
        if r is None or self.too_large:
            return
        r._size += len(body)
        if r._size > self.server.max_body:
            self._too_large(r)
            return
        r._parts.append(body)

    def on_message_complete(self) -> None:
        r = self.cur
        self.cur = None
        if r is None or self.too_large:
            return
        parts = r._parts
        r.body = parts[0] if len(parts) == 1 else b"".join(parts)
        r._parts = []
        self.ready.append(r)
        if self.task is None:
            self._next()
        elif len(self.ready) >= _MAX_PIPELINED and self.transport is not None:
            self.transport.pause_reading()  # a client pipelining without reading answers: stop taking more

    # -- request handling ------------------------------------------------------------------------------
    def _next(self) -> None:
        if self.ready and not self.closed:
            r = self.ready.popleft()
            if len(self.ready) == _MAX_PIPELINED - 1 and self.transport is not None:
                self.transport.resume_reading()
            self.head_only = r.method == "HEAD"
            self.http10 = r.http10
            self.task = self.server.loop.create_task(self._run(r))
        else:
            self.task = None
            self.since = self.server.loop_time()  # idle keep-alive: closed after read_timeout without a request

    async def _run(self, r: HttpRequest) -> None:
        try:
            await self.server.handler(self, r)
        except asyncio.CancelledError:
            self.abort()
            raise
        except Exception:  # the handler answers its own errors; this is a last resort
            self.server.log_exception(r)
            if not self.closed:
                self.abort()
            return
        finally:
            self.on_writable = None
        if not r.keep_alive:
            self.close()
        if not self.closed:
            self._next()
        else:
            self.task = None

    def _too_large(self, r: HttpRequest) -> None:
        self.too_large = True
        self.server.on_too_large(self, r)

    def _fail(self, status: int, message: str) -> None:
        if self.transport is not None and not self.closed:
            self.respond(status, self.server.error_body(status, message), close=True)

    def timed_out(self) -> None:
        if self.cur is not None and not self.closed:  # a request half-sent for too long (slow loris)
            self._fail(408, f"request not received within {self.server.read_timeout} s")
        else:
            self.close()

    # -- writing -----------------------------------------------------------------------------------------
    def respond(self, status: int, body: bytes, ctype: bytes = b"application/json",
                headers: dict[str, str] | None = None, close: bool = False) -> None:
        t = self.transport
        if t is None or self.closed:
            return
        extra = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in headers.items()) if headers else b""
        conn = b"Connection: close\r\n" if close else b""
        head = b"%sContent-Type: %s\r\nContent-Length: %d\r\n%s%s\r\n" % (status_line(status), ctype, len(body),
                                                                          extra, conn)
        if self.head_only:
            t.write(head)
        elif len(body) <= _JOIN_BELOW:  # one buffer, one send: cheaper than a gather-write of small pieces
            t.write(head + body)
        else:
            t.writelines((head, body))
        if close:
            self.close()

    def start_chunked(self, status: int, ctype: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.writelines((status_line(status), b"Content-Type: ", ctype, b"\r\nCache-Control: no-cache\r\n",
                                       b"Connection: close\r\n\r\n" if self.http10
                                       else b"Transfer-Encoding: chunked\r\n\r\n"))

    def write_chunk(self, data: bytes) -> None:
        if data and self.transport is not None and not self.closed:
            if self.http10:
                self.transport.write(data)
            else:
                self.transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))

    def end_chunked(self) -> None:
        if self.transport is not None and not self.closed:
            if self.http10:
                self.close()  # the end of an HTTP/1.0 stream is the end of the connection
            else:
                self.transport.write(b"0\r\n\r\n")

    @property
    def writable(self) -> bool:
        return not self._paused and not self.closed

    async def drain(self) -> None:
        if self.closed:
            raise ConnectionResetError("client closed the connection")
        if self._paused:
            self._drain = self.server.loop.create_future()
            await self._drain

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.closed = True
            self.transport.abort()


class HttpServer:
    """Listening socket + live connections. The owner supplies the handler and the error formatting."""

    def __init__(self, handler: Handler, max_body: int, read_timeout: float,
                 error_body: Callable[[int, str], bytes], on_too_large: Callable[[ServerConnection, HttpRequest], None],
                 log_exception: Callable[[HttpRequest], None]) -> None:
        self.handler = handler
        self.max_body = max_body
        self.read_timeout = read_timeout
        self.error_body = error_body
        self.on_too_large = on_too_large
        self.log_exception = log_exception
        self.connections: set[ServerConnection] = set()
        self.server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        # The loop, kept from start(): asyncio.get_running_loop() costs a getpid() system call on every use.
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.loop_time: Callable[[], float] = time.monotonic

    async def _sweep(self) -> None:
        """Cut off connections idle, or sending one request, for longer than read_timeout (slow loris)."""
        period = min(1.0, self.read_timeout / 4)
        while True:
            await asyncio.sleep(period)
            limit = self.loop_time() - self.read_timeout
            for c in list(self.connections):
                if c.task is None and c.since < limit:
                    c.timed_out()

    async def start(self, host: str, port: int, reuse_port: bool = False) -> tuple[str, int]:
        loop = self.loop = asyncio.get_running_loop()
        self.loop_time = loop.time
        self.server = await loop.create_server(lambda: ServerConnection(self), host, port, backlog=4096,
                                               reuse_port=reuse_port or None)
        self._sweeper = loop.create_task(self._sweep())
        h, p = self.server.sockets[0].getsockname()[:2]
        return h, p

    def stop_listening(self) -> None:
        if self.server is not None:
            self.server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()

    async def close(self) -> None:
        self.stop_listening()
        for c in list(self.connections):
            if c.task is not None and not c.task.done():
                c.task.cancel()
            c.abort()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)


# ------------------------------------------------------------------------------------------------ timeouts --
class Deadlines:
    """Timeouts without a loop timer per request. A deadline is rounded up to the next multiple of a tick (20 ms,
    or 1/512 of the delay for long ones) and one loop timer per tick fires every callback due in it: each of
    uvloop's timers opens and closes a libuv handle, ~6% of the CPU of a tiny proxied request when every request
    armed two. Callbacks run up to a tick late, never early. `add` returns a key for `cancel`; a tick whose
    callbacks were all cancelled drops its timer, so pending state is bounded by what is in flight."""

    def __init__(self, loop: asyncio.AbstractEventLoop, tick_ms: int = 20) -> None:
        self.loop = loop
        self.tick_ms = tick_ms
        # due time (integer ms of loop time) -> (its loop timer, {key: (callback, args)})
        self.slots: dict[int, tuple[asyncio.TimerHandle, dict[int, tuple[Callable[..., None], tuple[Any, ...]]]]] = {}
        self._ids = itertools.count(1)

    def add(self, delay: float, fn: Callable[..., None], *args: Any) -> tuple[int, int]:
        tick = max(self.tick_ms, int(delay * 2))  # ms: delay / 512 s, rounded
        due = math.ceil((self.loop.time() + delay) * 1000 / tick) * tick
        slot = self.slots.get(due)
        if slot is None:
            slot = self.slots[due] = (self.loop.call_at(due / 1000, self._fire, due), {})
        key = next(self._ids)
        slot[1][key] = (fn, args)
        return due, key

    def cancel(self, handle: tuple[int, int]) -> None:
        slot = self.slots.get(handle[0])
        if slot is not None:
            slot[1].pop(handle[1], None)
            if not slot[1]:
                slot[0].cancel()
                del self.slots[handle[0]]

    def _fire(self, due: int) -> None:
        slot = self.slots.pop(due, None)
        if slot is not None:
            for fn, args in slot[1].values():
                fn(*args)


# ------------------------------------------------------------------------------------------------ client ---
class UpstreamError(Exception):
    """The upstream connection failed or closed before the exchange completed."""


class Exchange:
    """One request/response on an upstream connection. `on_head(exchange)` is called once status and headers
    are in; body bytes go to `on_body` if set, else are buffered in `parts`; `done` resolves at the end (or
    fails with `UpstreamError`)."""

    __slots__ = ("status", "ctype", "chunked", "length", "parts", "on_body", "on_head", "done", "received",
                 "keep_alive", "headers_in")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_head: Callable[[Exchange], None]) -> None:
        self.status = 0
        self.ctype = "application/json"
        self.chunked = False
        self.length = -1
        self.parts: list[bytes] = []
        self.on_body: Callable[[bytes], None] | None = None
        self.on_head: Callable[[Exchange], None] | None = on_head
        self.headers_in = False
        self.done: asyncio.Future[None] = loop.create_future()
        self.received = 0  # response bytes seen (headers included): 0 means the request may be re-sent
        self.keep_alive = True

    def body(self) -> bytes:
        return b"".join(self.parts)

    def _fail(self, exc: BaseException) -> None:
        f = self.done
        if not f.done():
            f.set_exception(exc)
            f.exception()  # mark retrieved: a caller that stopped waiting must not log "never retrieved"


class Upstream(asyncio.Protocol):
    """One keep-alive connection to a backend."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.ex: Exchange | None = None
        self.closed = False
        self.reused = False
        self.loop = asyncio.get_running_loop()  # once per connection (see HttpServer.loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        _nodelay(transport)

    def data_received(self, data: bytes) -> None:
        ex = self.ex
        if ex is None or self.parser is None:  # bytes nobody asked for: the connection is out of step, drop it
            self.abort()
            return
        ex.received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:  # includes errors raised by our own callbacks
            self.abort()
            ex._fail(UpstreamError(f"bad HTTP response: {type(e.__context__ or e).__name__}: {e.__context__ or e}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.parser = None  # type: ignore[assignment]  # parser <-> protocol: no cycle left for the collector
        self.pool.forget(self)
        ex, self.ex = self.ex, None
        if ex is not None and not ex.done.done():
            if ex.headers_in and not ex.chunked and ex.length < 0:  # body delimited by the close
                ex.done.set_result(None)
            else:
                ex._fail(UpstreamError("connection closed by the backend" + (f": {exc}" if exc else "")))

    # -- httptools callbacks -----------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self.ex
        n = name.lower()
        if n == b"content-type":
            ex.ctype = value.decode("latin-1")  # type: ignore[union-attr]
        elif n == b"transfer-encoding":
            ex.chunked = b"chunked" in value.lower()  # type: ignore[union-attr]
        elif n == b"content-length":
            ex.length = int(value) if value.isdigit() else -1  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        ex = self.ex
        assert ex is not None
        ex.status = self.parser.get_status_code()
        ex.keep_alive = self.parser.should_keep_alive()
        ex.headers_in = True
        if ex.on_head is not None:
            ex.on_head(ex)

    def on_body(self, body: bytes) -> None:
        ex = self.ex
        assert ex is not None
        if ex.on_body is not None:
            ex.on_body(body)
        else:
            ex.parts.append(body)

    def on_message_complete(self) -> None:
        ex = self.ex
        self.ex = None
        if ex is None:
            return
        if not ex.done.done():
            ex.done.set_result(None)
        if ex.keep_alive and not self.closed:
            self.pool.release(self)
        else:
            self.close()

    # -- use ---------------------------------------------------------------------------------------------
    def send(self, head: bytes, body: tuple[bytes | memoryview, ...], on_head: Callable[[Exchange], None]) -> Exchange:
        """Write one request (`head` and the pieces of its body, in one writev) and track its answer."""
        assert self.transport is not None and self.ex is None
        ex = self.ex = Exchange(self.loop, on_head)
        if len(body) == 1 and len(body[0]) <= _JOIN_BELOW:
            self.transport.write(head + body[0])
        elif sum(map(len, body)) <= _JOIN_BELOW:
            self.transport.write(b"".join((head, *body)))
        else:
            self.transport.writelines((head, *body))  # a large body is not copied
        return ex

    def pause(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()
        self.pool.forget(self)

    def abort(self) -> None:
        """Drop the connection now (an abandoned exchange: the backend sees the close and aborts its work)."""
        if self.transport is not None:
            self.closed = True
            self.transport.abort()
        self.pool.forget(self)


def _ignore_head(ex: Exchange) -> None:
    return None


class Pool:
    """Keep-alive connections to one backend (base URL)."""

    def __init__(self, base_url: str, connect_timeout: float) -> None:
        u = urlsplit(base_url)
        self.https = u.scheme == "https"
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or (443 if self.https else 80)
        self.prefix = u.path.rstrip("/")
        host_hdr = u.netloc
        self.connect_timeout = connect_timeout
        self.idle: list[Upstream] = []
        self.all: set[Upstream] = set()
        self._heads: dict[str, bytes] = {}  # per path (two OpenAI endpoints): the head up to Content-Length
        self._host_line = b"Host: " + host_hdr.encode() + b"\r\n"

    def head(self, path: str, length: int) -> bytes:
        start = self._heads.get(path)
        if start is None:
            start = self._heads[path] = (b"POST " + (self.prefix + path).encode() + b" HTTP/1.1\r\n" + self._host_line
                                         + b"Content-Type: application/json\r\nAccept-Encoding: identity\r\n"
                                         b"Content-Length: ")
        return start + b"%d\r\n\r\n" % length

    async def get(self, path: str, timeout: float) -> tuple[int, bytes]:
        """GET `path` (status, body) on a kept-alive connection: the gateway's scrapes, ~4x cheaper than aiohttp's
        client. Raises UpstreamError, OSError or TimeoutError."""
        head = (b"GET " + (self.prefix + path).encode() + b" HTTP/1.1\r\n" + self._host_line
                + b"Accept-Encoding: identity\r\n\r\n")
        for fresh in (False, True):
            async with asyncio.timeout(timeout):
                up = await self.acquire(fresh)
            ex = up.send(head, (), _ignore_head)
            try:
                async with asyncio.timeout(timeout):
                    await ex.done
            except UpstreamError:
                if up.reused and ex.received == 0 and not fresh:
                    continue  # a kept-alive connection the backend had closed: once more on a new one
                raise
            except BaseException:
                up.abort()
                raise
            return ex.status, ex.body()
        raise AssertionError("unreachable")

    async def acquire(self, fresh: bool = False) -> Upstream:
        while self.idle and not fresh:
            c = self.idle.pop()
            if not c.closed:
                c.reused = True
                return c
        loop = asyncio.get_running_loop()
        ctx = ssl.create_default_context() if self.https else None
        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda: Upstream(self), self.host, self.port, ssl=ctx), self.connect_timeout)
        self.all.add(proto)
        return proto

    def release(self, c: Upstream) -> None:
        if not c.closed:
            self.idle.append(c)

    def forget(self, c: Upstream) -> None:
        self.all.discard(c)
        with contextlib.suppress(ValueError):
            self.idle.remove(c)

    def close(self) -> None:
        for c in list(self.all):
            c.abort()
        self.idle.clear()


def sockets_of(items: Any) -> list[socket.socket]:
    """The sockets of protocols with a `transport` (tests check TCP_NODELAY on them)."""
    return [s for p in items if p.transport is not None and (s := p.transport.get_extra_info("socket")) is not None]
