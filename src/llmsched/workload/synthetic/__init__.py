"""Synthetic generators, by name: chat, code, mixed, prefix-heavy, burstgpt-like (see docs/workloads.md)."""

from llmsched.workload.synthetic import independent, phases, streams  # noqa: F401  (registers the generators)
from llmsched.workload.synthetic.base import GENERATORS, Generator, GeneratorParams

__all__ = ["GENERATORS", "Generator", "GeneratorParams"]
