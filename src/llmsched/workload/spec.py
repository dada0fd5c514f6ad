"""How a run names its workload: a synthetic generator or a trace file, with the usual shaping options."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class WorkloadSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["synthetic", "trace"] = "synthetic"
    name: str = Field("chat", description="generator name (synthetic) or format: azure|mooncake|burstgpt|auto")
    path: str | None = Field(None, description="trace file; 'builtin:NAME' for the sample shipped in the package")
    rate: float | None = Field(None, gt=0, description="mean arrivals per second (synthetic), or the target mean rate of a trace")
    num_requests: int | None = Field(None, ge=1, description="synthetic: how many; trace: same as limit")
    rate_scale: float = Field(1.0, gt=0, description="multiply the arrival rate (divide timestamps) by this")
    limit: int | None = Field(None, ge=1, description="keep the first N requests")
    window: tuple[float, float] | None = Field(None, description="keep arrivals in [start, end) seconds")
    params: dict[str, Any] = Field(default_factory=dict, description="generator-specific parameters")
