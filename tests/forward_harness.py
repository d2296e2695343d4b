"""Greedy decoding straight through a forward function over a paged cache.

Drives `runtime.engine.model.forward` or `runtime.engine.fused_forward.forward_fused` the way
the model runner does (a chunked prefill that continues from the cache, then batched decode
steps with padded block tables and shuffled blocks), without the scheduler, so the kernel
backends can be compared on exact tokens and logits.
"""

from __future__ import annotations

import torch

from runtime.engine.model import AttentionMetadata, PrefillSpan
from runtime.engine.weights import DTYPES, geometry_of, load_hf_config, load_weights


def load_model(model_dir, dtype: str, device: str = "cpu"):
    from runtime.engine.cuda_runner import weights_to

    hf = load_hf_config(model_dir)
    return weights_to(load_weights(model_dir, hf, dtype), torch.device(device)), geometry_of(hf)


def greedy_decode(
    forward_fn,
    weights,
    geometry,
    prompts,
    steps,
    block_size=4,
    chunk=5,
    dtype="float32",
    device="cpu",
):
    """(tokens [n][steps], logits of every step [steps + 1 tensors of n x vocab])."""
    g, dev, bs = geometry, torch.device(device), block_size
    need = [-(-(len(p) + steps) // bs) for p in prompts]
    order = torch.randperm(sum(need) + 2, generator=torch.Generator().manual_seed(0)).tolist()
    tables = [order[sum(need[:i]) : sum(need[: i + 1])] for i in range(len(prompts))]
    cache = torch.zeros(
        g.num_layers,
        2,
        sum(need) + 2,
        bs,
        g.num_kv_heads,
        g.head_dim,
        dtype=DTYPES[dtype],
        device=dev,
    )

    def tensor(x):
        return torch.tensor(x, dtype=torch.long, device=dev)

    def slots(i, start, n):
        return [tables[i][p // bs] * bs + p % bs for p in range(start, start + n)]

    # Prefill: prompt 0 in two chunks (the second reads the first's KV from the cache).
    runs = (
        [(0, 0, chunk)]
        + [(i, 0, len(p)) for i, p in enumerate(prompts) if i]
        + [(0, chunk, len(prompts[0]) - chunk)]
    )
    logits_all = []
    for batch in (runs[:-1], runs[-1:]):
        ids, pos, slot, spans, last = [], [], [], [], []
        for i, start, n in batch:
            spans.append(PrefillSpan(len(ids), n, start, tensor(tables[i])))
            ids += prompts[i][start : start + n]
            pos += range(start, start + n)
            slot += slots(i, start, n)
            last.append(len(ids) - 1)
        meta = AttentionMetadata(slot_mapping=tensor(slot), prefills=tuple(spans))
        logits_all.append(
            forward_fn(weights, g, cache, tensor(ids), tensor(pos), meta, tensor(last))
        )
    first = torch.cat([logits_all[1], logits_all[0][1:]])  # prompt order
    logits_all = [first]
    seqs = [list(p) + [int(first[i].argmax())] for i, p in enumerate(prompts)]
    width = max(need)
    for _ in range(steps - 1):
        n = len(seqs)
        meta = AttentionMetadata(
            slot_mapping=tensor([slots(i, len(s) - 1, 1)[0] for i, s in enumerate(seqs)]),
            num_decode=n,
            decode_block_tables=tensor([t + [t[0]] * (width - len(t)) for t in tables]),
            decode_context_lens=tensor([len(s) for s in seqs]),
        )
        logits = forward_fn(
            weights,
            g,
            cache,
            tensor([s[-1] for s in seqs]),
            tensor([len(s) - 1 for s in seqs]),
            meta,
            tensor(list(range(n))),
        )
        logits_all.append(logits)
        for i, s in enumerate(seqs):
            s.append(int(logits[i].argmax()))
    return [s[len(p) :] for s, p in zip(seqs, prompts)], logits_all
