"""One generation through the engine, answered in a route's wire format: a whole JSON body, or SSE events as
the tokens come (completions and chat, the Responses API, Anthropic's Messages API each supply an `Events`).

The loop wakes when the engine hands the request new tokens and writes them in one go, so a handler that
falls behind catches up in one write; a client that leaves aborts the request in the engine.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from llmsched.emulator import wire
from llmsched.emulator.protocol import ApiError, GenRequest
from llmsched.emulator.stream import TokenStream

if TYPE_CHECKING:
    from llmsched.core.types import Request
    from llmsched.emulator.server import EmulatorServer


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(text=wire.dumps(obj), status=status, content_type="application/json")


def stopped(stream: TokenStream) -> ApiError:
    """The error of a request the engine did not finish: its loop failed (500) or it was stopped (503)."""
    if stream.finish_reason == "error":
        return ApiError("The engine failed while serving this request.", 500)
    return ApiError("The engine stopped before the request finished.", 503, err_type="ServiceUnavailable")


def text_key(srv: EmulatorServer, g: GenRequest) -> int:
    """The key of `g`'s synthetic output text: its `seed`, else the server's, with its prompt. Every generating
    route keys by this, so a request's text does not depend on the route that served it."""
    return hash((srv.seed if g.seed is None else g.seed, tuple(g.prompt_ids)))


def submit(srv: EmulatorServer, req: Request) -> TokenStream:
    """Hand `req` to the engine; its refusals as API errors."""
    try:
        return srv.driver.submit(req)
    except ValueError as e:  # can never fit the KV cache
        raise ApiError(str(e)) from None
    except RuntimeError as e:  # the engine loop has failed
        raise ApiError(str(e), 500) from None


async def finished(stream: TokenStream) -> None:
    """Wait until the engine ends `stream`; an engine that did not finish it (stopped, failed) as an API error."""
    while not stream.done:
        await stream.wait(stream.generated)
    if stream.finish_reason in ("abort", "error"):
        raise stopped(stream)


def abort_unfinished(srv: EmulatorServer, stream: TokenStream) -> None:
    """Free the engine of `stream` if it is still running: its handler is leaving early (client gone, a write
    failed, or another request of the same call was refused)."""
    if not stream.done:
        srv.driver.abort(stream)
        srv.metrics.on_abort()


class Events:
    """A generation's wire format: the whole answer, or its SSE events."""

    keeps_text = True  # `closing` needs the streamed text (False spares the stream loop the bookkeeping)

    def whole(self, text: str, req: Request, n: int, finish_reason: str | None) -> dict[str, Any]:
        """The unstreamed answer: `n` tokens of `text`."""
        raise NotImplementedError

    def head(self) -> bytes:
        """Events sent at once, before the prefill."""
        return b""

    def opening(self, req: Request) -> bytes:
        """Events sent with the first token, before its delta."""
        return b""

    def deltas(self, texts: list[str], final: bool) -> bytes:
        """The events of new tokens; `final`: the last of them ends the generation."""
        raise NotImplementedError

    def closing(self, text: str, req: Request, n: int) -> bytes:
        """The events after the last token."""
        raise NotImplementedError

    def failed(self, e: ApiError, req: Request, n: int) -> bytes:
        """The events that end a stream the engine did not finish."""
        raise NotImplementedError


class CompletionEvents(Events):
    """OpenAI completions and chat (`wire.ChunkEncoder`)."""

    keeps_text = False

    def __init__(self, g: GenRequest, rid: str) -> None:
        self.g = g
        self.rid = rid
        self.enc = wire.ChunkEncoder(g.chat, rid, int(time.time()), g.model)

    def whole(self, text: str, req: Request, n: int, finish_reason: str | None) -> dict[str, Any]:
        make = wire.chat_body if self.g.chat else wire.completion_body
        return make(self.rid, int(time.time()), self.g.model, text, finish_reason,
                    wire.usage(req.prompt_len, n, req.num_cached))

    def opening(self, req: Request) -> bytes:
        return self.enc.first()

    def deltas(self, texts: list[str], final: bool) -> bytes:
        return self.enc.tokens(texts, final)

    def closing(self, text: str, req: Request, n: int) -> bytes:
        use = self.enc.usage(wire.usage(req.prompt_len, n, req.num_cached)) if self.g.include_usage else b""
        return use + wire.DONE

    def failed(self, e: ApiError, req: Request, n: int) -> bytes:
        return self.enc.error(e.message, e.status, e.err_type) + self.closing("", req, n)


async def run(srv: EmulatorServer, request: web.Request, g: GenRequest, req: Request,
              w: Events) -> web.StreamResponse:
    """Generate `req` (made from `g`) and answer in the format of `w`."""
    stream = submit(srv, req)
    key = text_key(srv, g)
    tok = srv.tokenizer
    try:
        if g.stream:
            return await _sse(srv, request, w, stream, key)
        await finished(stream)
        n = stream.generated
        return json_response(w.whole(tok.decode(tok.generated_ids(key, 0, n)), req, n, stream.finish_reason))
    finally:
        abort_unfinished(srv, stream)


async def _sse(srv: EmulatorServer, request: web.Request, w: Events, stream: TokenStream,
               key: int) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    tok = srv.tokenizer
    req = stream.req
    head = w.head()
    if head:
        await resp.write(head)
    sent = 0
    texts: list[str] = []
    try:
        while True:
            if stream.generated <= sent and not stream.done:
                await stream.wait(sent)
            n = stream.generated
            data = b""
            if n > sent:
                new = tok.token_texts(tok.generated_ids(key, sent, n - sent))
                # the opening events first: a format that numbers its events (Responses) numbers them in order
                data = w.opening(req) if sent == 0 else b""
                data += w.deltas(new, stream.done and stream.finish_reason == "length")
                if w.keeps_text:
                    texts += new
                sent = n
            if stream.done:
                break
            await resp.write(data)
        # The last tokens and the closing events go out in one write with the end of the chunked body.
        if stream.finish_reason in ("abort", "error"):
            data += w.failed(stopped(stream), req, sent)
        else:
            data += w.closing("".join(texts), req, sent)
        await resp.write_eof(data)
    except (ConnectionResetError, ConnectionError):
        pass  # the client went away; `run`'s finally aborts the request
    return resp
