"""Engine parameters, named and defaulted as vLLM v1 names and defaults them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmsched.engine.lora import LoraConfig


class EngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    block_size: int = Field(16, ge=1, description="KV block size in tokens (vLLM default 16)")
    max_num_batched_tokens: int = Field(8192, ge=1, description="token budget of one iteration")
    max_num_seqs: int = Field(256, ge=1, description="most sequences in one iteration")
    enable_chunked_prefill: bool = True
    enable_prefix_caching: bool = True
    long_prefill_token_threshold: int = Field(0, ge=0, description="cap of one request's chunk; 0 = none")
    scheduler_reserve_full_isl: bool = Field(
        True, description="admit a request only if its whole sequence fits the free KV blocks (vLLM default)"
    )
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    num_gpu_blocks: int | None = Field(None, ge=1, description="override the KV capacity (blocks)")
    lora: LoraConfig | None = Field(None, description="LoRA adapters (vLLM --enable-lora); None = disabled")

    @model_validator(mode="after")
    def _budget_covers_decodes(self) -> EngineConfig:
        # vLLM requires it too: every running sequence must be able to decode in each iteration.
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs ({self.max_num_seqs})"
            )
        return self
