"""OpenAI request bodies (with vLLM's extension fields), parsed and validated at the edge."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from runtime.frontend.requests import InvalidRequest

MAX_LISTED_ERRORS = 5
# Union fields whose per-branch errors would read as noise: one line says what is allowed.
_UNION_HINTS = {
    "prompt": "must be a string, a list of token ids, or a list holding one of those",
    "stop": "must be a string or a list of strings",
}


class _Body(BaseModel):
    # Strict: JSON true is no max_tokens and "yes" no stream flag (float fields still take
    # ints, as JSON has one number type); NaN and Infinity are no sampling values.
    # Unknown OpenAI fields (user, logit_bias, ...) are accepted and ignored, as vLLM does.
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    # vLLM extensions
    top_k: int | None = None
    min_p: float | None = None
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True

    def sampling_fields(self) -> dict:
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "seed": self.seed,
            "stop": self.stop or (),
            "stop_token_ids": tuple(self.stop_token_ids or ()),
            "ignore_eos": self.ignore_eos,
            "include_stop_str_in_output": self.include_stop_str_in_output,
            "skip_special_tokens": self.skip_special_tokens,
            "logprobs": self.num_logprobs(),
        }

    def num_logprobs(self) -> int | None:
        """Top logprobs per output token, None for no logprobs."""
        return None

    def prompt_inputs(self) -> dict:
        """The prompt as `RequestPreparer.prompt_ids` arguments."""
        raise NotImplementedError

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None

    def num_logprobs(self) -> int | None:
        return self.logprobs

    def sampling_fields(self) -> dict:
        fields = super().sampling_fields()
        if self.echo:  # the echoed prompt's tokens carry logprobs too (the first none)
            fields["prompt_logprobs"] = self.logprobs
        return fields

    def echo_text(self, tokenizer, prompt_token_ids) -> str | None:
        """The prompt as echoed: the text sent, or the token ids sent, decoded."""
        if not self.echo:
            return None
        prompt = self.prompt[0] if isinstance(self.prompt, list) and self.prompt else self.prompt
        return prompt if isinstance(prompt, str) else tokenizer.decode(list(prompt_token_ids))

    def prompt_inputs(self) -> dict:
        """The prompt as `RequestPreparer.prompt_ids` arguments (one prompt per request)."""
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise InvalidRequest(
                    "send one prompt per request (batched prompts are not supported)"
                )
            prompt = prompt[0]
        if isinstance(prompt, str):
            return {"prompt": prompt}
        return {"token_ids": prompt}


class ChatCompletionRequest(_Sampling):
    messages: list[Any]
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None

    def num_logprobs(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequest("top_logprobs needs logprobs: set logprobs to true")
        return (self.top_logprobs or 0) if self.logprobs else None

    def sampling_fields(self) -> dict:
        fields = super().sampling_fields()
        if fields["max_tokens"] is None:
            fields["max_tokens"] = self.max_completion_tokens
        return fields

    def prompt_inputs(self) -> dict:
        return {"messages": self.messages}


def parse_body(raw: bytes, schema: type[_Sampling]) -> _Sampling:
    """The request body as `schema`, or InvalidRequest saying what to fix.

    The body must be one JSON object (UTF-8, -16 or -32); NaN and Infinity, which Python's
    JSON reader would take, are refused. Lone surrogates (`"\\ud800"`) parse here and are
    refused where the text is used, naming the field.
    """
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise InvalidRequest("the body nests arrays or objects too deeply") from None
    except ValueError as e:  # also UnicodeDecodeError and over-long integer literals
        reason = str(e)
        if "integer string conversion" in reason:
            reason = "an integer literal has too many digits"
        raise InvalidRequest(
            f"the body is not valid JSON ({reason}): send one JSON object"
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"the body must be a JSON object, got a JSON {_json_type(data)}")
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise InvalidRequest(describe(e)) from None


def describe(e: ValidationError) -> str:
    """One line per bad field (the first few): `field.path: what is wrong`."""
    lines: list[str] = []
    for err in e.errors(include_url=False, include_input=False, include_context=False):
        loc = err["loc"]
        hint = _UNION_HINTS.get(str(loc[0])) if loc and err["type"] != "missing" else None
        line = (
            f"{loc[0]}: {hint}"
            if hint
            else f"{'.'.join(str(x) for x in loc) or 'body'}: {err['msg']}"
        )
        if line not in lines:
            lines.append(line)
    more = len(lines) - MAX_LISTED_ERRORS
    return "; ".join(lines[:MAX_LISTED_ERRORS]) + (f" (and {more} more)" if more > 0 else "")


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _json_type(value) -> str:
    names = {list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")
