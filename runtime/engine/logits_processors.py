"""Per-request logits processors: logit_bias, repetition/frequency/presence penalties, min_tokens.

Batched in torch over the rows that use each one; the sampler calls `apply_logits_processors`
once per step, before temperature and the top-k/top-p/min-p filters. The order follows vLLM:
the bias first, then the repetition penalty, then the frequency and presence penalties, then
min_tokens' masking (a masked token stays masked whatever came before).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch

from runtime.engine.sampling_params import SamplingParams


def output_window(params: SamplingParams, num_tokens: int, num_output_tokens: int) -> int:
    """Where the tokens the presence and frequency penalties count start in a row's
    prompt + output ids: the output, and the prompt's last `num_prior_output_tokens` tokens
    that an earlier attempt of a resumed request generated."""
    return max(num_tokens - num_output_tokens - params.num_prior_output_tokens, 0)


def apply_logits_processors(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    output_indices: Sequence[int],
    token_ids: Sequence[Sequence[int]] | None,
    eos_token_ids: Collection[int],
) -> torch.Tensor:
    """`logits` [B, V] with each row's penalties, bias and min_tokens mask applied.

    `output_indices[i]` counts row i's output tokens so far and `token_ids[i]` holds its
    prompt + output ids (needed only by rows with a repetition, presence or frequency
    penalty; ValueError when such a row has none). Returns `logits` itself when no row uses
    any of these, otherwise a new float32 tensor: the input is never written, so logprobs
    can still be taken from the raw logits. Token ids past the vocabulary raise ValueError.
    """
    rows = [i for i, p in enumerate(params) if p.has_penalties]
    if not rows:
        return logits
    out = logits.to(torch.float32, copy=True)
    vocab_size = out.shape[1]
    _add_logit_bias(out, params, rows, vocab_size)
    history = [i for i in rows if _needs_history(params[i])]
    if history and token_ids is None:
        raise ValueError("penalties need each row's prompt and output token ids")
    if history:
        assert token_ids is not None
        _repetition(out, params, token_ids, history)
        _frequency_presence(out, params, token_ids, output_indices, history)
    _mask_min_tokens(out, params, output_indices, rows, eos_token_ids)
    return out


def _needs_history(p: SamplingParams) -> bool:
    return p.repetition_penalty != 1.0 or bool(p.presence_penalty or p.frequency_penalty)


def _index(rows: list[int], ids: list[int], vocab_size: int, device, what: str):
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"{what} token ids must be in [0, {vocab_size}), got {bad[:5]}")
    return (
        torch.tensor(rows, dtype=torch.long).to(device),
        torch.tensor(ids, dtype=torch.long).to(device),
    )


def _add_logit_bias(out: torch.Tensor, params, rows: list[int], vocab_size: int) -> None:
    r, ids, bias = [], [], []
    for i in rows:
        for token, value in params[i].logit_bias:
            r.append(i)
            ids.append(token)
            bias.append(value)
    if r:
        index = _index(r, ids, vocab_size, out.device, "logit_bias")
        out.index_put_(index, torch.tensor(bias, dtype=out.dtype).to(out.device), accumulate=True)


def _token_counts(
    token_ids: Sequence[Sequence[int]], starts: list[int], rows: list[int], out: torch.Tensor
) -> torch.Tensor:
    """[len(rows), V] float counts of each row's tokens from its start on."""
    r: list[int] = []
    ids: list[int] = []
    for k, (i, start) in enumerate(zip(rows, starts)):
        tail = token_ids[i][start:]
        r.extend([k] * len(tail))
        ids.extend(tail)
    counts = torch.zeros((len(rows), out.shape[1]), dtype=out.dtype, device=out.device)
    if r:
        index = _index(r, ids, out.shape[1], out.device, "history")
        counts.index_put_(index, torch.ones(len(r), dtype=out.dtype, device=out.device), True)
    return counts


def _repetition(out: torch.Tensor, params, token_ids, history: list[int]) -> None:
    rows = [i for i in history if params[i].repetition_penalty != 1.0]
    if not rows:
        return
    seen = _token_counts(token_ids, [0] * len(rows), rows, out) > 0
    penalty = torch.tensor([params[i].repetition_penalty for i in rows], dtype=out.dtype)
    penalty = penalty.to(out.device).unsqueeze(1)
    index = torch.tensor(rows, dtype=torch.long).to(out.device)
    x = out[index]
    # As HF and vLLM: a penalty > 1 makes a seen token less likely whatever its logit's sign.
    out[index] = torch.where(seen, torch.where(x > 0, x / penalty, x * penalty), x)


def _frequency_presence(
    out: torch.Tensor, params, token_ids, output_indices, history: list[int]
) -> None:
    rows = [i for i in history if params[i].presence_penalty or params[i].frequency_penalty]
    if not rows:
        return
    starts = [output_window(params[i], len(token_ids[i]), output_indices[i]) for i in rows]
    counts = _token_counts(token_ids, starts, rows, out)
    device = out.device
    freq = torch.tensor([params[i].frequency_penalty for i in rows], dtype=out.dtype)
    pres = torch.tensor([params[i].presence_penalty for i in rows], dtype=out.dtype)
    index = torch.tensor(rows, dtype=torch.long).to(device)
    out[index] -= freq.to(device).unsqueeze(1) * counts + pres.to(device).unsqueeze(1) * (
        counts > 0
    ).to(out.dtype)


def _mask_min_tokens(
    out: torch.Tensor, params, output_indices, rows: list[int], eos_token_ids: Collection[int]
) -> None:
    r: list[int] = []
    ids: list[int] = []
    for i in rows:
        p = params[i]
        if output_indices[i] >= p.min_tokens:
            continue
        banned = set(p.stop_token_ids) | (set() if p.ignore_eos else set(eos_token_ids))
        # A stop token id past this model's vocabulary can never be sampled anyway.
        banned = {t for t in banned if t < out.shape[1]}
        r.extend([i] * len(banned))
        ids.extend(sorted(banned))
    if r:
        out[_index(r, ids, out.shape[1], out.device, "stop")] = float("-inf")
