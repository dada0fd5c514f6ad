"""A gateway in front of emulated engines, in process, for the route tests (test_routes_*.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from stubs import LinearCost

from llmsched.emulator import EmulatorServer
from llmsched.gateway.config import GatewayConfig
from llmsched.gateway.server import Gateway

MODEL = "emu-routes"


@contextlib.asynccontextmanager
async def gateway(n: int = 2, speed: float = 20.0, cost: Any = None, **cfg: Any) -> AsyncIterator[
        tuple[Gateway, str, list[EmulatorServer], list[str]]]:
    """`n` emulators (a linear cost model: 5 ms + 0.1 ms a prompt token an iteration, unless `cost`), a
    round-robin gateway in front; yields (gateway, its URL, the emulators, their URLs)."""
    emus = [EmulatorServer(cost=cost or LinearCost(), speed=speed, served_model_name=MODEL, max_model_len=8192)
            for _ in range(n)]
    urls = [await e.start("127.0.0.1", 0) for e in emus]
    gw = Gateway(GatewayConfig(backends=urls, scrape_interval=0.05, router={"name": "round-robin"}, **cfg))
    url = await gw.start("127.0.0.1", 0)
    try:
        for _ in range(100):  # every backend scraped once: healthy
            if all(b.scraped for b in gw.dispatcher.backends):
                break
            await asyncio.sleep(0.02)
        yield gw, url, emus, urls
    finally:
        await gw.stop(drain=False)
        for e in emus:
            await e.stop()
