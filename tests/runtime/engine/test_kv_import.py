"""The decode side's KV import: blocks reserved up front, KV written as it arrives (from any
thread), the request admitted only at the commit, and every way out freeing the blocks."""

import threading

import pytest
import torch
from tiny_model import make_engine

from runtime.engine import NoFreeBlocksError, SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
PROMPT = list(range(40, 77))


def prefilled(path):
    prefill = make_engine(path, role="prefill", num_threads=1)
    out = prefill.generate(prompt_token_ids=[PROMPT], params=GREEDY)[0]
    return prefill, out


def layer_kvs(prefill, rid):
    """(layer, kv [1, 2, T, H, D]) of each layer of a prefilled request: write_kv's input."""
    return [(layer, torch.stack([k, v])[None]) for layer, k, v in prefill.export_kv(rid)]


def importing(path):
    """A prefilled request's (id, handle, per-layer KV) and a decode engine with its import
    begun; also the decode engine's free blocks before it."""
    prefill, out = prefilled(path)
    decode = make_engine(path, role="decode", num_threads=1)
    free = decode.block_manager.num_free_blocks
    decode.begin_import(out.request_id, len(PROMPT))
    return decode, free, out, layer_kvs(prefill, out.request_id)


def test_reserve_write_from_another_thread_commit_decodes_like_colocated(tiny_model_dir):
    prefill, out = prefilled(tiny_model_dir)
    decode = make_engine(tiny_model_dir, role="decode", num_threads=1)
    free = decode.block_manager.num_free_blocks
    rid = out.request_id
    decode.begin_import(rid, len(PROMPT))
    assert decode.block_manager.num_free_blocks == (
        free - decode.block_manager.blocks_needed(len(PROMPT) + 1)
    )
    assert rid not in decode.requests and not decode.has_unfinished_requests()
    kv = torch.stack([torch.stack([k, v]) for _, k, v in prefill.export_kv(rid)])
    # Layer ranges in three calls, the first range's tokens split unevenly: chunks' shapes.
    n, cut = kv.shape[0], 5
    writer = threading.Thread(
        target=lambda: [
            decode.write_kv(rid, 0, kv[: n // 2, :, :cut]),
            decode.write_kv(rid, 0, kv[: n // 2, :, cut:], cut),
            decode.write_kv(rid, n // 2, kv[n // 2 :]),
        ]
    )
    writer.start()
    writer.join()
    assert not decode.has_unfinished_requests()  # written, not yet committed
    decode.commit_import(out.kv_handle)
    got = []
    while decode.has_unfinished_requests():
        got = [o.token_ids for o in decode.step() if o.finished] or got
    colocated = make_engine(tiny_model_dir, num_threads=1)
    want = colocated.generate(prompt_token_ids=[PROMPT], params=GREEDY)[0].token_ids
    assert got == [want]
    assert decode.block_manager.num_free_blocks == free


def test_abort_mid_import_frees_the_blocks_and_ends_the_import(tiny_model_dir):
    decode, free, out, layers = importing(tiny_model_dir)
    rid = out.request_id
    decode.write_kv(rid, *layers[0])
    assert decode.abort(rid)
    assert decode.block_manager.num_free_blocks == free
    with pytest.raises(KeyError):
        decode.write_kv(rid, *layers[1])
    with pytest.raises(KeyError):
        decode.commit_import(out.kv_handle)
    assert not decode.abort(rid)


def test_abort_races_a_writer_thread(tiny_model_dir):
    """A receiver thread keeps writing while the engine thread aborts: the writer stops with
    KeyError (never another error), and every block comes back."""
    decode, free, out, layers = importing(tiny_model_dir)
    rid = out.request_id
    started, outcome = threading.Event(), []

    def write_forever():
        try:
            while True:
                for layer, kv in layers:
                    decode.write_kv(rid, layer, kv)
                    started.set()
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            outcome.append(e)

    writer = threading.Thread(target=write_forever)
    writer.start()
    started.wait(5)
    assert decode.abort(rid)
    writer.join(5)
    assert len(outcome) == 1 and isinstance(outcome[0], KeyError)
    assert decode.block_manager.num_free_blocks == free


def test_refusals(tiny_model_dir):
    prefill, out = prefilled(tiny_model_dir)
    decode = make_engine(tiny_model_dir, role="decode", num_threads=1, num_blocks=16)
    free = decode.block_manager.num_free_blocks
    with pytest.raises(NoFreeBlocksError, match="free KV blocks"):
        decode.begin_import("big", 16 * decode.block_manager.block_size)
    with pytest.raises(ValueError, match="max_model_len"):
        decode.begin_import("long", decode.max_model_len)
    decode.begin_import(out.request_id, len(PROMPT) - 1)
    with pytest.raises(ValueError, match="already in use"):
        decode.begin_import(out.request_id, len(PROMPT) - 1)
    with pytest.raises(ValueError, match="reserved KV of"):
        decode.commit_import(out.kv_handle)  # the handle's prompt is one token longer
    with pytest.raises(ValueError, match="outside the import"):
        decode.write_kv(out.request_id, *layer_kvs(prefill, out.request_id)[0])
    assert decode.abort(out.request_id)
    assert decode.block_manager.num_free_blocks == free
