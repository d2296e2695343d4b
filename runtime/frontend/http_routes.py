"""HTTP endpoints beside the OpenAI ones: /tokenize, /detokenize (vLLM's shapes) and /version."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request

from runtime.frontend.openai_schema import parse_body
from runtime.frontend.requests import RequestPreparer
from runtime.frontend.tokenization import (
    DetokenizeBody,
    TokenizeBody,
    detokenize,
    server_version,
    tokenize,
)

# Paths that need the API key when one is set (they spend the server's time).
KEYED_PATHS = ("/tokenize", "/detokenize")


def add_api_routes(
    app: FastAPI, preparer: RequestPreparer, read_body: Callable[[Request, int], Awaitable[bytes]]
) -> None:
    """Adds /tokenize, /detokenize and /version to `app`; bodies are read with `read_body`
    (the API's size and content-type checks) and parsed strictly, unknown fields refused."""

    def _tokenize(raw: bytes) -> dict:
        body = parse_body(raw, TokenizeBody)
        preparer.check_model(body.model)
        got = tokenize(preparer, body.prompt, body.messages, body.return_token_strs)
        answer = {
            "count": len(got.token_ids),
            "max_model_len": preparer.max_model_len,
            "tokens": got.token_ids,
        }
        if got.token_strs is not None:
            answer["token_strs"] = got.token_strs
        return answer

    def _detokenize(raw: bytes) -> dict:
        body = parse_body(raw, DetokenizeBody)
        preparer.check_model(body.model)
        return {"prompt": detokenize(preparer, body.tokens)}

    async def tokenize_route(request: Request):
        raw = await read_body(request, preparer.limits.max_request_bytes)
        return await preparer.run(_tokenize, raw)

    async def detokenize_route(request: Request):
        raw = await read_body(request, preparer.limits.max_request_bytes)
        return await preparer.run(_detokenize, raw)

    async def version_route():
        return server_version()

    app.add_api_route("/tokenize", tokenize_route, methods=["POST"])
    app.add_api_route("/detokenize", detokenize_route, methods=["POST"])
    app.add_api_route("/version", version_route, methods=["GET"])
