"""Workloads: trace loaders (Azure 2023, Mooncake, BurstGPT), synthetic generators, the built-in sample.

`load_workload(spec, block_size, seed)` is the entry point; see docs/workloads.md for formats, generators,
their distributions and the order in which the shaping options apply.
"""

from llmsched.workload.columns import Columns
from llmsched.workload.errors import WorkloadError
from llmsched.workload.load import iter_workload, load_columns, load_workload
from llmsched.workload.spec import WorkloadSpec
from llmsched.workload.synthetic import GENERATORS, Generator
from llmsched.workload.traces import FORMATS, builtin_names, load_traces

__all__ = [
    "FORMATS",
    "GENERATORS",
    "Columns",
    "Generator",
    "WorkloadError",
    "WorkloadSpec",
    "builtin_names",
    "iter_workload",
    "load_columns",
    "load_traces",
    "load_workload",
]
