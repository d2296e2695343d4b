"""What the SDK returns, and how its calls are built (shared by `Client` and `AsyncClient`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from runtime.api._proto import tandem_pb2 as pb

_FINISH = {pb.STOP: "stop", pb.LENGTH: "length", pb.ABORT: "abort", pb.TOOL_CALLS: "tool_calls"}
_SAMPLING = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "stop",
    "stop_token_ids",
    "ignore_eos",
    "include_stop_str_in_output",
    "skip_special_tokens",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "logit_bias",
    "min_tokens",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "json_object",
    "logprobs",
    "prompt_logprobs",
)
_CHOICES = ("n", "best_of")


@dataclass(frozen=True)
class TokenLogprob:
    """A token's logprob under the raw model distribution and the most likely (token id,
    logprob) pairs at its position, highest first (as many as the request asked for)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0


@dataclass(frozen=True)
class Timings:
    """Seconds per stage of one request (queue, prefill, KV transfer, decode) and totals."""

    queue_s: float
    prefill_s: float
    kv_transfer_s: float
    decode_s: float
    ttft_s: float
    e2e_s: float
    kv_transfer_bytes: int = 0
    prefill_worker: str = ""
    decode_worker: str = ""

    def describe(self) -> str:
        kib = self.kv_transfer_bytes / 1024
        return (
            f"queue {self.queue_s * 1e3:.1f} ms | prefill {self.prefill_s * 1e3:.1f} ms | "
            f"KV transfer {self.kv_transfer_s * 1e3:.1f} ms ({kib:.1f} KiB) | "
            f"decode {self.decode_s * 1e3:.1f} ms | TTFT {self.ttft_s * 1e3:.1f} ms | "
            f"total {self.e2e_s * 1e3:.1f} ms"
        )


@dataclass(frozen=True)
class ToolCall:
    """One call the model made: the tool's name and its arguments as JSON text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class StreamChunk:
    """Tokens new in one streamed message; the last of a choice has finish_reason, usage and
    timings. `index`: the choice (n > 1). `logprobs`: one per token, when asked for;
    `prompt_logprobs`: the prompt's tokens after the first, on a choice's first message."""

    request_id: str
    token_ids: list[int]
    text: str
    finish_reason: str | None = None
    usage: Usage | None = None
    timings: Timings | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)  # the last chunk's
    index: int = 0
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob] | None = None


@dataclass(frozen=True)
class Tokenized:
    """What `tokenize` returns: the ids a request with that input would run on."""

    token_ids: list[int]
    max_model_len: int  # the context the prompt and the output share
    token_strs: list[str] | None = None  # with return_token_strs=True


@dataclass(frozen=True)
class Version:
    version: str  # the tandem-serve package
    api: str  # the gRPC contract's package, e.g. "tandem.v1"
    kv_contract_version: int


def build_tokenize_request(
    prompt=None, *, messages=None, model: str = "", return_token_strs: bool = False
) -> pb.TokenizeRequest:
    req = pb.TokenizeRequest(model=model, return_token_strs=return_token_strs)
    if messages is not None:
        req.chat.CopyFrom(chat_to_proto(messages))
    elif prompt is not None:
        req.prompt = prompt
    return req


def tokenized_from_proto(msg: pb.TokenizeResponse, with_strs: bool) -> Tokenized:
    strs = list(msg.token_strs) if with_strs else None
    return Tokenized(list(msg.token_ids), msg.max_model_len, strs)


def version_from_proto(msg: pb.GetVersionResponse) -> Version:
    return Version(msg.version, msg.api, msg.kv_contract_version)


@dataclass(frozen=True)
class Completion:
    """A whole generation (what the non-streaming calls return)."""

    request_id: str
    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None
    timings: Timings | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    index: int = 0
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob] | None = None


def chat_to_proto(messages: list[dict]) -> pb.ChatMessages:
    """OpenAI-shaped chat messages as the proto's: an assistant turn's `tool_calls` (OpenAI
    dicts, or the `ToolCall`s a completion returned) and a tool turn's `tool_call_id` go
    along, so a conversation with tools continues over gRPC as over HTTP."""
    return pb.ChatMessages(
        messages=[
            pb.ChatMessage(
                role=m["role"],
                content=m.get("content") or "",
                tool_calls=[_tool_call(c) for c in m.get("tool_calls") or ()],
                tool_call_id=m.get("tool_call_id") or "",
            )
            for m in messages
        ]
    )


def _tool_call(c: dict | ToolCall) -> pb.ToolCall:
    if isinstance(c, ToolCall):
        return pb.ToolCall(id=c.id, name=c.name, arguments_json=c.arguments)
    f = c["function"]
    args = f["arguments"]
    return pb.ToolCall(
        id=c.get("id", ""),
        name=f["name"],
        arguments_json=args if isinstance(args, str) else json.dumps(args),
    )


def _tool(t: dict) -> pb.FunctionTool:
    """An OpenAI tool definition ({type: function, function: {...}}) or its function part."""
    f = t.get("function", t)
    params = f.get("parameters")
    return pb.FunctionTool(
        name=f["name"],
        description=f.get("description", ""),
        parameters_json=json.dumps(params) if params is not None else "",
    )


def build_request(
    prompt=None,
    *,
    messages=None,
    prompt_token_ids=None,
    model: str = "",
    request_id: str = "",
    continuous_usage_stats: bool = False,
    tools: list[dict] | None = None,
    tool_choice: str = "",
    **sampling,
) -> pb.GenerateRequest:
    """A GenerateRequest from exactly one input, sampling keywords (vLLM names) and the
    choice counts `n` and `best_of`.

    Structured output: `guided_json` (a JSON schema, dict or JSON text), `guided_regex`,
    `guided_choice` (a list of strings) or `json_object=True`; at most one.
    `continuous_usage_stats`: every streamed chunk carries the usage so far.
    Tools (chat input): `tools` as OpenAI tool definitions, `tool_choice` "auto", "none",
    "required" or a tool's name; the calls come back in `tool_calls`."""
    unknown = set(sampling) - set(_SAMPLING) - set(_CHOICES)
    if unknown:
        raise TypeError(
            f"unknown sampling arguments {sorted(unknown)}; known: {_SAMPLING + _CHOICES}"
        )
    req = pb.GenerateRequest(
        model=model,
        request_id=request_id,
        continuous_usage_stats=continuous_usage_stats,
        tools=[_tool(t) for t in tools or ()],
        tool_choice=tool_choice,
    )
    for name in _CHOICES:
        if sampling.get(name) is not None:
            setattr(req, name, sampling.pop(name))
        sampling.pop(name, None)
    if messages is not None:
        req.chat.CopyFrom(chat_to_proto(messages))
    elif prompt_token_ids is not None:
        req.prompt_token_ids.CopyFrom(pb.TokenIds(ids=list(prompt_token_ids)))
    elif prompt is not None:
        req.prompt = prompt
    p = req.params
    for name, value in sampling.items():
        if value is None:
            continue
        if name == "stop":
            p.stop.extend([value] if isinstance(value, str) else list(value))
        elif name == "stop_token_ids":
            p.stop_token_ids.extend(value)
        elif name == "logit_bias":  # {token id: bias}; OpenAI-style "123" keys work too
            p.logit_bias.update({int(k): v for k, v in value.items()})
        elif name == "guided_choice":
            p.guided_choice.extend(value)
        elif name == "guided_json" and not isinstance(value, str):
            p.guided_json = json.dumps(value)  # a schema given as a dict
        else:
            setattr(p, name, value)
    return req


def _logprobs(entries) -> list[TokenLogprob] | None:
    if not entries:
        return None
    return [
        TokenLogprob(e.token_id, e.logprob, [(t.token_id, t.logprob) for t in e.top])
        for e in entries
    ]


def chunk_from_proto(msg: pb.GenerateResponse) -> StreamChunk:
    index, logprobs, prompt = msg.index, _logprobs(msg.logprobs), _logprobs(msg.prompt_logprobs)
    u, t = msg.usage, msg.timings
    if msg.finish_reason == pb.FINISH_REASON_UNSPECIFIED:
        usage = (
            Usage(u.prompt_tokens, u.completion_tokens, u.cached_prompt_tokens)
            if msg.HasField("usage")  # continuous_usage_stats: the usage so far
            else None
        )
        return StreamChunk(
            msg.request_id,
            list(msg.token_ids),
            msg.text,
            usage=usage,
            index=index,
            logprobs=logprobs,
            prompt_logprobs=prompt,
        )
    return StreamChunk(
        msg.request_id,
        list(msg.token_ids),
        msg.text,
        _FINISH.get(msg.finish_reason),
        Usage(u.prompt_tokens, u.completion_tokens, u.cached_prompt_tokens),
        Timings(
            t.queue_s,
            t.prefill_s,
            t.kv_transfer_s,
            t.decode_s,
            t.ttft_s,
            t.e2e_s,
            t.kv_transfer_bytes,
            t.prefill_worker,
            t.decode_worker,
        ),
        [ToolCall(c.id, c.name, c.arguments_json) for c in msg.tool_calls],
        index,
        logprobs,
        prompt,
    )


class CompletionBuilder:
    """Accumulates one choice's stream chunks into a `Completion`."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.ids: list[int] = []
        self.logprobs: list[TokenLogprob] | None = None
        self.prompt_logprobs: list[TokenLogprob] | None = None
        self.last: StreamChunk | None = None

    def add(self, chunk: StreamChunk) -> None:
        self.texts.append(chunk.text)
        self.ids += chunk.token_ids
        if chunk.logprobs is not None:
            self.logprobs = (self.logprobs or []) + chunk.logprobs
        if chunk.prompt_logprobs is not None:
            self.prompt_logprobs = chunk.prompt_logprobs
        self.last = chunk

    def build(self) -> Completion:
        last = self.last
        return Completion(
            last.request_id if last else "",
            "".join(self.texts),
            self.ids,
            last.finish_reason if last else None,
            last.usage if last else None,
            last.timings if last else None,
            last.tool_calls if last else [],
            last.index if last else 0,
            self.logprobs,
            self.prompt_logprobs,
        )


class ChoicesBuilder:
    """Accumulates the chunks of every choice into `Completion`s, by choice index."""

    def __init__(self) -> None:
        self.choices: dict[int, CompletionBuilder] = {}

    def add(self, chunk: StreamChunk) -> None:
        self.choices.setdefault(chunk.index, CompletionBuilder()).add(chunk)

    def build(self) -> list[Completion]:
        return [b.build() for _, b in sorted(self.choices.items())]


def check_single(kwargs: dict) -> None:
    """TypeError when `generate` is asked for several choices (`generate_choices` returns
    them)."""
    if (kwargs.get("n") or 1) > 1:
        raise TypeError("generate returns one completion: call generate_choices for n > 1")
