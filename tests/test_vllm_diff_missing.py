"""Without the vllm extra, `simulate --engine vllm` and `llmsched vllm-diff` fail with a one-line install hint."""

import subprocess
import sys

_NO_VLLM = "import sys; sys.modules['vllm'] = None  # `import vllm` fails as if it were not installed\n"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    code = _NO_VLLM + f"from llmsched.cli import app\napp({list(args)!r})\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_simulate_engine_vllm_without_vllm_says_install_the_extra() -> None:
    r = _cli("simulate", "--synthetic", "chat", "--num-requests", "5", "--engine", "vllm")
    assert r.returncode == 2
    assert "install llmsched[vllm]" in r.stderr and "Traceback" not in r.stderr


def test_vllm_diff_without_vllm_says_install_the_extra() -> None:
    r = _cli("vllm-diff", "--cases", "1")
    assert r.returncode == 2
    assert "install llmsched[vllm]" in r.stderr and "Traceback" not in r.stderr


def test_unknown_engine_is_a_clear_error() -> None:
    r = _cli("simulate", "--synthetic", "chat", "--num-requests", "5", "--engine", "sglang")
    assert r.returncode == 2 and "--engine" in r.stderr and "Traceback" not in r.stderr
