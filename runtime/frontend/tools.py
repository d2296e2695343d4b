"""Tool calling: which chat templates take tools, the grammar a forced call runs under, and
the parse of what the model wrote into OpenAI `tool_calls`.

Templates that render tools come in two output conventions, told apart by the template text:
- "hermes" (Qwen2.5, Qwen3, Hermes): each call is `<tool_call>{"name": .., "arguments": ..}
  </tool_call>`, text around the calls is the message content;
- "llama3_json" (Llama 3.1+): the whole output is one JSON `{"name": .., "parameters": ..}`,
  maybe after `<|python_tag|>`.
`tool_choice` "required" and a named function are enforced by a JSON-schema grammar (as vLLM
does), so even a small model returns a well-formed call; "auto" parses whatever came out.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, replace

from runtime.frontend.requests import InvalidRequest
from runtime.frontend.results import GenerationChunk
from runtime.frontend.structured import GrammarRequest

_HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def tool_call_style(chat_template: str | None) -> str | None:
    """The output convention of a chat template that renders `tools`, None when it renders
    none (tools would be silently dropped from the prompt)."""
    if not chat_template or "tools" not in chat_template:
        return None
    if "<tool_call>" in chat_template:
        return "hermes"
    if "<|python_tag|>" in chat_template or "ipython" in chat_template:
        return "llama3_json"
    return None


@dataclass(frozen=True)
class ToolUse:
    """A chat request's tools (OpenAI `tools` entries), its `tool_choice` ("auto",
    "required" or a function name) and the template's output `style`."""

    tools: tuple[dict, ...]
    choice: str
    style: str
    named: bool = False  # choice is a function name

    @classmethod
    def from_request(cls, tools: list[dict], tool_choice, chat_template) -> "ToolUse | None":
        """None when no tool may be called (no tools, or tool_choice "none");
        InvalidRequest when the template cannot render tools or the choice names none."""
        if not tools or tool_choice == "none":
            return None
        style = tool_call_style(chat_template)
        if style is None:
            raise InvalidRequest(
                "tools: this model's chat template does not render tools (Qwen2.5/3 and "
                "Llama 3.1+ templates do); send the request without tools"
            )
        names = [t["function"]["name"] for t in tools]
        if len(set(names)) != len(names):
            raise InvalidRequest(f"tools: function names must be unique, got {names}")
        if tool_choice in (None, "auto", "required"):
            return cls(tuple(tools), tool_choice or "auto", style)
        name = tool_choice["function"]["name"]
        if name not in names:
            raise InvalidRequest(
                f"tool_choice.function.name {name!r} is not among the tools {names}"
            )
        return cls(tuple(tools), name, style, named=True)

    def _parameters(self, name: str) -> dict:
        for t in self.tools:
            if t["function"]["name"] == name:
                return t["function"].get("parameters") or {"type": "object"}
        raise KeyError(name)

    def grammar(self) -> GrammarRequest | None:
        """The grammar a forced call runs under: a named function's arguments, or for
        "required" a JSON list of one or more {name, arguments} calls."""
        if self.named:
            schema = self._parameters(self.choice)
        elif self.choice == "required":
            calls = [
                {
                    "type": "object",
                    "properties": {
                        "name": {"const": t["function"]["name"]},
                        "arguments": self._parameters(t["function"]["name"]),
                    },
                    "required": ["name", "arguments"],
                    "additionalProperties": False,
                }
                for t in self.tools
            ]
            schema = {"type": "array", "minItems": 1, "items": {"anyOf": calls}}
        else:
            return None
        return GrammarRequest("tool_choice", "json_schema", json.dumps(schema))

    def parse(self, text: str) -> tuple[str | None, list[dict]]:
        """(content, tool_calls) of the model's output; no calls found gives (text, [])."""
        if self.named:
            return None, [_call(self.choice, text)]
        if self.choice == "required":
            try:
                calls = json.loads(text)
            except ValueError:
                return text, []  # cut short by max_tokens: no complete call
            return None, [_call(c["name"], json.dumps(c["arguments"])) for c in calls]
        if self.style == "hermes":
            return _parse_hermes(text)
        return _parse_llama3(text)


def _call(name: str, arguments: str) -> dict:
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def _as_call(obj, args_key: str) -> dict | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get(args_key, {})
    return _call(obj["name"], args if isinstance(args, str) else json.dumps(args))


def _parse_hermes(text: str) -> tuple[str | None, list[dict]]:
    calls = []
    for body in _HERMES_CALL.findall(text):
        try:
            call = _as_call(json.loads(body), "arguments")
        except ValueError:
            call = None
        if call is None:
            return text, []  # a malformed call: hand the text back untouched
        calls.append(call)
    if not calls:
        return text, []
    content = _HERMES_CALL.sub("", text).strip()
    return content or None, calls


def _parse_llama3(text: str) -> tuple[str | None, list[dict]]:
    body = text.strip().removeprefix("<|python_tag|>").strip()
    if not body.startswith("{"):
        return text, []
    try:
        call = _as_call(json.loads(body), "parameters")
    except ValueError:
        call = None
    return (None, [call]) if call is not None else (text, [])


def tool_chat_choice(tool_use: ToolUse):
    """An OpenAI chat `choice` builder (see http_app) that turns the finished output into
    `tool_calls`. finish_reason "tool_calls" when the model chose to call ("auto",
    "required"); a call forced by name keeps "stop", as OpenAI's API does."""

    def choice(text, finish_reason, final=False, role_only=False, index=0, logprobs=None):
        if role_only:
            first = {"role": "assistant", "content": ""}
            return {"index": index, "delta": first, "logprobs": None, "finish_reason": None}
        content, calls = tool_use.parse(text) if finish_reason else (text, [])
        if calls and finish_reason == "stop" and not tool_use.named:
            finish_reason = "tool_calls"
        if final:
            message: dict = {"role": "assistant", "content": content}
            if calls:
                message["tool_calls"] = calls
            return {
                "index": index,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": finish_reason,
            }
        delta: dict = {"content": content} if content else {}
        if calls:
            delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(calls)]
        return {
            "index": index,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": finish_reason,
        }

    return choice


async def one_chunk(
    stream: AsyncIterator[GenerationChunk],
) -> AsyncGenerator[GenerationChunk, None]:
    """Each choice's chunks joined into one, sent when its last arrives (closing this closes
    the stream, which aborts the request)."""
    joined: dict[int, list[GenerationChunk]] = {}
    try:
        async for chunk in stream:
            parts = joined.setdefault(chunk.index, [])
            parts.append(chunk)
            if chunk.finish_reason is not None:
                logprobs = [lp for c in parts for lp in c.logprobs or ()]
                yield replace(
                    chunk,
                    token_ids=[t for c in parts for t in c.token_ids],
                    text="".join(c.text for c in parts),
                    logprobs=tuple(logprobs) if parts[0].logprobs is not None else None,
                    prompt_logprobs=parts[0].prompt_logprobs,
                )
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
