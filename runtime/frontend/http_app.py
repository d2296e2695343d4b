"""The OpenAI-compatible HTTP API (FastAPI): completions, chat completions, models, health,
and Prometheus metrics. Requests go through the same preparer and dispatcher as gRPC."""
from __future__ import annotations

import hmac
import json
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from runtime.frontend.metrics import CONTENT_TYPE_LATEST
from runtime.frontend.openai_schema import ChatCompletionRequest, CompletionRequest
from runtime.frontend.requests import InvalidRequest, PreparedRequest
from runtime.frontend.results import ServingError

_HTTP_STATUS = {"UNAVAILABLE": 503, "RESOURCE_EXHAUSTED": 503, "DEADLINE_EXCEEDED": 504,
                "UNAUTHENTICATED": 401, "INVALID_ARGUMENT": 400}


def error_response(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None,
                                   "code": status}}, status_code=status)


def build_app(dispatcher, preparer, metrics, api_key: str | None = None,
              is_ready=lambda: True) -> FastAPI:
    """The app over a `Dispatcher`, a `RequestPreparer` and `FrontendMetrics`."""
    app = FastAPI(title="Tandem", docs_url=None, redoc_url=None)
    expected = f"Bearer {api_key}".encode() if api_key else None

    @app.middleware("http")
    async def check_api_key(request: Request, call_next):
        if expected and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return error_response(401, "missing or wrong API key: send "
                                      "'Authorization: Bearer <key>'", "authentication_error")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request, exc: RequestValidationError):
        parts = [f"{'.'.join(str(x) for x in e['loc'] if x != 'body')}: {e['msg']}"
                 for e in exc.errors()]
        metrics.errors.labels("INVALID_ARGUMENT").inc()
        return error_response(400, "; ".join(parts) or "malformed request body")

    @app.exception_handler(InvalidRequest)
    async def on_invalid(request, exc: InvalidRequest):
        metrics.errors.labels("INVALID_ARGUMENT").inc()
        return error_response(400, str(exc))

    @app.exception_handler(ServingError)
    async def on_serving_error(request, exc: ServingError):
        metrics.errors.labels(exc.code).inc()
        response = error_response(_HTTP_STATUS.get(exc.code, 500), exc.message, "server_error")
        if exc.retry_after_s is not None:
            response.headers["Retry-After"] = str(exc.retry_after_s)
        return response

    @app.get("/health")
    async def healthz():
        return Response(status_code=200 if is_ready() else 503)

    @app.get("/metrics")
    async def prometheus():
        metrics.observe_loads(await dispatcher.poll_loads())
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{
            "id": preparer.model_name, "object": "model", "created": 0, "owned_by": "tandem",
            "root": preparer.model_path, "max_model_len": preparer.max_model_len}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise InvalidRequest("send one prompt per request (batched prompts are not "
                                     "supported)")
            prompt = prompt[0]
        req = _prepare(body, prompt=prompt if isinstance(prompt, str) else None,
                       token_ids=prompt if isinstance(prompt, list) else None)
        return await _respond(body, req, "cmpl", "text_completion", _completion_choice)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        req = _prepare(body, messages=body.messages)
        return await _respond(body, req, "chatcmpl", "chat.completion", _chat_choice)

    def _prepare(body, **inputs) -> PreparedRequest:
        preparer.check_model(body.model)
        if body.n != 1:
            raise InvalidRequest("n must be 1")
        ids = preparer.prompt_ids(**inputs)
        params = preparer.sampling_params(len(ids), **body.sampling_fields())
        return PreparedRequest(f"{uuid.uuid4().hex}", tuple(ids), params)

    async def _respond(body, req: PreparedRequest, prefix: str, obj: str, choice):
        rid, created = f"{prefix}-{req.request_id}", int(time.time())
        head = {"id": rid, "created": created, "model": preparer.model_name}
        stream = dispatcher.generate(req)
        if not body.stream:
            text, last = [], None
            async for chunk in stream:
                text.append(chunk.text)
                last = chunk
            return {**head, "object": obj, "choices": [choice("".join(text), last.finish_reason,
                                                               final=True)],
                    "usage": _usage(last.usage), "timings": last.timings.__dict__}
        first = await anext(stream, None)   # errors before the first token stay HTTP errors
        return StreamingResponse(_sse(head, obj + (".chunk" if obj.startswith("chat") else ""),
                                      first, stream, choice, body.include_usage),
                                 media_type="text/event-stream")

    return app


async def _sse(head, obj, first, stream, choice, include_usage):
    def event(payload) -> str:
        return f"data: {json.dumps(payload)}\n\n"

    if obj == "chat.completion.chunk":   # OpenAI sends the role alone first
        yield event({**head, "object": obj, "choices": [choice("", None, role_only=True)]})
    last, chunk = None, first
    try:
        while chunk is not None:
            last = chunk
            yield event({**head, "object": obj,
                         "choices": [choice(chunk.text, chunk.finish_reason)]})
            chunk = await anext(stream, None)
    except (InvalidRequest, ServingError) as e:   # headers are gone: report in the stream
        yield event({"error": {"message": str(e), "type": "server_error"}})
    finally:   # a client that went away cancels us here: abort the request on the workers
        await stream.aclose()
    if include_usage and last is not None and last.usage is not None:
        yield event({**head, "object": obj, "choices": [], "usage": _usage(last.usage)})
    yield "data: [DONE]\n\n"


def _usage(u) -> dict:
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": u.cached_prompt_tokens}}


def _completion_choice(text, finish_reason, final=False, role_only=False) -> dict:
    return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}


def _chat_choice(text, finish_reason, final=False, role_only=False) -> dict:
    if final:
        return {"index": 0, "message": {"role": "assistant", "content": text},
                "logprobs": None, "finish_reason": finish_reason}
    delta = {"role": "assistant", "content": ""} if role_only else (
        {"content": text} if text else {})
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
