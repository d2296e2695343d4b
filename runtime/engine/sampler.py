"""Turns one step's logits into tokens: penalties, greedy, temperature, top-k, top-p, min-p,
logprobs."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

from runtime.engine.logits_processors import apply_logits_processors
from runtime.engine.sampling_params import SamplingParams
from runtime.engine.structured_output import GrammarMatcher, apply_grammar

_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64 finaliser: spreads nearby inputs over the whole 64-bit range."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def row_seed(seed: int, output_index: int) -> int:
    """The generator seed for the token at `output_index` of a request seeded with `seed`."""
    return _mix64(_mix64(seed & _MASK64) ^ output_index)


@dataclass
class SampleResult:
    """One step's output, one entry per request in batch order.

    `logprobs[i]` is the raw-logit logprob of `token_ids[i]`, and `top_logprobs[i]` the
    top-N (token id, logprob) pairs, highest first; both are None unless request i asked
    for logprobs (N = 0 gives an empty top list).
    """

    token_ids: list[int]
    logprobs: list[float | None]
    top_logprobs: list[list[tuple[int, float]] | None]


class Sampler:
    """Samples one token per row of a [B, V] logits tensor.

    A seeded request's token depends only on (seed, output index) and its logits row, not on
    the batch or on earlier calls, so a request moved between engines (prefill here, decode
    there) or recomputed after preemption draws the same tokens. Its noise is drawn on the CPU
    so that this holds across device types too. Unseeded rows share the engine-wide
    generator, seeded once with `seed`. `eos_token_ids` are what `min_tokens` holds back
    (with each request's stop_token_ids) unless the request ignores EOS.
    """

    def __init__(self, seed: int = 0, eos_token_ids: Collection[int] = ()):
        self.seed = seed
        self.eos_token_ids = frozenset(eos_token_ids)
        self._generators: dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def __call__(
        self,
        logits: torch.Tensor,
        params: Sequence[SamplingParams],
        output_indices: Sequence[int],
        token_ids: Sequence[Sequence[int]] | None = None,
        matchers: Sequence[GrammarMatcher | None] | None = None,
    ) -> SampleResult:
        """Sample `logits[i]` under `params[i]`; `output_indices[i]` counts request i's
        output tokens before this one (0 for the first), and `token_ids[i]` holds its prompt +
        output ids so far (needed only by rows with a repetition, presence or frequency
        penalty). `matchers[i]`, when given and not None, restricts row i to the tokens its
        grammar allows; where penalties and min_tokens leave the grammar nothing (EOS held
        back from a complete JSON value), the grammar wins. Logprobs are taken from the raw
        `logits`, before any penalty or mask."""
        num_rows = logits.shape[0]
        if len(params) != num_rows or len(output_indices) != num_rows:
            raise ValueError(
                f"need one SamplingParams and output index per logits row: {num_rows} rows, "
                f"{len(params)} params, {len(output_indices)} output indices"
            )
        raw = logits
        logits = apply_logits_processors(
            logits, params, output_indices, token_ids, self.eos_token_ids
        )
        if matchers is not None:
            logits = apply_grammar(logits, matchers, fallback=raw)
        random_rows = [i for i, p in enumerate(params) if not p.is_greedy]
        if not random_rows:
            sampled = logits.argmax(dim=-1)
        else:
            sampled = torch.empty(num_rows, dtype=torch.long, device=logits.device)
            greedy_rows = [i for i, p in enumerate(params) if p.is_greedy]
            if greedy_rows:
                greedy = torch.tensor(greedy_rows, device=logits.device)
                sampled[greedy] = logits[greedy].argmax(dim=-1)
            rows = torch.tensor(random_rows, device=logits.device)
            sampled[rows] = self._sample(
                logits[rows].float(),
                [params[i] for i in random_rows],
                [output_indices[i] for i in random_rows],
            )
        return _with_logprobs(raw, params, sampled)

    def _sample(
        self, logits: torch.Tensor, params: list[SamplingParams], output_indices: list[int]
    ) -> torch.Tensor:
        device = logits.device
        temperature = torch.tensor([p.temperature for p in params], device=device)
        logits = _apply_top_k_top_p(logits / temperature.unsqueeze(1), params)
        min_p = [p.min_p for p in params]
        if any(m > 0 for m in min_p):
            probs = logits.softmax(dim=-1)
            threshold = torch.tensor(min_p, device=device).unsqueeze(1) * probs.amax(-1, True)
            logits = logits.masked_fill(probs < threshold, float("-inf"))
        probs = logits.softmax(dim=-1)
        # Exponential race: argmax(p / E), E ~ Exp(1) i.i.d., picks token i with probability
        # p_i, and lets every row own its noise.
        noise = torch.empty_like(probs)
        unseeded = [r for r, p in enumerate(params) if p.seed is None]
        if unseeded:
            draw = torch.empty((len(unseeded), probs.shape[1]), device=device)
            noise[torch.tensor(unseeded, device=device)] = draw.exponential_(
                generator=self._generator(device)
            )
        for r, (p, index) in enumerate(zip(params, output_indices)):
            if p.seed is not None:
                # A resumed request's output goes on from the tokens an earlier try sent, so
                # its draws go on from their index too.
                seed = row_seed(p.seed, p.num_prior_output_tokens + index)
                gen = torch.Generator().manual_seed(seed)
                noise[r] = torch.empty(probs.shape[1]).exponential_(generator=gen).to(device)
        # A zero draw would give 0/0 on a masked token; clamping keeps masked tokens at 0.
        return (probs / noise.clamp_min_(torch.finfo(noise.dtype).tiny)).argmax(dim=-1)


def _apply_top_k_top_p(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Mask to -inf what top-k and top-p drop; sorts only when some row uses either."""
    use_top_k = any(p.top_k > 0 for p in params)
    use_top_p = any(p.top_p < 1 for p in params)
    if not (use_top_k or use_top_p):
        return logits
    vocab_size = logits.shape[1]
    device = logits.device
    # A stable descending sort ranks tied tokens by lowest id, so top-k keeps exactly k tokens
    # and top_k=1 agrees with greedy argmax.
    sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)
    positions = torch.arange(vocab_size, device=device).unsqueeze(0)
    if use_top_k:
        k = torch.tensor([p.top_k if p.top_k > 0 else vocab_size for p in params], device=device)
        sorted_logits = sorted_logits.masked_fill(positions >= k.unsqueeze(1), float("-inf"))
    if use_top_p:
        top_p = torch.tensor([p.top_p for p in params], device=device).unsqueeze(1)
        probs = sorted_logits.softmax(dim=-1)
        # Keep a token while the mass before it is short of top_p: the smallest prefix
        # reaching top_p, never empty. Rows at top_p=1 skip this, so rounding in the cumulative
        # sum cannot clip their tail.
        mass_before = probs.cumsum(dim=-1) - probs
        drop = (mass_before >= top_p) & (top_p < 1)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def _with_logprobs(
    logits: torch.Tensor, params: Sequence[SamplingParams], token_ids: torch.Tensor
) -> SampleResult:
    ids = token_ids.tolist()
    logprobs: list[float | None] = [None] * len(ids)
    top_logprobs: list[list[tuple[int, float]] | None] = [None] * len(ids)
    rows = [i for i, p in enumerate(params) if p.logprobs is not None]
    if not rows:
        return SampleResult(ids, logprobs, top_logprobs)
    index = torch.tensor(rows, device=logits.device)
    chosen, tops = rank_logprobs(
        logits[index], token_ids[index], [params[i].logprobs or 0 for i in rows]
    )
    for r, i in enumerate(rows):
        logprobs[i], top_logprobs[i] = chosen[r], tops[r]
    return SampleResult(ids, logprobs, top_logprobs)


def rank_logprobs(
    logits: torch.Tensor, token_ids: torch.Tensor, num_top: Sequence[int]
) -> tuple[list[float], list[list[tuple[int, float]]]]:
    """Row r's raw log-softmax (float32) at `token_ids[r]`, and its `num_top[r]` most likely
    (token id, logprob) pairs, highest first."""
    raw = logits.float().log_softmax(dim=-1)
    chosen = raw.gather(1, token_ids.to(raw.device).long().unsqueeze(1)).squeeze(1).tolist()
    max_n = max(num_top, default=0)
    values, indices = raw.topk(max_n, dim=-1) if max_n else (raw[:, :0], raw[:, :0])
    top_values, top_ids = values.tolist(), indices.long().tolist()
    tops = [list(zip(top_ids[r][:n], top_values[r][:n])) for r, n in enumerate(num_top)]
    return chosen, tops
