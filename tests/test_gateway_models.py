"""Several models and LoRA adapters behind one gateway (gateway/pools.py): discovery, per-model pools, 404/400,
the /v1/models union, per-model metrics, adapter affinity, runtime adapter loading, and a mixed load test.

Backends are emulators (`llmsched.emulator`): each accepts only its own served name and adapters (404 for
anything else), so a request routed to a backend that does not serve its model comes back as an error.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from llmsched.core.types import Request
from llmsched.emulator import EmulatorServer
from llmsched.gateway.config import ConfigError, build_config
from llmsched.gateway.openai_req import BadRequest
from llmsched.gateway.pools import Pools, lora_state, parse_model_list, pinned_cards
from llmsched.gateway.scrape import read_samples
from llmsched.gateway.server import Gateway


def _cards(*ids: str, parent: str | None = None) -> list[dict[str, Any]]:
    return [{"id": m, "object": "model", "parent": parent} for m in ids]


def _pools(n: int, **cfg: Any) -> Pools:
    return Pools(build_config({"backends": [f"http://b{i}:1" for i in range(n)], **cfg}))


def _req(rid: int) -> Request:
    return Request(rid, 0.0, 10, 4)


# ---- the pools, sans I/O ------------------------------------------------------------------------------------
def test_requests_resolve_to_the_pool_of_their_model_and_unknown_models_get_404_naming_the_served() -> None:
    p = _pools(3)
    p.set_models(0, _cards("m1"))
    p.set_models(1, _cards("m2"))
    p.set_models(2, _cards("m1"))
    assert p.resolve("m1").key == "m1" and p.resolve("m2").key == "m2"
    with pytest.raises(BadRequest) as e:
        p.resolve("m3")
    assert e.value.status == 404 and e.value.param == "model" and "m1, m2" in e.value.message
    with pytest.raises(BadRequest) as e:  # no model and two base models: the client must say which
        p.resolve(None)
    assert e.value.status == 400 and "m1" in e.value.message and "m2" in e.value.message
    # Each pool routes only among the backends that serve its model.
    for model, allowed in (("m1", {0, 2}), ("m2", {1})):
        pool = p.resolve(model)
        for k in range(6):
            r = _req(k)
            p.assign(r, pool)
            assert p.submit(r, 0.0)
        got = {i for _, i in p.dispatch(0.0)}
        assert got == allowed


def test_without_model_the_only_base_model_is_used_and_adapters_form_their_own_pools() -> None:
    p = _pools(2)
    p.set_models(0, [*_cards("base"), *_cards("a1", "a2", parent="base")])
    p.set_models(1, [*_cards("base"), *_cards("a2", parent="base")])
    assert p.resolve(None).key == "base"
    a1, a2 = p.resolve("a1"), p.resolve("a2")
    assert (a1.parent, a2.parent) == ("base", "base")
    assert a1.d.router is a2.d.router and a1.d.router is not p.resolve("base").d.router  # one adapter router
    assert a1.d.policy is not a2.d.policy  # each its own queue
    r = _req(1)
    p.assign(r, a1)
    assert (r.model, r.adapter) == ("a1", "a1")
    p.submit(r, 0.0)
    assert p.dispatch(0.0) == [(r, 0)]  # a1 is only on backend 0


def test_a_base_model_shares_its_adapters_router_when_both_are_the_same_policy() -> None:
    p = _pools(1, router={"name": "lora-affinity"})
    p.set_models(0, [*_cards("base", "solo"), *_cards("a1", parent="base")])
    assert p.resolve("base").d.router is p.resolve("a1").d.router
    assert p.resolve("solo").d.router is not p.resolve("base").d.router
    assert {label for label, _, _ in p.routers()} == {"*", "base", "solo"}
    q = _pools(1)  # round-robin for base models, lora-affinity for adapters: separate
    q.set_models(0, [*_cards("base"), *_cards("a1", parent="base")])
    assert q.resolve("base").d.router is not q.resolve("a1").d.router
    assert {label for label, _, _ in q.routers()} == {"*", "base", "base adapters"}


def test_backends_with_unknown_models_serve_the_unnamed_pool_as_before_pools_existed() -> None:
    p = _pools(2)
    p.set_models(0, None)  # e.g. a server without /v1/models
    assert p.resolve(None) is p.unnamed and p.resolve("anything") is p.unnamed
    p.set_models(1, _cards("m1"))
    assert p.resolve("m1").key == "m1"
    assert p.resolve("other") is p.unnamed  # backend 0 may serve it: it is not refused


def test_a_backend_whose_model_list_changes_moves_pools_and_stranded_requests_are_released() -> None:
    p = _pools(1)
    p.set_models(0, _cards("m1"))
    pool = p.resolve("m1")
    r = _req(1)
    p.assign(r, pool)
    # Fill the only backend so the request waits in m1's queue.
    p.backends[0].in_flight = p.cfg.max_in_flight_per_backend
    p.submit(r, 0.0)
    assert p.dispatch(0.0) == [] and p.queued == 1
    assert p.set_models(0, _cards("m2")) is True
    assert p.set_models(0, _cards("m2")) is False
    assert p.take_stranded(0.0) == [r] and p.queued == 0
    with pytest.raises(BadRequest):
        p.resolve("m1")


def test_pools_sharing_a_backend_share_its_free_slots() -> None:
    p = _pools(1, max_in_flight_per_backend=4)
    p.set_models(0, _cards("m1", "m2"))
    for k in range(8):
        r = _req(k)
        p.assign(r, p.resolve("m1" if k < 4 else "m2"))
        p.submit(r, 0.0)
    got = [r.model for r, _ in p.dispatch(0.0)]
    assert sorted(got) == ["m1", "m1", "m2", "m2"]  # not the first pool taking all four


def test_healthy_backends_for_a_model_are_those_serving_it() -> None:
    p = _pools(3)
    for i, m in enumerate(("m1", "m2", "m1")):
        p.set_models(i, _cards(m))
    p.backends[0].in_flight = 10**6  # the in-flight cap does not apply (no routing state is charged)
    assert p.healthy_backends("m1", 0.0) == [p.backends[0], p.backends[2]]
    assert p.healthy_backends("m2", 0.0) == [p.backends[1]]
    p.drain(p.backends[2].url)
    assert p.healthy_backends("m1", 0.0) == [p.backends[0]]
    p.drain(p.backends[0].url)
    assert p.healthy_backends("m1", 0.0) == []  # m1's backends are draining: none now, the model still exists
    assert not p.resolve("m1").d.any_usable(0.0)  # (a request gets 503, not 404)
    with pytest.raises(BadRequest):
        p.healthy_backends("m3", 0.0)


def test_lora_requests_info_is_read_from_the_latest_label_set() -> None:
    text = (
        "# TYPE vllm:lora_requests_info gauge\n"
        'vllm:lora_requests_info{max_lora="2",running_lora_adapters="old",waiting_lora_adapters=""} 100.0\n'
        'vllm:lora_requests_info{max_lora="2",running_lora_adapters="b,a",waiting_lora_adapters="c"} 200.0\n'
        'vllm:num_requests_running{model_name="m"} 1\n'
    )
    st = lora_state(read_samples(text))
    assert st is not None and (st.max_loras, st.running, st.waiting) == (2, ("a", "b"), ("c",))
    assert lora_state(read_samples('vllm:num_requests_running{model_name="m"} 1\n')) is None


def test_lora_requests_info_of_a_data_parallel_server_is_read_per_engine() -> None:
    text = (  # two engines: each set its own label set; "old" is neither's latest
        "# TYPE vllm:lora_requests_info gauge\n"
        'vllm:lora_requests_info{max_lora="2",running_lora_adapters="old",waiting_lora_adapters=""} 100.0\n'
        'vllm:lora_requests_info{max_lora="2",running_lora_adapters="a",waiting_lora_adapters=""} 200.0\n'
        'vllm:lora_requests_info{max_lora="2",running_lora_adapters="b,c",waiting_lora_adapters="d"} 201.0\n'
        'vllm:num_requests_running{engine="0",model_name="m"} 1\n'
        'vllm:num_requests_running{engine="1",model_name="m"} 2\n'
    )
    st = lora_state(read_samples(text))
    assert st is not None and (st.max_loras, st.running, st.waiting) == (4, ("a", "b", "c"), ("d",))


def test_lora_adapter_names_are_unescaped_as_the_prometheus_parser_does() -> None:
    """The scrape reads the gauge's lines itself: an adapter's name with a backslash, quote or newline (escaped in
    the text) must read as prometheus_client's parser reads it."""
    text = ('vllm:lora_requests_info{max_lora="1",running_lora_adapters="a\\\\b,c\\"d",'
            'waiting_lora_adapters="e\\nf"} 1.0\n'
            'vllm:num_requests_running{model_name="m"} 1\n')
    st = lora_state(read_samples(text))
    assert st is not None and (st.running, st.waiting) == (("a\\b", 'c"d'), ("e\nf",))


def test_model_list_parsing() -> None:
    assert parse_model_list(b'{"object": "list", "data": [{"id": "m"}, {"id": ""}, 3]}') == [{"id": "m"}]
    assert parse_model_list(b"not json") is None and parse_model_list(b'{"data": []}') is None


def test_config_pins_models_per_backend_and_names_bad_entries() -> None:
    cfg = build_config({"backends": ["http://a:1", {"url": "http://b:2/", "models": ["m1"]}],
                        "model_policies": {"m1": {"router": {"name": "least-requests"},
                                                  "request_policy": {"name": "sjf"}}}})
    assert cfg.backends == ["http://a:1", "http://b:2"] and cfg.backend_models == {"http://b:2": ["m1"]}
    p = Pools(cfg)
    assert p.backends[1].models == {"m1"} and p.pinned("http://b:2") and not p.pinned("http://a:1")
    assert p.resolve("m1").router_name == "least-requests" and p.resolve("m1").policy_name == "sjf"
    p.set_models(0, [*_cards("m0"), *_cards("m1-lora", parent="m1")])
    adapter = p.resolve("m1-lora")  # its base model's request policy, the adapter router
    assert (adapter.policy_name, adapter.router_name) == ("sjf", "lora-affinity")
    assert (p.resolve("m0").policy_name, p.resolve("m0").router_name) == ("fcfs", "round-robin")
    assert p.backends[1].cards == {c["id"]: c for c in pinned_cards(["m1"])}
    with pytest.raises(ConfigError, match=r"backends\.0"):
        build_config({"backends": [{"url": "http://a:1", "model": ["x"]}]})
    with pytest.raises(ConfigError, match=r"model_policies\.m1\.router"):
        build_config({"model_policies": {"m1": {"router": {"name": "nope"}}}})


def test_config_pins_adapters_with_their_base_model() -> None:
    cfg = build_config({"backends": [{"url": "http://a:1", "models": ["m1", "lora-x"]}, "http://b:2"],
                        "backend_models": {"http://b:2": ["m1"]}, "adapters": {"lora-x": "m1"}})
    p = Pools(cfg)
    x = p.resolve("lora-x")
    assert x.parent == "m1" and x.router_name == "lora-affinity"
    assert p.resolve("m1").parent is None
    assert [b.index for b in p.healthy_backends("lora-x", 0.0)] == [0]
    assert sorted(b.index for b in p.healthy_backends("m1", 0.0)) == [0, 1]
    assert [(c["id"], c["parent"]) for c in p.model_cards()] == [("m1", None), ("lora-x", "m1")]
    with pytest.raises(ConfigError, match=r"backend_models\.http://b:2: lists adapter 'lora-x' but not its base"):
        build_config({"backend_models": {"http://b:2": ["lora-x"]}, "adapters": {"lora-x": "m1"}})
    with pytest.raises(ConfigError, match=r"adapters\.lora-y: the base model must be another id"):
        build_config({"adapters": {"lora-x": "m1", "lora-y": "lora-x"}})


# ---- end to end with emulators ------------------------------------------------------------------------------
@asynccontextmanager
async def _fleet(specs: list[dict[str, Any]], **cfg: Any) -> AsyncIterator[tuple[Gateway, list[EmulatorServer]]]:
    emus = [EmulatorServer(speed=200.0, token_window_s=0.0, **s) for s in specs]
    urls = [await e.start() for e in emus]
    gw = Gateway(build_config({"backends": urls, "scrape_interval": 0.05, **cfg}))
    await gw.start()
    try:
        yield gw, emus
    finally:
        await gw.stop()
        for e in emus:
            await e.stop()


async def _post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with http.post(url, json=body) as r:
        return r.status, await (r.json() if r.content_type == "application/json" else r.text())


def _done(e: EmulatorServer) -> int:
    return e.metrics.success["length"]


async def test_two_models_route_only_to_their_backends_with_union_models_404_and_per_model_metrics() -> None:
    async with _fleet([{"served_model_name": "alpha"}, {"served_model_name": "alpha"},
                       {"served_model_name": "beta"}]) as (gw, emus), aiohttp.ClientSession() as http:
        async with http.get(gw.url + "/v1/models") as r:
            assert sorted(c["id"] for c in (await r.json())["data"]) == ["alpha", "beta"]
        for k in range(6):
            status, _ = await _post(http, gw.url + "/v1/completions",
                                    {"model": "alpha", "prompt": f"hi {k}", "max_tokens": 2})
            assert status == 200
        status, body = await _post(http, gw.url + "/v1/chat/completions",
                                   {"model": "beta", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2})
        assert status == 200 and body["model"] == "beta"
        assert [_done(e) for e in emus] == [3, 3, 1]
        status, body = await _post(http, gw.url + "/v1/completions", {"model": "gamma", "prompt": "x"})
        assert status == 404 and body["error"]["param"] == "model"
        assert "alpha, beta" in body["error"]["message"]
        status, body = await _post(http, gw.url + "/v1/completions", {"prompt": "x"})
        assert status == 400 and body["error"]["param"] == "model"
        async with http.get(gw.url + "/metrics") as r:
            text = await r.text()
        assert 'llmsched_gateway_model_requests_total{model="alpha",status="200"} 6.0' in text
        assert 'llmsched_gateway_model_requests_total{model="beta",status="200"} 1.0' in text
        assert 'llmsched_gateway_queue_length{model="beta",policy="fcfs"} 0.0' in text
        beta_url = gw.dispatcher.backends[2].url
        assert f'llmsched_gateway_backend_models{{backend="{beta_url}",model="beta",parent=""}} 1.0' in text
        assert text.count("llmsched_gateway_backend_models{") == 3


async def test_tokenize_embeddings_and_responses_go_only_to_backends_serving_the_model() -> None:
    # routes.py's routes through the pools: tokenize (no routing state) among the model's backends only, an
    # admitted non-completions route (embeddings) and a pinned Responses follow-up through the model's pool.
    async with _fleet([{"served_model_name": "alpha"}, {"served_model_name": "alpha"},
                       {"served_model_name": "beta"}]) as (gw, emus), aiohttp.ClientSession() as http:
        for k in range(6):  # the rotation covers every backend of the pool; another's emulator would answer 404
            for m in ("beta", "alpha"):
                status, body = await _post(http, gw.url + "/tokenize", {"model": m, "prompt": f"tok {k}"})
                assert status == 200 and body["count"] > 0, (m, body)
        assert [_done(e) for e in emus] == [0, 0, 0]  # tokenize reaches no engine
        for k in range(4):
            status, body = await _post(http, gw.url + "/v1/embeddings", {"model": "beta", "input": f"emb {k}"})
            assert status == 200 and body["model"] == "beta"
        assert [_done(e) for e in emus] == [0, 0, 4]
        for k in range(4):
            assert (await _post(http, gw.url + "/v1/embeddings", {"model": "alpha", "input": f"e {k}"}))[0] == 200
        assert [_done(e) for e in emus] == [2, 2, 4]
        beta, alpha = gw.dispatcher.resolve("beta").d.router, gw.dispatcher.resolve("alpha").d.router
        n_beta, n_alpha = sum(beta.decisions.values()), sum(alpha.decisions.values())
        status, first = await _post(http, gw.url + "/v1/responses", {"model": "beta", "input": "hi",
                                                                      "max_output_tokens": 2})
        assert status == 200
        status, body = await _post(http, gw.url + "/v1/responses", {"model": "beta", "input": "more", "max_output_tokens": 2,
                                                                     "previous_response_id": first["id"]})
        assert status == 200 and body["model"] == "beta"
        assert sum(beta.decisions.values()) == n_beta + 2 and sum(alpha.decisions.values()) == n_alpha
        for path, body in (("/tokenize", {"model": "gamma", "prompt": "x"}),
                           ("/v1/embeddings", {"model": "gamma", "input": "x"})):
            status, err = await _post(http, gw.url + path, body)
            assert status == 404, (path, err)
            assert err["error"]["type"] == "not_found_error" and err["error"]["param"] == "model"
            assert "this gateway serves: alpha, beta" in err["error"]["message"], (path, err)
        status, err = await _post(http, gw.url + "/tokenize", {"prompt": "x"})  # which model's tokenizer?
        assert status == 400 and err["error"]["param"] == "model"
        status, err = await _post(http, gw.url + "/no/such/route", {})
        assert status == 404
        assert all(f"POST /v1/{a}_lora_adapter" in err["error"]["message"] for a in ("load", "unload"))


async def test_a_backend_with_several_served_names_is_in_each_names_pool() -> None:
    async with _fleet([{"served_model_name": ["alpha", "a-alias"]}, {"served_model_name": "alpha"}]) as (gw, emus), \
            aiohttp.ClientSession() as http:
        assert gw.dispatcher.backends[0].models == {"alpha", "a-alias"}
        async with http.get(gw.url + "/v1/models") as r:
            assert sorted(c["id"] for c in (await r.json())["data"]) == ["a-alias", "alpha"]
        for k in range(3):
            status, body = await _post(http, gw.url + "/v1/completions",
                                       {"model": "a-alias", "prompt": f"hi {k}", "max_tokens": 2})
            assert status == 200 and body["model"] == "alpha"  # vLLM answers with the first name
        assert [_done(e) for e in emus] == [3, 0]
        for k in range(4):
            assert (await _post(http, gw.url + "/v1/completions", {"model": "alpha", "prompt": f"{k}",
                                                                    "max_tokens": 2}))[0] == 200
        assert [_done(e) for e in emus] == [5, 2]


async def test_adapter_requests_stick_to_a_backend_with_the_adapter_and_only_go_where_it_is_listed() -> None:
    specs = [{"served_model_name": "base", "lora_modules": {"a1": "/l/a1"}, "max_loras": 1},
             {"served_model_name": "base", "lora_modules": {"a1": "/l/a1", "a2": "/l/a2"}, "max_loras": 1}]
    async with _fleet(specs) as (gw, emus), aiohttp.ClientSession() as http:
        async with http.get(gw.url + "/v1/models") as r:
            cards = {c["id"]: c for c in (await r.json())["data"]}
        assert cards["a1"]["parent"] == "base" and cards["a2"]["parent"] == "base" and cards["base"]["parent"] is None
        for k in range(3):
            assert (await _post(http, gw.url + "/v1/completions", {"model": "a2", "prompt": f"{k}", "max_tokens": 2}))[0] == 200
        assert [_done(e) for e in emus] == [0, 3]
        before = [_done(e) for e in emus]
        for k in range(6):  # one at a time: the adapter router keeps them where a1 was sent last
            assert (await _post(http, gw.url + "/v1/completions", {"model": "a1", "prompt": f"{k}", "max_tokens": 2}))[0] == 200
        after = [_done(e) - b for e, b in zip(emus, before, strict=True)]
        assert sorted(after) == [0, 6]
        await asyncio.sleep(0.15)  # a scrape: the snapshot carries vLLM's LoRA gauge
        assert all(b.snapshot.adapters is not None and b.snapshot.adapters.max_loras == 1 for b in gw.dispatcher.backends)
        assert gw.dispatcher.resolve("a1").d.router.decisions["affinity"] >= 5


async def test_load_and_unload_lora_adapter_through_the_gateway_change_the_pools() -> None:
    specs = [{"served_model_name": "base", "max_loras": 2}, {"served_model_name": "other"}]
    async with _fleet(specs) as (gw, emus), aiohttp.ClientSession() as http:
        url = gw.url + "/v1/load_lora_adapter?model=base"
        async with http.post(url, json={"lora_name": "new", "lora_path": "/l/new"}) as r:
            assert r.status == 200 and "added" in await r.text()
        async with http.get(gw.url + "/v1/models") as r:
            assert {c["id"]: c["parent"] for c in (await r.json())["data"]}["new"] == "base"
        assert (await _post(http, gw.url + "/v1/completions", {"model": "new", "prompt": "x", "max_tokens": 2}))[0] == 200
        async with http.post(url, json={"lora_name": "new", "lora_path": "/l/new"}) as r:  # vLLM's 400, passed on
            assert r.status == 400 and "already been loaded" in (await r.json())["error"]["message"]
        async with http.post(gw.url + "/v1/unload_lora_adapter", json={"lora_name": "new"}) as r:
            # forwarded to both backends: "other" never had it (404 there)
            assert r.status == 404 and "cannot be found" in (await r.json())["error"]["message"]
        status, body = await _post(http, gw.url + "/v1/completions", {"model": "new", "prompt": "x", "max_tokens": 2})
        assert status == 404 and "base" in body["error"]["message"]


async def test_discovery_refresh_moves_a_backend_whose_models_changed() -> None:
    specs = [{"served_model_name": "base", "lora_modules": {"a1": "/l/a1"}},
             {"served_model_name": "base", "lora_modules": {"a1": "/l/a1"}}]
    async with _fleet(specs, discovery_interval=0.05) as (gw, emus), aiohttp.ClientSession() as http:
        async with http.post(gw.dispatcher.backends[0].url + "/v1/unload_lora_adapter", json={"lora_name": "a1"}) as r:
            assert r.status == 200
        await asyncio.sleep(0.3)
        assert gw.dispatcher.backends[0].models == {"base"}
        before = [_done(e) for e in emus]
        for k in range(4):
            assert (await _post(http, gw.url + "/v1/completions", {"model": "a1", "prompt": f"{k}", "max_tokens": 2}))[0] == 200
        assert [_done(e) - b for e, b in zip(emus, before, strict=True)] == [0, 4]


async def test_a_backend_down_at_start_is_discovered_as_soon_as_it_answers() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    late = EmulatorServer(speed=200.0, served_model_name="beta")
    async with _fleet([{"served_model_name": "alpha"}], discovery_interval=60) as (gw, _), \
            aiohttp.ClientSession() as http:
        async with http.post(gw.url + "/admin/backends", json={"url": f"http://127.0.0.1:{port}"}) as r:
            assert r.status == 200
        status, body = await _post(http, gw.url + "/v1/completions", {"model": "beta", "prompt": "x"})
        assert status == 404 and "alpha" in body["error"]["message"]
        await late.start("127.0.0.1", port)
        try:
            await asyncio.sleep(0.4)  # a few scrape intervals, far below discovery_interval
            status, body = await _post(http, gw.url + "/v1/completions", {"model": "beta", "prompt": "x", "max_tokens": 1})
            assert status == 200 and body["model"] == "beta"
        finally:
            await late.stop()


async def test_mixed_load_of_two_models_and_several_adapters_loses_nothing() -> None:
    specs = [{"served_model_name": "m1", "lora_modules": {"x": "/l/x", "y": "/l/y"}, "max_loras": 1},
             {"served_model_name": "m1", "lora_modules": {"x": "/l/x", "y": "/l/y", "w": "/l/w"}, "max_loras": 2},
             {"served_model_name": "m2", "lora_modules": {"z": "/l/z"}, "max_loras": 1}]
    models = ["m1", "m1", "x", "y", "w", "m2", "m2", "z"]
    rng = random.Random(0)
    plan = [(rng.choice(models), rng.random() < 0.5, k) for k in range(160)]
    async with _fleet(specs, max_in_flight_per_backend=8) as (gw, emus), aiohttp.ClientSession() as http:

        async def one(model: str, stream: bool, k: int) -> tuple[str, int, int]:
            body = {"model": model, "prompt": f"request {k} " * (k % 7 + 1), "max_tokens": 3, "stream": stream}
            async with http.post(gw.url + "/v1/completions", json=body) as r:
                data = await r.read()
                tokens = data.count(b'"text"') if stream else (3 if r.status == 200 else 0)
                return model, r.status, tokens

        results = await asyncio.gather(*(one(*p) for p in plan))
        assert [s for _, s, _ in results] == [200] * len(plan)
        assert all(t >= 3 for _, _, t in results)
        assert sum(_done(e) for e in emus) == len(plan)  # none lost, none twice
        assert _done(emus[2]) == sum(1 for m, _, _ in plan if m in ("m2", "z"))
        assert gw.dispatcher.queued == 0 and gw.dispatcher.in_flight == 0
        async with http.get(gw.url + "/metrics") as r:
            text = await r.text()
        for m in set(models):
            n = sum(1 for x, _, _ in plan if x == m)
            assert f'llmsched_gateway_model_requests_total{{model="{m}",status="200"}} {float(n)}' in text


def test_serve_emulated_model_starts_a_two_model_gateway_in_one_command() -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launch = "import typer; from llmsched.gateway.cli import serve_cmd; typer.run(serve_cmd)"
    proc = subprocess.Popen([sys.executable, "-c", launch, "--emulated-model", "a=llama-3.1-8b:2", "--emulated-model",
                             "b=llama-2-13b", "--emulator-speed", "50", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert sorted(c["id"] for c in httpx.get(url + "/v1/models").json()["data"]) == ["a", "b"]
        for m in ("a", "b", "a"):
            r = httpx.post(url + "/v1/completions", json={"model": m, "prompt": "x", "max_tokens": 2}, timeout=30)
            assert r.status_code == 200 and r.json()["model"] == m
        text = httpx.get(url + "/metrics").text
        assert text.count('model="a",parent=""} 1.0') == 2 and text.count('model="b",parent=""} 1.0') == 1
        assert 'llmsched_gateway_model_requests_total{model="a",status="200"} 2.0' in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_emulated_model_flag_errors_name_the_value() -> None:
    import typer
    from typer.testing import CliRunner

    from llmsched.gateway.cli import serve_cmd

    app = typer.Typer()
    app.command()(serve_cmd)
    for value, msg in (("a", "expected NAME=PRESET"), ("a=llama-3.1-8b:0", "N >= 1"), ("=llama-3.1-8b", "NAME=PRESET"),
                       ("a=llama3x", "unknown model preset 'llama3x'")):
        r = CliRunner().invoke(app, ["--emulated-model", value])
        assert r.exit_code == 2 and f"--emulated-model {value!r}" in r.output and msg in r.output, r.output
