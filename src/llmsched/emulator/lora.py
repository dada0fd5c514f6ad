"""LoRA adapters in the emulator: vLLM's `--lora-modules`, `/v1/models` adapter cards and runtime loading.

The timing is the engine's (`engine/lora.py`, on when `EngineConfig.lora` is set): at most `max_loras` adapters
in a batch (vLLM skips a request whose adapter would exceed it), GPU slots and a CPU cache in LRU order, and the
load of an adapter that holds no GPU slot added to the iteration that admits its first request. As in vLLM, an
adapter named at start-up (`--lora-modules`) or loaded at run time (`POST /v1/load_lora_adapter`) is read into the
CPU cache then (vLLM's `add_lora`), so its first request pays the host-to-device copy only, unless the CPU
cache has evicted it since. `POST /v1/unload_lora_adapter` removes the name, as vLLM's does (requests in flight
finish; the caches are left alone).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from llmsched.emulator.protocol import ApiError, Limits
from llmsched.engine.lora import AdapterSlots


def parse_lora_modules(items: Iterable[str]) -> dict[str, str]:
    """vLLM's `--lora-modules` values: `name=path` or JSON `{"name": ..., "path": ...}`; name -> path."""
    out: dict[str, str] = {}
    for item in items:
        if not item:
            continue
        if "=" in item and "," not in item and not item.lstrip().startswith("{"):
            name, path = item.split("=", 1)
        else:
            try:
                obj = json.loads(item)
            except ValueError:
                raise ValueError(f"--lora-modules: {item!r} is neither name=path nor JSON") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not isinstance(obj.get("path"),
                                                                                                 str):
                raise ValueError(f"--lora-modules: {item!r} must have string 'name' and 'path'")
            name, path = obj["name"], obj["path"]
        if not name or not path:
            raise ValueError(f"--lora-modules: {item!r}: empty name or path")
        out[name] = path
    return out


class Adapters:
    """The adapters one emulated server lists and accepts (`model` = an adapter name), over the engine's slots."""

    def __init__(self, slots: AdapterSlots | None, base: str, limits: Limits, modules: dict[str, str]) -> None:
        if modules and slots is None:
            raise ValueError("LoRA adapters need LoRA enabled in the engine (max_loras)")
        self.slots = slots
        self.base = base
        self.limits = limits
        self.paths: dict[str, str] = {}
        self.created = int(time.time())
        for name, path in modules.items():
            self._add(name, path)

    def _add(self, name: str, path: str) -> float:
        self.paths[name] = path
        self.limits.served_names = (self.base, *self.paths)
        assert self.slots is not None
        return self.slots.preload(name)

    def adapter_of(self, model: str) -> str | None:
        return model if model in self.paths else None

    def cards(self) -> list[dict[str, Any]]:
        return [{"id": n, "object": "model", "created": self.created, "owned_by": "vllm", "root": p,
                 "parent": self.base, "max_model_len": None, "permission": []} for n, p in self.paths.items()]

    def load(self, body: Any) -> tuple[str, float]:
        """`/v1/load_lora_adapter` (vLLM's checks and messages): (answer text, seconds the read takes)."""
        if self.slots is None:
            raise ApiError("LoRA is not enabled on this server (start it with --max-loras or --lora-modules).")
        name = body.get("lora_name") if isinstance(body, dict) else None
        path = body.get("lora_path") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            raise ApiError("Both 'lora_name' and 'lora_path' must be provided.", err_type="InvalidUserInput")
        if name == self.base or name in self.limits.aliases:
            raise ApiError(f"The lora adapter '{name}' conflicts with a served base model.",
                           err_type="InvalidUserInput")
        if name in self.paths and not body.get("load_inplace"):
            raise ApiError(f"The lora adapter '{name}' has already been loaded. If you want to load the adapter in "
                           "place, set 'load_inplace' to True.", err_type="InvalidUserInput")
        seconds = self._add(name, path)
        return f"Success: LoRA adapter '{name}' added successfully.", seconds

    def unload(self, body: Any) -> str:
        name = body.get("lora_name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            raise ApiError("'lora_name' needs to be provided to unload a LoRA adapter.", err_type="InvalidUserInput")
        if name not in self.paths:
            raise ApiError(f"The lora adapter '{name}' cannot be found.", 404)
        del self.paths[name]
        self.limits.served_names = (self.base, *self.paths)
        return f"Success: LoRA adapter '{name}' removed successfully."
