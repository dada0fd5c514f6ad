"""Chained block hashes: the identity of a KV block is its content and everything before it.

vLLM's prefix cache keys a full block by hash(parent block's hash, the block's token ids); two prompts share
cached blocks exactly as long as their leading hashes are equal. The simulator, the engine, the routers'
prefix index and the gateway all use these functions, so a prefix means the same thing everywhere.
Python's hash of a tuple of ints is deterministic across processes (PYTHONHASHSEED only salts str/bytes).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

ROOT = 0x5EED


def chain(contents: Iterable[object], parent: int = ROOT) -> tuple[int, ...]:
    """Chained hashes of a sequence of block contents (any hashable: token tuples, synthetic block ids)."""
    out: list[int] = []
    h = parent
    for c in contents:
        h = hash((h, c))
        out.append(h)
    return tuple(out)


def token_block_hashes(token_ids: Sequence[int], block_size: int) -> tuple[int, ...]:
    """Hashes of the full blocks of a token sequence (a trailing partial block is not cacheable)."""
    n = len(token_ids) // block_size
    return chain(tuple(token_ids[i * block_size : (i + 1) * block_size]) for i in range(n))
