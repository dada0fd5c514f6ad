"""The roofline cost model: hand-computed figures, monotonicity, fast-forward equality, memory, MoE primitives."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmsched.model import (
    BatchStats,
    ComputeFit,
    CostModel,
    StepCostModel,
    build_cost_model,
    fitted,
    get_gpu,
    get_llm,
)
from llmsched.model.presets import LlmPreset

MODELS = {
    "llama-3.1-8b/h100": build_cost_model("llama-3.1-8b", "h100"),
    "llama-2-70b/a100": build_cost_model("llama-2-70b", "a100-80g"),
    "llama-2-13b/h200/tp2": build_cost_model("llama-2-13b", "h200", tp=2),
    "qwen3/a100": build_cost_model("qwen3-30b-a3b", "a100-80g"),
    "deepseek/h100": build_cost_model("deepseek-v3-like", "h100"),
}
IDEAL = ComputeFit(gemm_flops_eff=1.0, gemm_bw_eff=1.0, elem_bw_eff=1.0, gemm_latency_s=0.0, elem_latency_s=0.0)


@st.composite
def batches(draw: st.DrawFn) -> BatchStats:
    prefill_seqs = draw(st.integers(0, 4))
    prefill = draw(st.integers(prefill_seqs, 4096)) if prefill_seqs else 0
    ctx = draw(st.integers(0, 32768))
    pairs = prefill * (ctx + (prefill + 1) / 2) if prefill else 0.0
    decode = draw(st.integers(0, 256))
    kv = decode * draw(st.integers(1, 32768)) if decode else 0
    return BatchStats(prefill_tokens=prefill, prefill_pairs=pairs, prefill_seqs=prefill_seqs,
                      decode_tokens=decode, kv_tokens=kv)


def test_is_a_step_cost_model() -> None:
    m: StepCostModel = MODELS["llama-3.1-8b/h100"]
    assert m.needs_class_tokens is False
    assert (m.llm.name, m.gpu.name, m.tp, m.num_gpus, m.num_moe_layers) == ("llama-3.1-8b", "h100", 1, 1, 0)
    q = MODELS["qwen3/a100"]
    assert (q.tp, q.num_gpus, q.num_moe_layers) == (2, 2, 48)


def test_prefill_of_one_request_matches_hand_roofline() -> None:
    # A toy 2-layer model on an ideal H100 (peak 989 TFLOP/s, 3.35 TB/s, no floors, no overhead).
    toy = LlmPreset(name="toy", num_layers=2, hidden=1024, num_heads=8, num_kv_heads=8, head_dim=128,
                    ffn=4096, vocab=1000)
    m = CostModel(toy, get_gpu("h100"), tp=1, fit=IDEAL, step_overhead_s=0.0, attn_flops_eff=1.0,
                  seq_overhead_s=0.0, attn_bw_eff=1.0, attn_latency_s=0.0)
    n = 4096
    pairs = n * (n + 1) / 2
    peak, bw = 989e12, 3.35e12
    # GEMMs per layer, all compute bound at 4096 tokens: QKV 1024->3072, O 1024->1024, gate+up 1024->8192,
    # down 4096->1024.
    gemm = 2 * n * 1024 * (3072 + 1024 + 8192 + 4096) / peak
    # Causal attention: 4 FLOPs x 8 heads x 128 dims per query-key pair (compute bound).
    attn = 4 * 8 * 128 * pairs / peak
    # Elementwise bytes per layer: 2 RMSNorms (read+write n x 1024 bf16), RoPE on q and k, 2 residual adds
    # (2 reads + 1 write), SiLU-and-mul (2 reads + 1 write of n x 4096).
    elem_layer = 2 * (2 * n * 1024 * 2) + 2 * n * 16 * 128 * 2 + 2 * (3 * n * 1024 * 2) + 3 * n * 4096 * 2
    embed = 2 * n * 1024 * 2
    # One sequence samples: final norm, LM head (memory bound: its 1000 x 1024 weights), fp32 softmax.
    head = 2 * 1024 * 2 + 2 * (1024 + 1024 * 1000 + 1000) + 2 * 1000 * 4
    expected = 2 * (gemm + attn) + (2 * elem_layer + embed + head) / bw
    b = BatchStats(prefill_tokens=n, prefill_pairs=pairs, prefill_seqs=1)
    assert m.step_time(b, 0.0) == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(4.83e-4, rel=0.01)  # 348 us of GEMM+attention FLOPs, 135 us of bytes


@pytest.mark.parametrize("key", MODELS)
def test_more_tokens_never_cheaper(key: str) -> None:
    m = MODELS[key]
    n = np.arange(1, 16385)
    assert np.all(np.diff(m.token_time(n)) >= 0)
    assert np.all(np.diff(m.seq_time(np.arange(1, 1025))) >= 0)


def _more(b: BatchStats, d: tuple[int, int, int, int]) -> BatchStats:
    return dataclasses.replace(
        b, prefill_tokens=b.prefill_tokens + d[0], prefill_pairs=b.prefill_pairs + d[0] * d[1],
        prefill_seqs=b.prefill_seqs + (d[0] > 0), decode_tokens=b.decode_tokens + d[2],
        kv_tokens=b.kv_tokens + d[2] + d[3],
    )


def _quantised(m: CostModel) -> bool:
    """Decode attention priced with FlashAttention-2's CTA waves (A100), not the smooth fit (H100/H200: FA3)."""
    return m._aw[2] != float("inf")


@settings(max_examples=150, deadline=None)
@given(b=batches(), d=st.tuples(*[st.integers(0, 2048)] * 4), key=st.sampled_from(sorted(MODELS)))
def test_step_time_is_monotone_in_every_field(b: BatchStats, d: tuple[int, int, int, int], key: str) -> None:
    """More prefill, more context, and (with smoothly priced attention) more decode sequences never make a step
    cheaper. With FA2's CTA waves, more sequences can: see the next test."""
    m = MODELS[key]
    if _quantised(m):
        d = (d[0], d[1], 0, d[3])
    assert m.step_time(_more(b, d), 0.0) >= m.step_time(b, 0.0)


@settings(max_examples=150, deadline=None)
@given(b=batches(), d=st.tuples(*[st.integers(0, 2048)] * 4),
       key=st.sampled_from(sorted(k for k, m in MODELS.items() if _quantised(m))))
def test_more_decode_sequences_are_cheaper_only_through_the_attention_waves(b: BatchStats,
                                                                          d: tuple[int, int, int, int],
                                                                          key: str) -> None:
    """FA2's split heuristic picks fewer KV splits for more sequences (fewer CTA rounds), and at an even context
    per sequence the busiest SM streams less when the same KV spreads over more CTAs: the kernel's time has a
    sawtooth in the sequence count. Everything else in a step must still grow: the step less its decode
    attention is monotone, and the attention of the larger batch is never below the smooth (no-wave) price."""
    m = MODELS[key]
    more = _more(b, d)
    n0, n1 = b.prefill_tokens + b.decode_tokens, more.prefill_tokens + more.decode_tokens
    if n0 == 0:
        return
    assert m._fixed(more, n1) >= m._fixed(b, n0)
    if more.decode_tokens:
        lat, slow = m._attn_waves(more.decode_tokens)
        assert lat >= 0 and slow >= 1.0
        smooth = max(more.kv_tokens * m._a_flops, (more.kv_tokens + more.decode_tokens) * m._a_kv
                     + more.decode_tokens * m._a_q)
        assert m.step_time(more, 0.0) >= m._fixed(more, n1) + smooth


@settings(max_examples=150, deadline=None)
@given(b=batches(), k=st.integers(1, 64), key=st.sampled_from(sorted(MODELS)))
def test_decode_run_equals_repeated_step_time(b: BatchStats, k: int, key: str) -> None:
    m = MODELS[key]
    run = m.decode_run(b, k, 5.0)
    assert run.shape == (k,) and run.dtype == np.float64
    ref = np.array([m.step_time(dataclasses.replace(b, kv_tokens=b.kv_tokens + i * b.decode_tokens), 5.0)
                    for i in range(k)])
    np.testing.assert_allclose(run, ref, rtol=1e-12, atol=0)


def test_decode_run_degenerate_k() -> None:
    m = MODELS["llama-3.1-8b/h100"]
    assert m.decode_run(BatchStats(decode_tokens=4, kv_tokens=400), 0, 0.0).shape == (0,)
    assert m.step_time(BatchStats(), 0.0) == 0.0


def test_decode_grows_with_context_and_is_memory_bound() -> None:
    m = MODELS["llama-3.1-8b/h100"]
    short = m.step_time(BatchStats(decode_tokens=64, kv_tokens=64 * 100), 0.0)
    long = m.step_time(BatchStats(decode_tokens=64, kv_tokens=64 * 8000), 0.0)
    assert long > short
    # Batch-1 decode reads all 16 GB of weights: between 4 ms and 10 ms on an H100.
    one = m.step_time(BatchStats(decode_tokens=1, kv_tokens=1000), 0.0)
    assert 4e-3 < one < 10e-3


def test_hardware_and_parallelism_order() -> None:
    b = BatchStats(decode_tokens=32, kv_tokens=32 * 2000)
    p = BatchStats(prefill_tokens=4096, prefill_pairs=4096 * 4097 / 2, prefill_seqs=1)
    a100, h100, h200 = (build_cost_model("llama-3.1-8b", g) for g in ("a100-80g", "h100", "h200"))
    assert a100.step_time(b, 0) > h100.step_time(b, 0) > h200.step_time(b, 0)
    assert a100.step_time(p, 0) > h100.step_time(p, 0)
    tp1, tp2 = build_cost_model("llama-2-13b", "h100", tp=1), build_cost_model("llama-2-13b", "h100", tp=2)
    assert tp2.step_time(p, 0) < tp1.step_time(p, 0)


def test_kv_capacity() -> None:
    m = MODELS["llama-3.1-8b/h100"]
    # 85.5 GB x 0.9 - 16.1 GB weights - ~1.6 GB activations, over 32 layers x 8 KV heads x 128 x 2 x 2 B.
    cap = m.kv_capacity_tokens(0.9)
    assert 440_000 <= cap <= 500_000
    assert m.kv_capacity_tokens(0.5) < cap
    assert build_cost_model("llama-3.1-8b", "h200").kv_capacity_tokens(0.9) > 2 * cap - 100_000
    # TP4 on Llama-2-70B: each GPU holds 2 of the 8 KV heads.
    assert 400_000 <= build_cost_model("llama-2-70b", "h100").kv_capacity_tokens(0.9) <= 600_000
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        m.kv_capacity_tokens(1.5)
    with pytest.raises(ValueError, match="does not fit"):
        build_cost_model("llama-2-70b", "a100-80g", tp=1).kv_capacity_tokens(0.9)


def test_moe_primitives() -> None:
    q = MODELS["qwen3/a100"]
    n = np.array([1.0, 16.0, 256.0, 4096.0])
    g = q.gemm_time(n, 768, 2048)
    assert g.shape == (4,) and np.all(np.diff(g) > 0)
    assert float(q.gemm_time(16.0, 768, 2048)) == pytest.approx(g[1])
    per_gpu = q.expert_layer_time_per_gpu(np.array([0.0, 8.0, 64.0, 1024.0]), 64)
    assert np.all(np.diff(per_gpu) > 0)
    # Balanced is the best case: any skew at the same total makes the slowest GPU slower.
    tokens = 512.0
    balanced = float(q.routed_expert_time(tokens / q.llm.top_k))
    skewed = q.num_moe_layers * q.expert_layer_time_per_gpu(np.array([tokens * 0.8, tokens * 0.2]), 64).max()
    assert skewed > balanced
    assert q.routed_expert_time(np.array([1.0, 2.0])).shape == (2,)
    assert float(q.all_to_all_time(1e7, intra_node=True)) < float(q.all_to_all_time(1e7, intra_node=False))
    assert MODELS["llama-3.1-8b/h100"].routed_expert_time(100.0) == 0.0
    d = MODELS["deepseek/h100"]
    assert (d.num_gpus, d.tp, d.dp, d.experts_per_gpu, d.num_moe_layers) == (32, 1, 32, 8, 58)
    assert float(d.moe_comm_time(1024.0)) > 0  # 4 nodes: EP dispatch crosses InfiniBand


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"llm": "llama-2-7b", "tp": 2, "num_gpus": 4}, "dense"),
        ({"llm": "qwen3-30b-a3b", "tp": 2, "num_gpus": 256}, "experts"),
        ({"llm": "qwen3-30b-a3b", "tp": 4, "num_gpus": 6}, "multiple of tp"),
        ({"llm": "llama-2-13b", "tp": 3, "num_gpus": 3}, "heads"),
    ],
)
def test_invalid_parallelism_is_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CostModel(get_llm(kwargs.pop("llm")), get_gpu("h100"), **kwargs)


def test_build_cost_model_unknown_names() -> None:
    with pytest.raises(ValueError, match="known"):
        build_cost_model("llama-9", "h100")
    with pytest.raises(ValueError, match="known"):
        build_cost_model("llama-2-7b", "tpu")


def test_cpu_overhead_is_a_fixed_term_plus_a_term_per_sequence() -> None:
    llm, gpu = get_llm("llama-3.1-8b"), get_gpu("h100")
    lean = CostModel(llm, gpu, step_overhead_s=0.0, seq_overhead_s=0.0)
    cpu = CostModel(llm, gpu, step_overhead_s=4e-4, seq_overhead_s=5e-6)
    for batch in (1, 64, 256):
        b = BatchStats(decode_tokens=batch, kv_tokens=batch * 1000)
        assert cpu.step_time(b, 0.0) - lean.step_time(b, 0.0) == pytest.approx(4e-4 + batch * 5e-6, rel=1e-9)
        np.testing.assert_allclose(cpu.decode_run(b, 3, 0.0) - lean.decode_run(b, 3, 0.0), 4e-4 + batch * 5e-6)
    mixed = BatchStats(prefill_tokens=512, prefill_pairs=512 * 300.0, prefill_seqs=2, decode_tokens=30, kv_tokens=30_000)
    assert cpu.step_time(mixed, 0.0) - lean.step_time(mixed, 0.0) == pytest.approx(4e-4 + 32 * 5e-6, rel=1e-9)


def test_custom_all_reduce_takes_small_messages_and_nccl_the_rest() -> None:
    m = build_cost_model("llama-2-70b", "h100")  # tp 4 on one H100 node: custom kernel below 8 MiB
    nccl = build_cost_model("llama-2-70b", "h100", custom_ar_max_bytes=0)
    lat, bw = fitted.CUSTOM_ALL_REDUCE["h100"]["latency_s"], fitted.CUSTOM_ALL_REDUCE["h100"]["bw"]
    small, big = 8 * 8192 * 2.0, 16 * 2**20  # 8 decode tokens of Llama-2-70B; a long prefill chunk
    assert float(m.all_reduce_time(small)) == pytest.approx(lat + 3 * small / bw, rel=1e-12)  # one-shot
    assert float(m.all_reduce_time(2**20)) == pytest.approx(2 * lat + 1.5 * 2**20 / bw, rel=1e-12)  # two-shot
    assert float(m.all_reduce_time(small)) < 0.5 * float(nccl.all_reduce_time(small))  # ~10 us vs ~31 us
    assert float(m.all_reduce_time(big)) == float(nccl.all_reduce_time(big))
    limit = m.custom_ar_max_bytes
    assert limit == 8 * 2**20
    for lo, hi in ((16, 512 * 1024 - 16), (512 * 1024, limit - 16), (limit, 4 * limit)):
        assert np.all(np.diff(m.all_reduce_time(np.linspace(lo, hi, 2001))) >= 0)  # within each algorithm
    # vLLM's 8 MiB limit sits where the fitted custom kernel and the fitted NCCL curve cross at tp 4
    assert float(m.all_reduce_time(limit - 16)) == pytest.approx(float(nccl.all_reduce_time(limit)), rel=0.02)
    # vLLM's sm90 limit at tp 8 is 256 KiB; a custom_ar_max_bytes override is honoured
    t8, n8 = build_cost_model("llama-2-70b", "h100", tp=8), build_cost_model("llama-2-70b", "h100", tp=8, custom_ar_max_bytes=0)
    assert float(t8.all_reduce_time(2**18 - 16)) < float(n8.all_reduce_time(2**18 - 16))
    assert float(t8.all_reduce_time(2**18)) == float(n8.all_reduce_time(2**18))
    assert build_cost_model("llama-2-70b", "a100-80g", tp=8, custom_ar_max_bytes=2**20).custom_ar_max_bytes == 2**20
    # A100 has no custom-kernel timing here: H100's, bandwidth scaled by NVLink 300 / 450 GB/s
    a100 = build_cost_model("llama-2-70b", "a100-80g")
    assert float(a100.all_reduce_time(2**20)) == pytest.approx(2 * lat + 1.5 * 2**20 / (bw * 300 / 450), rel=1e-9)
    # decode steps of a TP model get cheaper by ~2 x layers x (NCCL - custom) latency
    b = BatchStats(decode_tokens=8, kv_tokens=8000)
    saved = nccl.step_time(b, 0.0) - m.step_time(b, 0.0)
    assert 160 * 15e-6 < saved < 160 * 30e-6


def test_decode_attention_streams_kv_at_its_own_efficiency() -> None:
    llm, gpu = get_llm("llama-3.1-8b"), get_gpu("h100")
    default = CostModel(llm, gpu)
    # unless told: the decode-attention fit (A100 rows; H100 has none and borrows their smooth fit, without the
    # A100 kernel's CTA quantisation); the A100 itself uses the quantised fit
    assert default.attn_bw_eff == fitted.ATTN_DECODE["a100"]["smooth_bw_eff"]
    assert CostModel(llm, get_gpu("a100-80g")).attn_bw_eff == fitted.ATTN_DECODE["a100"]["bw_eff"]
    half = CostModel(llm, gpu, attn_bw_eff=default.attn_bw_eff / 2)
    b = BatchStats(decode_tokens=64, kv_tokens=64 * 4000)
    kv_bytes_per_token = 32 * 2 * 8 * 128 * 2  # layers x (K, V) x kv heads x head dim x bf16
    _, slope = default.decode_affine(b)
    assert slope == pytest.approx(64 * kv_bytes_per_token / (gpu.mem_bw * default.attn_bw_eff), rel=1e-9)
    assert half.decode_affine(b)[1] == pytest.approx(2 * slope, rel=1e-9)
    with pytest.raises(ValueError, match="attn_bw_eff"):
        CostModel(llm, gpu, attn_bw_eff=1.5)


def test_moe_layers_pay_routing_sort_and_reduce_kernels() -> None:
    q = MODELS["qwen3/a100"]
    per_layer = float(q.moe_routing_time(1.0))
    assert per_layer >= 3 * q.fit.elem_latency_s  # three launches even for one token
    more = build_cost_model("qwen3-30b-a3b", "a100-80g", moe_layer_overhead_s=1e-5)
    assert float(more.token_time(1.0) - q.token_time(1.0)) == pytest.approx(48 * 1e-5, rel=1e-9)
    assert float(MODELS["llama-3.1-8b/h100"].token_time(1.0)) < float(
        build_cost_model("llama-3.1-8b", "h100", moe_layer_overhead_s=1.0).token_time(1.0)) + 1e-12  # dense: none


def test_expert_parallelism_over_gpus_that_do_not_divide_the_experts() -> None:
    even, uneven = (build_cost_model("qwen3-30b-a3b", "h100", tp=2, num_gpus=g) for g in (4, 6))
    assert (even.experts_per_gpu, uneven.experts_per_gpu) == (32, 22)  # 128 = 2 x 22 + 4 x 21: the 22s set the time
    n = 512.0
    busiest = uneven.num_moe_layers * uneven.expert_layer_time_per_gpu(n * 8 * 22 / 128, 22)
    assert float(uneven.routed_expert_time(n)) == pytest.approx(float(busiest), rel=1e-12)
    ideal = uneven.num_moe_layers * uneven.expert_layer_time_per_gpu(n * 8 / 6, 128 / 6)
    assert float(uneven.routed_expert_time(n)) > float(ideal)
    assert float(uneven.routed_expert_time(n)) < float(even.routed_expert_time(n))


@pytest.mark.parametrize("key", MODELS)
def test_instance_stays_within_cpython_shared_key_attributes(key: str) -> None:
    """CPython (3.11+) keeps fast, specialised attribute access only for instances with at most 30 attributes
    (shared-key dicts); at 31 the step_time hot path measured ~1.35x slower. Add new figures to an existing tuple."""
    assert len(vars(MODELS[key])) <= 30
