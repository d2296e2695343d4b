"""gRPC server interceptor: the frontend span, request id and access-log line of each call."""

from __future__ import annotations

import asyncio
import inspect
import time

import grpc
from opentelemetry.trace import SpanKind, Status, StatusCode

from runtime.observability.context import new_request_id, request_id_scope
from runtime.observability.logs import log_access
from runtime.observability.tracing import context_from_carrier, tracer

# Probes and tooling: neither traced nor access-logged (a load balancer polls health often).
_QUIET_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
# The statuses that are the server's failure (OpenTelemetry's gRPC conventions); the others
# are the client's (a bad argument, a refusal, a cancel) and leave the span unset.
_SERVER_ERRORS = {
    "UNKNOWN",
    "DEADLINE_EXCEEDED",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
}


class GrpcObservability(grpc.aio.ServerInterceptor):
    """Per unary or server-streaming call: a SERVER span, child of the client's
    `traceparent` metadata when it sends one, lasting until the last response; the request
    id (the request's `request_id` field when it has one, else a new one) in every log
    record written meanwhile; an access-log line with the call's status once it ends.
    Place it first, so refusals by the interceptors after it are seen too."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        method = details.method
        if handler is None or handler.request_streaming or method.startswith(_QUIET_PREFIXES):
            return handler
        metadata = {
            k.lower(): v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)
        }
        parent = context_from_carrier(metadata)

        def observed(request, context):
            request_id = getattr(request, "request_id", "") or new_request_id()
            started = time.monotonic()
            scope = request_id_scope(request_id)
            span = tracer().start_as_current_span(
                method,
                context=parent,
                kind=SpanKind.SERVER,
                attributes={
                    "rpc.system": "grpc",
                    "rpc.method": method,
                    "tandem.request_id": request_id,
                },
                record_exception=False,
                set_status_on_exception=False,
            )
            return scope, span, started

        def finish(span, context, started, failed: BaseException | None) -> None:
            code = _code_name(context.code(), failed)
            span.set_attribute("rpc.grpc.status_code", code)
            if code in _SERVER_ERRORS:
                span.set_status(Status(StatusCode.ERROR, code))
            log_access("grpc", "POST", method, code, started)

        if handler.response_streaming:
            inner_stream = handler.unary_stream

            async def traced_stream(request, context):
                scope, span_cm, started = observed(request, context)
                with scope, span_cm as span:
                    failed = None
                    try:
                        responses = inner_stream(request, context)
                        if inspect.isawaitable(responses):  # a handler writing through context
                            await responses
                        else:
                            async for response in responses:
                                yield response
                    except BaseException as e:
                        failed = e
                        raise
                    finally:
                        finish(span, context, started, failed)

            return handler._replace(unary_stream=traced_stream)

        inner_unary = handler.unary_unary

        async def traced_unary(request, context):
            scope, span_cm, started = observed(request, context)
            with scope, span_cm as span:
                failed = None
                try:
                    return await inner_unary(request, context)
                except BaseException as e:
                    failed = e
                    raise
                finally:
                    finish(span, context, started, failed)

        return handler._replace(unary_unary=traced_unary)


def _code_name(code, failed: BaseException | None) -> str:
    """The call's status: what the handler set (an abort sets it), else OK, or UNKNOWN
    after an unexpected error and CANCELLED when the client went away."""
    if isinstance(code, grpc.StatusCode):
        return code.name
    if failed is None:
        return "OK"
    if isinstance(failed, (GeneratorExit, asyncio.CancelledError)):
        return "CANCELLED"
    return "UNKNOWN"
