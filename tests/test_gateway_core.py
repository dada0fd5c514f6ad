"""The gateway's sans-I/O decisions: breaker, dispatcher (admission, routing, retry, drain), config, scrape."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from llmsched.core.types import Request
from llmsched.gateway.breaker import BreakerState, CircuitBreaker
from llmsched.gateway.config import ConfigError, build_config, load_config
from llmsched.gateway.dispatcher import Dispatcher
from llmsched.gateway.openai_req import CHAT, COMPLETIONS, BadRequest, build_request, parse_body
from llmsched.gateway.scrape import MetricsParseError, parse_vllm_metrics, snapshot_from_metrics
from llmsched.policies.instance import ROUTERS
from llmsched.policies.request import REQUEST_POLICIES


def _req(rid: int, t: float = 0.0) -> Request:
    return Request(rid=rid, arrival=t, prompt_len=10, output_len=5)


def _disp(n: int = 2, cap: int = 2, bound: int = 3) -> Dispatcher:
    d = Dispatcher(REQUEST_POLICIES.create("fcfs"), ROUTERS.create("round-robin"), cap, bound,
                   lambda: CircuitBreaker(2, 1.0))
    for k in range(n):
        d.add_backend(f"http://b{k}", 0.0)
    return d


# -- breaker -------------------------------------------------------------------------------------------
def test_breaker_opens_after_threshold_and_half_opens_after_cooldown() -> None:
    b = CircuitBreaker(failure_threshold=2, cooldown=5.0)
    b.failure(0.0)
    assert b.available(0.1)
    b.failure(0.2)
    assert b.state is BreakerState.OPEN and not b.available(3.0)
    assert b.acquire(5.3)  # half-open: exactly one probe
    assert b.state is BreakerState.HALF_OPEN and not b.acquire(5.4)
    b.failure(5.5)  # the probe failed: open again for a full cooldown
    assert not b.available(10.0) and b.available(10.6)
    b.success(10.6)
    assert b.state is BreakerState.CLOSED and b.failures == 0


def test_breaker_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(0, 1.0)


@given(st.lists(st.tuples(st.booleans(), st.floats(0.0, 1.5)), max_size=40))
def test_breaker_success_closes_unless_open(events: list[tuple[bool, float]]) -> None:
    """A success closes the breaker from closed or half-open; while open (cooldown running) a late success
    of a request sent before it opened changes nothing."""
    b = CircuitBreaker(3, 1.0)
    t = 0.0
    for ok, dt in events:
        t += dt
        if ok:
            was_open = b.state is BreakerState.OPEN and t - b.opened_at < b.cooldown
            b.success(t)
            assert b.state is (BreakerState.OPEN if was_open else BreakerState.CLOSED)
        else:
            b.failure(t)
    assert b.failures <= len(events)


def test_late_success_does_not_close_an_open_breaker() -> None:
    b = CircuitBreaker(2, 5.0)
    b.failure(0.0)
    b.failure(0.1)
    b.success(0.2)  # a stream sent before the failures completes late
    assert b.state is BreakerState.OPEN and not b.available(0.3)


# -- dispatcher ----------------------------------------------------------------------------------------
def test_dispatch_respects_cap_and_queue_bound() -> None:
    d = _disp(n=2, cap=2, bound=3)
    reqs = [_req(k) for k in range(10)]
    accepted = [r for r in reqs if d.submit(r, 0.0) and (d.dispatch(0.0) or True)]
    # 4 dispatched (2 backends x cap 2) + 3 queued; the rest refused.
    assert len(accepted) == 7 and d.rejected == 3
    assert [b.in_flight for b in d.backends] == [2, 2] and d.queued == 3
    d.finish(accepted[0], accepted[0].instance, 1.0, ok=True)
    out = d.dispatch(1.0)
    assert [r.rid for r, _ in out] == [4] and out[0][1] == accepted[0].instance  # FCFS order, freed slot


def test_queued_request_can_be_cancelled() -> None:
    d = _disp(n=1, cap=1)
    a, b = _req(0), _req(1)
    d.submit(a, 0.0)
    d.submit(b, 0.0)
    d.dispatch(0.0)
    assert d.cancel(b) and d.queued == 0 and not d.cancel(b)


def test_retry_avoids_failed_backends_and_gives_up() -> None:
    d = _disp(n=3, cap=1)
    r = _req(0)
    d.submit(r, 0.0)
    [(_, i)] = d.dispatch(0.0)
    d.finish(r, i, 0.1, ok=False)
    j = d.retry(r, i, frozenset(), 0.1)
    assert j is not None and j != i
    d.finish(r, j, 0.2, ok=False)
    k = d.retry(r, j, frozenset({i}), 0.2)
    assert k not in (None, i, j)
    d.finish(r, k, 0.3, ok=False)
    assert d.retry(r, k, frozenset({i, j}), 0.3) is None
    assert all(b.in_flight == 0 for b in d.backends)


def test_open_breaker_and_draining_backend_get_nothing() -> None:
    d = _disp(n=3, cap=100)
    d.scrape_failed(0, 0.0)
    d.scrape_failed(0, 0.0)  # threshold 2: backend 0 open
    d.drain("http://b1")
    got = set()
    for k in range(6):
        r = _req(k)
        d.submit(r, 0.1)
        got |= {i for _, i in d.dispatch(0.1)}
    assert got == {2}
    assert d.reap() == [d.backends[1]] and d.backends[1].removed
    assert [b.url for b in d.live()] == ["http://b0", "http://b2"]


def test_drained_backend_is_removed_only_when_idle() -> None:
    d = _disp(n=2, cap=4)
    r = _req(0)
    d.submit(r, 0.0)
    [(_, i)] = d.dispatch(0.0)
    d.drain(d.backends[i].url)
    assert d.reap() == []
    d.finish(r, i, 1.0, ok=True)
    assert [b.index for b in d.reap()] == [i]


def test_client_cancel_is_not_a_backend_fault() -> None:
    d = _disp(n=1, cap=4)
    for k in range(5):
        r = _req(k)
        d.submit(r, 0.0)
        [(_, i)] = d.dispatch(0.0)
        d.finish(r, i, 0.1, ok=False, backend_fault=False)
    assert d.backends[0].breaker.state is BreakerState.CLOSED


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["submit", "finish", "fail", "cancel", "scrape_fail", "tick"]),
                          st.integers(0, 30)), max_size=80))
def test_dispatcher_accounting_invariants(ops: list[tuple[str, int]]) -> None:
    """Whatever happens, in-flight counts match dispatched-and-unfinished requests and respect the cap."""
    d = _disp(n=3, cap=2, bound=4)
    t = 0.0
    live: dict[int, Request] = {}
    queued: dict[int, Request] = {}
    rid = 0
    for op, k in ops:
        t += 0.05
        if op == "submit":
            r = _req(rid, t)
            rid += 1
            if d.submit(r, t):
                queued[r.rid] = r
        elif op in ("finish", "fail") and live:
            r = live.pop(sorted(live)[k % len(live)])
            d.finish(r, r.instance, t, ok=op == "finish")
        elif op == "cancel" and queued:
            r = queued.pop(sorted(queued)[k % len(queued)])
            assert d.cancel(r)
        elif op == "scrape_fail":
            d.scrape_failed(k % 3, t)
        elif op == "tick":
            t += k * 0.1
        for r, i in d.dispatch(t):
            queued.pop(r.rid)
            live[r.rid] = r
            assert r.instance == i
        assert d.queued == len(queued)
        assert sum(b.in_flight for b in d.backends) == len(live)
        assert all(b.in_flight <= 2 for b in d.backends)
        assert d.router.in_flight_ == [b.in_flight for b in d.backends]


# -- request parsing -----------------------------------------------------------------------------------
def test_parse_completion_and_chat() -> None:
    p = parse_body(b'{"model": "m", "prompt": "hello", "max_tokens": 7, "stream": true, "user": "u1"}',
                   COMPLETIONS)
    assert p.stream and p.max_tokens == 7 and p.user == "u1"
    c = parse_body(b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}', CHAT)
    assert not c.stream and "hi" in c.text


@pytest.mark.parametrize(("raw", "endpoint", "param"), [
    (b"[1, 2]", COMPLETIONS, None),
    (b'{"prompt": 3}', COMPLETIONS, "prompt"),
    (b'{"prompt": "x", "max_tokens": 0}', COMPLETIONS, "max_tokens"),
    (b'{"prompt": "x", "stream": "yes"}', COMPLETIONS, "stream"),
    (b'{"messages": []}', CHAT, "messages"),
    (b'{"messages": [{"content": "x"}]}', CHAT, "messages[0]"),
    (b'{"messages": [{"role": "user", "content": 5}]}', CHAT, "messages[0].content"),
])
def test_parse_rejects_with_the_field_named(raw: bytes, endpoint: str, param: str | None) -> None:
    with pytest.raises(BadRequest) as e:
        parse_body(raw, endpoint)
    assert e.value.param == param and e.value.status == 400


def test_equal_prefixes_give_equal_leading_block_hashes() -> None:
    base = "The quick brown fox jumps over the lazy dog. " * 40
    a = build_request(parse_body(f'{{"prompt": "{base}A"}}'.encode(), COMPLETIONS), 0, 0.0, 16, None)
    b = build_request(parse_body(f'{{"prompt": "{base}B and more"}}'.encode(), COMPLETIONS), 1, 0.0, 16, "s")
    assert a.block_hashes and b.block_hashes
    n = len(base) // 64
    assert a.block_hashes[:n] == b.block_hashes[:n]
    assert b.session == "s" and a.prompt_len == -(-(len(base) + 1) // 4)


# -- scrape --------------------------------------------------------------------------------------------
VLLM_TEXT = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 4.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1000.0
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 400.0
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",num_gpu_blocks="2000"} 1.0
"""


def test_snapshot_from_vllm_metrics() -> None:
    s = snapshot_from_metrics(parse_vllm_metrics(VLLM_TEXT), 2, 9.5)
    assert (s.instance, s.time, s.num_running, s.num_waiting) == (2, 9.5, 5, 4)
    assert s.kv_usage == 0.25 and s.num_total_blocks == 2000 and s.num_free_blocks == 1500
    assert (s.prefix_queries, s.prefix_hits) == (1000, 400)


def test_snapshot_of_sparse_or_bad_metrics() -> None:
    s = snapshot_from_metrics(parse_vllm_metrics("vllm:gpu_cache_usage_perc 0.5\n"), 0, 0.0)
    assert s.kv_usage == 0.5 and s.num_running == 0
    with pytest.raises(MetricsParseError):
        parse_vllm_metrics("vllm:num_requests_running{ 3\n")


@pytest.mark.parametrize("variant", ["as is", "crlf", "kept sample first", "near-miss names"])
def test_fast_scrape_reads_what_the_prometheus_parser_reads(variant: str) -> None:
    """The scrape's scan finds each kept series' lines wherever they sit (first line, CRLF endings) and only
    them (a longer name that starts with a kept one is another series)."""
    from llmsched.gateway import scrape

    text = VLLM_TEXT
    if variant == "crlf":
        text = text.replace("\n", "\r\n")
    elif variant == "kept sample first":
        text = 'vllm:num_requests_waiting{engine="1",model_name="m"} 7\n' + text
    elif variant == "near-miss names":
        text += ('vllm:num_requests_running_total{model_name="m"} 99\n'
                 'vllm:num_requests_waiting_by_reason{reason="x"} 98\n')
    fast = scrape._wanted_samples(text)
    full = [x for x in scrape._all_samples(text) if x[0] in scrape._KEPT]
    assert fast, "the fast scan found nothing: it would not be the one tested"
    assert sorted(fast, key=repr) == sorted(full, key=repr)


def test_malformed_kept_series_line_raises_wherever_it_is() -> None:
    for text in ("vllm:num_requests_running{ 3\n", 'x 1\nvllm:kv_cache_usage_perc{a="b"} notanumber\n',
                 VLLM_TEXT + 'vllm:prefix_cache_hits_total{engine="0" 3\n'):
        with pytest.raises(MetricsParseError):
            parse_vllm_metrics(text)


# -- config --------------------------------------------------------------------------------------------
def test_config_file_errors_name_file_and_field(tmp_path) -> None:
    p = tmp_path / "gw.yaml"
    p.write_text("backends: [ftp://x]\nqueue_bound: -1\ntimeouts: {connect: 0}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "backends" in msg and "queue_bound" in msg and "timeouts.connect" in msg
    p.write_text("backends: [http://a\n")
    with pytest.raises(ConfigError, match=r"gw.yaml:\d+: invalid YAML"):
        load_config(p)
    p.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)
    p.write_text("router: {name: nope}\n")
    with pytest.raises(ConfigError, match="router: unknown router policy 'nope'"):
        load_config(p)
    p.write_text("request_policy: {name: fcfs, params: {bogus: 1}}\n")
    with pytest.raises(ConfigError, match="request_policy"):
        load_config(p)
    p.write_text("colour: blue\n")
    with pytest.raises(ConfigError, match="colour"):
        load_config(p)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_config_overrides_and_defaults(tmp_path) -> None:
    p = tmp_path / "gw.yaml"
    p.write_text("backends: ['http://a:1/']\nscrape_interval: 0.2\napi_keys: [k]\nbreaker: {cooldown: 2}\n")
    cfg = load_config(p, {"router": {"name": "round-robin"}, "queue_bound": None})
    assert cfg.backends == ["http://a:1"] and cfg.scrape_interval == 0.2 and cfg.breaker.cooldown == 2
    assert cfg.queue_bound == 4096 and build_config({}).request_policy.name == "fcfs"


@settings(max_examples=80, deadline=None)
@example([4, 1, 2, 0, 0, 0], [], [0, 0], 4)  # a float dot product once hashed this block differently by shape
@given(st.lists(st.integers(0, 2**32 - 1), max_size=200), st.lists(st.integers(0, 2**32 - 1), max_size=200),
       st.lists(st.integers(0, 2**32 - 1), max_size=200), st.sampled_from([1, 4, 16]))
def test_fast_block_hashes_match_exactly_on_shared_prefixes(common: list[int], a: list[int], b: list[int],
                                                            bs: int) -> None:
    import numpy as np

    from llmsched.gateway.prefix import block_hashes

    x = np.array(common + a, np.uint32)
    y = np.array(common + b, np.uint32)
    hx, hy = block_hashes(x, bs), block_hashes(y, bs)
    assert len(hx) == len(x) // bs and len(hy) == len(y) // bs
    shared = len(common) // bs
    assert hx[:shared] == hy[:shared]
    # Past the first differing block, hashes differ (collisions are possible in principle, not in 64 bits here).
    first_diff = next((k for k in range(min(len(x), len(y))) if x[k] != y[k]), None)
    if first_diff is not None and first_diff // bs < min(len(hx), len(hy)):
        k = first_diff // bs
        assert hx[k] != hy[k] and hx[k:] != hy[k:]
    assert hx == block_hashes(x.copy(), bs)  # deterministic
    from llmsched.gateway.prefix import Scratch

    scratch = Scratch()  # the gateway's reused buffer, dirty from a longer prompt first: the same hashes
    assert block_hashes(y, bs, scratch) == hy and block_hashes(x, bs, scratch) == hx


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(st.characters(codec=None, exclude_categories=()), max_size=200), max_size=6),
       st.sampled_from([1, 4, 16]), st.booleans())
def test_text_block_hashes_equal_the_tokenizer_ids_hashed_alone(texts: list[str], bs: int, reuse: bool) -> None:
    """The recorder's hashing from joined bytes (padding, multi-byte characters, surrogates, a reused scratch
    buffer) gives what a prefix-aware router computes from each prompt's token ids."""
    from llmsched.gateway.openai_req import token_ids
    from llmsched.gateway.prefix import Scratch, block_hashes, text_block_hashes

    scratch = Scratch() if reuse else None
    for _ in range(2):  # twice: a scratch buffer left dirty by the first pass changes nothing
        flat, ns = text_block_hashes(texts, bs, scratch)
        ends = [int(x) for x in ns.cumsum()]
        got = [tuple(flat[e - n:e].tolist()) for e, n in zip(ends, ns.tolist(), strict=True)]
        assert got == [block_hashes(token_ids(t), bs) for t in texts]


# -- CLI -----------------------------------------------------------------------------------------------
def test_serve_cli_reports_config_errors(tmp_path) -> None:
    import typer
    from typer.testing import CliRunner

    from llmsched.gateway.cli import serve_cmd

    app = typer.Typer()
    app.command()(serve_cmd)
    run = CliRunner().invoke
    p = tmp_path / "gw.yaml"
    p.write_text("max_in_flight_per_backend: 0\n")
    r = run(app, ["--config", str(p)])
    assert r.exit_code == 2 and "max_in_flight_per_backend" in r.output and str(p) in r.output
    r = run(app, ["--backend", "localhost:8000"])
    assert r.exit_code == 2 and "not an http(s) URL" in r.output
    r = run(app, ["--backend", "http://a:1", "--router", "nope"])
    assert r.exit_code == 2 and "unknown router policy 'nope'" in r.output
    r = run(app, [])
    assert r.exit_code == 2 and "--backend" in r.output
