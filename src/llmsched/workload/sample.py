"""The built-in sample trace (`builtin:sample`): synthesized, deterministic, in Mooncake's JSONL format.

It is made by the `prefix-heavy` generator at a 512-token block size; each distinct chained block hash
becomes a block id in order of first appearance (so ids are cumulative-prefix ids, as in Mooncake), and a
partial last block gets a fresh id of its own. Lines also carry `class` and `session`, which the Mooncake
loader reads when present. Regenerate with `python scripts/make_sample_trace.py` after changing the
generator; a test checks that the shipped file matches.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from llmsched.workload.synthetic import GENERATORS

SAMPLE_SEED = 20231116
SAMPLE_REQUESTS = 1200
SAMPLE_RATE = 4.0
SAMPLE_PARAMS: dict[str, Any] = {"agent": {"max_context": 16384}}
SRC_BLOCK = 512


def sample_rows(
    n: int = SAMPLE_REQUESTS, rate: float = SAMPLE_RATE, seed: int = SAMPLE_SEED
) -> list[dict[str, Any]]:
    gen = GENERATORS.create("prefix-heavy", SAMPLE_PARAMS)
    cols = gen.generate(n, rate, np.random.default_rng(seed), SRC_BLOCK)
    ids: dict[int, int] = {}
    next_id = 0
    rows = []
    assert cols.hashes is not None and cols.session is not None
    for i in range(len(cols)):
        prompt = int(cols.prompt[i])
        block_ids = []
        for h in cols.hashes[i] or ():
            if h not in ids:
                ids[h] = next_id
                next_id += 1
            block_ids.append(ids[h])
        if prompt % SRC_BLOCK:  # a partial last block: a fresh id, never shared
            block_ids.append(next_id)
            next_id += 1
        rows.append(
            {
                "timestamp": int(round(float(cols.arrival[i]) * 1000)),
                "input_length": prompt,
                "output_length": int(cols.output[i]),
                "hash_ids": block_ids,
                "class": cols.cls_names[int(cols.cls_codes[i])],
                "session": cols.session[i],
            }
        )
    return rows


def sample_text(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, separators=(", ", ": ")) + "\n" for r in rows)


def write_sample(path: Path) -> int:
    rows = sample_rows()
    path.write_text(sample_text(rows), encoding="utf-8")
    return len(rows)
