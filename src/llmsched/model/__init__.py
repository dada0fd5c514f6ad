"""Step-time cost models: presets (GPUs, model shapes), the fitted roofline model. See docs/cost-model.md."""

from llmsched.model.base import BatchStats, StepCostModel
from llmsched.model.presets import GpuPreset, LlmPreset, get_gpu, get_llm, list_gpus, list_llms
from llmsched.model.roofline import ComputeFit, CostModel, LinkFit, build_cost_model

__all__ = [
    "BatchStats",
    "ComputeFit",
    "CostModel",
    "GpuPreset",
    "LinkFit",
    "LlmPreset",
    "StepCostModel",
    "build_cost_model",
    "get_gpu",
    "get_llm",
    "list_gpus",
    "list_llms",
]
