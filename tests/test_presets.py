"""Presets: names, lookup errors and that the shapes add up to the published parameter counts."""

from __future__ import annotations

import pytest

from llmsched.model.presets import LlmPreset, get_gpu, get_llm, list_gpus, list_llms


def test_required_presets_exist() -> None:
    assert {"a100-80g", "h100", "h200"} <= set(list_gpus())
    assert {"llama-2-7b", "llama-2-13b", "llama-2-70b", "llama-3.1-8b", "qwen3-30b-a3b",
            "deepseek-v3-like"} <= set(list_llms())


@pytest.mark.parametrize(("fn", "bad"), [(get_gpu, "v100"), (get_llm, "gpt-5")])
def test_unknown_preset_names_the_known_ones(fn, bad: str) -> None:
    with pytest.raises(ValueError, match=bad) as e:
        fn(bad)
    assert "known:" in str(e.value)
    assert ("h100" if fn is get_gpu else "llama-3.1-8b") in str(e.value)


@pytest.mark.parametrize(
    ("name", "params_b"),
    [
        ("llama-2-7b", 6.74),
        ("llama-2-13b", 13.02),
        ("llama-2-70b", 68.98),
        ("llama-3.1-8b", 8.03),
        ("qwen3-30b-a3b", 30.53),
        ("deepseek-v3-like", 671.0),
    ],
)
def test_shapes_match_published_parameter_counts(name: str, params_b: float) -> None:
    # Published totals (model cards); deepseek's MLA is approximated, so allow a little more there.
    total = get_llm(name).param_counts()["total"] / 1e9
    assert total == pytest.approx(params_b, rel=0.02 if name == "deepseek-v3-like" else 0.005)


def test_moe_fields() -> None:
    q = get_llm("qwen3-30b-a3b")
    assert (q.num_layers, q.num_experts, q.top_k, q.expert_ffn, q.num_shared_experts) == (48, 128, 8, 768, 0)
    assert q.num_moe_layers == 48 and q.default_gpus == 2
    d = get_llm("deepseek-v3-like")
    assert (d.num_layers, d.num_moe_layers, d.num_experts, d.top_k, d.expert_ffn) == (61, 58, 256, 8, 2048)
    assert d.num_shared_experts == 1 and d.default_gpus == 32
    assert d.kv_elems_per_token_layer == 576  # MLA latent 512 + rope key 64
    assert not get_llm("llama-2-7b").is_moe and get_llm("llama-2-70b").default_tp == 4


def test_gpu_figures() -> None:
    a, h, h2 = get_gpu("a100-80g"), get_gpu("h100"), get_gpu("h200")
    assert a.peak_flops == 312e12 and h.peak_flops == 989e12
    assert h2.mem_bw > h.mem_bw > a.mem_bw and h2.memory_bytes > h.memory_bytes
    assert h2.calibration == "h100"  # no H200 profile: derived from H100's efficiencies


def test_invalid_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match="kv heads"):
        LlmPreset(name="x", num_layers=1, hidden=64, num_heads=6, num_kv_heads=4, head_dim=16, ffn=128, vocab=10)
    with pytest.raises(ValueError, match="top_k"):
        LlmPreset(name="x", num_layers=1, hidden=64, num_heads=4, num_kv_heads=4, head_dim=16, ffn=128, vocab=10,
                  num_experts=4, top_k=8, expert_ffn=32)
