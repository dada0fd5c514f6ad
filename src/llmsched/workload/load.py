"""The single entry point from a `WorkloadSpec` to requests (the simulator, the CLI and benchmarks call it)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from llmsched.core.names import unknown
from llmsched.core.types import Request
from llmsched.workload.columns import Columns
from llmsched.workload.errors import WorkloadError
from llmsched.workload.shaping import shape
from llmsched.workload.spec import WorkloadSpec
from llmsched.workload.synthetic import GENERATORS
from llmsched.workload.synthetic.base import assign_adapters
from llmsched.workload.traces import FORMATS, load_traces

DEFAULT_NUM_REQUESTS = 1000
SYNTHETIC_DEFAULT_NAME = WorkloadSpec.model_fields["name"].default
_ADAPTER_STREAM = 0x10A  # seeds the adapter draws apart from the generator's own stream


def load_columns(spec: WorkloadSpec, block_size: int = 16, seed: int = 0) -> Columns:
    """The workload as shaped columns: sorted by arrival, first arrival at 0, all options applied."""
    if block_size < 1:
        raise WorkloadError(f"block_size must be >= 1, got {block_size}")
    if spec.kind == "synthetic":
        cols = _synthetic(spec, block_size, seed)
        cols = shape(cols, window=spec.window, rate_scale=spec.rate_scale, limit=spec.limit)
    else:
        cols = _trace(spec, block_size)
    if len(cols) == 0:  # never report 0/0 requests with zero latencies as if something ran
        what = f"trace {spec.path}" if spec.kind == "trace" else f"generator {spec.name!r}"
        why = " after the window" if spec.window is not None else " (no data rows)" if spec.kind == "trace" else ""
        raise WorkloadError(f"the workload is empty: {what} gives no requests{why}")
    return cols


def load_workload(spec: WorkloadSpec, block_size: int = 16, seed: int = 0) -> list[Request]:
    """Requests sorted by arrival, rids 0..n-1, arrival of the first at 0.

    Args:
        spec: what to load or generate and how to shape it (see docs/workloads.md).
        block_size: the engine's KV block size; `block_hashes` hash full blocks of this size.
        seed: seeds synthetic generators (same seed, same requests); traces ignore it.
    Raises:
        WorkloadError: bad spec, unknown generator or format, missing or malformed trace file.
    """
    return load_columns(spec, block_size, seed).to_requests()


def iter_workload(spec: WorkloadSpec, block_size: int = 16, seed: int = 0) -> Iterator[Request]:
    """Same requests as `load_workload`, built one at a time (columns stay compact: ~24 bytes a request)."""
    return load_columns(spec, block_size, seed).iter_requests()


def _synthetic(spec: WorkloadSpec, block_size: int, seed: int) -> Columns:
    if spec.path is not None:
        raise WorkloadError(
            f"path {spec.path!r} given for a synthetic workload; set kind: trace to replay it"
        )
    if spec.name not in GENERATORS:
        raise WorkloadError(unknown("generator", spec.name, GENERATORS.names()))
    try:
        gen = GENERATORS.create(spec.name, spec.params)
    except ValueError as e:
        raise WorkloadError(str(e)) from None
    n = spec.num_requests or spec.limit or DEFAULT_NUM_REQUESTS
    rate = spec.rate or gen.default_rate
    cols = gen.generate(n, rate, np.random.default_rng(seed), block_size)
    # Adapters from a stream of their own: the same seed gives the same requests with or without them.
    return assign_adapters(cols, gen.params, np.random.default_rng([seed, _ADAPTER_STREAM]))


def _trace(spec: WorkloadSpec, block_size: int) -> Columns:
    if spec.path is None:
        raise WorkloadError("a trace workload needs path (a file, several comma-separated, or builtin:NAME)")
    fmt = spec.name.lower()
    if fmt == SYNTHETIC_DEFAULT_NAME:
        fmt = "auto"  # name left at its (synthetic) default
    if fmt != "auto" and fmt not in FORMATS:
        raise WorkloadError(f"unknown trace format {spec.name!r}; known: auto, {', '.join(FORMATS)}")
    unknown = set(spec.params) - {"classes", "model"}
    if unknown:
        raise WorkloadError(f"unknown trace params {sorted(unknown)}; known: classes, model")
    model = spec.params.get("model")
    if model is not None and not isinstance(model, str):
        raise WorkloadError(f"params.model must be a served model name, got {model!r}")
    classes = spec.params.get("classes")
    if classes is not None and (
        not isinstance(classes, list | tuple) or not all(c is None or isinstance(c, str) for c in classes)
    ):
        raise WorkloadError(f"params.classes must be a list of labels, got {classes!r}")
    if spec.rate is not None and spec.rate_scale != 1.0:
        raise WorkloadError("give rate (target mean rate) or rate_scale for a trace, not both")
    cols = load_traces(spec.path, fmt, block_size, classes, model)
    limits = [x for x in (spec.limit, spec.num_requests) if x is not None]
    return shape(
        cols,
        window=spec.window,
        rate_scale=spec.rate_scale,
        target_rate=spec.rate,
        limit=min(limits) if limits else None,
    )
