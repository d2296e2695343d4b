"""The choices of one OpenAI response, built from the request's chunks (any number of choices,
streamed or whole): text with `echo`, logprobs in the endpoint's shape, usage over choices."""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.frontend.openai_logprobs import CompletionLogprobs, TokenTexts, chat_logprobs
from runtime.frontend.results import GenerationChunk, Usage


@dataclass
class _Choice:
    texts: list[str] = field(default_factory=list)
    logprobs: dict | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    timings: object = None
    started: bool = False
    completion_logprobs: CompletionLogprobs | None = None


class ChoiceTracker:
    """Per choice index: what to send for each chunk, and the whole choice at the end.

    `chat`: the chat shape (else completions'); `num_logprobs`: top logprobs per token, None
    for no logprobs; `echo_text`: completions' echo, the prompt as text (its token logprobs
    come from the chunks' prompt logprobs when logprobs are on, `first_prompt_token` names
    the prompt's first token, which has none).
    """

    def __init__(
        self,
        tokenizer,
        chat: bool,
        num_logprobs: int | None,
        echo_text: str | None = None,
        first_prompt_token: int = 0,
    ):
        self.texts = TokenTexts(tokenizer)
        self.chat, self.num_logprobs, self.echo_text = chat, num_logprobs, echo_text
        self.first_prompt_token = first_prompt_token
        self.choices: dict[int, _Choice] = {}

    def add(self, chunk: GenerationChunk) -> tuple[str, dict | None]:
        """The chunk's text (the echoed prompt first, on its choice's first chunk) and its
        `logprobs` object (None without logprobs)."""
        c = self.choices.setdefault(chunk.index, _Choice())
        text, first = chunk.text, not c.started
        c.started = True
        if first and self.echo_text is not None:
            text = self.echo_text + text
        c.texts.append(text)
        if chunk.finish_reason is not None:
            c.finish_reason, c.usage, c.timings = chunk.finish_reason, chunk.usage, chunk.timings
        if self.num_logprobs is None or chunk.logprobs is None:
            return text, None
        if self.chat:
            shaped = chat_logprobs(self.texts, chunk.logprobs, self.num_logprobs)
            if c.logprobs is None:
                c.logprobs = {"content": []}
            c.logprobs["content"] += shaped["content"]
            return text, shaped
        if c.completion_logprobs is None:
            c.completion_logprobs = CompletionLogprobs(self.texts, self.num_logprobs)
        entries: list = list(chunk.logprobs)
        if first and self.echo_text is not None:
            if chunk.prompt_logprobs:
                entries = [*chunk.prompt_logprobs, *entries]
            else:
                c.completion_logprobs.offset = len(self.echo_text)
        shaped = c.completion_logprobs.shape(entries, (self.first_prompt_token,))
        if c.logprobs is None:
            c.logprobs = {k: [] for k in shaped}
        for k, v in shaped.items():
            c.logprobs[k] += v
        return text, shaped

    def finals(self) -> list[tuple[int, str, str | None, dict | None]]:
        """(index, text, finish_reason, logprobs) of every choice, by index."""
        return [
            (i, "".join(c.texts), c.finish_reason, c.logprobs)
            for i, c in sorted(self.choices.items())
        ]

    def usage(self) -> Usage | None:
        """The prompt once, the completion tokens of every choice."""
        done = [c.usage for _, c in sorted(self.choices.items()) if c.usage is not None]
        if not done:
            return None
        return Usage(
            done[0].prompt_tokens,
            sum(u.completion_tokens for u in done),
            done[0].cached_prompt_tokens,
        )

    def timings(self):
        """Choice 0's stage timings (each choice ran as a request of its own)."""
        first = self.choices.get(0)
        return first.timings if first is not None else None
