"""What keeps the gateway's data path cheap (issue 13's CPU targets), each as a behaviour that can break:
no reference cycle per request (the cyclic collector once took ~11% of a tiny request's CPU), coarse deadline
ticks instead of a loop timer per request, scrapes on the lean client."""

from __future__ import annotations

import asyncio
import gc

import aiohttp

from llmsched.gateway.config import GatewayConfig
from llmsched.gateway.http1 import Deadlines
from llmsched.gateway.server import Gateway
from llmsched.gateway.testing import FakeBackend


async def test_a_proxied_request_leaves_no_reference_cycle_behind() -> None:
    be = FakeBackend(max_tokens_cap=3)
    await be.start()
    gw = Gateway(GatewayConfig(backends=[be.url], scrape_interval=0.05))
    await gw.start()
    try:
        async with aiohttp.ClientSession() as http:
            for stream in (False, True, False, True):
                async with http.post(gw.url + "/v1/completions",
                                     json={"prompt": "hello", "max_tokens": 3, "stream": stream}) as r:
                    assert r.status == 200
                    await r.read()
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            async with aiohttp.ClientSession() as http:
                for stream in (False, True, False, True):
                    async with http.post(gw.url + "/v1/completions",
                                         json={"prompt": "hello", "max_tokens": 3, "stream": stream}) as r:
                        await r.read()
            gc.collect()
            ours = [type(o).__name__ for o in gc.garbage
                    if type(o).__module__.startswith("llmsched.gateway") or type(o).__name__ == "Request"]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        assert ours == [], f"objects of the data path left in reference cycles: {sorted(set(ours))}"
    finally:
        await gw.stop(drain=False)
        await be.stop()


async def test_deadlines_fire_late_by_at_most_a_tick_never_early_and_cancelled_ones_never() -> None:
    loop = asyncio.get_running_loop()
    d = Deadlines(loop, tick_ms=20)
    t0 = loop.time()
    fired: dict[str, float] = {}
    d.add(0.05, lambda: fired.setdefault("a", loop.time() - t0))
    d.add(0.05, lambda: fired.setdefault("b", loop.time() - t0))
    gone = d.add(0.05, lambda: fired.setdefault("cancelled", loop.time() - t0))
    d.add(0.12, lambda: fired.setdefault("c", loop.time() - t0))
    d.cancel(gone)
    assert len(d.slots) <= 4  # requests due in the same tick share one loop timer
    await asyncio.sleep(0.3)
    assert set(fired) == {"a", "b", "c"}
    assert 0.05 <= fired["a"] < 0.05 + 0.02 + 0.05 and 0.12 <= fired["c"] < 0.12 + 0.02 + 0.05
    k = d.add(5.0, lambda: None)
    d.cancel(k)
    assert d.slots == {}  # a tick whose callbacks were all cancelled drops its timer


async def test_scrapes_reuse_one_kept_alive_connection_per_backend() -> None:
    be = FakeBackend()
    await be.start()
    gw = Gateway(GatewayConfig(backends=[be.url], scrape_interval=0.02))
    await gw.start()
    try:
        await asyncio.sleep(0.3)  # ~15 scrapes
        b = gw.dispatcher.backends[0]
        assert b.scraped
        pool = gw._probe_pools[0]
        assert len(pool.all) == 1  # every scrape on the same connection
    finally:
        await gw.stop(drain=False)
        await be.stop()
