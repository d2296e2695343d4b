"""Turning what a client sent into a request the workers can run, or a message saying why not."""

from __future__ import annotations

import asyncio
import functools
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

from runtime.engine import SamplingParams
from runtime.engine.sampling_params import MAX_LOGPROBS, lone_surrogate_at
from runtime.frontend.logit_bias import parse_logit_bias

CHAT_ROLES = ("system", "user", "assistant", "tool")
# One thread, as vLLM's tokenizer executor: a fast tokenizer's settings live behind a Rust
# borrow that concurrent calls may trip over, and chat templates hold the GIL anyway.
PREPARE_THREADS = 1


class InvalidRequest(ValueError):
    """The request cannot run as sent; the message says what to fix (INVALID_ARGUMENT/400)."""


@dataclass(frozen=True)
class RequestLimits:
    """What one request may carry; past a limit it is refused before any work is spent on it.

    - `max_prompt_chars`: a text prompt, or the chat messages' text together, in characters,
      checked before tokenizing. None: `max_model_len` times the vocabulary's longest token
      in characters, the most a prompt that fits the context can hold (SmolLM2: 8192 x 81).
    - `max_chat_messages`, `max_stop_strings`, `max_stop_chars` (each stop string),
      `max_stop_token_ids`, `max_request_id_chars` (a client-given gRPC request id).
    - `max_logit_bias`: the entries of a request's logit_bias map.
    - `max_grammar_chars`: a structured-output constraint (JSON schema, regex, choices) in
      characters, bounding what compiling it may cost a worker.
    - `max_request_bytes`: an HTTP body (413 past it) and a gRPC message (the server's
      `grpc.max_receive_message_length`, RESOURCE_EXHAUSTED past it).
    - `max_choices`: `n` and `best_of` (each choice runs as a request of its own).
    - `max_logprobs`: the top logprobs per token a request may ask for (at most 20).
    """

    max_prompt_chars: int | None = None
    max_chat_messages: int = 1024
    max_stop_strings: int = 16
    max_stop_chars: int = 256
    max_stop_token_ids: int = 256
    max_request_id_chars: int = 128
    max_grammar_chars: int = 32768
    max_request_bytes: int = 8 << 20
    max_logit_bias: int = 300
    max_choices: int = 16
    max_logprobs: int = 20

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and value < 1:
                raise ValueError(f"limits.{f.name} must be >= 1, got {value}")
        if self.max_logprobs > MAX_LOGPROBS:
            raise ValueError(
                f"limits.max_logprobs must be <= {MAX_LOGPROBS} (what the engine computes), "
                f"got {self.max_logprobs}"
            )


@dataclass(frozen=True)
class PreparedRequest:
    """A validated request: its prompt as token ids and its sampling parameters.
    `received_at` (monotonic seconds): when the server got it, before it was parsed and
    tokenized; its TTFT and admission's learned margin count from there, as its client's
    clock does. None: when it reached the dispatcher."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    params: SamplingParams
    received_at: float | None = None


def quoted(value, limit: int = 100) -> str:
    """`repr(value)`, cut to `limit` characters: messages quote what was sent, not all of it."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def check_text(name: str, text: str) -> None:
    """InvalidRequest unless `text` is valid Unicode (JSON can escape a lone surrogate)."""
    at = lone_surrogate_at(text)
    if at is not None:
        raise InvalidRequest(
            f"{name} is not valid Unicode: it has a lone surrogate "
            f"({text[at]!r}) at character {at}; send UTF-8 text, with any "
            f"\\ud800-\\udfff escape as half of a surrogate pair"
        )


class RequestPreparer:
    """Validates and tokenizes requests for one served model (on the frontend, so bad input
    never reaches a worker). `max_model_len` is the context the workers were built with.

    The methods are blocking (tokenizing a long prompt takes a while): the API layers call
    them through `run`, on the preparer's thread, so the event loop keeps answering.
    """

    def __init__(
        self,
        tokenizer,
        model_name: str,
        model_path: str,
        max_model_len: int,
        limits: RequestLimits = RequestLimits(),
    ):
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.model_path = model_path
        self.max_model_len = max_model_len
        self.limits = limits
        config = json.loads((Path(model_path) / "config.json").read_text())
        self.vocab_size = int(config["vocab_size"])
        longest_token = max(map(len, tokenizer.get_vocab()), default=1)
        self.max_prompt_chars = (
            limits.max_prompt_chars
            if limits.max_prompt_chars is not None
            else max_model_len * longest_token
        )
        self._thread = ThreadPoolExecutor(PREPARE_THREADS, thread_name_prefix="tandem-prepare")

    @classmethod
    def for_model(
        cls,
        model_name: str,
        model_path: str,
        max_model_len: int,
        limits: RequestLimits = RequestLimits(),
    ) -> "RequestPreparer":
        from transformers import AutoTokenizer

        return cls(
            AutoTokenizer.from_pretrained(model_path), model_name, model_path, max_model_len, limits
        )

    async def run(self, fn, *args):
        """`fn(*args)` on the preparer's thread: awaiting it leaves the event loop free."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, functools.partial(fn, *args))

    def check_model(self, model: str | None) -> None:
        if model and model not in (self.model_name, self.model_path):
            raise InvalidRequest(
                f"unknown model {quoted(model)}: this server serves "
                f"{self.model_name!r} (see ListModels or GET /v1/models)"
            )

    def check_request_id(self, request_id: str) -> None:
        limit = self.limits.max_request_id_chars
        if len(request_id) > limit or not request_id.isprintable():
            raise InvalidRequest(
                f"request_id must be at most {limit} printable characters, "
                f"got {len(request_id)} characters {request_id[:limit]!r}"
            )

    def prompt_ids(
        self,
        prompt: str | None = None,
        messages: list | None = None,
        token_ids: list | None = None,
        tools: list[dict] | None = None,
    ) -> list[int]:
        """Exactly one of text, chat messages or token ids, as token ids; `tools` (OpenAI
        tool definitions) are rendered by the chat template with the messages."""
        given = [x is not None for x in (prompt, messages, token_ids)]
        if sum(given) != 1:
            raise InvalidRequest("give exactly one of prompt, chat messages or prompt_token_ids")
        if messages is not None:
            prompt = self.render_chat(messages, tools)
            return list(self.tokenizer.encode(prompt, add_special_tokens=False))
        if prompt is not None:
            if not isinstance(prompt, str) or not prompt:
                raise InvalidRequest("prompt is empty: send a non-empty prompt")
            self._check_prompt_chars("prompt", len(prompt))
            check_text("prompt", prompt)
            return list(self.tokenizer.encode(prompt))
        if not token_ids:
            raise InvalidRequest("prompt_token_ids is empty: send at least one token id")
        if len(token_ids) >= self.max_model_len:
            raise InvalidRequest(
                f"the prompt has {len(token_ids)} tokens but the context "
                f"holds {self.max_model_len} including at least one generated "
                f"token: shorten the prompt"
            )
        bad = [
            t
            for t in token_ids
            if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < self.vocab_size
        ]
        if bad:
            raise InvalidRequest(
                f"prompt token ids must be ints in [0, {self.vocab_size}); got {bad[:5]}"
            )
        return list(token_ids)

    def render_chat(self, messages, tools: list[dict] | None = None) -> str:
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("messages must be a non-empty list of {role, content} objects")
        if len(messages) > self.limits.max_chat_messages:
            raise InvalidRequest(
                f"{len(messages)} messages: at most {self.limits.max_chat_messages} are allowed"
            )
        clean = [self._chat_message(i, m) for i, m in enumerate(messages)]
        self._check_prompt_chars("the messages' content", sum(len(m["content"]) for m in clean))
        for i, m in enumerate(clean):
            check_text(f"messages[{i}].content", m["content"])
        if clean[-1]["role"] == "assistant":
            raise InvalidRequest(
                "the last message must not be from the assistant: the model answers after it"
            )
        try:
            return self.tokenizer.apply_chat_template(
                clean, tools=tools or None, tokenize=False, add_generation_prompt=True
            )
        except Exception as e:
            raise InvalidRequest(f"the model's chat template rejected the messages: {e}") from None

    @staticmethod
    def _chat_message(i: int, m) -> dict:
        if not isinstance(m, dict):
            raise InvalidRequest(f"messages[{i}] must be an object with role and content")
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or role not in CHAT_ROLES:
            raise InvalidRequest(
                f"messages[{i}].role must be one of {CHAT_ROLES}, got {quoted(role)}"
            )
        if isinstance(content, list):  # OpenAI content parts: text only
            if not all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                for p in content
            ):
                raise InvalidRequest(
                    f"messages[{i}].content parts must all be {{type: text, text: <string>}}"
                )
            content = "".join(p["text"] for p in content)
        extra = _tool_fields(i, role, m)
        if content is None and "tool_calls" in extra:  # an assistant turn that only calls
            content = ""
        if not isinstance(content, str):
            raise InvalidRequest(
                f"messages[{i}].content must be a string, got {type(content).__name__}"
            )
        return {"role": role, "content": content, **extra}

    def _check_prompt_chars(self, what: str, num_chars: int) -> None:
        if num_chars > self.max_prompt_chars:
            raise InvalidRequest(
                f"{what} has {num_chars} characters, more than the "
                f"{self.max_prompt_chars} that can fit the context of "
                f"{self.max_model_len} tokens: shorten the prompt"
            )

    def sampling_params(self, num_prompt_tokens: int, **fields) -> SamplingParams:
        """SamplingParams from the given fields (None: the default); `max_tokens` None takes
        what is left of the context. Checks the prompt and output fit the context, and the
        stop conditions against the limits and the vocabulary."""
        room = self.max_model_len - num_prompt_tokens
        if room < 1:
            raise InvalidRequest(
                f"the prompt has {num_prompt_tokens} tokens but the context "
                f"holds {self.max_model_len} including at least one generated "
                f"token: shorten the prompt"
            )
        fields = {k: v for k, v in fields.items() if v is not None}
        fields.setdefault("max_tokens", room)
        if "grammar" in fields:  # a frontend GrammarRequest: validated (and compiled) here
            fields["grammar"] = fields["grammar"].to_spec(self.limits.max_grammar_chars)
        self._check_stops(fields.get("stop", ()), fields.get("stop_token_ids", ()))
        try:
            if "logit_bias" in fields:
                fields["logit_bias"] = (
                    parse_logit_bias(fields["logit_bias"], self.limits.max_logit_bias) or ()
                )
            params = SamplingParams(**fields)
        except (TypeError, ValueError) as e:
            raise InvalidRequest(str(e)) from None
        if params.max_tokens > room:
            raise InvalidRequest(
                f"max_tokens={params.max_tokens} plus the prompt's "
                f"{num_prompt_tokens} tokens exceeds the context of "
                f"{self.max_model_len} tokens: set max_tokens <= {room}"
            )
        bad = [t for t in params.stop_token_ids if t >= self.vocab_size]
        if bad:
            raise InvalidRequest(
                f"stop_token_ids must be token ids in [0, {self.vocab_size}), got {bad[:5]}"
            )
        bad = [t for t, _ in params.logit_bias if t >= self.vocab_size]
        if bad:
            raise InvalidRequest(
                f"logit_bias keys must be token ids in [0, {self.vocab_size}), got {bad[:5]}"
            )
        return params

    def _check_stops(self, stop, stop_token_ids) -> None:
        # Counted before SamplingParams spells the values out in its messages.
        lim = self.limits
        stops = [stop] if isinstance(stop, str) else stop
        if isinstance(stops, (list, tuple)):
            if len(stops) > lim.max_stop_strings:
                raise InvalidRequest(
                    f"{len(stops)} stop strings: at most {lim.max_stop_strings} are allowed"
                )
            long = [s for s in stops if isinstance(s, str) and len(s) > lim.max_stop_chars]
            if long:
                raise InvalidRequest(
                    f"a stop string has {len(long[0])} characters: at most "
                    f"{lim.max_stop_chars} are allowed"
                )
        if (
            isinstance(stop_token_ids, (list, tuple))
            and len(stop_token_ids) > lim.max_stop_token_ids
        ):
            raise InvalidRequest(
                f"{len(stop_token_ids)} stop_token_ids: at most "
                f"{lim.max_stop_token_ids} are allowed"
            )


def _tool_fields(i: int, role: str, m: dict) -> dict:
    """An earlier turn's tool traffic, passed on to the chat template: an assistant's
    `tool_calls` (OpenAI shape, arguments as JSON text) and a tool result's `tool_call_id`."""
    extra: dict = {}
    calls = m.get("tool_calls")
    if calls is not None:
        ok = role == "assistant" and isinstance(calls, list)
        try:
            parsed = (
                [
                    {
                        "id": str(c.get("id", "")),
                        "type": "function",
                        "function": {
                            "name": c["function"]["name"],
                            "arguments": json.loads(c["function"]["arguments"]),
                        },
                    }
                    for c in calls
                ]
                if ok
                else None
            )
        except (TypeError, KeyError, ValueError, AttributeError):
            parsed = None
        if parsed is None:
            raise InvalidRequest(
                f"messages[{i}].tool_calls must be an assistant's list of {{id, type, "
                f"function: {{name, arguments}}}} with arguments as JSON text"
            )
        extra["tool_calls"] = parsed
    call_id = m.get("tool_call_id")
    if call_id is not None:
        if role != "tool" or not isinstance(call_id, str):
            raise InvalidRequest(f"messages[{i}].tool_call_id must be a string on a tool message")
        extra["tool_call_id"] = call_id
    return extra
