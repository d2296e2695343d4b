"""OpenAI's logprobs shapes, from the engine's raw-logit logprobs.

Completions (`logprobs: int`): per token its text, logprob, a {text: logprob} dict of the
top `logprobs` tokens plus the chosen one (so up to logprobs + 1 entries, as OpenAI
documents), and the token's character offset in the choice's text; `echo` puts the prompt's
tokens first, the first with null logprobs. Chat (`logprobs: true`, `top_logprobs: int`):
`{"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}`. A token's
text is its own decoding (vLLM's): a piece of a multi-byte character reads as U+FFFD.
"""

from __future__ import annotations

from collections.abc import Iterable

from runtime.engine import TokenLogprob


class TokenTexts:
    """Each token id's own text, decoded once per request."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._texts: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._texts.get(token_id)
        if text is None:
            text = self._texts[token_id] = self.tokenizer.decode([token_id])
        return text


class CompletionLogprobs:
    """One completion choice's `logprobs` object, built chunk by chunk (text offsets run on
    from one chunk to the next)."""

    def __init__(self, texts: TokenTexts, num_top: int, text_offset: int = 0):
        self.texts, self.num_top, self.offset = texts, num_top, text_offset

    def shape(self, entries: Iterable[TokenLogprob | None], prompt_ids=()) -> dict:
        """`entries` of the chunk's tokens; a None entry (the prompt's first token) takes
        its id from `prompt_ids[0]` and has null logprobs."""
        out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": []}
        offsets = []
        for entry in entries:
            token_id = entry.token_id if entry is not None else prompt_ids[0]
            token = self.texts(token_id)
            out["tokens"].append(token)
            offsets.append(self.offset)
            self.offset += len(token)
            if entry is None:
                out["token_logprobs"].append(None)
                out["top_logprobs"].append(None)
                continue
            out["token_logprobs"].append(entry.logprob)
            top = {self.texts(t): v for t, v in entry.top[: self.num_top]}
            top.setdefault(token, entry.logprob)
            out["top_logprobs"].append(top)
        out["text_offset"] = offsets
        return out


def chat_logprobs(texts: TokenTexts, entries: Iterable[TokenLogprob], num_top: int) -> dict:
    """A chat choice's (or a streamed delta's) `logprobs` object."""

    def item(token_id: int, logprob: float) -> dict:
        token = texts(token_id)
        return {
            "token": token,
            "logprob": logprob,
            "bytes": list(token.encode("utf-8", errors="replace")),
        }

    return {
        "content": [
            {
                **item(e.token_id, e.logprob),
                "top_logprobs": [item(t, v) for t, v in e.top[:num_top]],
            }
            for e in entries
        ]
    }
