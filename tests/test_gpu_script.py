"""scripts/gpu/vllm_calibration.py: every step that does not need a GPU (docs/calibration.md)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from llmsched.bench.replay_client import replay
from llmsched.bench.virtual_loop import run_virtual
from llmsched.core.tokenizer import DEFAULT_TOKENIZER
from llmsched.emulator import EmulatorServer
from llmsched.model.presets import get_llm

SCRIPT = Path(__file__).parents[1] / "scripts" / "gpu" / "vllm_calibration.py"
spec = importlib.util.spec_from_file_location("vllm_calibration", SCRIPT)
assert spec is not None and spec.loader is not None
gpu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu)


def test_arguments_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    a = gpu.parse_args(["--gpu", "h100", "--loads", "1.5", "3"])
    assert a.gpu == "h100" and a.loads == [1.5, 3.0] and a.requests == 1000
    for bad in (["--requests", "3"], ["--loads", "0", "2"], ["--loads", "2"]):
        with pytest.raises(SystemExit):
            gpu.parse_args(bad)
    assert "--loads must be > 0" in capsys.readouterr().err


def test_local_config_has_the_shape_of_llama_3_1_8b(tmp_path: Path) -> None:
    cfg = json.loads((gpu.write_model_dir(tmp_path / "m") / "config.json").read_text())
    p = get_llm("llama-3.1-8b")
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["intermediate_size"], cfg["vocab_size"]) == (p.num_layers, p.hidden, p.num_heads, p.num_kv_heads,
                                                             p.ffn, p.vocab)
    h, f, v, n = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    params = n * (2 * h * h + 2 * h * kv + 3 * h * f + 2 * h) + 2 * v * h + h
    assert params == pytest.approx(8.03e9, rel=0.005)  # the published parameter count


def test_word_prompts_are_one_token_per_word_for_the_gateway_and_the_local_tokenizer(tmp_path: Path) -> None:
    text = gpu.word_prompt(7, 300)
    assert len(DEFAULT_TOKENIZER.encode(text)) == 300  # 4 bytes a token: the gateway's count
    assert gpu.word_prompt(7, 50)[:40] != gpu.word_prompt(8, 50)[:40]
    tokenizers = pytest.importorskip("tokenizers", reason="the local tokenizer needs the `tokenizers` package "
                                     "(installed with vLLM)")
    tok = tokenizers.Tokenizer.from_file(str(gpu.write_model_dir(tmp_path / "m") / "tokenizer.json"))
    ids = tok.encode(text).ids
    assert len(ids) == 300 and 2 not in ids  # no unknown word


def test_dry_run_prints_the_vllm_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu.main(["--dry-run", "--out", str(tmp_path), "--requests", "50"]) == 0
    out = capsys.readouterr().out
    assert "vllm serve" in out and "--load-format dummy" in out and "serve --backend http://127.0.0.1:8100" in out
    assert "--record" in out and "replay: 50 requests" in out


def test_replay_client_drives_an_emulator_with_word_prompts() -> None:
    rows = [(0.01 * i, 100 + 10 * i, 5 + i) for i in range(8)]

    async def main() -> tuple[list, list[int]]:
        srv = EmulatorServer(served_model_name="llama-8b-dummy")
        url = await srv.start()
        seen: list[int] = []
        orig = srv.engine.add

        def add(req, now):  # type: ignore[no-untyped-def]
            seen.append(req.prompt_len)
            return orig(req, now)

        srv.engine.add = add  # type: ignore[method-assign]
        out = await replay(url, rows, model="llama-8b-dummy", prompt=gpu.word_prompt)
        await srv.stop()
        return out, seen

    out, seen = run_virtual(main())
    assert [o.status for o in out] == [200] * 8
    assert [o.output_tokens for o in out] == [o for _, _, o in rows]
    assert sorted(seen) == sorted(p for _, p, _ in rows)
