"""Tokenize and detokenize with the served model's tokenizer, exactly as a request's prompt
would be (the same template, special tokens and limits), for HTTP and gRPC alike; and what
version of Tandem is serving."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from typing import Any

from runtime.frontend.openai_schema import _Body
from runtime.frontend.requests import InvalidRequest, RequestPreparer
from runtime.kv_transfer.wire import CONTRACT_VERSION

API_VERSION = "tandem.v1"  # the public proto package: its major version


def server_version() -> dict[str, Any]:
    """What `/version` and `GetVersion` report."""
    try:
        version = importlib.metadata.version("tandem-serve")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        version = "0+unknown"
    return {"version": version, "api": API_VERSION, "kv_contract_version": CONTRACT_VERSION}


class TokenizeBody(_Body):
    """POST /tokenize: a `prompt` (tokenized as /v1/completions does) or chat `messages`
    (the chat template applied, as /v1/chat/completions does)."""

    model: str | None = None
    prompt: str | None = None
    messages: list[Any] | None = None
    return_token_strs: bool = False


class DetokenizeBody(_Body):
    model: str | None = None
    tokens: list[int]


@dataclass(frozen=True)
class Tokenized:
    token_ids: list[int]
    token_strs: list[str] | None  # each token as the vocabulary spells it, when asked for


def tokenize(
    preparer: RequestPreparer,
    prompt: str | None = None,
    messages: list | None = None,
    return_token_strs: bool = False,
) -> Tokenized:
    """The token ids a request with this prompt or these messages would run on (blocking:
    call it through `preparer.run`). InvalidRequest unless exactly one is given."""
    if (prompt is None) == (messages is None):
        raise InvalidRequest("give exactly one of prompt or messages")
    ids = preparer.prompt_ids(prompt=prompt, messages=messages)
    strs = preparer.tokenizer.convert_ids_to_tokens(ids) if return_token_strs else None
    return Tokenized(ids, strs)


def detokenize(preparer: RequestPreparer, token_ids: list[int]) -> str:
    """The text of `token_ids`, special tokens included (blocking). InvalidRequest for an id
    outside the vocabulary or more ids than the context holds."""
    if len(token_ids) > preparer.max_model_len:
        raise InvalidRequest(
            f"{len(token_ids)} tokens: at most max_model_len={preparer.max_model_len} "
            "can be detokenized at once"
        )
    bad = [t for t in token_ids if not 0 <= t < preparer.vocab_size]
    if bad:
        raise InvalidRequest(f"tokens must be ids in [0, {preparer.vocab_size}), got {bad[:5]}")
    return preparer.tokenizer.decode(token_ids)
