"""Exact block ids, reference counts, prefix-cache hits and frees of the BlockManager."""

import pytest

from runtime.engine.block_manager import BlockManager
from runtime.engine.sampling_params import SamplingParams
from runtime.engine.sequence import Sequence


def seq(rid, tokens):
    return Sequence(rid, list(tokens), SamplingParams())


def admit(bm, s):
    cached = bm.find_cached_prefix(s)
    bm.admit(s, cached, s.num_tokens)
    return cached


def compute_all(bm, s):
    s.num_computed_tokens = s.num_tokens
    bm.commit(s)


def test_allocation_order_and_free_list():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = seq("a", range(10))  # 3 blocks
    assert admit(bm, a) == []
    assert a.block_table == [0, 1, 2]
    assert bm.num_free_blocks == 5
    b = seq("b", range(100, 105))  # 2 blocks
    admit(bm, b)
    assert b.block_table == [3, 4]
    bm.free(a)
    # freed tail first, behind the never-used blocks
    assert list(bm.free_blocks) == [5, 6, 7, 2, 1, 0]
    assert a.block_table == [] and bm.ref_counts[:3] == [0, 0, 0]
    bm.free(b)
    assert bm.num_free_blocks == 8


def test_prefix_hit_shares_blocks_and_counts_refs():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = seq("a", list(range(9)))  # blocks: [0..3] [4..7] [8]
    admit(bm, a)
    compute_all(bm, a)
    b = seq("b", list(range(8)) + [50, 51])
    cached = admit(bm, b)
    assert cached == [0, 1]
    assert b.block_table[:2] == [0, 1] and b.num_cached_tokens == 8
    assert b.num_computed_tokens == 8
    assert bm.ref_counts[0] == 2 and bm.ref_counts[1] == 2
    assert b.block_table[2] == 3
    bm.free(a)
    assert bm.ref_counts[0] == 1 and bm.ref_counts[2] == 0
    bm.free(b)
    assert bm.num_free_blocks == 8
    assert bm.prefix_hit_rate == pytest.approx(8 / 19)


def test_freed_cached_block_is_revived_then_evicted_when_reused():
    bm = BlockManager(num_blocks=4, block_size=4)
    a = seq("a", list(range(5)))
    admit(bm, a)
    compute_all(bm, a)
    bm.free(a)
    assert list(bm.free_blocks) == [2, 3, 1, 0]
    b = seq("b", list(range(4)) + [9])
    assert admit(bm, b) == [0]  # revived from the free list
    assert bm.ref_counts[0] == 1 and 0 not in bm.free_blocks
    bm.free(b)
    # a fresh unrelated sequence takes blocks in LRU order and evicts their hashes
    c = seq("c", list(range(200, 216)))
    admit(bm, c)
    assert c.block_table == [3, 1, 2, 0]  # b took 0 (revived) and 2, freed tail first
    assert bm.cached_blocks == {}
    assert bm.find_cached_prefix(seq("d", list(range(5)))) == []


def test_whole_prompt_never_matched_and_uncomputed_blocks_never_hit():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = seq("a", list(range(8)))
    admit(bm, a)
    # not yet computed: no hit for an identical prompt
    assert bm.find_cached_prefix(seq("x", list(range(8)) + [1])) == []
    compute_all(bm, a)
    # identical 8-token prompt: only the first block may hit, the last token must be computed
    assert bm.find_cached_prefix(seq("y", list(range(8)))) == [0]
    assert bm.find_cached_prefix(seq("z", list(range(8)) + [1])) == [0, 1]


def test_growth_and_exhaustion():
    bm = BlockManager(num_blocks=3, block_size=2)
    a = seq("a", [1, 2, 3])
    admit(bm, a)
    assert a.block_table == [0, 1]
    a.num_computed_tokens = 3
    a.token_ids.append(4)
    assert bm.can_allocate_slots(a, 1)
    bm.allocate_slots(a, 1)
    assert a.block_table == [0, 1]  # slot 3 fits in block 1
    a.num_computed_tokens = 4
    a.token_ids.append(5)
    bm.allocate_slots(a, 1)
    assert a.block_table == [0, 1, 2]
    a.num_computed_tokens = 5
    a.token_ids.append(6)
    a.num_computed_tokens = 6
    a.token_ids.append(7)
    assert not bm.can_allocate_slots(a, 1)
    with pytest.raises(RuntimeError, match="not enough free KV blocks"):
        bm.allocate_slots(a, 1)


def test_prefix_caching_disabled():
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    a = seq("a", list(range(9)))
    admit(bm, a)
    compute_all(bm, a)
    assert bm.find_cached_prefix(seq("b", list(range(9)))) == []
    assert bm.cached_blocks == {}
