"""The OpenAI-compatible HTTP API (FastAPI): completions, chat completions, models, health,
and Prometheus metrics. Requests go through the same preparer and dispatcher as gRPC."""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from runtime.frontend.choices import check_choices, check_num_logprobs, generate_choices
from runtime.frontend.disconnect import ClientGone, unless_disconnected
from runtime.frontend.dispatch import client_key
from runtime.frontend.health import add_health_routes
from runtime.frontend.http_routes import KEYED_PATHS, add_api_routes
from runtime.frontend.metrics import CONTENT_TYPE_LATEST
from runtime.frontend.openai_choices import ChoiceTracker
from runtime.frontend.openai_schema import ChatCompletionRequest, CompletionRequest, parse_body
from runtime.frontend.request_id import RequestIdMiddleware
from runtime.frontend.requests import InvalidRequest, PreparedRequest
from runtime.frontend.results import ServingError
from runtime.frontend.structured import one_grammar
from runtime.frontend.tools import one_chunk, tool_chat_choice
from runtime.observability.http_middleware import ObservabilityMiddleware

log = logging.getLogger(__name__)

# RESOURCE_EXHAUSTED: the cluster or this API key is at capacity: 429 with Retry-After.
_HTTP_STATUS = {
    "UNAVAILABLE": 503,
    "RESOURCE_EXHAUSTED": 429,
    "DEADLINE_EXCEEDED": 504,
    "UNAUTHENTICATED": 401,
    "INVALID_ARGUMENT": 400,
}


class _AsciiJSON(JSONResponse):
    # A message may quote what the client sent, lone surrogates included: escaped, they encode.
    def render(self, content) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode("ascii")


def _error_object(status: int, message: str, kind: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def error_response(
    status: int,
    message: str,
    kind: str = "invalid_request_error",
    headers: Mapping[str, str] | None = None,
    param: str | None = None,
) -> JSONResponse:
    """An OpenAI error object; `param` names the body field at fault, when one is."""
    return _AsciiJSON(
        _error_object(status, message, kind, param),
        status_code=status,
        headers=headers,
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The request's JSON body, at most `limit` bytes (413 past it; 415 for another type)."""
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if kind != "application/json" and not kind.endswith("+json"):
        raise HTTPException(
            415, f"send the body as JSON with 'Content-Type: application/json', not {kind!r}"
        )
    too_large = HTTPException(413, f"the request body is larger than {limit} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
    except ClientDisconnect:
        raise HTTPException(400, "the client closed the connection before the body ended") from None
    return b"".join(chunks)


def build_app(
    dispatcher,
    preparer,
    metrics,
    api_key: str | None = None,
    is_ready=lambda: True,
    missing_pools=lambda: [],
) -> FastAPI:
    """The app over a `Dispatcher`, a `RequestPreparer` and `FrontendMetrics`; `is_ready()`
    and `missing_pools()` drive the health endpoints (runtime/frontend/health.py)."""
    # The request's span is ours (ObservabilityMiddleware): FastAPI's own would repeat it.
    app = FastAPI(
        title="Tandem",
        docs_url=None,
        redoc_url=None,
        telemetry={"tracing": False, "operation_spans": False},
    )
    expected = f"Bearer {api_key}".encode() if api_key else None

    # Health stays open for load balancers; the API and /metrics need the key when one is set.
    @app.middleware("http")
    async def check_api_key(request: Request, call_next):
        path = request.url.path
        if expected and (path.startswith("/v1/") or path in ("/metrics", *KEYED_PATHS)):
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return error_response(
                    401,
                    "missing or wrong API key: send 'Authorization: Bearer <key>'",
                    "authentication_error",
                )
        return await call_next(request)

    # Added last, so outermost: the request's span, request id and access log cover the rest.
    app.add_middleware(ObservabilityMiddleware)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request, exc: RequestValidationError):
        parts = [
            f"{'.'.join(str(x) for x in e['loc'] if x != 'body')}: {e['msg']}" for e in exc.errors()
        ]
        metrics.errors.labels("INVALID_ARGUMENT").inc()
        return error_response(400, "; ".join(parts) or "malformed request body")

    @app.exception_handler(InvalidRequest)
    async def on_invalid(request, exc: InvalidRequest):
        metrics.errors.labels("INVALID_ARGUMENT").inc()
        return error_response(400, str(exc), param=getattr(exc, "param", None))

    @app.exception_handler(HTTPException)
    async def on_http_error(request, exc: HTTPException):
        if exc.status_code in (400, 413, 415):
            metrics.errors.labels("INVALID_ARGUMENT").inc()
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def on_internal_error(request, exc: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        metrics.errors.labels("INTERNAL").inc()
        return error_response(
            500,
            "internal error: the request failed on the server, not because of what it sent",
            "server_error",
        )

    @app.exception_handler(ServingError)
    async def on_serving_error(request, exc: ServingError):
        metrics.errors.labels(exc.code).inc()
        response = error_response(_HTTP_STATUS.get(exc.code, 500), exc.message, "server_error")
        if exc.retry_after_s is not None:
            response.headers["Retry-After"] = str(exc.retry_after_s)
        return response

    add_health_routes(app, is_ready, missing_pools)
    add_api_routes(app, preparer, read_body)
    # Outermost: every answer, a refused API key's included, carries the request id.
    app.add_middleware(
        RequestIdMiddleware,
        check=preparer.check_request_id,
        refuse=lambda message: error_response(400, message),
    )

    @app.get("/metrics")
    async def prometheus():
        metrics.observe_loads(await dispatcher.poll_loads())
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [
                {
                    "id": preparer.model_name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "tandem",
                    "root": preparer.model_path,
                    "max_model_len": preparer.max_model_len,
                }
            ],
        }

    # The bodies are read here, then parsed, tokenized and checked on the preparer's thread:
    # a long prompt must not hold the event loop that answers every other request.
    @app.post("/v1/completions")
    async def completions(request: Request):
        received = time.monotonic()
        raw = await read_body(request, preparer.limits.max_request_bytes)
        body, req, _ = await preparer.run(
            _prepare, raw, CompletionRequest, request.state.request_id, received
        )
        return await _respond(request, body, req, "cmpl", "text_completion", _completion_choice)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        received = time.monotonic()
        raw = await read_body(request, preparer.limits.max_request_bytes)
        body, req, tool_use = await preparer.run(
            _prepare, raw, ChatCompletionRequest, request.state.request_id, received
        )
        if tool_use is None:
            return await _respond(request, body, req, "chatcmpl", "chat.completion", _chat_choice)
        # Calls are parsed from the whole output: a stream carries it in one last chunk.
        return await _respond(
            request, body, req, "chatcmpl", "chat.completion", tool_chat_choice(tool_use), True
        )

    def _prepare(raw: bytes, schema, request_id: str, received: float) -> tuple:
        body = parse_body(raw, schema)
        preparer.check_model(body.model)
        check_choices(preparer.limits, body.n, getattr(body, "best_of", None), body.stream)
        check_num_logprobs(preparer.limits, _LOGPROBS_FIELD[type(body)], body.num_logprobs())
        fields = body.sampling_fields()
        tool_use = None
        if isinstance(body, ChatCompletionRequest):
            tool_use = body.tool_use(preparer.tokenizer.chat_template)
        if tool_use is not None:
            fields["grammar"] = one_grammar(fields["grammar"], tool_use.grammar())
        tools = list(tool_use.tools) if tool_use is not None else None
        ids = preparer.prompt_ids(**body.prompt_inputs(), tools=tools)
        params = preparer.sampling_params(len(ids), **fields)
        return body, PreparedRequest(request_id, tuple(ids), params, received), tool_use

    async def _respond(
        request: Request, body, req: PreparedRequest, prefix: str, obj: str, choice, whole=False
    ):
        rid, created = f"{prefix}-{req.request_id}", int(time.time())
        head = {"id": rid, "created": created, "model": preparer.model_name}
        key = client_key(request.headers.get("authorization", ""))
        stream = generate_choices(
            lambda r: dispatcher.generate(r, key), req, body.n, getattr(body, "best_of", None)
        )
        if whole and body.stream:
            stream = one_chunk(stream)
        ids, tokenizer = req.prompt_token_ids, preparer.tokenizer
        echo = body.echo_text(tokenizer, ids) if isinstance(body, CompletionRequest) else None
        tracker = ChoiceTracker(
            tokenizer, isinstance(body, ChatCompletionRequest), body.num_logprobs(), echo, ids[0]
        )
        if not body.stream:
            try:
                whole_body = _whole(head, obj, stream, choice, tracker)
                return await unless_disconnected(request, whole_body, stream)
            except ClientGone:
                return Response(status_code=499)  # nginx's "client closed": nobody reads it
        first = await anext(stream, None)  # errors before the first token stay HTTP errors
        return StreamingResponse(
            _sse(
                head,
                obj + (".chunk" if obj.startswith("chat") else ""),
                first,
                stream,
                choice,
                body.include_usage,
                tracker,
                body.n,
                len(req.prompt_token_ids) if body.continuous_usage else None,
            ),
            media_type="text/event-stream",
        )

    return app


async def _whole(head, obj, stream, choice, tracker) -> dict:
    async for chunk in stream:
        tracker.add(chunk)
    usage = tracker.usage()
    if usage is None:  # the dispatcher ends every request with a chunk or an error
        raise ServingError("INTERNAL", "the request ended without a result")
    return {
        **head,
        "object": obj,
        "choices": [
            choice(text, reason, final=True, index=i, logprobs=lp)
            for i, text, reason, lp in tracker.finals()
        ],
        "usage": _usage(usage),
        "timings": tracker.timings().__dict__,
    }


async def _sse(head, obj, first, stream, choice, include_usage, tracker, n, continuous=None):
    """The SSE events of a stream; `continuous` (the prompt's token count) set: each chunk
    carries the usage so far (the last one the workers' own count, cached tokens included)."""
    num_generated = 0

    def event(payload, usage=None) -> str:
        if continuous is not None and "error" not in payload:
            payload["usage"] = _usage(usage) if usage else _usage_so_far(continuous, num_generated)
        return f"data: {json.dumps(payload)}\n\n"

    if obj == "chat.completion.chunk":  # OpenAI sends the role alone first, per choice
        for i in range(n):
            yield event(
                {**head, "object": obj, "choices": [choice("", None, role_only=True, index=i)]}
            )
    chunk = first
    try:
        while chunk is not None:
            num_generated += len(chunk.token_ids)
            text, logprobs = tracker.add(chunk)
            yield event(
                {
                    **head,
                    "object": obj,
                    "choices": [
                        choice(text, chunk.finish_reason, index=chunk.index, logprobs=logprobs)
                    ],
                },
                chunk.usage if n == 1 else None,
            )
            chunk = await anext(stream, None)
    except InvalidRequest as e:  # headers are gone: report in the stream
        yield event(_error_object(400, str(e), "invalid_request_error"))
    except ServingError as e:
        yield event(_error_object(_HTTP_STATUS.get(e.code, 500), e.message, "server_error"))
    except Exception:  # a bug: still end the stream cleanly rather than drop the connection
        log.exception("streaming a response failed")
        yield event(_error_object(500, "internal error", "server_error"))
    finally:  # a client that went away cancels us here: abort the request on the workers
        await stream.aclose()
    usage = tracker.usage()
    if include_usage and usage is not None:
        yield event({**head, "object": obj, "choices": [], "usage": _usage(usage)}, usage)
    yield "data: [DONE]\n\n"


def _usage_so_far(num_prompt_tokens: int, num_generated: int) -> dict:
    return {
        "prompt_tokens": num_prompt_tokens,
        "completion_tokens": num_generated,
        "total_tokens": num_prompt_tokens + num_generated,
    }


def _usage(u) -> dict:
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_prompt_tokens},
    }


_LOGPROBS_FIELD: dict[type, str] = {
    CompletionRequest: "logprobs",
    ChatCompletionRequest: "top_logprobs",
}


def _completion_choice(
    text, finish_reason, final=False, role_only=False, index=0, logprobs=None
) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def _chat_choice(text, finish_reason, final=False, role_only=False, index=0, logprobs=None) -> dict:
    if final:
        return {
            "index": index,
            "message": {"role": "assistant", "content": text},
            "logprobs": logprobs,
            "finish_reason": finish_reason,
        }
    delta = (
        {"role": "assistant", "content": ""} if role_only else ({"content": text} if text else {})
    )
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
