"""The KV sender and receiver work through the engine's narrow `KVPort` (layout, cache,
staging), never its runner: a CPU and a CUDA engine look the same to them."""

from pathlib import Path

import torch
from kv_handoff_helpers import make_engine

KV_TRANSFER = Path(__file__).resolve().parents[3] / "runtime" / "kv_transfer"


def test_kv_transfer_reaches_no_runner():
    for path in KV_TRANSFER.glob("*.py"):
        assert ".runner" not in path.read_text(), path


def test_the_port_describes_the_engines_cache(tiny_model_dir):
    engine = make_engine(tiny_model_dir, dtype="bfloat16", block_size=8)
    kv = engine.kv
    assert (kv.num_layers, kv.num_kv_heads, kv.head_dim, kv.dtype, kv.block_size) == (
        2,
        2,
        16,
        torch.bfloat16,
        8,
    )
    assert kv.cache.shape == (2, 2, engine.block_manager.num_blocks, 8, 2, 16)
    assert not kv.on_gpu and kv.model_path == str(tiny_model_dir)
    kv.cache[1].normal_()
    table = torch.tensor([3, 1])
    staged = kv.stage(1, table, 2, 13).wait()
    want = torch.cat([kv.cache[1][:, 3], kv.cache[1][:, 1]], dim=1)[:, 2:13]
    assert torch.equal(staged, want)
