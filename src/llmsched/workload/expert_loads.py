"""Recorded expert loads in the EPLB / vLLM format, and a routing source that replays them.

The file is JSON: `{"load_history": [{"logical_expert_load": [[tokens of expert e in MoE layer l, ...], ...]},
...]}`, one entry per recorded step, each a [layers][experts] matrix of non-negative numbers of the same shape
(`load_history[step].logical_expert_load[layer][expert]`). A bad file raises `ValueError` naming the file
and what is wrong (JSON line and column for syntax errors, step and layer for shape or value errors).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from llmsched.workload.expert_routing import sample_loads


def load_expert_loads(path: str | Path) -> np.ndarray:
    """Loads [steps, layers, experts] (float64) from a JSON load-history file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"{path}: cannot read expert load file: {e.strerror or e}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}") from None
    return parse_expert_loads(doc, str(path))


def parse_expert_loads(doc: object, source: str = "<loads>") -> np.ndarray:
    if not isinstance(doc, dict) or "load_history" not in doc:
        raise ValueError(f"{source}: expected an object with a 'load_history' list")
    hist = doc["load_history"]
    if not isinstance(hist, list) or not hist:
        raise ValueError(f"{source}: 'load_history' must be a non-empty list of steps")
    shape: tuple[int, int] | None = None
    out = []
    for i, step in enumerate(hist):
        where = f"{source}: load_history[{i}]"
        if not isinstance(step, dict) or "logical_expert_load" not in step:
            raise ValueError(f"{where}: expected an object with 'logical_expert_load'")
        rows = step["logical_expert_load"]
        if not isinstance(rows, list) or not rows or not all(isinstance(r, list) for r in rows):
            raise ValueError(f"{where}.logical_expert_load: expected a [layer][expert] list of lists")
        widths = {len(r) for r in rows}
        if len(widths) != 1 or 0 in widths:
            bad = next(j for j, r in enumerate(rows) if len(r) != len(rows[0]) or not r)
            raise ValueError(f"{where}.logical_expert_load[{bad}]: layers have different expert counts {sorted(widths)}")
        for j, r in enumerate(rows):
            for e, v in enumerate(r):
                if isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0 or v == float("inf"):
                    raise ValueError(f"{where}.logical_expert_load[{j}][{e}]: {v!r} is not a non-negative finite number")
        this = (len(rows), len(rows[0]))
        if shape is None:
            shape = this
        elif this != shape:
            raise ValueError(f"{where}: shape {this[0]} layers x {this[1]} experts differs from step 0's {shape[0]} x {shape[1]}")
        out.append(rows)
    return np.asarray(out, dtype=np.float64)


class RecordedRouting:
    """Replays recorded loads: step i's popularity is recorded step (i mod steps), normalised per layer.

    There is no class or inter-layer information in the format, so popularity ignores the class mix and the
    flows between layers are independent (affinity 0).
    """

    affinity = 0.0
    successor = None

    def __init__(self, loads: np.ndarray, noise: str = "gaussian") -> None:
        w = np.asarray(loads, dtype=np.float64)
        if w.ndim != 3:
            raise ValueError(f"recorded loads must be [steps, layers, experts], got shape {w.shape}")
        tot = w.sum(-1, keepdims=True)
        uniform = np.full_like(w, 1.0 / w.shape[-1])
        self.p = np.where(tot > 0, w / np.where(tot > 0, tot, 1.0), uniform)
        self.num_layers, self.num_experts = w.shape[1], w.shape[2]
        self.noise = noise

    def profile(self) -> np.ndarray:
        return self.p.mean(0)

    def epoch_of(self, now: float, step: int) -> int:
        return step % len(self.p)

    def class_popularity(self, cls: str | None, epoch: int = 0) -> np.ndarray:
        return self.p[epoch % len(self.p)]

    def popularity(self, class_tokens: Mapping[str, float] | None, now: float, step: int = 0) -> np.ndarray:
        return self.p[step % len(self.p)]

    def flows(self, p: np.ndarray) -> np.ndarray:
        return p[:-1, :, None] * p[1:, None, :]

    def sample(self, p: np.ndarray, num_assign: int, rng: np.random.Generator, steps: int = 1) -> np.ndarray:
        return sample_loads(p, num_assign, rng, steps, self.noise)
