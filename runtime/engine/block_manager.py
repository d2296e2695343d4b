"""The paged KV cache's bookkeeping: blocks, block tables, reference counts, prefix caching.

Plain Python (no torch) so tests can assert exact block ids and free-list order. The tensors
live in the model runner; this class only decides which block holds which tokens.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict

from runtime.engine.sequence import Sequence


def chain_hash(parent: bytes, token_ids: list[int]) -> bytes:
    """Hash of a full block given its parent's hash: equal hashes mean equal whole prefixes."""
    return hashlib.blake2b(parent + array("q", token_ids).tobytes(), digest_size=16).digest()


class BlockManager:
    """Hands out fixed-size KV blocks to sequences and shares full blocks between equal prefixes.

    Contract:
    - A block is free when no sequence references it. Free blocks form an LRU list: the block
      freed longest ago is handed out first, and a freed block keeps its cached content (and
      hash) until it is handed out again, so a later request with the same prefix revives it.
    - Only full blocks whose KV has been computed are entered in the prefix cache (`commit`),
      so a cache hit never reads KV that is still being written.
    - `free` releases a sequence's blocks tail first, so its shared prefix blocks stay cached
      longest.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(
                f"need num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}"
            )
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[bytes | None] = [None] * num_blocks
        self.cached_blocks: dict[bytes, int] = {}
        self.free_blocks: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.num_prefix_queries = 0  # prompt tokens looked up in the prefix cache
        self.num_prefix_hits = 0  # of those, tokens found

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # -- prefix cache -------------------------------------------------------------------------
    def _full_block_hashes(self, seq: Sequence, num_full: int) -> list[bytes]:
        bs = self.block_size
        hashes = seq.block_hashes
        while len(hashes) < num_full:
            i = len(hashes)
            parent = hashes[-1] if hashes else b""
            hashes.append(chain_hash(parent, seq.token_ids[i * bs : (i + 1) * bs]))
        return hashes[:num_full]

    def find_cached_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks holding the longest prefix of `seq`, leaving at least one token to compute.

        Pure lookup: nothing is referenced until `admit`.
        """
        if not self.enable_prefix_caching:
            return []
        # The last token must be computed to produce logits, so never match the whole sequence.
        num_full = (seq.num_tokens - 1) // self.block_size
        hits: list[int] = []
        for h in self._full_block_hashes(seq, num_full):
            block_id = self.cached_blocks.get(h)
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    def can_admit(self, cached: list[int], num_tokens: int) -> bool:
        """Whether a new sequence can hold `num_tokens` tokens, reusing the `cached` blocks."""
        revived = sum(1 for b in cached if self.ref_counts[b] == 0)
        fresh = self.blocks_needed(num_tokens) - len(cached)
        return revived + max(fresh, 0) <= self.num_free_blocks

    def admit(self, seq: Sequence, cached: list[int], num_tokens: int) -> None:
        """Give a block-less sequence the `cached` prefix blocks plus fresh ones up to
        `num_tokens`."""
        assert not seq.block_table, f"{seq.request_id} already holds blocks"
        if not self.can_admit(cached, num_tokens):
            raise RuntimeError(f"not enough free KV blocks to admit {seq.request_id}")
        for b in cached:
            self._ref(b)
        seq.block_table = list(cached)
        seq.num_computed_tokens = len(cached) * self.block_size
        seq.num_cached_tokens = seq.num_computed_tokens
        seq.num_committed_blocks = len(cached)
        self.num_prefix_queries += seq.num_tokens
        self.num_prefix_hits += seq.num_computed_tokens
        self.allocate_slots(seq, num_tokens - seq.num_computed_tokens)

    # -- growth and release -------------------------------------------------------------------
    def can_allocate_slots(self, seq: Sequence, num_new_tokens: int) -> bool:
        need = self.blocks_needed(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        return need <= self.num_free_blocks

    def allocate_slots(self, seq: Sequence, num_new_tokens: int) -> None:
        """Grow the block table so tokens up to `num_computed_tokens + num_new_tokens` have
        slots."""
        need = self.blocks_needed(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        if need > self.num_free_blocks:
            raise RuntimeError(
                f"not enough free KV blocks for {seq.request_id}: need {need}, "
                f"have {self.num_free_blocks}"
            )
        for _ in range(need):
            seq.block_table.append(self._take_free_block())

    def commit(self, seq: Sequence) -> None:
        """Enter the sequence's newly computed full blocks into the prefix cache."""
        if not self.enable_prefix_caching:
            return
        num_full = seq.num_computed_tokens // self.block_size
        if num_full <= seq.num_committed_blocks:
            return
        hashes = self._full_block_hashes(seq, num_full)
        for i in range(seq.num_committed_blocks, num_full):
            block_id = seq.block_table[i]
            h = hashes[i]
            # A concurrent sequence may have computed the same prefix first: keep that copy.
            if h not in self.cached_blocks and self.block_hash[block_id] is None:
                self.cached_blocks[h] = block_id
                self.block_hash[block_id] = h
        seq.num_committed_blocks = num_full

    def reserve(self, num_tokens: int) -> list[int]:
        """Fresh blocks for `num_tokens` tokens, held by no sequence yet (a KV import being
        received); give them to a sequence as its block table, or back with `release`."""
        need = self.blocks_needed(num_tokens)
        if need > self.num_free_blocks:
            raise RuntimeError(
                f"not enough free KV blocks: need {need}, have {self.num_free_blocks}"
            )
        return [self._take_free_block() for _ in range(need)]

    def release(self, blocks: list[int]) -> None:
        """Drop one reference to each block, tail first (so shared prefixes stay cached longest)."""
        for block_id in reversed(blocks):
            self.ref_counts[block_id] -= 1
            assert self.ref_counts[block_id] >= 0, f"block {block_id} freed twice"
            if self.ref_counts[block_id] == 0:
                self.free_blocks[block_id] = None

    def free(self, seq: Sequence) -> None:
        """Drop the sequence's references (tail first); its KV is gone from its point of view."""
        self.release(seq.block_table)
        seq.block_table = []
        seq.num_computed_tokens = 0
        seq.num_committed_blocks = 0

    def _ref(self, block_id: int) -> None:
        if self.ref_counts[block_id] == 0:
            del self.free_blocks[block_id]
        self.ref_counts[block_id] += 1

    def _take_free_block(self) -> int:
        block_id, _ = self.free_blocks.popitem(last=False)
        h = self.block_hash[block_id]
        if h is not None:  # evict its cached content
            del self.cached_blocks[h]
            self.block_hash[block_id] = None
        self.ref_counts[block_id] = 1
        return block_id

    @property
    def prefix_hit_rate(self) -> float:
        return self.num_prefix_hits / self.num_prefix_queries if self.num_prefix_queries else 0.0
