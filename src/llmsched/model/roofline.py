"""First-principles roofline step-time model with fitted kernel efficiencies.

Every operator of an iteration is priced as max(FLOPs / (peak x eff_flops), bytes / (bw x eff_bw)) plus a
kernel floor (launch and tail latency); the efficiencies and floors are fitted to Vidur's operator profiles
(`llmsched.model.calibrate`), collectives to its NCCL profiles. Attention has no profile, so it stays pure
first principles: prefill costs its query-key pairs in FLOPs, decode costs the KV bytes it reads.

An instance has `num_gpus` GPUs: attention and the dense layers run tensor-parallel over `tp` of them, in
`num_gpus / tp` data-parallel groups (DP attention) that split the batch evenly; MoE routed experts are spread
over all `num_gpus` (expert parallelism) and priced as balanced routing, the GPU with the most experts
setting the time when the GPUs do not divide the experts. Tensor-parallel all-reduces use vLLM's custom
kernel below its size limit, NCCL above; decode attention streams KV at its own bandwidth efficiency; the
CPU costs a fixed term plus a term per scheduled sequence. The imbalanced case belongs to the
MoE wrapper, which reuses the public primitives `gemm_time`, `expert_layer_time_per_gpu`, `routed_expert_time`
and `all_to_all_time`.

Hot path: the parts of a step that depend only on the token count or the sequence count are memoised per
count; the attention part is a handful of float operations, which `decode_run` repeats over a numpy vector
in the same order, so both give the same floats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmsched.model import fitted
from llmsched.model.base import BatchStats
from llmsched.model.presets import GpuPreset, LlmPreset, get_gpu, get_llm

GIB = 1024**3

# Defaults that no profile here speaks to (see docs/cost-model.md for each source).
STEP_OVERHEAD_S = 1.0e-3  # fixed CPU/launch floor per iteration (engine loop, CUDA-graph replay, output sync)
SEQ_OVERHEAD_S = 2.5e-6  # CPU per scheduled sequence: schedule() + update_from_output() + input preparation
CUSTOM_AR_MAX_BYTES = 8 * 2**20  # vLLM CustomAllreduce default max_size: larger messages go to NCCL
CUSTOM_AR_MAX_BYTES_BY_GPU = {"h100": {6: 2**19, 8: 2**18}}  # vLLM's sm90 limits when symmetric memory is on
ATTN_FLOPS_EFF = 0.55  # FlashAttention-2/3 forward reach ~50-75% of dense peak on A100/H100
# Decode attention's work quantisation (FlashAttention-2's split-KV decode kernel, `flash_attn_with_kvcache`):
# one thread block (CTA) per (sequence, KV head) (query heads of a KV head packed together), times the KV splits
# its heuristic picks; CTAs spread over the GPU's streaming multiprocessors, at most ATTN_CTAS_PER_SM resident
# on one (80 KiB of shared memory each at head dim 128: 2 fit in A100's 164 KiB and H100's 228 KiB).
SM_COUNT = {"a100": 108, "h100": 132}  # NVIDIA A100 / H100 SXM5 (also H200) whitepapers
ATTN_CTAS_PER_SM = 2
ATTN_SPLIT_FILL = 0.8  # FA2 `num_splits_heuristic`: no split once the CTAs fill 80% of the SMs
ATTN_MAX_SPLITS = 128
ACT_RESERVE_TOKENS = 8192  # vLLM profiles activations with max_num_batched_tokens (default 8192)
ACT_RESERVE_SEQS = 256  # ... and samples max_num_seqs (default 256) sequences' fp32 logits
NON_TORCH_RESERVE_BYTES = 0.5 * GIB  # NCCL/cuBLAS workspaces, CUDA graph pool
_BLOCK = 256  # memo block of token / sequence counts


@dataclass(frozen=True, slots=True)
class ComputeFit:
    """Fitted kernel efficiencies of one GPU kind (fractions of datasheet peak) and kernel floors (s).

    gemm_knee_p: a GEMM's time is the p-norm (c^p + m^p)^(1/p) of its compute and memory times: p = inf is
    the strict roofline max; a finite p rounds the knee, where real GEMMs reach neither roof (tile shapes,
    wave quantisation).
    """

    gemm_flops_eff: float
    gemm_bw_eff: float
    elem_bw_eff: float
    gemm_latency_s: float
    elem_latency_s: float
    gemm_knee_p: float = float("inf")


@dataclass(frozen=True, slots=True)
class LinkFit:
    """Alpha-beta model of one collective: latency_s + bytes / bw."""

    latency_s: float
    bw: float

    def time(self, nbytes: float | np.ndarray) -> float | np.ndarray:
        return self.latency_s + nbytes / self.bw


def attn_decode_fit(key: str) -> tuple[float, float, float, float]:
    """(HBM bandwidth efficiency, kernel floor s, SM streaming ratio, latency per CTA round s) of decode
    attention for a calibration key. Where the key has its own decode-attention profile: that fit, with the
    CTA quantisation of the kernel profiled (FlashAttention-2 on A100). Elsewhere (H100/H200: vLLM runs
    FlashAttention-3 there, whose split and GQA-packing rules differ and are not profiled here) the smooth fit
    of the A100 rows: no quantisation (ratio infinite, no round latency)."""
    hit = fitted.ATTN_DECODE.get(key)
    if hit is None:
        ref = fitted.ATTN_DECODE["a100"]
        return float(ref["smooth_bw_eff"]), float(ref["smooth_latency_s"]), float("inf"), 0.0
    return float(hit["bw_eff"]), float(hit["latency_s"]), float(hit["sm_ratio"]), float(hit["round_latency_s"])


def attn_waves(ctas: int, sms: int) -> tuple[int, float]:
    """(rounds, imbalance) of a decode-attention launch of `ctas` CTAs (sequences x KV heads) on `sms` SMs.

    Below ATTN_SPLIT_FILL x sms CTAs the kernel splits each one along the KV (FlashAttention-2's
    `num_splits_heuristic`: the fewest splits whose wave efficiency, CTAs / (waves x SMs), is within 85% of the
    best, up to ATTN_MAX_SPLITS; the context is assumed long enough to split, which matters only when it is).
    The busiest SM then holds n = ceil(CTAs / sms) of them, in ceil(n / ATTN_CTAS_PER_SM) rounds of resident
    CTAs; imbalance = n / (mean CTAs per SM) >= 1 is how much more KV the busiest SM streams than the mean."""
    if ctas <= 0:
        return 0, 1.0
    splits = 1
    if ctas < ATTN_SPLIT_FILL * sms:
        effs = [(w / -(-w // 1)) for w in (ctas * k / sms for k in range(1, min(ATTN_MAX_SPLITS, sms) + 1))]
        top = max(effs)
        splits = next(k for k, e in enumerate(effs, 1) if e >= 0.85 * top)
    total = ctas * splits
    n = -(-total // sms)
    return -(-n // ATTN_CTAS_PER_SM), n * sms / total


def custom_ar_fit(gpu: GpuPreset) -> tuple[float, float]:
    """(latency per barrier phase s, bytes each GPU moves per s) of vLLM's custom all-reduce: the fit of the
    GPU's calibration key, else the H100 fit with its bandwidth scaled by the NVLink bandwidth ratio."""
    hit = fitted.CUSTOM_ALL_REDUCE.get(gpu.calibration)
    if hit:
        return float(hit["latency_s"]), float(hit["bw"])
    ref = fitted.CUSTOM_ALL_REDUCE["h100"]
    return float(ref["latency_s"]), float(ref["bw"]) * gpu.nvlink_bw / get_gpu("h100").nvlink_bw


def compute_fit(key: str) -> ComputeFit:
    try:
        return ComputeFit(**fitted.COMPUTE[key])
    except KeyError:
        raise ValueError(f"no fitted compute efficiencies for {key!r}; known: {', '.join(fitted.COMPUTE)}") from None


def all_reduce_fit(gpu: GpuPreset, n: int) -> LinkFit:
    """All-reduce over n GPUs: the fitted profile where one exists, else a ring scaled from the nearest fit."""
    table = fitted.ALL_REDUCE[gpu.calibration]
    kind = "intra" if n <= gpu.gpus_per_node else "inter"
    fits = table.get(kind, {})
    if n in fits:
        return LinkFit(*fits[n])
    if fits:
        # Ring all-reduce moves 2(n-1)/n of the message per GPU: keep the nearest fit's bus bandwidth.
        m = min(fits, key=lambda k: abs(k - n))
        lat, bw = fits[m]
        bus = bw * 2 * (m - 1) / m
        return LinkFit(lat * max(1.0, (n - 1) / (m - 1)), bus * n / (2 * (n - 1)))
    p2p = LinkFit(*fitted.SEND_RECV[gpu.calibration][kind])
    return LinkFit(2 * (n - 1) * p2p.latency_s, p2p.bw * n / (2 * (n - 1)))


class CostModel:
    """Roofline `StepCostModel` of one instance: `llm` on `num_gpus` x `gpu`, attention at tensor parallel `tp`.

    Args:
        llm, gpu: presets (see `llmsched.model.presets`).
        tp: tensor-parallel degree of attention and dense layers (default: the model's `default_tp`).
        num_gpus: GPUs of the instance (default: the model's `default_gpus`, else tp). Dense models need
            num_gpus == tp; MoE models need tp | num_gpus (experts need not split evenly: the GPU with the
            most experts sets the time).
        fit: kernel efficiencies (default: the shipped fit of the GPU's calibration key).
        step_overhead_s: fixed CPU/launch cost per iteration.
        seq_overhead_s: CPU cost per scheduled sequence per iteration (scheduling, output processing, inputs),
            paid by each data-parallel rank for its own sequences.
        attn_flops_eff: fraction of peak FLOP/s the prefill attention kernel reaches.
        attn_bw_eff: fraction of HBM bandwidth decode attention streams KV at (default: fitted to Vidur's
            A100 decode-attention rows, `fitted.ATTN_DECODE`; not the GEMM efficiency).
        attn_latency_s: attention kernel floor per layer (default: the same fit).
        attn_sm_ratio: decode attention's SMs streaming at full rate over its HBM rate (`attn_bw_eff` x bandwidth):
            when the CTAs spread unevenly over the SMs (`attn_waves`), the busiest SM bounds the kernel once its
            imbalance exceeds this ratio (default: the same fit).
        attn_round_latency_s: fixed time per round of resident CTAs on the busiest SM (load Q, write O), per
            layer (default: the same fit).
        custom_ar_max_bytes: all-reduces below this size use vLLM's custom one-/two-shot kernel (tp <= 8,
            one node), larger ones NCCL (default: vLLM's limit for the GPU and tp; 0 = NCCL only).
        custom_ar_latency_s: the custom kernel's latency per barrier phase (one-shot: one, two-shot: two);
            default fitted (`fitted.CUSTOM_ALL_REDUCE`).
        custom_ar_bw: bytes each GPU moves per second in the custom kernel (default fitted; other GPUs than
            H100 scale it by their NVLink bandwidth).
        moe_layer_overhead_s: extra fixed time per MoE layer beyond the priced routing kernels.
        compute_scale: multiplies every FLOP efficiency (GEMMs, attention) of the fit; a calibration knob
            (`llmsched calibrate`), 1.0 = the shipped fit.
        bandwidth_scale: multiplies every memory-bandwidth efficiency (GEMM, elementwise incl. the MoE routing
            kernels, decode-attention KV/q/o traffic at `attn_bw_eff`); 1.0 = the fit.
        expert_scale: MoE only: multiplies the routed experts' kernel efficiencies (both grouped GEMMs and the
            token permutation, FLOP and bandwidth alike), on top of the two scales above: their time is divided
            by it. Grouped expert GEMMs run below the dense GEMMs the fit comes from; a calibration knob, 1.0 =
            priced as dense GEMMs.
    """

    needs_class_tokens = False

    def __init__(
        self,
        llm: LlmPreset,
        gpu: GpuPreset,
        tp: int | None = None,
        num_gpus: int | None = None,
        fit: ComputeFit | None = None,
        step_overhead_s: float = STEP_OVERHEAD_S,
        attn_flops_eff: float = ATTN_FLOPS_EFF,
        *,
        compute_scale: float = 1.0,
        bandwidth_scale: float = 1.0,
        seq_overhead_s: float = SEQ_OVERHEAD_S,
        attn_bw_eff: float | None = None,
        attn_latency_s: float | None = None,
        attn_sm_ratio: float | None = None,
        attn_round_latency_s: float | None = None,
        custom_ar_max_bytes: float | None = None,
        custom_ar_latency_s: float | None = None,
        custom_ar_bw: float | None = None,
        moe_layer_overhead_s: float = 0.0,
        expert_scale: float = 1.0,
    ) -> None:
        tp = tp or llm.default_tp
        if num_gpus is None:
            num_gpus = max(tp, llm.default_gpus or tp)
        if tp < 1 or num_gpus < 1 or num_gpus % tp:
            raise ValueError(f"{llm.name}: num_gpus ({num_gpus}) must be a positive multiple of tp ({tp})")
        if not llm.is_moe and num_gpus != tp:
            raise ValueError(f"{llm.name} is dense: num_gpus ({num_gpus}) must equal tp ({tp})")
        if llm.is_moe and llm.num_experts < num_gpus:
            raise ValueError(f"{llm.name}: {llm.num_experts} experts cannot cover {num_gpus} GPUs")
        if llm.num_heads % tp:
            raise ValueError(f"{llm.name}: {llm.num_heads} heads do not split over tp={tp}")
        if min(step_overhead_s, seq_overhead_s, custom_ar_latency_s or 0.0, moe_layer_overhead_s,
               attn_latency_s or 0.0, attn_round_latency_s or 0.0) < 0 or (custom_ar_bw is not None and custom_ar_bw <= 0):
            raise ValueError("step_overhead_s, seq_overhead_s, custom_ar_latency_s, moe_layer_overhead_s, "
                             "attn_latency_s, attn_round_latency_s must be >= 0 and custom_ar_bw > 0")
        if attn_sm_ratio is not None and attn_sm_ratio <= 0:
            raise ValueError(f"attn_sm_ratio must be > 0, got {attn_sm_ratio}")
        if not 0 < attn_flops_eff <= 1 or not (attn_bw_eff is None or 0 < attn_bw_eff <= 1):
            raise ValueError("attn_flops_eff and attn_bw_eff must be in (0, 1]")
        if not (compute_scale > 0 and bandwidth_scale > 0 and expert_scale > 0):
            raise ValueError(f"compute_scale, bandwidth_scale and expert_scale must be > 0, got {compute_scale}, "
                             f"{bandwidth_scale}, {expert_scale}")
        self.llm, self.gpu, self.tp, self.num_gpus = llm, gpu, tp, num_gpus
        self.dp = num_gpus // tp
        self.fit = fit or compute_fit(gpu.calibration)
        self.num_moe_layers = llm.num_moe_layers
        self.num_dense_layers = llm.num_layers - llm.num_moe_layers
        # Uneven expert parallelism (num_gpus does not divide num_experts): some GPUs host one expert more;
        # under balanced routing their token share is proportional, so the busiest GPU hosts ceil(E / G).
        self.experts_per_gpu = -(-llm.num_experts // num_gpus) if llm.is_moe else 0
        self.step_overhead_s = float(step_overhead_s)
        self.seq_overhead_s = float(seq_overhead_s)
        self._cpu_seq = self.seq_overhead_s / self.dp  # each DP rank's engine core handles its own sequences
        self.moe_layer_overhead_s = float(moe_layer_overhead_s)
        self.expert_scale = float(expert_scale)

        f = self.fit
        peak = gpu.peak_fp8_flops if (llm.dtype_bytes == 1 and gpu.peak_fp8_flops) else gpu.peak_flops
        self._dt = float(llm.dtype_bytes)
        # compute_scale / bandwidth_scale (calibration) multiply the fitted efficiencies here and in the
        # attention figures below; no attribute of their own (the shared-key cap below).
        self._inv_flops = 1.0 / (peak * f.gemm_flops_eff * compute_scale)
        self._inv_gemm_bw = 1.0 / (gpu.mem_bw * f.gemm_bw_eff * bandwidth_scale)
        self._inv_elem_bw = 1.0 / (gpu.mem_bw * f.elem_bw_eff * bandwidth_scale)
        self._all_reduce = all_reduce_fit(gpu, tp) if tp > 1 else None
        # Keep the instance within CPython's 30 shared-key attributes (specialised attribute access on the hot
        # path; 27 now, tests/test_cost_model.py checks it): related figures travel in tuples.
        car_lat, car_bw = custom_ar_fit(gpu)
        self._car = (self._custom_ar_limit(custom_ar_max_bytes),  # limit (bytes), latency per phase, bytes/s
                     car_lat if custom_ar_latency_s is None else float(custom_ar_latency_s),
                     car_bw if custom_ar_bw is None else float(custom_ar_bw))
        self._a2a = (LinkFit(*fitted.SEND_RECV[gpu.calibration]["intra"]),
                     LinkFit(*fitted.SEND_RECV[gpu.calibration]["inter"]))

        # Attention constants, already summed over layers and divided over DP groups (balanced).
        hd = llm.head_dim
        heads_g = llm.num_heads / tp
        kv_elems_g = llm.kv_elems_per_token_layer / min(tp, llm.num_kv_heads)
        per = llm.num_layers / self.dp
        # attention runs in bf16 whatever the weights
        inv_attn_flops = 1.0 / (gpu.peak_flops * attn_flops_eff * compute_scale)
        fit_eff, fit_lat, fit_ratio, fit_round = attn_decode_fit(gpu.calibration)
        self.attn_bw_eff = fit_eff if attn_bw_eff is None else float(attn_bw_eff)
        attn_lat = fit_lat if attn_latency_s is None else float(attn_latency_s)
        # (SMs, CTAs per decode sequence, SM streaming ratio, round latency summed over layers, DP groups), and
        # `_awc`, the per-sequence-count cache of (round latency, KV slowdown) that `_attn_waves` fills.
        self._aw = (SM_COUNT.get(gpu.calibration, SM_COUNT["a100"]), max(1, llm.num_kv_heads // min(tp, llm.num_kv_heads)),
                    fit_ratio if attn_sm_ratio is None else float(attn_sm_ratio),
                    per * (fit_round if attn_round_latency_s is None else float(attn_round_latency_s)), self.dp)
        self._awc: dict[int, tuple[float, float]] = {}
        inv_attn_bw = 1.0 / (gpu.mem_bw * self.attn_bw_eff * bandwidth_scale)
        self._a_flops = 4.0 * heads_g * hd * per * inv_attn_flops  # s per query-key pair
        self._a_kv = kv_elems_g * llm.kv_dtype_bytes * per * inv_attn_bw  # s per KV token read/written
        self._a_q = 2.0 * heads_g * hd * 2 * per * inv_attn_bw  # s per query token (q read, out written)
        self._a_lat = per * attn_lat
        self._tok_cache: dict[int, float] = {}
        self._seq_cache: dict[int, float] = {}

    # ---- public primitives (vectorised over numpy arrays) -------------------------------------------------

    def _roof(self, compute_s: np.ndarray, memory_s: np.ndarray) -> np.ndarray:
        """GEMM roofline: the p-norm of compute and memory time (the max when p is infinite)."""
        top = np.maximum(compute_s, memory_s)
        p = float(self.fit.gemm_knee_p)
        if p == float("inf"):
            return top
        safe = np.where(top > 0, top, 1.0)
        return top * ((compute_s / safe) ** p + (memory_s / safe) ** p) ** (1.0 / p)

    def gemm_time(self, m: float | np.ndarray, n: float, k: float) -> np.ndarray:
        """One (m x k) @ (k x n) GEMM on one GPU: roofline of FLOPs vs operand+result bytes, plus the floor."""
        m = np.asarray(m, dtype=np.float64)
        flops = 2.0 * m * n * k
        nbytes = self._dt * (m * k + k * n + m * n)
        return self._roof(flops * self._inv_flops, nbytes * self._inv_gemm_bw) + self.fit.gemm_latency_s

    def elem_time(self, nbytes: float | np.ndarray) -> np.ndarray:
        """A memory-bound elementwise kernel (norm, activation, rope, add, gather) moving nbytes."""
        return np.asarray(nbytes, dtype=np.float64) * self._inv_elem_bw + self.fit.elem_latency_s

    def decode_attention_time(self, decode_tokens: float | np.ndarray, kv_tokens: float | np.ndarray) -> np.ndarray:
        """Decode attention of all layers on one GPU (batch split over DP groups): per layer one kernel floor,
        plus the KV bytes read (context) and written (one row per sequence) and q/o bytes at `attn_bw_eff`,
        or the FLOPs if those are larger. The same float operations as `step_time`'s decode part."""
        d = np.asarray(decode_tokens, dtype=np.float64)
        kv = np.asarray(kv_tokens, dtype=np.float64)
        waves = np.array([self._attn_waves(int(x)) for x in d.ravel().tolist()]).reshape(*d.shape, 2)
        lat, slow = waves[..., 0], waves[..., 1]
        return self._a_lat + lat + np.maximum(kv * self._a_flops, (kv + d) * self._a_kv * slow + d * self._a_q)

    def _attn_waves(self, seqs: int) -> tuple[float, float]:
        """(round latency over all layers s, KV-streaming slowdown >= 1) of decode attention over `seqs` decode
        sequences (split evenly over the DP groups): the busiest SM streams `imbalance` x the mean SM's KV at a
        rate `attn_sm_ratio` x the mean SM's share of HBM bandwidth, so it sets the time once the imbalance
        exceeds that ratio (`attn_waves`). Memoised per sequence count."""
        hit = self._awc.get(seqs)
        if hit is None:
            sms, heads, ratio, round_s, dp = self._aw
            rounds, imbalance = attn_waves(-(-seqs // dp) * heads, sms)
            hit = self._awc[seqs] = (rounds * round_s, max(1.0, imbalance / ratio))
        return hit

    @property
    def custom_ar_max_bytes(self) -> float:
        """All-reduces below this many bytes use vLLM's custom kernel (0: NCCL only)."""
        return self._car[0]

    def _custom_ar_limit(self, override: float | None) -> float:
        """Largest message (exclusive) vLLM's custom all-reduce takes: tp 2..8 inside one NVLink node only."""
        tp = self.tp
        if tp < 2 or tp > min(8, self.gpu.gpus_per_node):
            return 0.0
        if override is not None:
            return float(override)
        return float(CUSTOM_AR_MAX_BYTES_BY_GPU.get(self.gpu.calibration, {}).get(tp, CUSTOM_AR_MAX_BYTES))

    def all_reduce_time(self, nbytes: float | np.ndarray) -> np.ndarray:
        """One all-reduce over the tp group (0 when tp == 1).

        Below the custom all-reduce limit, vLLM's kernel: one-shot (each GPU reads the tp - 1 peer buffers;
        tp == 2, or under 512 KiB at tp <= 4 / 256 KiB at tp <= 8) with one barrier phase, else two-shot
        (reduce-scatter + all-gather: 2 (tp - 1) / tp of the message) with two; latency and bytes per second
        fitted to measurements of the kernel. At and above the limit: the fitted NCCL profile.
        """
        b = np.asarray(nbytes, dtype=np.float64)
        if self._all_reduce is None:
            return np.zeros_like(b)
        nccl = np.asarray(self._all_reduce.time(b))
        limit, lat, bw = self._car
        if limit <= 0:
            return nccl
        tp = self.tp
        one = (b < 512 * 1024) if tp <= 4 else (b < 256 * 1024)
        if tp == 2:
            one = np.ones_like(b, dtype=bool)
        car = np.where(one, lat + (tp - 1) * b / bw, 2 * lat + 2 * (tp - 1) / tp * b / bw)
        return np.where(b < limit, car, nccl)

    def all_to_all_time(self, bytes_per_gpu: float | np.ndarray, intra_node: bool) -> np.ndarray:
        """Each GPU sends bytes_per_gpu to its peers over NVLink (intra_node) or InfiniBand; fitted p2p links."""
        link = self._a2a[0] if intra_node else self._a2a[1]
        return np.asarray(link.time(np.asarray(bytes_per_gpu, dtype=np.float64)))

    def expert_layer_time_per_gpu(self, tokens_per_gpu: np.ndarray, experts_per_gpu: int) -> np.ndarray:
        """One MoE layer's routed-expert compute on each GPU.

        tokens_per_gpu: token-expert assignments each GPU computes (any shape). The GPU reads the weights of
        the experts it hosts that got at least one token: expected experts_per_gpu x (1 - (1 - 1/e)^T) under
        uniform routing. Gate+up and down are two grouped GEMMs; SiLU-and-mul and the token permutation
        (gather in, scatter out) are elementwise.
        """
        t = np.asarray(tokens_per_gpu, dtype=np.float64)
        if experts_per_gpu < 1:
            raise ValueError(f"experts_per_gpu must be >= 1, got {experts_per_gpu}")
        h, fe = float(self.llm.hidden), float(self.llm.expert_ffn)
        e = float(experts_per_gpu)
        active = e * -np.expm1(t * np.log1p(-1.0 / e)) if e > 1 else np.minimum(t, 1.0)
        w_bytes = active * 3.0 * h * fe * self._dt
        act_bytes = t * (2.0 * h + 3.0 * fe) * self._dt
        flops = 6.0 * t * h * fe
        f = self.fit
        gemm = self._roof(flops * self._inv_flops, (w_bytes + act_bytes) * self._inv_gemm_bw) + 2 * f.gemm_latency_s
        elem = (3.0 * fe + 2.0 * h) * self._dt * t * self._inv_elem_bw + 2 * f.elem_latency_s
        return (gemm + elem) / self.expert_scale

    def routed_expert_time(self, num_tokens: float | np.ndarray) -> np.ndarray:
        """Routed-expert compute of all MoE layers for num_tokens tokens, balanced over the instance's GPUs."""
        n = np.asarray(num_tokens, dtype=np.float64)
        if not self.llm.is_moe:
            return np.zeros_like(n)
        per_gpu = n * self.llm.top_k * self.experts_per_gpu / self.llm.num_experts  # the busiest GPU's share
        return self.num_moe_layers * self.expert_layer_time_per_gpu(per_gpu, self.experts_per_gpu)

    def moe_comm_time(self, num_tokens: float | np.ndarray) -> np.ndarray:
        """Token dispatch + combine of all MoE layers when attention is data parallel (0 when num_gpus == tp,
        where the MoE output rides the layer's second all-reduce instead)."""
        n = np.asarray(num_tokens, dtype=np.float64)
        if not self.llm.is_moe or self.dp == 1:
            return np.zeros_like(n)
        g = self.num_gpus
        sent = n / g * self.llm.top_k * (g - 1) / g * self.llm.hidden * self._dt
        local = min(g, self.gpu.gpus_per_node)
        intra_share = (local - 1) / (g - 1)
        t = self.all_to_all_time(sent * intra_share, True)
        if local < g:
            t = np.maximum(t, self.all_to_all_time(sent * (1.0 - intra_share), False))
        return 2.0 * self.num_moe_layers * t

    def moe_routing_time(self, n: float | np.ndarray) -> np.ndarray:
        """The kernels of one MoE layer besides router GEMM and expert GEMMs, for the n tokens of one GPU:
        top-k softmax over the router logits, the token align/sort by expert, and the sum of each token's
        top-k expert outputs (three launches at the fitted elementwise floor), plus `moe_layer_overhead_s`."""
        n = np.asarray(n, dtype=np.float64)
        k, h, dt = float(self.llm.top_k), float(self.llm.hidden), self._dt
        topk = self.elem_time(n * (self.llm.num_experts * dt + k * 8.0))  # logits in, (weight, id) pairs out
        align = self.elem_time(n * k * 4.0 * 3.0)  # ids in, sorted ids + expert offsets out (int32)
        reduce = self.elem_time(n * (k + 1.0) * h * dt)  # k expert outputs in, one hidden state out
        return topk + align + reduce + self.moe_layer_overhead_s

    # ---- per-layer token-level operators ------------------------------------------------------------------

    def layer_op_times(self, n: float | np.ndarray, ffn: int | None = None) -> dict[str, np.ndarray]:
        """Token-level operators of one dense layer on one GPU for n tokens, by Vidur's operator names.

        `ffn` overrides the FFN width (a shared-expert FFN); 0 leaves the MLP out. `add` is one residual add
        (a layer has two).
        """
        n = np.asarray(n, dtype=np.float64)
        llm, tp, dt = self.llm, self.tp, self._dt
        h, hd = float(llm.hidden), float(llm.head_dim)
        heads_g = llm.num_heads / tp
        kv_g = max(llm.num_kv_heads / tp, 1.0)
        f = (llm.ffn if ffn is None else ffn) / tp
        ops = {
            "input_layernorm": self.elem_time(2 * n * h * dt),
            "attn_pre_proj": self.gemm_time(n, (heads_g + 2 * kv_g) * hd, h),
            "attn_rope": self.elem_time(2 * n * (heads_g + kv_g) * hd * dt),
            "attn_post_proj": self.gemm_time(n, h, heads_g * hd),
            "post_attention_layernorm": self.elem_time(2 * n * h * dt),
            "add": self.elem_time(3 * n * h * dt),
        }
        if f > 0:
            ops["mlp_up_proj"] = self.gemm_time(n, 2 * f, h)
            ops["mlp_act"] = self.elem_time(3 * n * f * dt)
            ops["mlp_down_proj"] = self.gemm_time(n, h, f)
        return ops

    def layer_time(self, n: float | np.ndarray, ffn: int | None = None) -> np.ndarray:
        """Token-level operators of one layer (two residual adds), without attention or communication."""
        ops = self.layer_op_times(n, ffn)
        return sum(ops.values()) + ops["add"]

    def token_time(self, num_tokens: float | np.ndarray) -> np.ndarray:
        """Everything in a step that scales with its token count: all layers' token-level operators,
        tensor-parallel all-reduces, MoE experts and dispatch, embedding."""
        n = np.asarray(num_tokens, dtype=np.float64)
        llm = self.llm
        ng = n / self.dp  # tokens per data-parallel group
        ar = self.all_reduce_time(ng * llm.hidden * self._dt)
        t = self.elem_time(2 * ng * llm.hidden * self._dt)  # embedding gather
        if self.num_dense_layers:
            t = t + self.num_dense_layers * (self.layer_time(ng) + 2 * ar)
        if self.num_moe_layers:
            shared = llm.num_shared_experts * llm.expert_ffn
            moe_layer = (self.layer_time(ng, ffn=shared) + self.gemm_time(ng, llm.num_experts, llm.hidden)
                         + self.moe_routing_time(ng))
            n_ar = 2 if self.dp == 1 else 1
            t = t + self.num_moe_layers * (moe_layer + n_ar * ar)
            t = t + self.routed_expert_time(n) + self.moe_comm_time(n)
        return t

    def seq_time(self, num_seqs: float | np.ndarray) -> np.ndarray:
        """Final norm, LM head and sampling of the sequences that emit a token."""
        s = np.asarray(num_seqs, dtype=np.float64) / self.dp
        h, v = self.llm.hidden, self.llm.vocab
        norm = self.elem_time(2 * s * h * self._dt)
        head = self.gemm_time(s, v / self.tp, h)
        sample = self.elem_time(2 * s * v * 4.0)  # fp32 logits: softmax/top-p read + write
        return norm + head + sample

    # ---- StepCostModel ------------------------------------------------------------------------------------

    def _tok(self, n: int) -> float:
        t = self._tok_cache.get(n)
        if t is None:
            self._fill(self._tok_cache, self.token_time, n)
            t = self._tok_cache[n]
        return t

    def _seq(self, s: int) -> float:
        t = self._seq_cache.get(s)
        if t is None:
            self._fill(self._seq_cache, self.seq_time, s)
            self._seq_cache[0] = 0.0  # no sequence samples: no LM head
            t = self._seq_cache[s]
        return t

    @staticmethod
    def _fill(cache: dict[int, float], fn, n: int) -> None:
        """Memoise a whole block of counts around n at once: one vectorised call costs what one scalar does."""
        lo = n - n % _BLOCK
        counts = np.arange(lo, lo + _BLOCK)
        cache.update(zip(counts.tolist(), fn(counts).tolist(), strict=True))

    def _fixed(self, b: BatchStats, n: int) -> float:
        """The part of an iteration's time that does not depend on the decode context (KV tokens read)."""
        s = b.prefill_seqs + b.decode_tokens
        base = self.step_overhead_s + self._cpu_seq * s + self._tok(n) + self._seq(s)
        pre = 0.0
        if b.prefill_tokens:
            pre = max(b.prefill_pairs * self._a_flops, b.prefill_tokens * (self._a_kv + self._a_q))
        return base + pre + self._a_lat

    def step_time(self, b: BatchStats, now: float) -> float:
        n = b.prefill_tokens + b.decode_tokens
        if n <= 0:
            return 0.0
        dec = 0.0
        if b.decode_tokens:
            # Decode attention reads its context's KV and writes one KV row per sequence; memory bound, with
            # the FLOPs as the roof for pathological shapes.
            lat, slow = self._awc.get(b.decode_tokens) or self._attn_waves(b.decode_tokens)
            dec = lat + max(b.kv_tokens * self._a_flops, (b.kv_tokens + b.decode_tokens) * self._a_kv * slow
                            + b.decode_tokens * self._a_q)
        return self._fixed(b, n) + dec

    def decode_run(self, b: BatchStats, k: int, now: float) -> np.ndarray:
        if k <= 0:
            return np.zeros(0, dtype=np.float64)
        n = b.prefill_tokens + b.decode_tokens
        if n <= 0:
            return np.zeros(k, dtype=np.float64)
        fixed = self._fixed(b, n)
        if not b.decode_tokens:
            return np.full(k, fixed + 0.0)
        kv = b.kv_tokens + np.arange(k, dtype=np.float64) * b.decode_tokens
        lat, slow = self._attn_waves(b.decode_tokens)
        dec = lat + np.maximum(kv * self._a_flops, (kv + b.decode_tokens) * self._a_kv * slow
                               + b.decode_tokens * self._a_q)
        return fixed + dec

    def decode_affine(self, b: BatchStats) -> tuple[float, float] | None:
        """(c0, c1) with decode_run(b, k)[i] == c0 + c1 * i, when the decode attention is memory-bound for every
        context length (the usual case); None otherwise. Lets the engine price and cut runs in closed form."""
        if not b.decode_tokens:
            return None
        d = b.decode_tokens
        lat, slow = self._attn_waves(d)
        a_kv = self._a_kv * slow
        if a_kv < self._a_flops:
            return None
        c0 = self._fixed(b, b.prefill_tokens + d) + (lat + ((b.kv_tokens + d) * a_kv + d * self._a_q))
        return c0, d * a_kv

    # ---- memory -------------------------------------------------------------------------------------------

    def weight_bytes_per_gpu(self) -> float:
        p = self.llm.param_counts()
        experts = p["experts"] * self.experts_per_gpu / self.llm.num_experts if self.llm.is_moe else 0.0
        return (p["dense"] / self.tp + experts) * self._dt

    def activation_reserve_bytes(self) -> float:
        """Per-GPU memory vLLM's profiling run leaves to activations (peak of one max-size step) and workspaces."""
        llm = self.llm
        f = llm.ffn / self.tp if self.num_dense_layers else llm.top_k * llm.expert_ffn * self.tp / self.num_gpus
        act = ACT_RESERVE_TOKENS * (4 * llm.hidden + 3 * f) * 2  # bf16 activations
        logits = ACT_RESERVE_SEQS * llm.vocab * 4
        return act + logits + NON_TORCH_RESERVE_BYTES

    def kv_bytes_per_token_per_gpu(self) -> float:
        llm = self.llm
        return llm.num_layers * llm.kv_elems_per_token_layer / min(self.tp, llm.num_kv_heads) * llm.kv_dtype_bytes

    def kv_capacity_tokens(self, gpu_memory_utilization: float) -> int:
        """(memory x util - weights - activation reserve) / KV bytes per token, per tp group, over DP groups."""
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        free = (self.gpu.memory_bytes * gpu_memory_utilization - self.weight_bytes_per_gpu()
                - self.activation_reserve_bytes())
        if free <= 0:
            raise ValueError(
                f"{self.llm.name} does not fit on {self.num_gpus} x {self.gpu.name} (tp={self.tp}) at "
                f"gpu_memory_utilization={gpu_memory_utilization}: {free / GIB:.1f} GiB left per GPU for KV"
            )
        return int(free // self.kv_bytes_per_token_per_gpu()) * self.dp

    def __repr__(self) -> str:
        return f"CostModel({self.llm.name} on {self.num_gpus} x {self.gpu.name}, tp={self.tp})"


def build_cost_model(model: str, gpu: str, tp: int | None = None, num_gpus: int | None = None,
                     **knobs: float | None) -> CostModel:
    """The cost model of one instance of preset `model` on preset `gpu` (tp defaults to the model's);
    `knobs` are `CostModel`'s keyword arguments (overheads, efficiencies, custom all-reduce; a
    calibration's step_overhead_s, compute_scale, bandwidth_scale, ...)."""
    return CostModel(get_llm(model), get_gpu(gpu), tp=tp, num_gpus=num_gpus, **knobs)
