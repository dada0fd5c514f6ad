"""The tests in this folder drive vLLM's own scheduler code: they need the optional extra `llmsched[vllm]`.

Without it (the README's plain `python -m pytest`) the whole folder is skipped with the reason printed in the
summary (`pytest -rs`); CI installs the extra and runs them (see .ci/run).
"""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Not just "vllm": without the extra, this very folder (tests/vllm, on sys.path under pytest) would import as
# an empty namespace package named vllm.
pytest.importorskip(
    "vllm.v1.core.sched.scheduler",
    reason="vLLM is not installed (optional extra): pip install -e '.[vllm]' to run tests/vllm",
)
