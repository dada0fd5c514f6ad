"""Fitted figures of the roofline cost model. GENERATED: do not edit by hand.

Made by `python -m llmsched.model.calibrate <vidur>/profiling --write` from Vidur's public operator profiles
(compute/<gpu>/<model>/mlp.csv, medians) and NCCL profiles (network/<node>/{all_reduce,send_recv}.csv):
COMPUTE by robust least squares over each GPU kind's profiles jointly; links (latency_s, bytes/s) by
non-negative least squares on relative error. MAPE: per-layer token-level time per profile, and per link fit (%).
ATTN_DECODE: decode attention's bandwidth efficiency, kernel floor, SM streaming ratio and latency per CTA round,
fitted to the shipped Vidur A100 rows.
CUSTOM_ALL_REDUCE: vLLM's custom all-reduce (latency per barrier phase, bytes/s per GPU), fitted to the shipped
sglang PR #2904 H100 timings.
"""

COMPUTE = {'a100': {'elem_bw_eff': 0.576479,
          'elem_latency_s': 2.24544e-06,
          'gemm_bw_eff': 0.790579,
          'gemm_flops_eff': 0.733455,
          'gemm_knee_p': 1.53704,
          'gemm_latency_s': 5.08139e-06},
 'h100': {'elem_bw_eff': 0.640258,
          'elem_latency_s': 2.08886e-06,
          'gemm_bw_eff': 0.952521,
          'gemm_flops_eff': 0.738287,
          'gemm_knee_p': 1.45962,
          'gemm_latency_s': 5.74058e-06}}

ALL_REDUCE = {'a100': {'inter': {2: (6.64563e-05, 5872600000.0),
                    4: (6.75967e-05, 5386760000.0),
                    8: (0.000145469, 11545600000.0),
                    16: (0.000154966, 7767950000.0)},
          'intra': {2: (3.58406e-05, 158423000000.0),
                    4: (2.8737e-05, 102621000000.0),
                    8: (3.89765e-05, 86826100000.0)}},
 'h100': {'inter': {},
          'intra': {2: (1.662e-05, 282104000000.0),
                    4: (3.06128e-05, 253034000000.0),
                    8: (2.85846e-05, 193653000000.0)}}}

SEND_RECV = {'a100': {'inter': (2.90294e-05, 7770640000.0), 'intra': (1.31618e-05, 285815000000.0)},
 'h100': {'inter': (1.91067e-05, 35927600000.0), 'intra': (7.59054e-06, 357508000000.0)}}

MAPE = {'a100/Llama-2-7b-hf': 4.7,
 'a100/Meta-Llama-3-70B': 2.7,
 'a100/Meta-Llama-3-8B': 3.63,
 'h100/Llama-2-70b-hf': 5.9,
 'h100/Llama-2-7b-hf': 4.19}

NETWORK_MAPE = {'a100/all_reduce/inter/16': 29.69,
 'a100/all_reduce/inter/2': 2.58,
 'a100/all_reduce/inter/4': 24.53,
 'a100/all_reduce/inter/8': 10.0,
 'a100/all_reduce/intra/2': 8.32,
 'a100/all_reduce/intra/4': 15.62,
 'a100/all_reduce/intra/8': 13.32,
 'a100/send_recv/inter/2': 1.5,
 'a100/send_recv/intra/2': 10.26,
 'h100/all_reduce/intra/2': 12.52,
 'h100/all_reduce/intra/4': 7.66,
 'h100/all_reduce/intra/8': 5.52,
 'h100/send_recv/inter/2': 4.4,
 'h100/send_recv/intra/2': 2.86}

ATTN_DECODE = {'a100': {'bw_eff': 0.783045,
          'latency_s': 4.21994e-06,
          'mape': 7.70805,
          'round_latency_s': 5.89651e-06,
          'rows': 115.0,
          'sm_ratio': 1.48101,
          'smooth_bw_eff': 0.765512,
          'smooth_latency_s': 1.17464e-05,
          'smooth_mape': 10.126}}

CUSTOM_ALL_REDUCE = {'h100': {'bw': 269566000000.0, 'latency_s': 8.63988e-06, 'mape': 5.25828, 'rows': 18.0}}
