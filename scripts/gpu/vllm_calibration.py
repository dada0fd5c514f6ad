#!/usr/bin/env python3
"""Calibrate the cost model against a real vLLM on one NVIDIA GPU, then check its predictions (docs/calibration.md).

    python scripts/gpu/vllm_calibration.py --gpu h200 --out gpu-calibration

1. writes a local Llama-3.1-8B-shaped model folder (config.json; a word-level tokenizer whose 3-letter words
   are one token each, so the gateway's 4-bytes-a-token count is exact) - no download, weights are dummy;
2. starts `vllm serve DIR --load-format dummy` and `llmsched serve --backend ... --record` in front of it;
3. replays the first N Azure 2023 conversation requests twice, at two rate scales (two loads), streaming
   with ignore_eos so every request generates its recorded output length;
4. runs `llmsched calibrate --from-record` on the first load's recording;
5. replays both recordings in the simulator with the fitted calibration (routing pinned as recorded) and
   prints predicted vs measured mean/p90 TTFT and mean TPOT: load 1 is the fit, load 2 is held out.

`--emulate SPEED` replaces vLLM with `llmsched emulate` (a CPU check of every step but vLLM itself);
`--dry-run` only writes the model folder and prints the commands.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from itertools import product
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "data" / "azure_conv_first700.csv"
SHARED = ROOT.parent / "shared" / "traces" / "azure-2023" / "AzureLLMInferenceTrace_conv.csv"
LETTERS = "abcdefghijklmnopqrstuvwxyz"

# meta-llama/Llama-3.1-8B's published config.json, less the rope scaling details vLLM does not need here.
LLAMA_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
    "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": 0,
    "eos_token_id": 1,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("gpu-calibration"), help="working folder")
    p.add_argument("--gpu", default="h200", help="llmsched GPU preset of the card (h100, h200, a100-80g)")
    p.add_argument("--requests", type=int, default=1000, help="Azure conversation requests per load")
    p.add_argument("--loads", type=float, nargs=2, default=[2.0, 4.0], metavar=("SCALE1", "SCALE2"),
                   help="rate scales of the two replays (x the trace's ~5.5 req/s)")
    p.add_argument("--trace", type=Path, default=None, help="Azure conv CSV (default: ../shared, else tests/data)")
    p.add_argument("--vllm", default="vllm", help="the vllm executable")
    p.add_argument("--port", type=int, default=8100, help="vLLM port; the gateway takes port + 1")
    p.add_argument("--max-model-len", type=int, default=16384)
    p.add_argument("--emulate", type=float, default=None, metavar="SPEED",
                   help="CPU check: `llmsched emulate --speed SPEED` instead of vLLM")
    p.add_argument("--dry-run", action="store_true", help="write the model folder, print the commands, stop")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for vLLM to come up")
    a = p.parse_args(argv)
    if a.requests < 10:
        p.error("--requests must be >= 10")
    if min(a.loads) <= 0:
        p.error("--loads must be > 0")
    return a


def write_model_dir(path: Path) -> Path:
    """config.json of Llama-3.1-8B and a word-level tokenizer (3-letter word + space = 4 bytes = 1 token)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(LLAMA_8B, indent=1))
    try:
        from tokenizers import Tokenizer, models, pre_tokenizers
    except ImportError:  # the CPU check without the `tokenizers` package: config only
        return path
    words = ["<s>", "</s>", "<unk>"] + ["".join(w) for w in product(LETTERS, repeat=3)]
    words += [f"x{i}" for i in range(LLAMA_8B["vocab_size"] - len(words))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "model_max_length": 131072, "add_bos_token": False}))
    return path


def word_prompt(rid: int, tokens: int) -> str:
    """`tokens` 3-letter words (one token each, 4 bytes with the space), distinct per request from the start."""
    n = 26**3
    words = []
    x = (rid * 2654435761 + 12345) % n
    for _ in range(max(1, tokens)):
        words.append(LETTERS[x // 676] + LETTERS[(x // 26) % 26] + LETTERS[x % 26])
        x = (x * 1103515245 + 12345 + rid) % n
    return " ".join(words) + " "


def trace_rows(path: Path, n: int) -> list[tuple[float, int, int]]:
    sys.path.insert(0, str(ROOT / "src"))
    from llmsched.workload.traces.azure import load_azure

    cols = load_azure(path)
    t = cols.arrival - cols.arrival.min()
    k = min(n, len(t))
    return [(float(t[i]), int(cols.prompt[i]), int(cols.output[i])) for i in range(k)]


def commands(a: argparse.Namespace, model_dir: Path, rec: Path) -> dict[str, list[str]]:
    backend = [a.vllm, "serve", str(model_dir), "--load-format", "dummy", "--port", str(a.port),
               "--max-model-len", str(a.max_model_len), "--max-num-seqs", "256", "--max-num-batched-tokens", "8192",
               "--enable-prefix-caching", "--served-model-name", "llama-8b-dummy", "--gpu-memory-utilization", "0.9"]
    if a.emulate is not None:
        backend = [sys.executable, "-m", "llmsched.cli", "emulate", "--port", str(a.port), "--gpu", a.gpu,
                   "--speed", str(a.emulate), "--served-model-name", "llama-8b-dummy"]
    gateway = [sys.executable, "-m", "llmsched.cli", "serve", "--backend", f"http://127.0.0.1:{a.port}",
               "--port", str(a.port + 1), "--record", str(rec)]
    return {"backend": backend, "gateway": gateway}


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1.0)
    raise SystemExit(f"{url} did not answer within {timeout:.0f} s")


def start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def summary(ttft: Any, tpot: Any) -> dict[str, float]:
    import numpy as np

    t = ttft[np.isfinite(ttft)]
    return {"ttft_mean": float(t.mean()), "ttft_p90": float(np.percentile(t, 90)), "tpot_mean": float(np.nanmean(tpot))}


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    model_dir = write_model_dir(a.out / "llama-3.1-8b-dummy")
    trace = a.trace or (SHARED if SHARED.is_file() else FIXTURE)
    rows = trace_rows(trace, a.requests)
    recs = [a.out / f"load{i + 1}.jsonl" for i in range(2)]
    if a.dry_run:
        for name, cmd in commands(a, model_dir, recs[0]).items():
            print(f"{name}: {' '.join(cmd)}")
        print(f"replay: {len(rows)} requests of {trace} at rate scales {a.loads[0]:g} and {a.loads[1]:g}")
        return 0
    sys.path.insert(0, str(ROOT / "src"))
    from llmsched.bench.replay_client import replay

    scale = a.emulate or 1.0
    procs = []
    try:
        cmds = commands(a, model_dir, recs[0])
        procs.append(start(cmds["backend"], a.out / "backend.log"))
        wait_http(f"http://127.0.0.1:{a.port}/health", a.timeout)
        for load, rec in zip(a.loads, recs, strict=True):
            if rec.exists():
                rec.unlink()
            gw = start(commands(a, model_dir, rec)["gateway"], a.out / f"gateway-{rec.stem}.log")
            procs.append(gw)
            wait_http(f"http://127.0.0.1:{a.port + 1}/health", 60)
            shaped = [(t / load, p, o) for t, p, o in rows]
            t0 = time.monotonic()
            out = asyncio.run(replay(f"http://127.0.0.1:{a.port + 1}", shaped, time_scale=scale,
                                     model="llama-8b-dummy", prompt=word_prompt))
            ok = sum(o.status == 200 for o in out)
            print(f"load x{load:g}: {ok}/{len(out)} ok in {time.monotonic() - t0:.0f} s -> {rec}", flush=True)
            stop(gw)
            procs.remove(gw)
            if scale != 1.0:  # emulated backends: their clock runs `scale` times faster than the recording's
                head, *body = rec.read_text().splitlines()
                rec.write_text("\n".join([json.dumps({**json.loads(head), "time_scale": scale}), *body]) + "\n")
    finally:
        for p in procs:
            stop(p)
    from llmsched.bench.calibrate import calibrate_from_record, replay_of, simulate_replay
    from llmsched.bench.calibrate_cli import identifiability_lines
    from llmsched.model.calibration import save_calibration
    from llmsched.workload.traces.record import read_recording

    fit, _ = calibrate_from_record(recs[0], "llama-3.1-8b", a.gpu)
    save_calibration(fit.calibration({"model": "llama-3.1-8b", "gpu": a.gpu, "source": str(recs[0])}),
                     a.out / "calibration.yaml")
    print("fitted: " + ", ".join(f"{k}={v:.4g} [{fit.ci[k][0]:.4g}, {fit.ci[k][1]:.4g}]"
                                 for k, v in fit.values.items()) + f"; ttft_offset_s={fit.ttft_offset_s:.4g}")
    for line in identifiability_lines(fit.values, fit.ci, fit.notes["correlation"]):
        print(line)
    print(f"{'load':>6} {'metric':>10} {'measured':>10} {'predicted':>10} {'error':>8}")
    for load, rec in zip(a.loads, recs, strict=True):
        rp = replay_of(read_recording(rec))
        ttft, tpot = simulate_replay(rp, "llama-3.1-8b", a.gpu, None, fit.values)
        meas, pred = summary(rp.ttft, rp.tpot), summary(ttft + fit.ttft_offset_s, tpot)
        for k in meas:
            print(f"x{load:>5g} {k:>10} {meas[k] * 1e3:>8.1f}ms {pred[k] * 1e3:>8.1f}ms {pred[k] / meas[k] - 1:>+8.1%}"
                  + ("  (fitted)" if rec == recs[0] else "  (held out)"))
    shutil.copy(a.out / "calibration.yaml", a.out / f"calibration-{a.gpu}.yaml")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
