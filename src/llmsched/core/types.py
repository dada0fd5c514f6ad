"""The few value types every layer shares.

A `Request` is one object from arrival to finish: the workload fills its spec, the engine its progress and
timestamps. Policies read it and never mutate the engine-owned fields. Keeping one slotted object (rather than
a spec plus a separate engine record) keeps the simulator's hot path free of lookups.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum


class Status(IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED = 3
    ABORTED = 4


@dataclass(slots=True, eq=False)
class Request:
    """One inference request and its life in an engine.

    Spec (set by the workload or the gateway):
        rid: unique id within a run.
        arrival: arrival time in seconds.
        prompt_len: prompt tokens.
        output_len: tokens to generate (the trace's output length, or `max_tokens` in the gateway).
        block_hashes: chained hashes of the prompt's full KV blocks at the engine's block size; equal
            leading hashes mean an equal prefix. None means the prompt shares nothing with any other. A tuple,
            except in the gateway (`gateway.prefix.BlockHashes`: a uint64 array read as ints where sliced).
        cls: workload class label ("short", "long", "chat", ...), used for per-class metrics.
        session: session or user id, for sticky routing.
        priority: vLLM semantics, lower is served first.
        output_hashes: chained hashes (continuing `block_hashes`) of the blocks that the answer fills, when
            the workload knows a later request will send this prompt + answer again (a multi-turn follow-up).
            vLLM caches a finished request's full blocks, answer included; the engine registers these at
            finish so the follow-up can hit them.
        adapter: the LoRA adapter the request names (vLLM: the `model` field names the adapter); None = the
            base model. See engine/lora.py.
        model: the model id the client named (a base model or an adapter), i.e. the gateway's model pool; None
            in the simulator and when the gateway serves one unnamed pool.

    Progress (owned by the engine):
        num_computed: prompt+output tokens whose KV is in cache (cached prefix included).
        num_output: output tokens generated so far.
        num_cached: prompt tokens served from the prefix cache at the last admission.
        est_cached: the engine's estimate of cached prompt tokens when the request was queued (for SJF on
            uncached tokens); 0 if unknown.
    """

    rid: int
    arrival: float
    prompt_len: int
    output_len: int
    block_hashes: Sequence[int] | None = None
    cls: str | None = None
    session: str | None = None
    priority: int = 0
    output_hashes: tuple[int, ...] | None = None
    adapter: str | None = None
    model: str | None = None

    status: Status = Status.WAITING
    instance: int = -1
    num_computed: int = 0
    num_output: int = 0
    num_cached: int = 0
    est_cached: int = 0
    num_preemptions: int = 0
    queued_at: float = -1.0
    first_scheduled: float = -1.0
    first_token: float = -1.0
    finish: float = -1.0
    token_times: list[float] | None = None
    # KV blocks held (engine-owned): hashed (prefix-cacheable) block keys, and anonymous block count.
    kv_hashed: list[int] | None = field(default=None, repr=False)
    kv_anon: int = 0
    # Engine bookkeeping of the decode set (see engine.py): offset of num_computed from the engine's step
    # counter, the index of its first token time in the engine's log, admission order, entry token.
    dec_c: int = field(default=0, repr=False)
    dec_log: int = field(default=0, repr=False)
    dec_entry: int = field(default=0, repr=False)
    admit_seq: int = field(default=0, repr=False)
    # Free slot for the request-level policy (queue index, sort key, ...). Never read by the engine.
    policy_data: object = None
    # Free slot for the shell (gateway stream handle, ...). Never read by the engine or the policies.
    shell_data: object = field(default=None, repr=False)

    @property
    def total_len(self) -> int:
        return self.prompt_len + self.output_len

    @property
    def uncached_prompt(self) -> int:
        """Prompt tokens this request is expected to compute (prompt minus the estimated cached prefix)."""
        return self.prompt_len - self.est_cached

    @property
    def ttft(self) -> float:
        return self.first_token - self.arrival

    @property
    def e2e(self) -> float:
        return self.finish - self.arrival

    @property
    def tpot(self) -> float:
        """Mean time between output tokens after the first (0 for a single-token output)."""
        if self.num_output <= 1:
            return 0.0
        return (self.finish - self.first_token) / (self.num_output - 1)

    @property
    def queue_delay(self) -> float:
        return self.first_scheduled - self.arrival


@dataclass(slots=True, frozen=True)
class AdapterState:
    """An instance's LoRA adapters, by name.

    `max_loras`, `running` and `waiting` are what vLLM exports (the labels `max_lora`, `running_lora_adapters`
    and `waiting_lora_adapters` of its `vllm:lora_requests_info` gauge); `resident` (adapters holding a GPU
    slot, least recently used first) only the simulator knows: vLLM exports no residency, so a gateway leaves
    it empty.
    """

    max_loras: int
    running: tuple[str, ...] = ()
    waiting: tuple[str, ...] = ()
    resident: tuple[str, ...] = ()


@dataclass(slots=True, frozen=True)
class InstanceSnapshot:
    """What a router may know of one engine instance: the engine's own metrics as of `time`.

    In the gateway this is the last scrape of vLLM's `/metrics`; in the simulator the refresh interval is a
    parameter, so the snapshot may be stale exactly as a scraped one is. The router adds its own in-flight
    accounting on top (see `policies.instance.base.Router`).
    """

    instance: int
    time: float
    num_running: int
    num_waiting: int
    kv_usage: float  # 0..1, vLLM's kv_cache_usage_perc
    num_free_blocks: int
    num_total_blocks: int
    # Uncached prompt tokens not yet computed, over running + waiting; None where the source does not export
    # it (vLLM's /metrics): the router then keeps its own account of what it dispatched and saw prefilled.
    pending_prefill_tokens: int | None
    prefix_queries: int = 0  # cumulative prompt tokens looked up (vllm:prefix_cache_queries_total)
    prefix_hits: int = 0  # cumulative prompt tokens hit (vllm:prefix_cache_hits_total)
    healthy: bool = True
    adapters: AdapterState | None = None  # None: LoRA not enabled there (or not reported)

    @property
    def batch_size(self) -> int:
        return self.num_running

    @property
    def queue_len(self) -> int:
        return self.num_running + self.num_waiting
