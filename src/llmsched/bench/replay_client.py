"""An open-loop OpenAI client that replays a workload's arrivals against a server (gateway or engine).

Each request is sent at its arrival time divided by `time_scale` (so an emulator at speed S, given time_scale
S, sees the workload's own timeline), streamed, with `stream_options.include_usage` (so the gateway records
exact output lengths) and `max_tokens` = the workload's output length (`ignore_eos` for real vLLM). Prompts
are synthetic: distinct per request, or token ids when `token_ids` is set (a vLLM started with
`--skip-tokenizer-init`, e.g. dummy weights without tokenizer files).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

_WORDS = b"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore "


def prompt_text(rid: int, tokens: int) -> str:
    """Exactly `tokens` tokens of the stand-in tokenizer (4 bytes each), distinct per `rid`."""
    head = f"req {rid:09d} ".encode()
    n = 4 * max(1, tokens)
    body = (head + _WORDS * (n // len(_WORDS) + 2))[:n]
    return body.decode("ascii")


def prompt_ids(rid: int, tokens: int, vocab: int = 32000) -> list[int]:
    """`tokens` token ids, distinct per `rid` from the first one."""
    return [(rid * 7919 + 1000 + i * 31) % (vocab - 1000) + 1000 for i in range(max(1, tokens))]


@dataclass
class Outcome:
    rid: int
    status: int
    ttft: float  # client-side seconds (real), NaN when not received
    e2e: float
    output_tokens: int


async def replay(url: str, rows: list[tuple[float, int, int]], time_scale: float = 1.0, model: str | None = None,
                 token_ids: bool = False, ignore_eos: bool = True, headers: dict[str, str] | None = None,
                 timeout: float = 600.0) -> list[Outcome]:
    """Send rows (arrival s, prompt tokens, output tokens) to `url`/v1/completions on their timeline."""
    conn = aiohttp.TCPConnector(limit=0)
    out: list[Outcome] = []
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        t0 = time.perf_counter() + 0.05

        async def one(rid: int, arrival: float, prompt: int, output: int) -> None:
            delay = t0 + arrival / time_scale - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            body: dict[str, Any] = {"prompt": prompt_ids(rid, prompt) if token_ids else prompt_text(rid, prompt),
                                    "max_tokens": output, "stream": True,
                                    "stream_options": {"include_usage": True}}
            if model:
                body["model"] = model
            if ignore_eos:
                body["ignore_eos"] = True
            start = time.perf_counter()
            ttft, n = float("nan"), 0
            try:
                async with session.post(url.rstrip("/") + "/v1/completions", json=body, headers=headers) as r:
                    if r.status != 200:
                        await r.read()
                        out.append(Outcome(rid, r.status, ttft, time.perf_counter() - start, 0))
                        return
                    async for line in r.content:
                        if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                            continue
                        if ttft != ttft:
                            ttft = time.perf_counter() - start
                        if b'"usage"' in line and b'"completion_tokens"' in line:
                            with_usage = json.loads(line[6:])
                            if with_usage.get("usage"):
                                n = int(with_usage["usage"]["completion_tokens"])
                out.append(Outcome(rid, 200, ttft, time.perf_counter() - start, n))
            except (aiohttp.ClientError, TimeoutError) as e:
                out.append(Outcome(rid, 599, ttft, time.perf_counter() - start, 0))
                del e

        await asyncio.gather(*(one(i, a, p, o) for i, (a, p, o) in enumerate(rows)))
    out.sort(key=lambda o: o.rid)
    return out
