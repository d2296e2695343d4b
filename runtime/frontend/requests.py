"""Turning what a client sent into a request the workers can run, or a message saying why not."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from runtime.engine import SamplingParams

CHAT_ROLES = ("system", "user", "assistant", "tool")


class InvalidRequest(ValueError):
    """The request cannot run as sent; the message says what to fix (INVALID_ARGUMENT/400)."""


@dataclass(frozen=True)
class PreparedRequest:
    """A validated request: its prompt as token ids and its sampling parameters."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    params: SamplingParams


class RequestPreparer:
    """Validates and tokenizes requests for one served model (on the frontend, so bad input
    never reaches a worker). `max_model_len` is the context the workers were built with."""

    def __init__(self, tokenizer, model_name: str, model_path: str, max_model_len: int):
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.model_path = model_path
        self.max_model_len = max_model_len
        config = json.loads((Path(model_path) / "config.json").read_text())
        self.vocab_size = int(config["vocab_size"])

    @classmethod
    def for_model(cls, model_name: str, model_path: str, max_model_len: int) -> "RequestPreparer":
        from transformers import AutoTokenizer
        return cls(AutoTokenizer.from_pretrained(model_path), model_name, model_path,
                   max_model_len)

    def check_model(self, model: str | None) -> None:
        if model and model not in (self.model_name, self.model_path):
            raise InvalidRequest(f"unknown model {model!r}: this server serves "
                                 f"{self.model_name!r} (see ListModels or GET /v1/models)")

    def prompt_ids(self, prompt: str | None = None, messages: list | None = None,
                   token_ids: list | None = None) -> list[int]:
        """Exactly one of text, chat messages or token ids, as token ids."""
        given = [x is not None for x in (prompt, messages, token_ids)]
        if sum(given) != 1:
            raise InvalidRequest("give exactly one of prompt, chat messages or prompt_token_ids")
        if messages is not None:
            prompt = self.render_chat(messages)
            return list(self.tokenizer.encode(prompt, add_special_tokens=False))
        if prompt is not None:
            if not isinstance(prompt, str) or not prompt:
                raise InvalidRequest("prompt is empty: send a non-empty prompt")
            return list(self.tokenizer.encode(prompt))
        bad = [t for t in token_ids if not isinstance(t, int) or isinstance(t, bool)
               or not 0 <= t < self.vocab_size]
        if not token_ids:
            raise InvalidRequest("prompt_token_ids is empty: send at least one token id")
        if bad:
            raise InvalidRequest(f"prompt token ids must be ints in [0, {self.vocab_size}); "
                                 f"got {bad[:5]}")
        return list(token_ids)

    def render_chat(self, messages) -> str:
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("messages must be a non-empty list of {role, content} objects")
        clean = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise InvalidRequest(f"messages[{i}] must be an object with role and content")
            role, content = m.get("role"), m.get("content")
            if role not in CHAT_ROLES:
                raise InvalidRequest(f"messages[{i}].role must be one of {CHAT_ROLES}, "
                                     f"got {role!r}")
            if isinstance(content, list):   # OpenAI content parts: text only
                if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                    raise InvalidRequest(f"messages[{i}].content parts must all be "
                                         f"{{type: text, text: ...}}")
                content = "".join(str(p.get("text", "")) for p in content)
            if not isinstance(content, str):
                raise InvalidRequest(f"messages[{i}].content must be a string, got "
                                     f"{type(content).__name__}")
            clean.append({"role": role, "content": content})
        if clean[-1]["role"] == "assistant":
            raise InvalidRequest("the last message must not be from the assistant: the model "
                                 "answers after it")
        try:
            return self.tokenizer.apply_chat_template(clean, tokenize=False,
                                                      add_generation_prompt=True)
        except Exception as e:
            raise InvalidRequest(f"the model's chat template rejected the messages: {e}") from None

    def sampling_params(self, num_prompt_tokens: int, **fields) -> SamplingParams:
        """SamplingParams from the given fields (None: the default); `max_tokens` None takes
        what is left of the context. Checks the prompt and output fit the context."""
        room = self.max_model_len - num_prompt_tokens
        if room < 1:
            raise InvalidRequest(f"the prompt has {num_prompt_tokens} tokens but the context "
                                 f"holds {self.max_model_len} including at least one generated "
                                 f"token: shorten the prompt")
        fields = {k: v for k, v in fields.items() if v is not None}
        fields.setdefault("max_tokens", room)
        try:
            params = SamplingParams(**fields)
        except (TypeError, ValueError) as e:
            raise InvalidRequest(str(e)) from None
        if params.max_tokens > room:
            raise InvalidRequest(f"max_tokens={params.max_tokens} plus the prompt's "
                                 f"{num_prompt_tokens} tokens exceeds the context of "
                                 f"{self.max_model_len} tokens: set max_tokens <= {room}")
        return params
