"""Calibration files: cost-model knobs fitted to real backends (`llmsched calibrate`) or written by hand.

Every top-level key but `meta` is a keyword argument of the cost model (`CostModel(**knobs)`), so a new knob
of the model is a new field here and nothing else. JSON or YAML by extension (.json / .yaml / .yml). Unknown
keys are errors naming the file and the key. `meta` is free-form provenance (what it was fitted on, confidence
intervals, residuals); the model never reads it. See docs/calibration.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class CalibrationError(ValueError):
    """A calibration file that cannot be used; the message names the file and the key."""


class Calibration(BaseModel):
    """Cost-model knobs; a field left out keeps the model's default. Every knob is finite: YAML's `.inf` passes
    `ge=0`/`gt=0` and would make every step time infinite (and `simulate --json` print `Infinity`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    step_overhead_s: float | None = Field(None, ge=0, description="fixed CPU/launch time per iteration, seconds")
    compute_scale: float | None = Field(None, gt=0, description="multiplier on the fitted FLOP efficiencies")
    bandwidth_scale: float | None = Field(None, gt=0, description="multiplier on the fitted bandwidth efficiencies")
    seq_overhead_s: float | None = Field(None, ge=0, description="CPU time per scheduled sequence per iteration")
    attn_flops_eff: float | None = Field(None, gt=0, le=1, description="prefill attention fraction of peak FLOP/s")
    attn_bw_eff: float | None = Field(None, gt=0, le=1, description="decode attention fraction of HBM bandwidth")
    attn_latency_s: float | None = Field(None, ge=0, description="attention kernel floor per layer, seconds")
    attn_sm_ratio: float | None = Field(None, gt=0, description="decode attention: SM streaming rate / its HBM rate")
    attn_round_latency_s: float | None = Field(None, ge=0, description="decode attention latency per CTA round")
    custom_ar_max_bytes: float | None = Field(None, ge=0, description="largest all-reduce on vLLM's custom kernel")
    custom_ar_latency_s: float | None = Field(None, ge=0, description="custom all-reduce latency per phase")
    custom_ar_bw: float | None = Field(None, gt=0, description="custom all-reduce bytes per GPU per second")
    moe_layer_overhead_s: float | None = Field(None, ge=0, description="extra fixed time per MoE layer, seconds")
    expert_scale: float | None = Field(None, gt=0, description="MoE: multiplier on the routed-expert kernels' "
                                       "efficiencies (their time is divided by it)")
    meta: dict[str, Any] = Field(default_factory=dict, description="provenance; not read by the model")

    def knobs(self) -> dict[str, float]:
        """The cost-model keyword arguments this calibration sets."""
        return self.model_dump(exclude={"meta"}, exclude_none=True)


KNOBS: tuple[str, ...] = tuple(k for k in Calibration.model_fields if k != "meta")


def _format(e: ValidationError, source: str) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"unknown key; known: {', '.join(Calibration.model_fields)}"
        parts.append(f"{source}: {loc}: {msg}")
    return "; ".join(parts)


def parse_calibration(data: Any, source: str = "<calibration>") -> Calibration:
    if not isinstance(data, dict):
        raise CalibrationError(f"{source}: a calibration is a mapping of knobs ({', '.join(KNOBS)})")
    try:
        return Calibration.model_validate(data)
    except ValidationError as e:
        raise CalibrationError(_format(e, source)) from None


def load_calibration(path: str | Path) -> Calibration:
    """Read a JSON or YAML calibration file (by extension; other extensions are tried as YAML, a superset)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise CalibrationError(f"{p}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise CalibrationError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise CalibrationError(f"{p}:{e.lineno}: invalid JSON: {e.msg}") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            raise CalibrationError(f"{p}{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    return parse_calibration(data, str(p))


def save_calibration(cal: Calibration, path: str | Path) -> None:
    """Write `cal` as JSON or YAML by the file's extension."""
    p = Path(path)
    data = cal.model_dump(exclude_none=True)
    if p.suffix.lower() == ".json":
        p.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    else:
        import yaml

        p.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
