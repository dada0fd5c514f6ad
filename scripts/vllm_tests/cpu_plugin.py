"""pytest plugin: run vLLM's scheduler tests on a machine without an accelerator.

(1) vLLM's platform detection leaves `device_type` empty without a GPU; the tests' configs then fail with
"Failed to infer device type". Setting it to "cpu" is enough for scheduler work; switching to vLLM's CPU
platform is not wanted (it rewrites the scheduler config, e.g. turns async scheduling off).
(2) The tests' autouse cleanup calls `torch.accelerator.empty_cache()`, which raises without an accelerator.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_configure(config) -> None:  # noqa: ARG001 - pytest hook signature
    import torch
    from vllm.platforms import current_platform

    if not getattr(current_platform, "device_type", ""):
        current_platform.device_type = "cpu"
    if not torch.accelerator.is_available():
        torch.accelerator.empty_cache = lambda: None
