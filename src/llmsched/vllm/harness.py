"""vLLM's real v1 `Scheduler` on a CPU, built from a handful of limits and stepped by a fake model runner.

vLLM's scheduler is pure Python: with a local `config.json` of a small llama-shaped model (no model hub),
`skip_tokenizer_init`, `DeviceConfig("cpu")` and a hand-made `KVCacheConfig` it runs without a GPU, as vLLM's
own unit tests run it. The fake runner samples one token for every scheduled request whose prompt (and
output so far) is then fully computed and none for a partial prefill chunk, so `update_from_output` advances
requests exactly as a real model would, minus the logits. Requests finish by `max_tokens`.

Used by `llmsched.vllm.diff` (step-by-step comparison with our engine), `llmsched.vllm.sim_engine` (the
simulator's exact engine) and the tests. Importing this module does not import vLLM; the builders do, and
raise `VllmMissing` with the install hint when it is absent.
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llmsched.model.base import BatchStats

if TYPE_CHECKING:  # pragma: no cover
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.request import Request as VllmRequest

INSTALL_HINT = "vLLM is not installed: install llmsched[vllm] (pip install 'llmsched[vllm]')"

# A small llama-shaped model: the scheduler reads only its shape and context length.
_MODEL_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 32000,
    "max_position_embeddings": 1 << 20,
    "rms_norm_eps": 1e-5,
    "torch_dtype": "float16",
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def account(b: BatchStats, n: int, before: int, decode: bool) -> None:
    """Add one scheduled request of a vLLM step to the batch our cost model prices: a decode with its KV length,
    or a prefill chunk of n tokens after `before` computed ones (its causal attention pairs)."""
    if decode:
        b.decode_tokens += 1
        b.kv_tokens += before + 1
    else:
        b.prefill_tokens += n
        b.prefill_seqs += 1
        b.prefill_pairs += n * (before + (n + 1) / 2)


class VllmMissing(ImportError):
    """vLLM (the optional extra) is not importable."""


class KVCacheTooSmall(RuntimeError):
    """The scheduler made no progress although requests are waiting: the KV cache cannot hold them."""


def require_vllm() -> None:
    """Import vLLM's scheduler module or raise `VllmMissing` with the install hint."""
    try:
        import vllm.v1.core.sched.scheduler  # noqa: F401
    except ImportError as e:
        raise VllmMissing(f"{INSTALL_HINT} ({e})") from e


@dataclass(frozen=True)
class Limits:
    """The engine limits a vLLM scheduler is built with (vLLM's names)."""

    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    block_size: int = 16
    num_blocks: int = 10_000  # usable KV blocks (vLLM gets one more: its reserved null block)
    enable_chunked_prefill: bool = True
    enable_prefix_caching: bool = True
    long_prefill_token_threshold: int = 0
    policy: Literal["fcfs", "priority"] = "fcfs"
    # Longest prompt + output; default: the KV cache's size, or the token budget without chunked prefill
    # (vLLM requires max_model_len <= max_num_batched_tokens then).
    max_model_len: int | None = None

    @property
    def model_len(self) -> int:
        if self.max_model_len is not None:
            return self.max_model_len
        n = self.num_blocks * self.block_size
        if not self.enable_chunked_prefill:
            return min(n, self.max_num_batched_tokens)
        return max(n, self.long_prefill_token_threshold)  # vLLM: the threshold may not exceed it

    @classmethod
    def from_engine_config(cls, cfg: Any, num_blocks: int, policy: str = "fcfs", **kw: Any) -> Limits:
        """Limits equal to one of our `EngineConfig`s with `num_blocks` KV blocks."""
        return cls(
            max_num_batched_tokens=cfg.max_num_batched_tokens,
            max_num_seqs=cfg.max_num_seqs,
            block_size=cfg.block_size,
            num_blocks=num_blocks,
            enable_chunked_prefill=cfg.enable_chunked_prefill,
            enable_prefix_caching=cfg.enable_prefix_caching,
            long_prefill_token_threshold=cfg.long_prefill_token_threshold,
            policy="priority" if policy == "priority" else "fcfs",
            **kw,
        )


@cache
def model_dir() -> str:
    """A temporary folder holding the small model's config.json (one per process)."""
    d = Path(tempfile.mkdtemp(prefix="llmsched-vllm-model-"))
    (d / "config.json").write_text(json.dumps(_MODEL_CONFIG))
    return str(d)


def build_scheduler(limits: Limits, scheduler_cls: type | None = None, log_stats: bool = True) -> Scheduler:
    """A vLLM v1 scheduler (or `scheduler_cls`, a subclass) with these limits, on the CPU."""
    require_vllm()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from vllm.config import CacheConfig, DeviceConfig, ModelConfig, SchedulerConfig, VllmConfig
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.structured_output import StructuredOutputManager

    bs = limits.block_size
    model_len = limits.model_len
    model_config = ModelConfig(
        model=model_dir(), dtype="float16", seed=0, skip_tokenizer_init=True, max_model_len=model_len
    )
    scheduler_config = SchedulerConfig(
        max_num_seqs=limits.max_num_seqs,
        max_num_batched_tokens=limits.max_num_batched_tokens,
        max_model_len=model_len,
        long_prefill_token_threshold=limits.long_prefill_token_threshold,
        enable_chunked_prefill=limits.enable_chunked_prefill,
        policy=limits.policy,
        async_scheduling=False,
        is_encoder_decoder=False,
    )
    cache_config = CacheConfig(
        block_size=bs, gpu_memory_utilization=0.9, enable_prefix_caching=limits.enable_prefix_caching
    )
    vllm_config = VllmConfig(
        scheduler_config=scheduler_config,
        model_config=model_config,
        cache_config=cache_config,
        device_config=DeviceConfig(device="cpu"),
    )
    # vLLM reserves block 0 as its null block: one more than the usable `num_blocks`.
    kv_cache_config = KVCacheConfig(
        num_blocks=limits.num_blocks + 1,
        kv_cache_tensors=[],
        kv_cache_groups=[
            KVCacheGroupSpec(
                ["layer"], FullAttentionSpec(block_size=bs, num_kv_heads=1, head_size=1, dtype=torch.float32)
            )
        ],
    )
    cache_config.num_gpu_blocks = limits.num_blocks + 1
    cls = scheduler_cls or Scheduler
    return cls(
        vllm_config=vllm_config,
        kv_cache_config=kv_cache_config,
        structured_output_manager=StructuredOutputManager(vllm_config),
        block_size=bs,
        log_stats=log_stats,
    )


@cache
def _hasher(block_size: int) -> Any:
    from vllm.utils.hashing import sha256
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash

    init_none_hash(sha256)
    return get_request_block_hasher(block_size, sha256)


def request_id(rid: int) -> str:
    """vLLM's request id of our request `rid`: zero-padded, so that vLLM's priority queue, which breaks a tie of
    (priority, arrival) by comparing the id strings, orders ties as our queues do (by rid)."""
    return f"{rid:012d}"


def make_request(
    request_id: str,
    prompt_token_ids: Sequence[int],
    max_tokens: int,
    block_size: int,
    priority: int = 0,
    arrival_time: float = 0.0,
) -> VllmRequest:
    """A vLLM request that generates exactly `max_tokens` tokens (EOS ignored), hashed for prefix caching."""
    require_vllm()
    from vllm.sampling_params import SamplingParams
    from vllm.v1.request import Request as VllmRequest

    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    return VllmRequest(
        request_id=request_id,
        prompt_token_ids=list(prompt_token_ids),
        sampling_params=params,
        pooling_params=None,
        arrival_time=arrival_time,
        priority=priority,
        block_hasher=_hasher(block_size),
    )


def sampled_token(request_id: str, position: int) -> int:
    """The fake model's next token: private to the request (its generated blocks never hash like another's)."""
    return 1000 + zlib.crc32(f"{request_id}:{position}".encode()) % 30000


def fake_runner_output(
    scheduler: Scheduler, out: SchedulerOutput, sample: Callable[[str, int], int] = sampled_token
) -> Any:
    """The `ModelRunnerOutput` of a model that computed `out`: one token (`sample(request_id, position)`) for
    each request that caught up."""
    from vllm.v1.outputs import ModelRunnerOutput

    ids: list[str] = []
    sampled: list[list[int]] = []
    reqs = scheduler.requests
    for rid in out.num_scheduled_tokens:
        r = reqs[rid]
        ids.append(rid)
        # schedule() already advanced num_computed_tokens by the scheduled tokens.
        sampled.append([sample(rid, r.num_tokens)] if r.num_computed_tokens >= r.num_tokens else [])
    return ModelRunnerOutput(
        req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)}, sampled_token_ids=sampled
    )


@dataclass
class StepResult:
    """One scheduler step: what was scheduled and what came out."""

    output: SchedulerOutput
    scheduled: dict[str, int]  # request id -> tokens scheduled
    preempted: list[str]  # request ids preempted in this step (vLLM's order)
    finished: list[str] = field(default_factory=list)
    first_token: list[str] = field(default_factory=list)  # requests that got their first output token
    computed: dict[str, int] = field(
        default_factory=dict
    )  # num_computed_tokens after schedule() (hit + scheduled)


class FakeRunnerLoop:
    """schedule() -> fake model -> update_from_output(), with a guard against vLLM's spin on a too-small cache.

    vLLM loops forever (schedules nothing, forever) when a request cannot ever fit the KV cache; `step`
    raises `KVCacheTooSmall` after `max_idle_steps` consecutive empty steps with requests waiting.
    """

    def __init__(self, scheduler: Scheduler, max_idle_steps: int = 3) -> None:
        self.scheduler = scheduler
        self.max_idle_steps = max_idle_steps
        self._idle = 0
        self.steps = 0

    def add(self, req: VllmRequest) -> None:
        self.scheduler.add_request(req)

    @property
    def has_work(self) -> bool:
        return self.scheduler.get_num_unfinished_requests() > 0

    def step(self) -> StepResult:
        s = self.scheduler
        out = s.schedule()
        self.steps += 1
        scheduled = dict(out.num_scheduled_tokens)
        preempted = list(getattr(out, "preempted_req_ids", None) or ())
        if not scheduled:
            self._idle += 1
            if s.get_num_unfinished_requests() and self._idle >= self.max_idle_steps:
                raise KVCacheTooSmall(
                    f"vLLM scheduled nothing for {self._idle} steps with {len(s.waiting)} requests waiting and"
                    f" {len(s.running)} running: the KV cache ({s.kv_cache_manager.block_pool.num_gpu_blocks}"
                    " blocks) cannot hold the next request"
                )
        else:
            self._idle = 0
        before = {rid: s.requests[rid].num_output_tokens for rid in scheduled}
        computed = {rid: s.requests[rid].num_computed_tokens for rid in scheduled}
        engine_outputs = s.update_from_output(out, fake_runner_output(s, out))
        finished: list[str] = []
        first: list[str] = []
        for eco in engine_outputs.values():
            for o in eco.outputs:
                if o.new_token_ids and before.get(o.request_id) == 0:
                    first.append(o.request_id)
                if o.finish_reason is not None:
                    finished.append(o.request_id)
        return StepResult(out, scheduled, preempted, finished, first, computed)

    def run(self, max_steps: int = 10_000_000) -> int:
        """Step until no request is left; returns the steps taken."""
        n = 0
        while self.has_work and n < max_steps:
            self.step()
            n += 1
        return n
