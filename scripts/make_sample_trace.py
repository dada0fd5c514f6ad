"""Write the built-in sample trace, src/llmsched/data/traces/sample.jsonl (deterministic; see
llmsched.workload.sample for how it is synthesized). Usage: python scripts/make_sample_trace.py [OUT]
"""

from __future__ import annotations

import sys
from pathlib import Path

from llmsched.workload.sample import write_sample

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src/llmsched/data/traces/sample.jsonl"

if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    n = write_sample(out)
    print(f"wrote {n} requests to {out}")
