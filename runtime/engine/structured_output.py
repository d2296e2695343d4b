"""Structured output: llguidance matchers that mask each step's logits to what the grammar allows.

llguidance (Microsoft's guidance engine) is the grammar engine: it ships CPU wheels, builds
its token trie from a Hugging Face fast tokenizer, and computes a vocabulary mask in well under
a millisecond per step, so the CPU workers pay little for it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Sequence

import llguidance
import llguidance.hf
import torch

from runtime.engine.grammar import GrammarSpec, parser_limits

COMPILED_CACHE_SIZE = 64


class GrammarMatcher:
    """One request's position in its grammar.

    `allowed()` is the [vocab] bool mask of tokens the grammar allows next; `accept(token)`
    advances. `is_stopped` once the grammar is complete (only EOS could follow) or the
    matcher failed; the engine ends the request there as "stop", so a grammar that allows only
    EOS never meets a min_tokens rule that masks EOS: the grammar wins.
    """

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int, eos_token_ids=()):
        self._matcher = matcher
        self._vocab_size = vocab_size
        self._eos = list(eos_token_ids)

    def accept(self, token: int) -> bool:
        return self._matcher.consume_token(token)

    @property
    def is_stopped(self) -> bool:
        return self._matcher.is_stopped()

    @property
    def error(self) -> str:
        return self._matcher.get_error()

    def allowed(self) -> torch.Tensor:
        words = torch.frombuffer(bytearray(self._matcher.compute_bitmask()), dtype=torch.int32)
        bits = torch.arange(32, dtype=torch.int32)
        mask = ((words.unsqueeze(1) >> bits) & 1).bool().flatten()[: self._vocab_size]
        if not mask.any():  # a failed matcher allows nothing: let the request end
            mask[self._eos] = True
        return mask


class StructuredOutput:
    """Builds matchers for one model's tokenizer; compiled grammars are cached (LRU).

    `vocab_size` is the logits' width (the model's vocabulary, which may pad past the
    tokenizer's); `eos_token_ids` the tokens that may end a complete output. The llguidance
    tokenizer (about half a second for a 49k vocabulary) is built on the first grammar.
    """

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: Collection[int]):
        self._hf_tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._eos = sorted(eos_token_ids)
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._compiled: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()

    def _llg_tokenizer(self) -> llguidance.LLTokenizer:
        if self._tokenizer is None:
            self._tokenizer = llguidance.hf.from_tokenizer(
                self._hf_tokenizer, n_vocab=self.vocab_size, eos_token=self._eos or None
            )
        return self._tokenizer

    def matcher(
        self,
        grammar: GrammarSpec,
        prompt_token_ids: Sequence[int],
        output_token_ids: Sequence[int],
        num_prior_output_tokens: int = 0,
    ):
        """A matcher for `grammar` that has consumed what the request already generated: the
        prompt's last `num_prior_output_tokens` (output an earlier try of a resumed request
        sent) and `output_token_ids`.
        A token the grammar refuses leaves it stopped (the request then ends)."""
        base = self._compiled.get(grammar.compiled)
        if base is None:
            base = llguidance.LLMatcher(
                self._llg_tokenizer(), grammar.compiled, log_level=0, limits=parser_limits()
            )
            self._compiled[grammar.compiled] = base
            if len(self._compiled) > COMPILED_CACHE_SIZE:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(grammar.compiled)
        m = GrammarMatcher(base.deep_copy(), self.vocab_size, self._eos)
        n = num_prior_output_tokens
        replay = list(prompt_token_ids[len(prompt_token_ids) - n :] if n else ())
        for token in replay + list(output_token_ids):
            if not m.accept(token):
                break
        return m


def apply_grammar(
    logits: torch.Tensor,
    matchers: Sequence[GrammarMatcher | None],
    fallback: torch.Tensor | None = None,
) -> torch.Tensor:
    """`logits` with what each row's matcher refuses set to -inf (a new tensor when any row
    has a matcher; rows without one untouched). A row left with nothing allowed takes the
    masked row of `fallback` instead (the logits before the penalties and min_tokens, so that
    the grammar wins over them)."""
    rows = [i for i, m in enumerate(matchers) if m is not None]
    if not rows:
        return logits
    allowed = torch.ones(logits.shape, dtype=torch.bool)
    for i in rows:
        mask = matchers[i].allowed()  # type: ignore[union-attr]
        allowed[i, mask.shape[0] :] = False
        allowed[i, : mask.shape[0]] = mask[: logits.shape[1]]
    allowed = allowed.to(logits.device)
    masked = logits.masked_fill(~allowed, float("-inf"))
    if fallback is not None:
        dead = torch.isneginf(masked).all(dim=-1)
        if bool(dead.any()):
            masked[dead] = fallback[dead].masked_fill(~allowed[dead], float("-inf"))
    return masked
