"""vLLM is an optional extra: llmsched imports without it and says how to get it when its vLLM parts are used."""

import subprocess
import sys

_NO_VLLM = "import sys; sys.modules['vllm'] = None  # makes `import vllm` fail as if it were not installed\n"


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _NO_VLLM + code], capture_output=True, text=True, timeout=120
    )


def test_llmsched_imports_without_vllm() -> None:
    r = _run("import llmsched, llmsched.cli, llmsched.vllm, llmsched.vllm.harness; print('ok')")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_vllm_scheduler_without_vllm_names_the_extra() -> None:
    r = _run(
        "import llmsched.vllm\ntry:\n    llmsched.vllm.Scheduler\nexcept ImportError as e:\n    print(e)\n"
    )
    assert r.returncode == 0, r.stderr
    assert "pip install 'llmsched[vllm]'" in r.stdout


def test_unknown_attribute_is_an_attribute_error() -> None:
    r = _run(
        "import llmsched.vllm\ntry:\n    llmsched.vllm.Nope\nexcept AttributeError as e:\n    print(e)\n"
    )
    assert "has no attribute 'Nope'" in r.stdout, r.stderr
