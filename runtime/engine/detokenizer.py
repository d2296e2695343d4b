"""Incremental detokenization and stop-string matching for streamed output."""

from __future__ import annotations

# Prompt tokens decoded with the first output token, as in vLLM: enough context for
# tokenizers whose decoding of a token depends on its neighbours (leading spaces, bytes).
INITIAL_OFFSET = 5
REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Turns one request's output token ids into text deltas as they are generated.

    Uses vLLM's prefix_offset/read_offset scheme: each step decodes only a short window of
    recent tokens, and emits the part of it that is new. Text ending in U+FFFD (a multi-byte
    character whose remaining bytes are still to come) is held back, so a delta may be "".
    For ordinary text the concatenated deltas equal
    `tokenizer.decode(output_ids, skip_special_tokens=...)`. Works with Hugging Face fast
    tokenizers (decoding goes through `convert_tokens_to_string`).
    """

    def __init__(self, tokenizer, prompt_token_ids: list[int], skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._vocab_size = len(tokenizer)
        self._skip_ids = _special_ids(tokenizer) if skip_special_tokens else frozenset()
        self.output_token_ids: list[int] = []
        context = list(prompt_token_ids[-INITIAL_OFFSET - 2 :])
        self._tokens = self._to_tokens(context)
        self._read_offset = len(self._tokens)
        self._prefix_offset = max(self._read_offset - INITIAL_OFFSET, 0)
        self._text_parts: list[str] = []

    def _to_tokens(self, token_ids: list[int]) -> list[str]:
        # Ids outside the vocabulary (padded embedding rows) decode to nothing.
        kept = [t for t in token_ids if 0 <= t < self._vocab_size and t not in self._skip_ids]
        tokens = self.tokenizer.convert_ids_to_tokens(kept)
        return [t if t is not None else "" for t in tokens]

    def add_token(self, token_id: int) -> str:
        """Append one generated token; return the text it completes (possibly "")."""
        self.output_token_ids.append(token_id)
        self._tokens.extend(self._to_tokens([token_id]))
        window = self._tokens[self._prefix_offset :]
        prefix_text = self.tokenizer.convert_tokens_to_string(
            self._tokens[self._prefix_offset : self._read_offset]
        )
        new_text = self.tokenizer.convert_tokens_to_string(window)
        if len(new_text) <= len(prefix_text) or new_text.endswith(REPLACEMENT_CHAR):
            return ""
        delta = new_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._tokens)
        self._text_parts.append(delta)
        return delta

    @property
    def text(self) -> str:
        """All output text emitted so far (the concatenation of the deltas)."""
        return "".join(self._text_parts)


def _special_ids(tokenizer) -> frozenset[int]:
    """The ids `tokenizer.decode(..., skip_special_tokens=True)` drops.

    A fast tokenizer's decode skips every added token flagged special, which can be more than
    `all_special_ids` (the named special tokens) that `convert_ids_to_tokens` skips; computed
    once here because `all_special_ids` is rebuilt on every access.
    """
    added = getattr(tokenizer, "added_tokens_decoder", {})
    flagged = {i for i, token in added.items() if getattr(token, "special", False)}
    return frozenset(tokenizer.all_special_ids) | flagged


def find_stop_string(
    text: str, num_new_chars: int, stop: tuple[str, ...], include_stop_str: bool
) -> int | None:
    """Where to truncate `text` for the first stop string that ends in its last
    `num_new_chars` characters, or None when none does.

    A stop may start in earlier text. The returned index is after the stop string when
    `include_stop_str`, else before it; it may equal len(text). When several stops end in the
    new characters, the one that ends first wins (as if text arrived one char at a time),
    ties going to the earlier entry of `stop`.
    """
    if num_new_chars <= 0 or not stop:
        return None
    best_end: int | None = None
    best_start = 0
    for stop_str in stop:
        # Search only where an occurrence would end inside the new characters.
        start = text.find(stop_str, max(len(text) - num_new_chars - len(stop_str) + 1, 0))
        if start == -1:
            continue
        end = start + len(stop_str)
        if best_end is None or end < best_end:
            best_end, best_start = end, start
    if best_end is None:
        return None
    return best_end if include_stop_str else best_start
