"""A simulation run, fully described by one validated object (CLI, YAML scenarios and sweeps build it)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmsched.engine.config import EngineConfig
from llmsched.model.calibration import Calibration
from llmsched.workload.spec import WorkloadSpec


class SimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workload: WorkloadSpec = Field(default_factory=WorkloadSpec)
    model: str = "llama-3.1-8b"
    gpu: str = "h100"
    tp: int | None = Field(None, ge=1, description="tensor-parallel degree; default from the model preset")
    instances: int = Field(1, ge=1)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    engine_kind: Literal["llmsched", "vllm"] = Field(
        "llmsched", description="llmsched: our fast engine model; vllm: vLLM's real scheduler (exact, slower)"
    )
    request_policy: str = "fcfs"
    request_params: dict[str, Any] = Field(default_factory=dict)
    router: str = "round-robin"
    router_params: dict[str, Any] = Field(default_factory=dict)
    expert_policy: str | None = Field(None, description="MoE models only; default 'static'")
    expert_params: dict[str, Any] = Field(default_factory=dict)
    metrics_interval_s: float = Field(0.0, ge=0, description="router snapshot refresh interval; 0 = live")
    seed: int = Field(0, ge=0, description="same seed, same numbers")
    record_token_times: bool = False
    calibration: Calibration | None = Field(None, description="cost-model knobs (docs/calibration.md)")
