"""The emulator serving LoRA adapters: cards with parent, load delay before an adapter's first step, vLLM's
`vllm:lora_requests_info` gauge, `/v1/load_lora_adapter` and `/v1/unload_lora_adapter`, `--lora-modules` forms."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from llmsched.emulator import EmulatorServer
from llmsched.emulator.lora import parse_lora_modules
from llmsched.engine.config import EngineConfig
from llmsched.engine.lora import LoraConfig
from llmsched.gateway.pools import lora_state
from llmsched.gateway.scrape import read_samples

# 10 GB adapters: 0.2 s to copy to the GPU at 50 GB/s (emulated), so the load is plain in the TTFT.
BIG = EngineConfig(lora=LoraConfig(max_loras=1, max_cpu_loras=4, adapter_bytes=10**10))


def test_lora_modules_in_vllms_forms() -> None:
    assert parse_lora_modules(["a=/p/a", '{"name": "b", "path": "/p/b", "base_model_name": "m"}']) == {
        "a": "/p/a", "b": "/p/b"}
    with pytest.raises(ValueError, match="neither name=path nor JSON"):
        parse_lora_modules(["a"])
    with pytest.raises(ValueError, match="'name' and 'path'"):
        parse_lora_modules(['{"name": "b"}'])


async def _post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, str]:
    async with http.post(url, json=body) as r:
        return r.status, await r.text()


async def test_adapter_cards_and_the_load_delay_before_an_adapters_first_step() -> None:
    srv = EmulatorServer(speed=20.0, served_model_name="base", engine_config=BIG, lora_modules={"a": "/p/a"},
                         token_window_s=0.0)
    url = await srv.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/v1/models") as r:
                cards = (await r.json())["data"]
            assert [(c["id"], c["parent"], c["root"]) for c in cards] == [("base", None, "llama-3.1-8b"),
                                                                           ("a", "base", "/p/a")]
            ttfts = []
            for model in ("a", "a", "base"):
                before = srv.metrics.ttft.total
                status, _ = await _post(http, url + "/v1/completions", {"model": model, "prompt": "hi", "max_tokens": 2})
                assert status == 200
                ttfts.append(srv.metrics.ttft.total - before)
            # First use: the 0.2 s host-to-device copy (it was read into the CPU cache at start-up); then resident.
            assert ttfts[0] >= 0.2 and ttfts[1] < 0.05 and ttfts[2] < 0.05
            assert srv.engine.lora is not None and srv.engine.lora.stats.loads == 1
            assert srv.engine.lora.stats.disk_loads == 0
            # Loading another one answers once it is read from disk: 0.02 s + 10 GB at 3 GB/s, emulated.
            t0 = asyncio.get_running_loop().time()
            assert (await _post(http, url + "/v1/load_lora_adapter", {"lora_name": "b", "lora_path": "/p/b"}))[0] == 200
            assert asyncio.get_running_loop().time() - t0 >= (0.02 + 10 / 3) / 20
    finally:
        await srv.stop()


async def test_lora_requests_info_names_the_running_adapter() -> None:
    srv = EmulatorServer(speed=1.0, served_model_name="base", lora_modules={"a": "/p/a"}, max_loras=3)
    url = await srv.start()
    try:
        async with aiohttp.ClientSession() as http:
            body = {"model": "a", "prompt": "hello", "max_tokens": 200, "stream": True}
            async with http.post(url + "/v1/completions", json=body) as r:
                await r.content.readline()  # the first token: the request is running
                async with http.get(url + "/metrics") as m:
                    text = await m.text()
            assert 'max_lora="3"' in text
            st = lora_state(read_samples(text))
            assert st is not None and st.running == ("a",) and st.max_loras == 3
    finally:
        await srv.stop(graceful=False)


async def test_load_and_unload_routes_with_vllms_checks() -> None:
    srv = EmulatorServer(speed=50.0, served_model_name="base", max_loras=2)
    off = EmulatorServer(speed=50.0, served_model_name="plain")
    url, url_off = await srv.start(), await off.start()
    try:
        async with aiohttp.ClientSession() as http:
            load, unload = url + "/v1/load_lora_adapter", url + "/v1/unload_lora_adapter"
            assert (await _post(http, load, {"lora_name": "n"}))[0] == 400
            status, text = await _post(http, load, {"lora_name": "base", "lora_path": "/p"})
            assert status == 400 and "conflicts with a served base model" in text
            assert await _post(http, load, {"lora_name": "n", "lora_path": "/p/n"}) == (
                200, "Success: LoRA adapter 'n' added successfully.")
            assert (await _post(http, url + "/v1/completions", {"model": "n", "prompt": "x", "max_tokens": 1}))[0] == 200
            assert (await _post(http, load, {"lora_name": "n", "lora_path": "/p/n"}))[0] == 400
            assert (await _post(http, load, {"lora_name": "n", "lora_path": "/p/n", "load_inplace": True}))[0] == 200
            assert (await _post(http, unload, {"lora_name": "n"}))[0] == 200
            status, text = await _post(http, unload, {"lora_name": "n"})
            assert status == 404 and "cannot be found" in text
            assert (await _post(http, url + "/v1/completions", {"model": "n", "prompt": "x"}))[0] == 404
            status, text = await _post(http, url_off + "/v1/load_lora_adapter", {"lora_name": "n", "lora_path": "/p"})
            assert status == 400 and "LoRA is not enabled" in text
    finally:
        await asyncio.gather(srv.stop(), off.stop())


async def test_pooling_and_scoring_requests_for_an_adapter_run_on_it() -> None:
    srv = EmulatorServer(speed=50.0, served_model_name="base", engine_config=BIG, lora_modules={"a": "/p/a"},
                         token_window_s=0.0)
    url = await srv.start()
    try:
        lora = srv.engine.lora
        assert lora is not None
        async with aiohttp.ClientSession() as http:
            assert (await _post(http, url + "/v1/embeddings", {"model": "base", "input": "x"}))[0] == 200
            assert lora.stats.loads == 0
            status, text = await _post(http, url + "/v1/embeddings", {"model": "a", "input": "x"})
            assert status == 200 and '"model":"a"' in text.replace(" ", "")
            assert lora.stats.loads == 1  # the adapter was loaded for it (its copy priced as for generation)
            assert (await _post(http, url + "/score", {"model": "a", "queries": "q", "documents": ["d"]}))[0] == 200
            assert lora.stats.loads == 1  # resident now
    finally:
        await srv.stop()


async def test_several_served_model_names_are_all_listed_and_accepted_and_responses_name_the_first() -> None:
    srv = EmulatorServer(speed=50.0, served_model_name=["m", "alias"], lora_modules={"a": "/p/a"}, max_loras=1)
    url = await srv.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/v1/models") as r:
                cards = (await r.json())["data"]
            assert [(c["id"], c["parent"]) for c in cards] == [("m", None), ("alias", None), ("a", "m")]
            for name, answered in (("alias", "m"), ("m", "m"), ("a", "a")):
                status, text = await _post(http, url + "/v1/completions", {"model": name, "prompt": "x", "max_tokens": 1})
                assert status == 200 and json.loads(text)["model"] == answered
            status, _ = await _post(http, url + "/v1/completions", {"model": "other", "prompt": "x"})
            assert status == 404
            status, text = await _post(http, url + "/v1/load_lora_adapter", {"lora_name": "alias", "lora_path": "/p"})
            assert status == 400 and "conflicts with a served base model" in text
    finally:
        await srv.stop()


def test_emulate_takes_several_served_model_names_as_vllm_does(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import llmsched.emulator.server as server_mod
    from llmsched.cli import app

    seen: list[dict[str, Any]] = []

    def fake(**kw: Any) -> Any:
        seen.append(kw)
        raise ValueError("stop here")

    monkeypatch.setattr(server_mod, "EmulatorServer", fake)
    runner = CliRunner()
    r = runner.invoke(app, ["emulate", "--served-model-name", "m", "alias", "--lora-modules", "a=/p/a", "b=/p/b"])
    assert r.exit_code == 2 and "stop here" in r.output
    assert seen[-1]["served_model_name"] == ["m", "alias"] and seen[-1]["lora_modules"] == {"a": "/p/a", "b": "/p/b"}
    r = runner.invoke(app, ["emulate", "--served-model-name", "m", "--served-model-name", "n"])
    assert seen[-1]["served_model_name"] == ["m", "n"]
    r = runner.invoke(app, ["emulate", "stray"])
    assert r.exit_code == 2 and "unexpected argument 'stray'" in r.output
