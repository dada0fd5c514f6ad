"""llmsched inside vLLM (the optional extra `llmsched[vllm]`, pinned to the tested vLLM version).

- `llmsched.vllm.Scheduler`: `vllm serve MODEL --scheduler-cls llmsched.vllm.Scheduler`, the waiting queue being
  one of our request policies (`LLMSCHED_REQUEST_POLICY`, `LLMSCHED_REQUEST_PARAMS`); see `scheduler`.
- `llmsched.vllm.eplb`: our expert placers as vLLM EPLB policies, installed by the `vllm.general_plugins`
  entry point when `LLMSCHED_EXPERT_POLICY` names one.
- `harness`, `diff`, `sim_engine`: vLLM's scheduler on a CPU with a fake model runner, the differential check
  of our engine against it, and the simulator's exact engine.

Importing this package does not import vLLM: the names below are resolved on first use (so `import llmsched`
works without the extra), and vLLM's `--scheduler-cls` resolver reaches them through `getattr`.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "Scheduler": "llmsched.vllm.scheduler",
    "SyncScheduler": "llmsched.vllm.scheduler",
    "PolicyQueue": "llmsched.vllm.queue",
    "EplbPolicy": "llmsched.vllm.eplb",
    "HotspotPolicy": "llmsched.vllm.eplb",
    "AffinityPolicy": "llmsched.vllm.eplb",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'llmsched.vllm' has no attribute {name!r}")
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        if "vllm" in str(e) and not str(e).startswith("No module named 'llmsched"):
            raise ImportError(f"llmsched.vllm.{name} needs vLLM: pip install 'llmsched[vllm]' ({e})") from e
        raise
    return getattr(mod, name)
