"""An open-loop OpenAI client that replays a workload's arrivals against a server (gateway or engine).

Each request is sent at its arrival time divided by `time_scale` (so an emulator at speed S, given time_scale
S, sees the workload's own timeline), streamed, with `stream_options.include_usage` (so the gateway records
exact output lengths) and `max_tokens` = the workload's output length (`ignore_eos` for real vLLM). Prompts
are synthetic: distinct per request, or token ids when `token_ids` is set (a vLLM started with
`--skip-tokenizer-init`), or from `prompt(rid, tokens)`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

_USAGE = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
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
                 timeout: float = 600.0, prompt: Callable[[int, int], str] | None = None) -> list[Outcome]:
    """Send rows (arrival s, prompt tokens, output tokens) to `url`/v1/completions on their timeline."""
    prompt_fn = prompt
    clock = asyncio.get_running_loop().time  # the loop's clock: real, or virtual (`bench.virtual_loop`)
    conn = aiohttp.TCPConnector(limit=0)
    out: list[Outcome] = []
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        t0 = clock() + 0.05

        async def one(rid: int, arrival: float, n_prompt: int, output: int) -> None:
            delay = t0 + arrival / time_scale - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            text = (prompt_fn or prompt_text)(rid, n_prompt)
            body: dict[str, Any] = {"prompt": prompt_ids(rid, n_prompt) if token_ids else text,
                                    "max_tokens": output, "stream": True,
                                    "stream_options": {"include_usage": True}}
            if model:
                body["model"] = model
            if ignore_eos:
                body["ignore_eos"] = True
            start = clock()
            ttft, n = float("nan"), 0
            try:
                async with session.post(url.rstrip("/") + "/v1/completions", json=body, headers=headers) as r:
                    if r.status != 200:
                        await r.read()
                        out.append(Outcome(rid, r.status, ttft, clock() - start, 0))
                        return
                    tail = b""
                    async for chunk in r.content.iter_any():  # chunks, not lines: a chunk may hold many tokens
                        if ttft != ttft:
                            ttft = clock() - start
                        tail = (tail + chunk)[-4096:]
                    m = _USAGE.search(tail)
                    n = int(m.group(1)) if m is not None else 0
                out.append(Outcome(rid, 200, ttft, clock() - start, n))
            except (aiohttp.ClientError, TimeoutError) as e:
                out.append(Outcome(rid, 599, ttft, clock() - start, 0))
                del e

        await asyncio.gather(*(one(i, a, p, o) for i, (a, p, o) in enumerate(rows)))
    out.sort(key=lambda o: o.rid)
    return out
