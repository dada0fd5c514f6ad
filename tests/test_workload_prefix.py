"""Block-hash expansion of trace block ids and of synthetic streams."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from llmsched.core.hashing import ROOT
from llmsched.workload.prefix import BlockIdExpander, StreamHasher


def test_equal_ids_give_equal_sub_block_hashes() -> None:
    e = BlockIdExpander(16)
    a = e.expand([0, 1, 2], 3 * 512)
    b = e.expand([0, 1, 5], 3 * 512)
    assert len(a) == len(b) == 96
    assert a[:64] == b[:64]
    assert not set(a[64:]) & set(b[64:])
    assert len(set(a)) == 96  # every sub-block distinct


def test_partial_last_block_only_full_engine_blocks() -> None:
    e = BlockIdExpander(16)
    h = e.expand([0, 1], 512 + 100)  # 100 tokens of block 1: 6 full engine blocks, 4 tokens left over
    assert len(h) == 32 + 6
    assert h == e.expand([0, 1], 1024)[:38]  # the full version extends the partial one
    assert e.expand([7], 15) == ()  # less than one engine block: nothing to hash


def test_expansion_is_deterministic_across_expanders_and_roots() -> None:
    assert BlockIdExpander(16).expand([3, 4], 900) == BlockIdExpander(16).expand([3, 4], 900)
    assert BlockIdExpander(16).expand([3], 512) != BlockIdExpander(16, root=ROOT + 1).expand([3], 512)


def test_block_size_not_dividing_512() -> None:
    e = BlockIdExpander(24)
    a, b = e.expand([0, 1], 1024), e.expand([0, 2], 1024)
    assert len(a) == 1024 // 24
    shared = 512 // 24  # blocks ending inside the first trace block
    assert a[:shared] == b[:shared] and a[shared] != b[shared]


@given(
    ids=st.lists(st.integers(0, 50), min_size=1, max_size=6, unique=True),
    cut=st.integers(1, 512),
    bs=st.sampled_from([1, 8, 16, 32, 64, 512, 48, 100]),
)
def test_expansion_length_and_prefix_property(ids: list[int], cut: int, bs: int) -> None:
    e = BlockIdExpander(bs)
    n = (len(ids) - 1) * 512 + cut
    h = e.expand(ids, n)
    assert len(h) == n // bs
    # a prompt that stops one trace block earlier shares every hash it has
    shorter = e.expand(ids[:-1], (len(ids) - 1) * 512)
    assert h[: len(shorter)] == shorter


def test_stream_hasher_turns_extend_and_prefixes_are_shared() -> None:
    s = StreamHasher(16)
    t1 = s.hashes(stream_key=1, prefix_key=7, prefix_len=100, prompt_len=300)
    t2 = s.hashes(stream_key=1, prefix_key=7, prefix_len=100, prompt_len=700)
    other = s.hashes(stream_key=2, prefix_key=7, prefix_len=100, prompt_len=300)
    assert len(t1) == 300 // 16 and t2[: len(t1)] == t1
    full_prefix = 100 // 16
    assert other[:full_prefix] == t1[:full_prefix]  # the system prompt's full blocks
    assert other[full_prefix] != t1[full_prefix]  # the block straddling into the session's own tokens
    s.forget(1)
    assert s.hashes(1, 7, 100, 700) == t2  # recomputed identically
