"""The router's prefix index: longest match, LRU eviction that keeps prefixes closed, ageing, forgetting; the
same blocks, stamps and evictions as the per-block reference index under random operations."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_prefix_index import ReferencePrefixIndex

from llmsched.core.hashing import chain
from llmsched.policies.instance.prefix_index import PrefixIndex, _Node


def tree_chain(path: list[int]) -> tuple[int, ...]:
    """Chained hashes of a path in a small tree of block contents: equal leading ids = equal prefix."""
    return chain(path)


def common(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def check_invariants(idx: PrefixIndex, chains: list[tuple[int, ...]]) -> None:
    sets = [idx.held(i) for i in range(idx.num_instances)]
    for i, d in enumerate(sets):
        assert len(d) == idx.blocks(i)
        # Every chain's held blocks form a prefix of it.
        for c in chains:
            held = [h in d for h in c]
            k = held.index(False) if False in held else len(held)
            assert not any(held[k:]), "held blocks of a chain are not a prefix"
    assert len(idx) == len(set().union(*sets))
    check_tree(idx)


def check_tree(idx: PrefixIndex) -> None:
    """The radix tree's own bookkeeping: parents, who holds what, children counts, live leaves in the heaps."""
    leaves: list[set[int]] = [set() for _ in range(idx.num_instances)]
    stack: list[tuple[_Node | None, _Node]] = [(None, n) for n in idx.roots_.values()]
    while stack:
        parent, node = stack.pop()
        assert node.parent is parent and node.keys
        assert node.start == (parent.start + len(parent.keys) if parent else 0)
        holders = [i for i in range(idx.num_instances) if node.held(i)]
        assert holders, "a node nobody holds is kept"
        assert set(node.top) == set(holders)
        assert all(0 < k < len(node.keys) for k in node.part.values())
        assert not node.full & sum(1 << i for i in node.part)
        for i in holders:
            kids = sum(1 for c in node.children.values() if c.held(i))
            assert node.kids.get(i, 0) == kids
            if kids:
                assert node.held(i) == len(node.keys), "a partly held node with held children"
            else:
                leaves[i].add(id(node))
        for first, c in node.children.items():
            assert c.keys[0] == first
            stack.append((node, c))
    for i in range(idx.num_instances):
        live = {id(e[2]) for e in idx.leaves_[i] if idx._valid(i, e)}
        assert live == leaves[i], "a leaf without its heap entry (or a stale one taken as live)"


paths = st.lists(st.integers(0, 3), min_size=0, max_size=12)
ops = st.lists(st.tuples(st.integers(0, 4), paths), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(ops=ops, probe=paths)
def test_match_is_longest_common_prefix_without_eviction(ops, probe):
    idx = PrefixIndex(5, capacity_blocks=10_000)
    sent: list[list[tuple[int, ...]]] = [[] for _ in range(5)]
    for t, (inst, path) in enumerate(ops):
        c = tree_chain(path)
        idx.touch(inst, c, float(t))
        sent[inst].append(c)
    q = tree_chain(probe)
    want = [max((common(q, c) for c in sent[i]), default=0) for i in range(5)]
    assert idx.match(q) == want
    assert idx.match_array(q).tolist() == want
    assert [idx.match_instance(i, q) for i in range(5)] == want
    assert idx.longest(q) == max(want)
    check_invariants(idx, [c for s in sent for c in s])


@settings(max_examples=150, deadline=None)
@given(ops=ops, cap=st.integers(1, 20))
def test_eviction_bounds_size_and_keeps_prefixes_closed(ops, cap):
    idx = PrefixIndex(5, capacity_blocks=cap, slack=0.5)
    chains = []
    for t, (inst, path) in enumerate(ops):
        c = tree_chain(path)
        chains.append(c)
        idx.touch(inst, c, float(t))
        assert idx.blocks(inst) <= cap + int(cap * 0.5)
        # The chain just touched is the most recent: its head survives any eviction.
        if c:
            assert idx.match_instance(inst, c) >= min(len(c), cap)
    check_invariants(idx, chains)


def test_lru_evicts_least_recent_chain_first():
    idx = PrefixIndex(1, capacity_blocks=8, slack=0.0)
    a, b = tree_chain([1, 1, 1, 1]), tree_chain([2, 2, 2, 2])
    idx.touch(0, a, 0.0)
    idx.touch(0, b, 1.0)
    idx.touch(0, a, 2.0)  # a is now more recent than b
    c = tree_chain([3, 3])
    idx.touch(0, c, 3.0)  # 10 blocks > 8: two must go, from b's tail
    assert idx.match_instance(0, a) == 4
    assert idx.match_instance(0, c) == 2
    assert idx.match_instance(0, b) == 2
    assert idx.evicted_ == 2


def test_age_out_forgets_untouched_blocks_only():
    idx = PrefixIndex(2, capacity_blocks=100)
    a, b = tree_chain([1, 2, 3]), tree_chain([1, 2, 4, 5])
    idx.touch(0, a, 0.0)
    idx.touch(0, b, 10.0)  # refreshes the shared prefix [1, 2]
    idx.touch(1, a, 1.0)
    dropped = idx.age_out(now=12.0, ttl=5.0)
    assert dropped == 1 + 3  # a's last block on 0; all of a on 1
    assert idx.match(a) == [2, 0]
    assert idx.match(b) == [4, 0]
    assert idx.age_out(now=12.0, ttl=5.0) == 0


def test_forget_and_set_capacity():
    idx = PrefixIndex(2, capacity_blocks=100)
    a = tree_chain(list(range(10)))
    idx.touch(0, a, 0.0)
    idx.touch(1, a, 0.0)
    assert idx.forget(0, a, keep=3) == 7
    assert idx.match(a) == [3, 10]
    idx.set_capacity(1, 4)
    assert idx.match(a) == [3, 4]
    idx.clear_instance(1)
    assert idx.match(a) == [3, 0]
    check_invariants(idx, [a])


def test_forget_drops_deeper_blocks_of_every_chain_through_the_cut():
    idx = PrefixIndex(2, capacity_blocks=100)
    a, b = tree_chain([1, 2, 3, 4]), tree_chain([1, 2, 5, 6, 7])
    idx.touch(0, a, 0.0)
    idx.touch(0, b, 1.0)
    idx.touch(1, b, 1.0)
    assert idx.forget(0, a, keep=1) == 3 + 3  # a's blocks 1..3 and b's 2..4, which hang below block 1
    assert idx.match(b) == [1, 5]
    assert idx.forget(0, b, keep=1) == 0
    check_invariants(idx, [a, b])


def test_resize_and_bad_arguments():
    idx = PrefixIndex(1, capacity_blocks=10)
    idx.touch(3, tree_chain([1]), 0.0)  # grows on demand
    assert idx.num_instances == 4
    assert idx.match(tree_chain([1])) == [0, 0, 0, 1]
    with pytest.raises(ValueError, match="capacity_blocks"):
        PrefixIndex(1, capacity_blocks=0)
    assert idx.match(()) == [0, 0, 0, 0]


def test_long_prompt_match_is_exact():
    # 8k tokens = 512 blocks; instances hold different depths of the same chain.
    full = tree_chain(list(range(512)))
    idx = PrefixIndex(16, capacity_blocks=10_000)
    depths = [0, 1, 7, 100, 255, 256, 511, 512, 3, 0, 64, 65, 400, 2, 9, 512]
    for i, d in enumerate(depths):
        if d:
            idx.touch(i, full[:d], 0.0)
    assert idx.match(full) == depths


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(0, 69), paths), min_size=1, max_size=120), probe=paths)
def test_match_array_agrees_with_match_on_wide_owner_sets(ops, probe):
    """70 instances, so owner sets of more than 8 instances take the unpacked-bitmask path."""
    idx = PrefixIndex(70, capacity_blocks=10_000)
    for t, (inst, path) in enumerate(ops):
        for k in range(0, 70, 3):  # the same chain on many instances: wide owner sets
            idx.touch((inst + k) % 70, tree_chain(path), float(t))
    q = tree_chain(probe)
    assert idx.match_array(q).tolist() == idx.match(q)
    assert idx.match_array(q, 75).tolist() == idx.match(q) + [0] * 5


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("touch"), st.integers(0, 3), st.lists(st.integers(0, 3), max_size=14)),
            st.tuples(st.just("age"), st.integers(1, 8), st.just([])),
            st.tuples(st.just("cap"), st.integers(0, 3), st.lists(st.integers(1, 30), min_size=1, max_size=1)),
            st.tuples(st.just("clear"), st.integers(0, 3), st.just([])),
        ),
        min_size=1,
        max_size=60,
    ),
    cap=st.integers(1, 40),
    slack=st.sampled_from([0.0, 0.5]),
)
def test_same_blocks_stamps_and_evictions_as_the_per_block_reference(steps, cap, slack):
    """Eviction order is the point of an LRU: every block held, its stamp and the eviction count must be those
    of the per-block index after every operation (touches over a small tree of chains, ageing, capacity
    changes, restarts)."""
    idx = PrefixIndex(4, capacity_blocks=cap, slack=slack)
    ref = ReferencePrefixIndex(4, capacity_blocks=cap, slack=slack)
    chains = []
    for t, (op, i, arg) in enumerate(steps):
        if op == "touch":
            c = tree_chain(arg)
            chains.append(c)
            idx.touch(i, c, float(t))
            ref.touch(i, c, float(t))
        elif op == "age":
            assert idx.age_out(float(t), float(i)) == ref.age_out(float(t), float(i))
        elif op == "cap":
            idx.set_capacity(i, arg[0])
            ref.set_capacity(i, arg[0])
        else:
            idx.clear_instance(i)
            ref.clear_instance(i)
        for k in range(4):
            assert idx.held(k) == ref.stamps_[k]
            assert idx.blocks(k) == ref.blocks(k)
        assert idx.evicted_ == ref.evicted_
        assert len(idx) == len(ref)
    check_invariants(idx, chains)
    for c in chains:
        assert idx.match(c) == ref.match(c)
        assert idx.longest(c) == ref.longest(c)


def test_a_conversation_that_grows_turn_by_turn_stays_one_node():
    """Each turn extends the run its instance alone holds: lookups and touches walk the system prompt and one
    node, not one node per turn (a path of 400 nodes cost 25x the per-block index's lookup)."""
    idx = PrefixIndex(4, capacity_blocks=100_000)
    system = tree_chain([7] * 20)
    idx.touch(1, system, 0.0)
    idx.touch(2, system, 0.0)
    conv = tree_chain([7] * 20 + list(range(300)))
    for turn in range(1, 301):
        idx.touch(0, conv[: 20 + turn], float(turn))
    assert [len(n.keys) for n, _ in idx._path(conv)] == [20, 300]
    assert idx.match(conv) == [320, 20, 20, 0]
    check_invariants(idx, [system, conv])


def test_clearing_an_instance_costs_what_it_held_not_the_index():
    idx = PrefixIndex(3, capacity_blocks=100_000)
    for c in range(200):
        idx.touch(1 + c % 2, tree_chain([c % 5, c, 1, 2]), float(c))
    q = tree_chain([0, 0, 1, 2])
    idx.touch(0, q, 300.0)
    before = idx.match(q)
    assert before == [4, 4, 1]
    visited: list[int] = []
    held = idx.held

    def spy(i: int) -> dict[int, int]:  # clear_instance must not walk the tree (held() and _nodes() do)
        visited.append(i)
        return held(i)

    idx.held = spy  # type: ignore[method-assign]
    nodes = idx._nodes
    idx._nodes = lambda: (visited.append(-1), nodes())[1]  # type: ignore[method-assign]
    idx.clear_instance(0)
    assert not visited
    assert idx.blocks(0) == 0 and idx.match(q) == [0, *before[1:]]
    del idx.held, idx._nodes
    check_invariants(idx, [tree_chain([c % 5, c, 1, 2]) for c in range(200)])
