"""The gateway's configuration: one pydantic model, loadable from YAML, with errors that name file and field.

Every option of `llmsched serve` lives here; CLI flags override the file. Defaults are chosen for a gateway in
front of a handful of vLLM replicas on one host or rack (see docs/gateway.md for the reasoning per field).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llmsched.yamlfile import read_yaml


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PolicyConfig(_Model):
    """A registry name and its parameters, as the simulator's scenarios name them."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class ModelPolicies(_Model):
    """Policies of one model pool, where they differ from the top-level ones (docs/gateway.md, "Models")."""

    request_policy: PolicyConfig | None = None
    router: PolicyConfig | None = None


class Timeouts(_Model):
    connect: float = Field(2.0, gt=0, description="TCP connect to a backend (s)")
    first_byte: float = Field(
        60.0, gt=0,
        description="streams: from dispatch to the first chunk (the first token) (s). A non-streamed answer comes "
                    "whole when generation ends, so only `total` bounds it",
    )
    total: float = Field(600.0, gt=0, description="whole upstream request, streaming included (s)")
    queue: float = Field(60.0, gt=0, description="longest wait in the admission queue before a 503 (s)")
    scrape: float = Field(1.0, gt=0, description="one /metrics scrape or health probe (s)")
    client_read: float = Field(
        30.0, gt=0,
        description="a client's request (head and body) must arrive within this, and an idle keep-alive "
                    "connection is closed after it (s): slow clients cannot hold connections open",
    )


class BreakerConfig(_Model):
    failure_threshold: int = Field(3, ge=1, description="consecutive failures that open the circuit")
    cooldown: float = Field(5.0, gt=0, description="seconds open before one half-open probe is allowed")


class RecordConfig(_Model):
    """`--record`: one JSON line per finished request (docs/calibration.md)."""

    path: str = Field(min_length=1, description="file to append to; rotated to PATH.1, PATH.2, ...")
    class_header: str = Field("x-llmsched-class", min_length=1, description="header recorded as the class")
    max_bytes: int = Field(256 * 1024 * 1024, ge=4096, description="rotate the file at this size")
    buffer: int = Field(65536, ge=1, description="records buffered for the writer before drops (counted)")
    time_scale: float = Field(1.0, gt=0, description="emulated seconds per real second of the backends")


class GatewayConfig(_Model):
    backends: list[str] = Field(default_factory=list, description="base URLs of OpenAI-compatible engines")
    request_policy: PolicyConfig = Field(default_factory=lambda: PolicyConfig(name="fcfs"))
    router: PolicyConfig = Field(default_factory=lambda: PolicyConfig(name="round-robin"))
    scrape_interval: float = Field(0.5, gt=0, description="seconds between /metrics scrapes of each backend")
    max_in_flight_per_backend: int = Field(256, ge=1, description="requests dispatched to one backend at once")
    queue_bound: int = Field(4096, ge=0, description="admission-queue length beyond which requests get 429")
    retry_after: int = Field(1, ge=0, description="Retry-After header (s) sent with 429")
    retries: int = Field(2, ge=0, description="re-dispatches of a request that failed before its first byte")
    timeouts: Timeouts = Field(default_factory=Timeouts)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    api_keys: list[str] = Field(default_factory=list, description="accepted bearer tokens; empty = open")
    admin_api_keys: list[str] = Field(
        default_factory=list, description="bearer tokens for /admin; empty = api_keys (or open if none)"
    )
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="largest accepted request body")
    session_header: str = Field("x-session-id", min_length=1, description="header naming the session")
    block_size: int = Field(16, ge=1, description="KV block size for the router's prefix hashes (vLLM: 16)")
    model_name: str | None = Field(None, description="model id answered by /v1/models when no backend does")
    drain_timeout: float = Field(30.0, ge=0, description="graceful shutdown: wait this long for in-flight")
    stream_internally: bool = Field(
        True, description="send non-streamed requests upstream as streams and re-assemble the answer, so the "
                          "router learns of the first token when it happens (not at completion)",
    )
    record: RecordConfig | None = Field(None, description="record finished requests (docs/calibration.md)")
    backend_models: dict[str, list[str]] = Field(
        default_factory=dict, description="backend URL -> the model ids it serves, pinned (no discovery); the "
                                          "`{url, models}` form of a `backends` entry fills it")
    adapters: dict[str, str] = Field(
        default_factory=dict, description="pinned LoRA adapter id -> its base model id: an id of `backend_models` "
                                          "named here is an adapter of that base (discovered ones carry `parent`)")
    model_policies: dict[str, ModelPolicies] = Field(
        default_factory=dict, description="per model id: request_policy and/or router of its pool (an adapter "
                                          "without its own entry takes its base model's request_policy)")
    adapter_router: PolicyConfig = Field(
        default_factory=lambda: PolicyConfig(name="lora-affinity"),
        description="router shared by the pools of the LoRA adapters of one base model")
    discovery_interval: float = Field(5.0, gt=0, description="seconds between /v1/models reads of each backend")

    @model_validator(mode="before")
    @classmethod
    def _backend_entries(cls, data: Any) -> Any:
        """`backends` entries may be `{url: ..., models: [...]}`: the URL stays in `backends`, the models are
        pinned in `backend_models`."""
        if not isinstance(data, dict) or not isinstance(data.get("backends"), list):
            return data
        urls: list[Any] = []
        pins = dict(data.get("backend_models") or {})
        for k, e in enumerate(data["backends"]):
            if isinstance(e, dict):
                unknown = set(e) - {"url", "models"}
                if unknown or not isinstance(e.get("url"), str):
                    raise ValueError(f"backends.{k}: a backend is a URL or {{url: URL, models: [ids]}}"
                                     + (f" (unknown keys: {', '.join(sorted(map(str, unknown)))})" if unknown else ""))
                urls.append(e["url"])
                if e.get("models") is not None:
                    pins[e["url"].rstrip("/")] = e["models"]
            else:
                urls.append(e)
        return {**data, "backends": urls, "backend_models": pins}

    @field_validator("backend_models")
    @classmethod
    def _pins(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for url, ids in v.items():
            if not ids or not all(isinstance(m, str) and m for m in ids):
                raise ValueError(f"{url}: models must be a non-empty list of model ids")
        return {u.rstrip("/"): ids for u, ids in v.items()}

    @field_validator("backends")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for url in v:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"backend {url!r} is not an http(s) URL")
        return [u.rstrip("/") for u in v]


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and the field."""


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> GatewayConfig:
    """Read a YAML file into a `GatewayConfig`; `overrides` (from CLI flags) win over the file."""
    p = Path(path)
    raw = read_yaml(p, ConfigError) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: top level must be a mapping of options, got {type(raw).__name__}")
    return build_config(raw, overrides, source=str(p))


def build_config(
    raw: dict[str, Any], overrides: dict[str, Any] | None = None, source: str = "<config>"
) -> GatewayConfig:
    data = {**raw, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    try:
        cfg = GatewayConfig.model_validate(data)
    except ValidationError as e:
        lines = [
            f"{source}: {'.'.join(str(x) for x in err['loc']) or '<root>'}: {err['msg']}" for err in e.errors()
        ]
        raise ConfigError("\n".join(lines)) from None
    _check_policies(cfg, source)
    _check_adapters(cfg, source)
    return cfg


def _check_adapters(cfg: GatewayConfig, source: str) -> None:
    """A pinned adapter's base is a base model, and every backend pinned with the adapter serves its base."""
    for name, base in cfg.adapters.items():
        if not name or not base or base == name or base in cfg.adapters:
            raise ConfigError(f"{source}: adapters.{name}: the base model must be another id that is not an "
                              f"adapter, got {base!r}")
        for url, ids in cfg.backend_models.items():
            if name in ids and base not in ids:
                raise ConfigError(f"{source}: backend_models.{url}: lists adapter {name!r} but not its base "
                                  f"model {base!r} (adapters.{name})")


def _check_policies(cfg: GatewayConfig, source: str) -> None:
    """Fail at load time, not at the first request, on an unknown policy or bad parameters."""
    from llmsched.policies.instance import ROUTERS
    from llmsched.policies.request import REQUEST_POLICIES

    checks: list[tuple[str, Any, PolicyConfig | None]] = [
        ("request_policy", REQUEST_POLICIES, cfg.request_policy), ("router", ROUTERS, cfg.router),
        ("adapter_router", ROUTERS, cfg.adapter_router)]
    for model, mp in cfg.model_policies.items():
        checks += [(f"model_policies.{model}.request_policy", REQUEST_POLICIES, mp.request_policy),
                   (f"model_policies.{model}.router", ROUTERS, mp.router)]
    for key, reg, pc in checks:
        if pc is None:
            continue
        try:
            reg.create(pc.name, pc.params)
        except ValueError as e:
            raise ConfigError(f"{source}: {key}: {e}") from None
