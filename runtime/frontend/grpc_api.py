"""The gRPC API's Tokenize, Detokenize and GetVersion, and continuous usage on Generate's
stream (mixed into `TandemService`, which holds the dispatcher and the preparer)."""

from __future__ import annotations

import grpc
from google.protobuf import unknown_fields
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from runtime.api._proto import tandem_pb2 as pb
from runtime.frontend.requests import InvalidRequest
from runtime.frontend.tokenization import detokenize, server_version, tokenize


def unknown_fields_of(msg: Message, path: str = "") -> list[str]:
    """Where `msg` (and the messages inside it) carries fields this server's contract does
    not have, e.g. `params.#21`: a client built against a newer tandem.proto."""
    found = [f"{path}#{f.field_number}" for f in unknown_fields.UnknownFieldSet(msg)]
    for field, value in msg.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if field.message_type.GetOptions().map_entry:  # a map: its values, when messages
            if field.message_type.fields_by_name["value"].type != FieldDescriptor.TYPE_MESSAGE:
                continue
            value = list(value.values())
        inner = list(value) if field.is_repeated else [value]
        for i, m in enumerate(inner):
            index = f"[{i}]" if field.is_repeated else ""
            found += unknown_fields_of(m, f"{path}{field.name}{index}.")
    return found


def check_known_fields(msg: Message) -> None:
    """InvalidRequest naming the fields of `msg` this server does not implement: they are
    refused, as the HTTP API refuses unknown parameters, rather than silently dropped."""
    found = unknown_fields_of(msg)
    if found:
        raise InvalidRequest(
            f"{msg.DESCRIPTOR.name} has fields this server does not implement (by field "
            f"number): {', '.join(found[:5])}; upgrade the server or leave them unset"
        )


def messages_from_proto(chat: pb.ChatMessages) -> list[dict]:
    """The messages in the OpenAI shape the HTTP API takes (and the preparer checks): an
    assistant turn's `tool_calls` and a tool turn's `tool_call_id` only where set."""
    out = []
    for m in chat.messages:
        message: dict = {"role": m.role, "content": m.content}
        if m.tool_calls:
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments_json},
                }
                for c in m.tool_calls
            ]
        if m.tool_call_id:
            message["tool_call_id"] = m.tool_call_id
        out.append(message)
    return out


class TokenizerRpcs:
    """Needs `self.preparer` (a `RequestPreparer`) and `self._count_error(code)`."""

    async def Tokenize(self, request: pb.TokenizeRequest, context) -> pb.TokenizeResponse:
        def run() -> pb.TokenizeResponse:
            check_known_fields(request)
            p = self.preparer  # type: ignore[attr-defined]
            p.check_model(request.model)
            kind = request.WhichOneof("input")
            got = tokenize(
                p,
                prompt=request.prompt if kind == "prompt" else None,
                messages=messages_from_proto(request.chat) if kind == "chat" else None,
                return_token_strs=request.return_token_strs,
            )
            return pb.TokenizeResponse(
                token_ids=got.token_ids, max_model_len=p.max_model_len, token_strs=got.token_strs
            )

        return await self._answer(run, context)

    async def Detokenize(self, request: pb.DetokenizeRequest, context) -> pb.DetokenizeResponse:
        def run() -> pb.DetokenizeResponse:
            check_known_fields(request)
            p = self.preparer  # type: ignore[attr-defined]
            p.check_model(request.model)
            return pb.DetokenizeResponse(text=detokenize(p, list(request.token_ids)))

        return await self._answer(run, context)

    async def GetVersion(self, request, context) -> pb.GetVersionResponse:
        return pb.GetVersionResponse(**server_version())

    async def _answer(self, run, context):
        try:
            return await self.preparer.run(run)  # type: ignore[attr-defined]
        except InvalidRequest as e:
            self._count_error("INVALID_ARGUMENT")  # type: ignore[attr-defined]
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))


class ContinuousUsage:
    """Stamps each GenerateResponse with the usage so far (continuous_usage_stats); the last
    keeps the workers' own count, cached prompt tokens included."""

    def __init__(self, num_prompt_tokens: int):
        self.num_prompt_tokens = num_prompt_tokens
        self.num_generated = 0

    def stamp(self, msg: pb.GenerateResponse) -> pb.GenerateResponse:
        self.num_generated += len(msg.token_ids)
        if not msg.HasField("usage"):
            msg.usage.CopyFrom(
                pb.Usage(prompt_tokens=self.num_prompt_tokens, completion_tokens=self.num_generated)
            )
        return msg
