"""Continuous batching decisions: budgets, chunking, admission order and preemption."""

from runtime.config import SchedulerConfig
from runtime.engine.batch_scheduler import BatchScheduler
from runtime.engine.block_manager import BlockManager
from runtime.engine.sampling_params import SamplingParams
from runtime.engine.sequence import Sequence, SequenceStatus


def make(num_blocks=16, block_size=4, budget=8, max_seqs=8, chunked=True):
    bm = BlockManager(num_blocks, block_size)
    return BatchScheduler(
        SchedulerConfig(
            max_num_seqs=max_seqs, max_num_batched_tokens=budget, enable_chunked_prefill=chunked
        ),
        bm,
    ), bm


def run_step(batch, sampled_token=7):
    """What the engine does after a forward: advance, and sample where a sequence reached
    its end."""
    for s, n in zip(batch.seqs, batch.num_new_tokens):
        s.num_computed_tokens += n
        if s.num_computed_tokens == s.num_tokens:
            s.token_ids.append(sampled_token)


def test_chunked_prefill_splits_prompt_across_steps():
    sched, bm = make(budget=8)
    a = Sequence("a", list(range(20)), SamplingParams())
    sched.add(a)
    b1 = sched.schedule()
    assert b1.seqs == [a] and b1.num_new_tokens == [8]
    assert a.block_table == [0, 1]
    run_step(b1)
    b2 = sched.schedule()
    assert b2.num_new_tokens == [8]
    run_step(b2)
    b3 = sched.schedule()
    assert b3.num_new_tokens == [4]
    run_step(b3)
    assert a.num_tokens == 21  # sampled once, after the last chunk
    b4 = sched.schedule()
    assert b4.num_new_tokens == [1]  # decoding


def test_decode_first_then_new_prompts_fill_budget():
    sched, bm = make(budget=6)
    a = Sequence("a", [1, 2, 3], SamplingParams())
    sched.add(a)
    run_step(sched.schedule())
    b = Sequence("b", list(range(10)), SamplingParams())
    c = Sequence("c", [5], SamplingParams())
    sched.add(b)
    sched.add(c)
    batch = sched.schedule()
    assert [s.request_id for s in batch.seqs] == ["a", "b"]
    assert batch.num_new_tokens == [1, 5]  # c waits: the budget is spent


def test_without_chunking_a_prompt_waits_for_a_whole_budget():
    sched, bm = make(budget=6, chunked=False)
    a = Sequence("a", [1, 2, 3], SamplingParams())
    sched.add(a)
    run_step(sched.schedule())
    b = Sequence("b", list(range(6)), SamplingParams())
    sched.add(b)
    batch = sched.schedule()
    assert [s.request_id for s in batch.seqs] == ["a"]
    run_step(batch)


def test_max_num_seqs_limits_admission():
    sched, _ = make(budget=64, max_seqs=2)
    seqs = [Sequence(str(i), [1, 2], SamplingParams()) for i in range(3)]
    for s in seqs:
        sched.add(s)
    batch = sched.schedule()
    assert [s.request_id for s in batch.seqs] == ["0", "1"]
    assert list(sched.waiting) == [seqs[2]]


def test_preemption_frees_latest_and_requeues_it_first():
    sched, bm = make(num_blocks=4, block_size=2, budget=16)
    a = Sequence("a", [1, 2, 3], SamplingParams())  # 2 blocks
    b = Sequence("b", [4, 5, 6], SamplingParams())  # 2 blocks
    sched.add(a)
    sched.add(b)
    run_step(sched.schedule())
    assert bm.num_free_blocks == 0
    # a needs a third block for its 4th token's slot? tokens 0..3 fit in 2 blocks of 2
    batch = sched.schedule()
    assert batch.num_new_tokens == [1, 1]
    run_step(batch)
    # now both hold 5 tokens' worth: a needs a new block, none free -> b is preempted
    batch = sched.schedule()
    assert batch.preempted == [b]
    assert b.status is SequenceStatus.WAITING and b.block_table == []
    assert b.num_computed_tokens == 0 and b.num_preemptions == 1
    assert list(sched.waiting) == [b]
    assert batch.seqs == [a] and len(a.block_table) == 3
