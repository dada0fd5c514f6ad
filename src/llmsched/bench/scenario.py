"""Scenarios: a base setting, workloads, loads and policy sets compared side by side (docs/scenarios.md).

A scenario is validated completely when it is loaded - every policy set is turned into a `SimConfig` and
every policy name is looked up in its registry - so a typo in a user's YAML is reported with the file and the
field before any simulation starts, not after minutes of runs.
"""

from __future__ import annotations

import importlib
import math
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from llmsched.bench.columns import parse_column
from llmsched.core.names import format_validation, unknown
from llmsched.core.registry import Registry
from llmsched.sim.config import SimConfig
from llmsched.workload.spec import WorkloadSpec
from llmsched.yamlfile import read_yaml

DEFAULT_COLUMNS = ["ttft_mean", "ttft_p99", "tpot_mean", "e2e_p99", "output_throughput"]



def check_loads(v: list[float] | None) -> list[float] | None:
    """Offered loads are fractions of the simulated capacity: each must be finite and > 0 (scenarios, their
    quick overrides and sweeps). `x <= 0` alone lets NaN through (every comparison with it is false)."""
    if v is not None and not all(math.isfinite(x) and x > 0 for x in v):
        raise ValueError("every load must be finite and > 0 (a fraction of the simulated capacity)")
    return v

def _check_columns(v: list[str]) -> list[str]:
    for c in v:
        parse_column(c)  # raises naming the column and the accepted forms
    return v


ColumnList = Annotated[list[str], AfterValidator(_check_columns)]


class ScenarioError(ValueError):
    """A scenario (or sweep) file that cannot be used; the message names the file and the field."""


class WorkloadEntry(WorkloadSpec):
    """A `WorkloadSpec` plus the label it is reported under."""

    label: str
    requires_trace: bool = Field(False, description="path is a trace file looked up in the trace folders")

    def spec(self) -> WorkloadSpec:
        return WorkloadSpec(**self.model_dump(exclude={"label", "requires_trace"}))


class PolicySet(BaseModel):
    """One column of the comparison: a policy per layer, with parameters, and optional SimConfig overrides."""

    model_config = ConfigDict(extra="forbid")

    label: str
    request: str | None = None
    request_params: dict[str, Any] = Field(default_factory=dict)
    router: str | None = None
    router_params: dict[str, Any] = Field(default_factory=dict)
    expert: str | None = None
    expert_params: dict[str, Any] = Field(default_factory=dict)
    overrides: dict[str, Any] = Field(default_factory=dict)


class Quick(BaseModel):
    """Overrides for the README's main job, so that every built-in scenario together runs in minutes."""

    model_config = ConfigDict(extra="forbid")

    num_requests: int | None = Field(None, ge=1)
    loads: list[float] | None = Field(None, min_length=1)
    workloads: list[str] | None = Field(None, description="labels of the workloads to keep")
    policies: list[str] | None = Field(None, description="labels of the policy sets to keep")

    @field_validator("loads")
    @classmethod
    def _positive_loads(cls, v: list[float] | None) -> list[float] | None:
        return check_loads(v)


class Headline(BaseModel):
    """A row of the report's opening table: what one layer's policy gained against its table's baseline."""

    model_config = ConfigDict(extra="forbid")

    layer: str = Field(description="request, instance, expert, or all three")
    workload: str = Field(description="label of the workload")
    policy: str = Field(description="label of the policy set")
    columns: ColumnList = Field(min_length=1, description="the figures to show, as table columns")


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    workloads: list[WorkloadEntry] = Field(min_length=1)
    loads: list[float] | None = Field(None, min_length=1)
    policies: list[PolicySet] = Field(min_length=1)
    columns: ColumnList = Field(default_factory=lambda: list(DEFAULT_COLUMNS), min_length=1)
    engine: Literal["llmsched", "vllm"] | None = Field(
        None, description="engine of every cell: llmsched (default, fast) or vllm (vLLM's real scheduler)"
    )
    quick: Quick | None = None
    headline: list[Headline] = Field(default_factory=list)
    _source: str = PrivateAttr("")

    @field_validator("loads")
    @classmethod
    def _positive_loads(cls, v: list[float] | None) -> list[float] | None:
        return check_loads(v)

    @field_validator("base")
    @classmethod
    def _base_is_simconfig(cls, v: dict[str, Any]) -> dict[str, Any]:
        if "workload" in v:
            raise ValueError("the workload goes under `workloads:`, not under `base:`")
        SimConfig(**v)
        return v

    @model_validator(mode="after")
    def _unique_labels(self) -> Scenario:
        for what, labels in (("workload", [w.label for w in self.workloads]),
                             ("policy set", [p.label for p in self.policies])):
            dup = sorted({x for x in labels if labels.count(x) > 1})
            if dup:
                raise ValueError(f"duplicate {what} labels: {', '.join(dup)}")
        if self.quick is not None:
            for what, keep, have in (("workloads", self.quick.workloads, [w.label for w in self.workloads]),
                                     ("policies", self.quick.policies, [p.label for p in self.policies])):
                missing = sorted(set(keep or []) - set(have))
                if missing:
                    raise ValueError(f"quick.{what} names unknown labels: {', '.join(missing)}")
        for i, h in enumerate(self.headline):
            for what, label, have in (("workload", h.workload, [w.label for w in self.workloads]),
                                      ("policy", h.policy, [p.label for p in self.policies])):
                if label not in have:
                    raise ValueError(f"headline.{i}.{what}: {unknown(what + ' label', label, have)}")
        return self

    @property
    def source(self) -> str:
        return self._source

    def config(self, workload: WorkloadEntry, policy: PolicySet) -> SimConfig:
        """The SimConfig of one cell (before the runner sets the rate for a load)."""
        cfg: dict[str, Any] = {**self.base, "workload": workload.spec().model_dump(exclude_none=True)}
        if self.engine is not None:
            cfg["engine_kind"] = self.engine
        for field, value in (("request_policy", policy.request), ("router", policy.router),
                             ("expert_policy", policy.expert)):
            if value is not None:
                cfg[field] = value
        for field in ("request_params", "router_params", "expert_params"):
            if getattr(policy, field):
                cfg[field] = getattr(policy, field)
        cfg.update(policy.overrides)
        return SimConfig(**cfg)

    def with_quick(self) -> Scenario:
        """This scenario with its `quick` overrides applied (itself when it has none)."""
        q = self.quick
        if q is None:
            return self
        workloads = [w for w in self.workloads if q.workloads is None or w.label in q.workloads]
        if q.num_requests is not None:
            workloads = [w.model_copy(update={"num_requests": q.num_requests}) for w in workloads]
        policies = [p for p in self.policies if q.policies is None or p.label in q.policies]
        out = self.model_copy(update={"workloads": workloads, "policies": policies,
                                      "loads": q.loads if q.loads is not None else self.loads})
        out._source = self._source
        return out

    def with_calibration(self, cal: Any) -> Scenario:
        """This scenario with a cost-model `Calibration` in its base (every run uses it)."""
        out = self.model_copy(update={"base": {**self.base, "calibration": cal.model_dump()}})
        out._source = self._source
        return out

    def with_seed(self, seed: int) -> Scenario:
        out = self.model_copy(update={"base": {**self.base, "seed": seed}})
        out._source = self._source
        return out


def _layer_registries() -> dict[str, Registry[Any]]:
    """Registries by layer, found by importing the policy packages (which register every built-in name)."""
    regs: dict[str, Registry[Any]] = {}
    for layer, module in (("request", "llmsched.policies.request"), ("router", "llmsched.policies.instance"),
                          ("expert", "llmsched.policies.expert")):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        for value in vars(mod).values():
            if isinstance(value, Registry):
                regs[layer] = value
                break
    return regs


def validate(data: Any, source: str) -> Scenario:
    """Build and fully check a scenario from parsed YAML; raises ScenarioError naming `source` and the field."""
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: a scenario is a mapping with name, workloads and policies")
    try:
        sc = Scenario.model_validate(data)
    except ValidationError as e:
        raise ScenarioError(f"{source}: {format_validation(e, Scenario)}") from None
    sc._source = source
    regs = _layer_registries()
    for i, p in enumerate(sc.policies):
        for layer, name in (("request", p.request), ("router", p.router), ("expert", p.expert)):
            if name is not None and layer in regs and name not in regs[layer]:
                raise ScenarioError(f"{source}: policies.{i}.{layer} (set {p.label!r}): "
                                    f"{unknown(layer + ' policy', name, regs[layer].names())}")
        for w in sc.workloads:
            try:
                sc.config(w, p)
            except ValidationError as e:
                raise ScenarioError(f"{source}: policies.{i} ({p.label!r}) with workload {w.label!r}: "
                                    f"{format_validation(e, SimConfig)}") from None
    return sc


def builtin_dir() -> Path:
    return Path(str(resources.files("llmsched") / "data" / "scenarios"))


def builtin_names() -> list[str]:
    return sorted(p.stem for p in builtin_dir().glob("*.yaml"))


def _read_yaml(path: Path) -> Any:
    return read_yaml(path, ScenarioError)


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A built-in scenario by name, or a user's YAML file (a .yaml/.yml path, or any existing file)."""
    path = Path(name_or_path)
    name = str(name_or_path)
    if path.suffix in (".yaml", ".yml") or (name not in builtin_names() and path.is_file()):
        if not path.is_file():
            raise ScenarioError(f"{path}: no such scenario file")
        return validate(_read_yaml(path), str(path))
    if name not in builtin_names():
        raise ScenarioError(f"{unknown('scenario', name, builtin_names())} (or pass a .yaml file)")
    return validate(_read_yaml(builtin_dir() / f"{name}.yaml"), f"built-in scenario {name!r}")


def list_scenarios() -> list[tuple[str, str]]:
    """(name, description) of every built-in scenario; read without full validation so one broken file
    (e.g. naming a policy not registered yet) does not hide the others."""
    out = []
    for name in builtin_names():
        try:
            data = _read_yaml(builtin_dir() / f"{name}.yaml")
            desc = " ".join(str(data.get("description", "")).split()) if isinstance(data, dict) else ""
        except ScenarioError as e:
            desc = f"(unreadable: {e})"
        out.append((name, desc))
    return out
