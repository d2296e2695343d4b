"""ASGI middleware: the frontend span, request id and access-log line of every HTTP call."""

from __future__ import annotations

import time

from opentelemetry.trace import SpanKind, Status, StatusCode

from runtime.observability.context import new_request_id, request_id_scope
from runtime.observability.logs import log_access
from runtime.observability.tracing import context_from_carrier, tracer

REQUEST_ID_HEADER = "x-request-id"


class ObservabilityMiddleware:
    """Wraps an ASGI app (outermost, so refusals are seen too). Per HTTP call: a SERVER
    span, child of the client's `traceparent` header when it sends one, lasting until the
    last byte of the response (a stream included); the request id (the client's
    `X-Request-Id`, else a new one) in every log record written meanwhile; an access-log
    line once the response has ended."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        method, path = scope["method"], scope["path"]
        # The frontend's RequestIdMiddleware, outside this one, may have settled the id already.
        request_id = (
            scope.get("state", {}).get("request_id")
            or headers.get(REQUEST_ID_HEADER)
            or new_request_id()
        )
        started, status = time.monotonic(), [500]

        async def send_recording_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        attributes = {
            "http.request.method": method,
            "url.path": path,
            "tandem.request_id": request_id,
        }
        with (
            request_id_scope(request_id),
            tracer().start_as_current_span(
                f"{method} {path}",
                context=context_from_carrier(headers),
                kind=SpanKind.SERVER,
                attributes=attributes,
            ) as span,
        ):
            try:
                await self.app(scope, receive, send_recording_status)
            finally:
                span.set_attribute("http.response.status_code", status[0])
                if status[0] >= 500:
                    span.set_status(Status(StatusCode.ERROR, f"HTTP {status[0]}"))
                client = scope.get("client")
                log_access(
                    "http",
                    method,
                    path,
                    status[0],
                    started,
                    client=f"{client[0]}:{client[1]}" if client else None,
                )
