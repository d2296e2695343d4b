"""OpenAI request bodies (with vLLM's extension fields), parsed and validated at the edge."""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runtime.frontend.requests import InvalidRequest, quoted
from runtime.frontend.structured import GrammarRequest, one_grammar, schema_text
from runtime.frontend.tools import ToolUse

MAX_LISTED_ERRORS = 5
# OpenAI fields with no meaning on a self-hosted server (billing, retention, abuse tracking,
# OpenAI's own cache routing): accepted and dropped before validation, as OpenAI's clients
# send them. Everything else not declared below is refused (`UnknownParameter`).
IGNORED_FIELDS = frozenset(
    {"user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key"}
)
# Union fields whose per-branch errors would read as noise: one line says what is allowed.
_UNION_HINTS = {
    "prompt": "must be a string, a list of token ids, or a list holding one of those",
    "stop": "must be a string or a list of strings",
    "tool_choice": 'must be "none", "auto", "required" or {"type": "function", "function": '
    '{"name": ...}}',
    "guided_json": "must be a JSON schema, as an object or as JSON text",
}


class _Body(BaseModel):
    # Strict: JSON true is no max_tokens and "yes" no stream flag (float fields still take
    # ints, as JSON has one number type); NaN and Infinity are no sampling values.
    # A field Tandem does not implement is refused, naming it, as OpenAI's API refuses one it
    # does not know: silently dropping it would answer a different request than was sent.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class UnknownParameter(InvalidRequest):
    """A body field Tandem does not implement (HTTP 400, the error's `param` naming it)."""

    def __init__(self, names: list[str]):
        self.param = names[0]
        listed = ", ".join(quoted(n) for n in names[:MAX_LISTED_ERRORS])
        them = "them" if len(names) > 1 else "it"
        super().__init__(
            f"Unknown parameter{'s' if len(names) > 1 else ''}: {listed}. "
            f"Tandem does not implement {them}: remove {them} from the request"
        )


def strip_ignored(data: dict) -> dict:
    """`data` without the top-level `IGNORED_FIELDS`."""
    return {k: v for k, v in data.items() if k not in IGNORED_FIELDS}


def unknown_fields(e: ValidationError) -> list[str]:
    """The dotted paths of the fields pydantic refused as undeclared, in body order."""
    return [
        ".".join(str(x) for x in err["loc"])
        for err in e.errors(include_url=False, include_input=False, include_context=False)
        if err["type"] == "extra_forbidden"
    ]


class StreamOptions(_Body):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM: usage so far on every chunk


class JsonSchemaFormat(_Body):
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


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
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None  # token ids as strings, as JSON keys are
    # vLLM extensions
    repetition_penalty: float | None = None
    min_tokens: int | None = None
    top_k: int | None = None
    min_p: float | None = None
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    # structured output: OpenAI's, then vLLM's spellings (at most one)
    response_format: ResponseFormat | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None

    def grammar(self) -> GrammarRequest | None:
        """The structured-output constraint sent, if any (validated by the preparer)."""
        fmt = self.response_format
        from_format = None
        if fmt is not None and fmt.type == "json_object":
            from_format = GrammarRequest("response_format", "json_object")
        elif fmt is not None and fmt.type == "json_schema":
            if fmt.json_schema is None:
                raise InvalidRequest(
                    "response_format.json_schema is required when type is json_schema"
                )
            field = "response_format.json_schema.schema"
            from_format = GrammarRequest(
                field, "json_schema", schema_text(field, fmt.json_schema.schema_)
            )
        return one_grammar(
            from_format,
            None
            if self.guided_json is None
            else GrammarRequest(
                "guided_json", "json_schema", schema_text("guided_json", self.guided_json)
            ),
            None
            if self.guided_regex is None
            else GrammarRequest("guided_regex", "regex", self.guided_regex),
            None
            if self.guided_choice is None
            else GrammarRequest("guided_choice", "choice", json.dumps(self.guided_choice)),
        )

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
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "repetition_penalty": self.repetition_penalty,
            "logit_bias": self.logit_bias,
            "min_tokens": self.min_tokens,
            "grammar": self.grammar(),
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

    @property
    def continuous_usage(self) -> bool:
        """Usage so far on every streamed chunk: `continuous_usage_stats` with
        `include_usage`, as vLLM reads them."""
        options = self.stream_options
        return options is not None and options.include_usage and options.continuous_usage_stats


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


class FunctionDef(_Body):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(_Body):
    type: Literal["function"]
    function: FunctionDef


class FunctionName(_Body):
    name: str


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: FunctionName


class ChatCompletionRequest(_Sampling):
    messages: list[Any]
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None

    def num_logprobs(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequest("top_logprobs needs logprobs: set logprobs to true")
        return (self.top_logprobs or 0) if self.logprobs else None

    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None

    def tool_use(self, chat_template: str | None) -> ToolUse | None:
        """The tools the model may call, None when it may call none (see ToolUse)."""
        if self.tool_choice is not None and not self.tools and self.tool_choice != "none":
            raise InvalidRequest("tool_choice needs tools: send the functions in tools")
        tools = [t.model_dump(exclude_none=True) for t in self.tools or ()]
        choice = self.tool_choice
        named = choice.model_dump() if isinstance(choice, NamedToolChoice) else choice
        return ToolUse.from_request(tools, named, chat_template)

    def sampling_fields(self) -> dict:
        fields = super().sampling_fields()
        if fields["max_tokens"] is None:
            fields["max_tokens"] = self.max_completion_tokens
        return fields

    def prompt_inputs(self) -> dict:
        return {"messages": self.messages}


Body = TypeVar("Body", bound=BaseModel)


def parse_body(raw: bytes, schema: type[Body]) -> Body:
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
        return schema.model_validate(strip_ignored(data))
    except ValidationError as e:
        unknown = unknown_fields(e)
        if unknown:
            raise UnknownParameter(unknown) from None
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
