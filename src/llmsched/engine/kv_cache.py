"""Paged KV cache with automatic prefix caching, in the manner of vLLM v1's KVCacheManager.

Blocks of `block_size` tokens. A full block whose content is known (a chained hash) is *cacheable*: once
allocated it is registered under its hash, and when no request references it any more it stays in the
cache, evictable in LRU order, until its space is needed. Known hashes are the prompt's
(`Request.block_hashes`) and, through `promote(req, num_tokens, hashes)`, the engine's extensions of them:
generated blocks of a finished request whose answer the workload names (`Request.output_hashes`, so a
follow-up turn sending prompt + answer hits them, as in vLLM) and a preempted request's full generated
blocks (request-private hashes, so its recompute hits them). Every other block (partial tail, blocks with no
known hash) is *anonymous*: only its count matters, so the simulator tracks it as an integer and never
touches per-block objects for it. That is what keeps 1M-request runs fast while prefix hits stay exact at
block granularity.

Deliberate simplifications (documented in docs/architecture.md): generated blocks of a *running* request
stay anonymous until it finishes or is preempted (vLLM registers them as they fill; only a concurrent
request with the very same answer could tell); a cacheable block whose hash is already registered by
another in-flight request when it is allocated is kept anonymous (vLLM likewise keeps the first
registration).
"""

from __future__ import annotations

from collections import OrderedDict

from llmsched.core.types import Request


class KVCache:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"KV cache needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = enable_prefix_caching
        self._refs: dict[int, int] = {}  # hash -> reference count (registered blocks)
        self._evictable: OrderedDict[int, None] = OrderedDict()  # registered, unreferenced; LRU first
        self.num_used = 0  # blocks referenced by requests (anonymous + hashed with refs)
        self.queries = 0  # prompt tokens looked up (vllm:prefix_cache_queries_total)
        self.hits = 0  # prompt tokens found (vllm:prefix_cache_hits_total)
        self.evictions = 0

    # -- capacity -------------------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        """Blocks a request could get now: empty ones plus evictable cached ones."""
        return self.num_blocks - self.num_used

    @property
    def usage(self) -> float:
        return self.num_used / self.num_blocks

    @property
    def num_cached(self) -> int:
        return len(self._refs)

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    # -- prefix lookup ---------------------------------------------------------------------------------
    def longest_hit(self, hashes: tuple[int, ...] | None, max_tokens: int) -> int:
        """Number of leading blocks of `hashes` registered in the cache, capped so at most `max_tokens`."""
        if not hashes or not self.prefix_caching:
            return 0
        limit = min(len(hashes), max_tokens // self.block_size)
        refs = self._refs
        n = 0
        while n < limit and hashes[n] in refs:
            n += 1
        return n

    # -- allocation ------------------------------------------------------------------------------------
    def admit(self, req: Request, num_tokens: int) -> int | None:
        """First allocation of a (waiting) request: reuse its cached prefix and allocate up to `num_tokens`.

        Returns the number of cached prompt tokens, or None if the blocks do not fit (nothing changes).
        The cache hit is capped at `tokens_so_far - 1` as vLLM does, so at least one token is computed.
        """
        tokens_so_far = req.prompt_len + req.num_output
        hit_blocks = self.longest_hit(req.block_hashes, tokens_so_far - 1)
        hit_tokens = hit_blocks * self.block_size
        want = min(tokens_so_far, hit_tokens + num_tokens)
        total_blocks = self.blocks_for(want)
        hashes = req.block_hashes
        refs = self._refs
        # Hit blocks that are evictable now stop being free; referenced ones cost nothing.
        revived = 0
        for i in range(hit_blocks):
            if refs[hashes[i]] == 0:  # type: ignore[index]
                revived += 1
        if total_blocks - hit_blocks + revived > self.num_free:
            return None
        held: list[int] = []
        for i in range(hit_blocks):
            h = hashes[i]  # type: ignore[index]
            if refs[h] == 0:
                del self._evictable[h]
                self.num_used += 1
            refs[h] += 1
            held.append(h)
        req.kv_hashed = held
        req.kv_anon = 0
        self.queries += req.prompt_len
        self.hits += hit_tokens
        self._grow(req, total_blocks - hit_blocks, want)
        return hit_tokens

    def extend(self, req: Request, num_tokens: int) -> bool:
        """Make room for `num_tokens` tokens of KV in total for a running request; False if it does not fit."""
        held = len(req.kv_hashed) + req.kv_anon  # type: ignore[arg-type]
        need = self.blocks_for(num_tokens) - held
        if need > self.num_free:
            return False
        self._grow(req, need, num_tokens)
        return True

    def alloc(self, n: int) -> None:
        """Take n anonymous blocks in bulk (the engine's decode set keeps their per-request split)."""
        if n <= 0:
            return
        self._make_room(n)
        self.num_used += n

    def _grow(self, req: Request, n: int, num_tokens: int) -> None:
        """Append n anonymous blocks to req, then register those of its blocks that are full of prompt.

        A block is registered under its hash once the tokens scheduled so far (`num_tokens`) fill it, as vLLM
        caches full blocks only. Registered blocks form a prefix of the request's blocks; registration stops
        at the first hash another request registered first (that block stays private, as in vLLM).
        """
        if n > 0:
            self._make_room(n)
            self.num_used += n
            req.kv_anon += n
        self.promote(req, num_tokens)

    def promote(self, req: Request, num_tokens: int, hashes: tuple[int, ...] | None = None) -> None:
        """Register req's anonymous blocks that are full (of `num_tokens`) and have a known hash (from
        `hashes`, by default its prompt's `block_hashes`)."""
        if hashes is None:
            hashes = req.block_hashes
        if not hashes or not self.prefix_caching or not req.kv_anon:
            return
        held = req.kv_hashed
        assert held is not None
        refs = self._refs
        start = len(held)
        stop = min(len(hashes), num_tokens // self.block_size, start + req.kv_anon)
        for i in range(start, stop):
            h = hashes[i]
            if h in refs:
                break
            refs[h] = 1
            held.append(h)
        req.kv_anon -= len(held) - start

    def _make_room(self, n: int) -> None:
        """Evict LRU cached blocks until n empty blocks exist (callers checked num_free >= n)."""
        empty = self.num_blocks - self.num_used - len(self._evictable)
        ev = self._evictable
        refs = self._refs
        while empty < n:
            h, _ = ev.popitem(last=False)
            del refs[h]
            self.evictions += 1
            empty += 1

    def free(self, req: Request) -> None:
        """Release all of req's blocks; its registered blocks stay cached, the tail ones evicted first."""
        held = req.kv_hashed
        if held is None:
            return
        refs = self._refs
        ev = self._evictable
        freed = req.kv_anon
        for h in reversed(held):
            c = refs[h] - 1
            refs[h] = c
            if c == 0:
                ev[h] = None
                freed += 1
        self.num_used -= freed
        req.kv_hashed = None
        req.kv_anon = 0

    def reset_prefix_cache(self) -> None:
        """Drop every unreferenced cached block (vLLM's /reset_prefix_cache)."""
        for h in self._evictable:
            del self._refs[h]
        self._evictable.clear()
