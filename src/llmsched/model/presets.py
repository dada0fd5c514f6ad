"""Named GPU and model presets: the hardware and shape figures the roofline cost model prices.

GPU figures are the vendors' published datasheet numbers (SXM parts, dense bf16 without sparsity); `memory_bytes`
is the total the driver reports (what vLLM's `gpu_memory_utilization` is a fraction of), not the marketing
figure. Model shapes come from each model's published `config.json` on its hub page; the values are stated next
to each preset so a reviewer can check them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmsched.core.names import unknown

MIB = 1024 * 1024


class GpuPreset(BaseModel):
    """One accelerator model, as the roofline sees it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    peak_flops: float = Field(gt=0, description="dense bf16 FLOP/s")
    peak_fp8_flops: float | None = Field(None, gt=0, description="dense fp8 FLOP/s; None = no fp8 tensor cores")
    mem_bw: float = Field(gt=0, description="HBM bandwidth, bytes/s")
    memory_bytes: int = Field(gt=0, description="device memory the driver reports, bytes")
    nvlink_bw: float = Field(gt=0, description="NVLink bandwidth per GPU per direction, bytes/s")
    internode_bw: float = Field(gt=0, description="inter-node (InfiniBand) bandwidth per GPU per direction, bytes/s")
    gpus_per_node: int = Field(8, ge=1)
    calibration: str = Field(description="key of the fitted efficiencies this GPU uses (llmsched.model.fitted)")


class LlmPreset(BaseModel):
    """A decoder-only transformer's shape (dense or MoE)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    num_layers: int = Field(ge=1)
    hidden: int = Field(ge=1)
    num_heads: int = Field(ge=1)
    num_kv_heads: int = Field(ge=1)
    head_dim: int = Field(ge=1)
    ffn: int = Field(ge=1, description="dense FFN (intermediate) size; gated SiLU MLP")
    vocab: int = Field(ge=1)
    dtype_bytes: int = Field(2, ge=1, description="bytes per weight/activation element")
    kv_dtype_bytes: int = Field(2, ge=1, description="bytes per KV-cache element")
    kv_dim: int | None = Field(
        None, ge=1, description="KV elements per token per layer; None = 2 x kv_heads x head_dim (MLA sets its own)"
    )
    tie_embeddings: bool = False
    # MoE (num_experts == 0: dense model)
    num_experts: int = Field(0, ge=0)
    top_k: int = Field(0, ge=0)
    expert_ffn: int = Field(0, ge=0)
    num_shared_experts: int = Field(0, ge=0)
    first_k_dense_layers: int = Field(0, ge=0, description="leading layers with a dense FFN instead of experts")
    default_tp: int = Field(1, ge=1, description="tensor-parallel degree of attention and dense layers")
    default_gpus: int | None = Field(None, ge=1, description="GPUs of one instance; None = default_tp")

    @model_validator(mode="after")
    def _check(self) -> LlmPreset:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"{self.name}: num_heads {self.num_heads} not a multiple of kv heads {self.num_kv_heads}")
        if self.num_experts and not (0 < self.top_k <= self.num_experts and self.expert_ffn > 0):
            raise ValueError(f"{self.name}: MoE needs 0 < top_k <= num_experts and expert_ffn > 0")
        if self.first_k_dense_layers > self.num_layers:
            raise ValueError(f"{self.name}: first_k_dense_layers exceeds num_layers")
        return self

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.first_k_dense_layers if self.is_moe else 0

    @property
    def kv_elems_per_token_layer(self) -> int:
        return self.kv_dim if self.kv_dim is not None else 2 * self.num_kv_heads * self.head_dim

    def param_counts(self) -> dict[str, int]:
        """Parameters by part: `dense` is replicated per tensor-parallel group, `experts` is spread over all GPUs."""
        h, hd = self.hidden, self.head_dim
        attn = h * (self.num_heads + 2 * self.num_kv_heads) * hd + self.num_heads * hd * h
        norms = 2 * h
        dense_ffn = 3 * h * self.ffn
        shared = 3 * h * self.expert_ffn * self.num_shared_experts + h * self.num_experts  # + router gate
        dense_layers = self.num_layers - self.num_moe_layers
        embed = self.vocab * h * (1 if self.tie_embeddings else 2) + h
        dense = self.num_layers * (attn + norms) + dense_layers * dense_ffn + self.num_moe_layers * shared + embed
        experts = self.num_moe_layers * self.num_experts * 3 * h * self.expert_ffn
        return {"dense": dense, "experts": experts, "total": dense + experts}


# Datasheets: NVIDIA A100 (80GB SXM4), H100 SXM5, H200 SXM. Inter-node: one 200 Gb/s HDR (A100 DGX) or 400 Gb/s
# NDR (H100/H200 DGX) InfiniBand port per GPU.
_GPUS = [
    GpuPreset(
        name="a100-80g", peak_flops=312e12, peak_fp8_flops=None, mem_bw=2.039e12, memory_bytes=81920 * MIB,
        nvlink_bw=300e9, internode_bw=25e9, gpus_per_node=8, calibration="a100",
    ),
    GpuPreset(
        name="h100", peak_flops=989e12, peak_fp8_flops=1979e12, mem_bw=3.35e12, memory_bytes=81559 * MIB,
        nvlink_bw=450e9, internode_bw=50e9, gpus_per_node=8, calibration="h100",
    ),
    # No profile exists for H200: same Hopper die as H100, so it reuses H100's fitted efficiencies with its own
    # (larger, faster) HBM3e.
    GpuPreset(
        name="h200", peak_flops=989e12, peak_fp8_flops=1979e12, mem_bw=4.8e12, memory_bytes=143771 * MIB,
        nvlink_bw=450e9, internode_bw=50e9, gpus_per_node=8, calibration="h100",
    ),
]

_LLMS = [
    # meta-llama/Llama-2-7b-hf: hidden 4096, 32 layers, 32 heads (MHA), intermediate 11008, vocab 32000.
    LlmPreset(name="llama-2-7b", num_layers=32, hidden=4096, num_heads=32, num_kv_heads=32, head_dim=128,
              ffn=11008, vocab=32000),
    # meta-llama/Llama-2-13b-hf: hidden 5120, 40 layers, 40 heads (MHA), intermediate 13824, vocab 32000.
    LlmPreset(name="llama-2-13b", num_layers=40, hidden=5120, num_heads=40, num_kv_heads=40, head_dim=128,
              ffn=13824, vocab=32000),
    # meta-llama/Llama-2-70b-hf: hidden 8192, 80 layers, 64 heads, 8 KV heads, intermediate 28672, vocab 32000.
    LlmPreset(name="llama-2-70b", num_layers=80, hidden=8192, num_heads=64, num_kv_heads=8, head_dim=128,
              ffn=28672, vocab=32000, default_tp=4),
    # meta-llama/Llama-3.1-8B: hidden 4096, 32 layers, 32 heads, 8 KV heads, intermediate 14336, vocab 128256.
    LlmPreset(name="llama-3.1-8b", num_layers=32, hidden=4096, num_heads=32, num_kv_heads=8, head_dim=128,
              ffn=14336, vocab=128256),
    # Qwen/Qwen3-30B-A3B: hidden 2048, 48 layers, 32 heads, 4 KV heads, head_dim 128, 128 experts, 8 per token,
    # moe_intermediate_size 768, every layer sparse, no shared expert, vocab 151936, untied embeddings.
    # Default instance: 2 GPUs (the Gimbal setting, 2 x A100-80G), attention TP2, experts EP2.
    LlmPreset(name="qwen3-30b-a3b", num_layers=48, hidden=2048, num_heads=32, num_kv_heads=4, head_dim=128,
              ffn=6144, vocab=151936, num_experts=128, top_k=8, expert_ffn=768, num_shared_experts=0,
              first_k_dense_layers=0, default_tp=2, default_gpus=2),
    # deepseek-ai/DeepSeek-V3: hidden 7168, 61 layers (first 3 dense, intermediate 18432), 128 heads, 256 routed
    # experts, 8 per token, moe_intermediate_size 2048, 1 shared expert, vocab 129280, fp8 weights.
    # MLA approximated as GQA: projections priced as 128 heads x 128 dims with one KV head; the KV cache stores the
    # MLA latent, kv_lora_rank 512 + rope key 64 = 576 bf16 elements per token per layer (kv_dim).
    # Default instance: 32 GPUs (4 nodes x 8), data-parallel attention (tp 1) and EP32 experts.
    LlmPreset(name="deepseek-v3-like", num_layers=61, hidden=7168, num_heads=128, num_kv_heads=1, head_dim=128,
              ffn=18432, vocab=129280, dtype_bytes=1, kv_dtype_bytes=2, kv_dim=576, num_experts=256, top_k=8,
              expert_ffn=2048, num_shared_experts=1, first_k_dense_layers=3, default_tp=1, default_gpus=32),
]

GPUS: dict[str, GpuPreset] = {g.name: g for g in _GPUS}
LLMS: dict[str, LlmPreset] = {m.name: m for m in _LLMS}


def list_gpus() -> list[str]:
    return sorted(GPUS)


def list_llms() -> list[str]:
    return sorted(LLMS)


def get_gpu(name: str) -> GpuPreset:
    try:
        return GPUS[name]
    except KeyError:
        raise ValueError(unknown("GPU preset", name, GPUS)) from None


def get_llm(name: str) -> LlmPreset:
    try:
        return LLMS[name]
    except KeyError:
        raise ValueError(unknown("model preset", name, LLMS)) from None
