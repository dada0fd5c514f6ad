"""LoRA adapters in one engine instance: which adapters hold a GPU slot, which a batch may contain, and what
loading one costs.

vLLM (`--enable-lora`) keeps `max_loras` adapters in GPU slots and up to `max_cpu_loras` (default: `max_loras`)
in CPU memory, each an LRU cache; an adapter a batch needs and the GPU lacks is activated (copied host to device)
and, if the CPU cache lacks it too, first read from disk, synchronously, inside the step that first schedules it.
Its scheduler admits a waiting request only if the adapters of the running batch plus its own stay within
`max_loras`; otherwise it *skips* the request (it keeps its place) and goes on with the next one
(vllm/v1/core/sched/scheduler.py: "Scheduling would exceed max_loras, skip").

`AdapterSlots` is that mechanism, sans-I/O, for `engine.Engine`: the engine tells it when a request with an
adapter is queued, admitted, and leaves the running set, asks `admissible` before admitting, and adds
`take_pending()` (the load time of this iteration's admissions) to the iteration's duration.

The load cost is weights over bandwidth: an adapter of rank r on every linear layer vLLM targets by default
(q, k, v, o, gate, up, down) holds r x (d_in + d_out) parameters per layer and module, so
r x L x (9 h + 2 kv + 3 ffn) parameters (kv = KV heads x head dim); Llama-3.1-8B at rank 16: 41.9 M parameters,
84 MB in bf16. See docs/routers.md ("LoRA adapters") for the bandwidth defaults and their sources.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmsched.core.types import AdapterState
from llmsched.model.presets import LlmPreset


class LoraConfig(BaseModel):
    """LoRA serving settings of an engine (vLLM's names and defaults where vLLM has the setting)."""

    model_config = ConfigDict(extra="forbid")

    max_loras: int = Field(1, ge=1, description="adapters in GPU slots, hence distinct adapters in a batch (vLLM 1)")
    max_cpu_loras: int | None = Field(None, ge=1, description="adapters cached in CPU memory; None = max_loras (vLLM)")
    lora_rank: int = Field(16, ge=1, description="rank of the served adapters (vLLM's max_lora_rank default 16)")
    adapter_bytes: int | None = Field(None, ge=1, description="bytes of one adapter; None = from the model and rank")
    h2d_bandwidth: float = Field(50e9, gt=0, description="host-to-device copy, bytes/s (PCIe 5.0 x16, pinned)")
    disk_bandwidth: float = Field(3e9, gt=0, description="reading an adapter not in the CPU cache, bytes/s (NVMe)")
    load_overhead_s: float = Field(0.02, ge=0, description="fixed cost of loading one adapter from disk")

    @model_validator(mode="after")
    def _cpu_holds_gpu(self) -> LoraConfig:
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            # vLLM refuses this too: every GPU-resident adapter is also in the CPU cache.
            raise ValueError(f"max_cpu_loras ({self.max_cpu_loras}) must be >= max_loras ({self.max_loras})")
        return self


def adapter_bytes(llm: LlmPreset, rank: int) -> int:
    """Bytes of a rank-`rank` adapter on q, k, v, o, gate, up and down of every layer (vLLM's default targets)."""
    h, kv, f = llm.hidden, llm.num_kv_heads * llm.head_dim, llm.ffn
    # (d_in + d_out) summed over the seven modules: q 2h, k h+kv, v h+kv, o 2h, gate h+f, up h+f, down f+h
    per_layer = 9 * h + 2 * kv + 3 * f
    return rank * llm.num_layers * per_layer * llm.dtype_bytes


def _decrement(counts: dict[str, int], key: str) -> None:
    n = counts[key] - 1
    if n:
        counts[key] = n
    else:
        del counts[key]


@dataclass(slots=True)
class LoraStats:
    loads: int = 0  # adapters copied into a GPU slot
    disk_loads: int = 0  # of which read from disk first (not in the CPU cache)
    load_s: float = 0.0  # iteration time spent loading
    skipped: int = 0  # admissions skipped because the batch already held max_loras other adapters


class AdapterSlots:
    """GPU slots (LRU, `max_loras`) and CPU cache (LRU, `max_cpu_loras`) of one engine; see the module docstring.

    Invariant: every adapter of a running request holds a GPU slot, and at most `max_loras` distinct adapters
    are running. Only the least recently used adapter with no running request is evicted.
    """

    def __init__(self, cfg: LoraConfig, nbytes: int) -> None:
        self.cfg = cfg
        self.max_loras = cfg.max_loras
        self.max_cpu = cfg.max_cpu_loras or cfg.max_loras
        self.nbytes = nbytes
        self.gpu_s = nbytes / cfg.h2d_bandwidth
        self.disk_s = cfg.load_overhead_s + nbytes / cfg.disk_bandwidth
        self.gpu: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self.cpu: OrderedDict[str, None] = OrderedDict()
        self.running: dict[str, int] = {}  # running requests per adapter
        self.waiting: dict[str, int] = {}  # queued requests per adapter
        self.stats = LoraStats()
        self._pending = 0.0

    @classmethod
    def for_model(cls, cfg: LoraConfig, llm: LlmPreset | None) -> AdapterSlots:
        if cfg.adapter_bytes is not None:
            return cls(cfg, cfg.adapter_bytes)
        if llm is None:
            raise ValueError("engine.lora.adapter_bytes is required: the cost model names no model preset")
        return cls(cfg, adapter_bytes(llm, cfg.lora_rank))

    def admissible(self, adapter: str) -> bool:
        """vLLM's rule: a request may join the batch if its adapter is running already or a slot is left."""
        return adapter in self.running or len(self.running) < self.max_loras

    def on_queue(self, adapter: str) -> None:
        self.waiting[adapter] = self.waiting.get(adapter, 0) + 1

    def on_unqueue(self, adapter: str) -> None:
        _decrement(self.waiting, adapter)

    def on_admit(self, adapter: str) -> None:
        """A request with `adapter` is scheduled: load the adapter if no GPU slot holds it (cost: this iteration)."""
        self.on_unqueue(adapter)
        self.running[adapter] = self.running.get(adapter, 0) + 1
        if adapter in self.gpu:
            self.gpu.move_to_end(adapter)
            return
        cost = self.gpu_s
        if adapter in self.cpu:
            self.cpu.move_to_end(adapter)
        else:
            cost += self.disk_s
            self.stats.disk_loads += 1
            if len(self.cpu) >= self.max_cpu:
                self._evict(self.cpu)
            self.cpu[adapter] = None
        if len(self.gpu) >= self.max_loras:
            self._evict(self.gpu)
        self.gpu[adapter] = None
        self.stats.loads += 1
        self.stats.load_s += cost
        self._pending += cost

    def preload(self, adapter: str) -> float:
        """vLLM's `add_lora` (an adapter named at start-up, or loaded through the API): read the adapter into the
        CPU cache ahead of its first request. Returns the read time (0 when it is cached already)."""
        if adapter in self.cpu:
            self.cpu.move_to_end(adapter)
            return 0.0
        if len(self.cpu) >= self.max_cpu:
            if all(a in self.running for a in self.cpu):
                return self.disk_s  # read, but nothing may leave the cache now: its first use reads it again
            self._evict(self.cpu)
        self.cpu[adapter] = None
        return self.disk_s

    def _evict(self, cache: OrderedDict[str, None]) -> None:
        victim = next((a for a in cache if a not in self.running), None)
        if victim is None:  # cannot happen while `admissible` is respected
            raise RuntimeError("no LoRA slot to evict: every cached adapter is running")
        del cache[victim]

    def on_leave(self, adapter: str) -> None:
        """A running request with `adapter` finished, was preempted or aborted: it was used up to now."""
        _decrement(self.running, adapter)
        self.gpu.move_to_end(adapter)

    def take_pending(self) -> float:
        """Load time of the adapters admitted since the last call (the engine adds it to the iteration)."""
        s, self._pending = self._pending, 0.0
        return s

    def state(self) -> AdapterState:
        return AdapterState(
            max_loras=self.max_loras,
            running=tuple(sorted(self.running)),
            waiting=tuple(sorted(self.waiting)),
            resident=tuple(self.gpu),
        )
