"""The public gRPC API (proto/tandem.proto) on grpc.aio, with health checks and reflection."""

from __future__ import annotations

import hmac
import time
import uuid

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from runtime.api._proto import tandem_pb2 as pb
from runtime.api._proto import tandem_pb2_grpc as pb_grpc
from runtime.frontend.choices import check_choices, check_num_logprobs, generate_choices
from runtime.frontend.dispatch import client_key
from runtime.frontend.requests import InvalidRequest, PreparedRequest, RequestPreparer
from runtime.frontend.results import ServingError
from runtime.kv_transfer import TLSConfig
from runtime.kv_transfer.auth import server_credentials

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Tandem"].full_name
_FINISH = {"stop": pb.STOP, "length": pb.LENGTH, "abort": pb.ABORT}
_OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def new_request_id(given: str = "") -> str:
    return given or f"req-{uuid.uuid4().hex[:16]}"


def params_fields(p: pb.SamplingParams) -> dict:
    """The request's sampling fields, unset ones as None (the defaults then apply)."""

    def opt(name):
        return getattr(p, name) if p.HasField(name) else None

    return {
        "max_tokens": opt("max_tokens") if p.HasField("max_tokens") else 16,
        "temperature": opt("temperature"),
        "top_p": opt("top_p"),
        "top_k": opt("top_k"),
        "min_p": opt("min_p"),
        "seed": opt("seed"),
        "stop": tuple(p.stop),
        "stop_token_ids": tuple(p.stop_token_ids),
        "ignore_eos": p.ignore_eos,
        "include_stop_str_in_output": p.include_stop_str_in_output,
        "skip_special_tokens": opt("skip_special_tokens"),
        "logprobs": opt("logprobs"),
        "prompt_logprobs": opt("prompt_logprobs"),
    }


class ApiKeyCheck(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED unless `authorization: Bearer <key>` matches; health and reflection
    stay open so load balancers and grpcurl work without the key."""

    def __init__(self, api_key: str):
        self._expected = f"Bearer {api_key}".encode()

        async def deny(request, context):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or wrong API key: send 'authorization: Bearer <key>'",
            )

        self._deny_stream = grpc.unary_stream_rpc_method_handler(deny)
        self._deny_unary = grpc.unary_unary_rpc_method_handler(deny)

    async def intercept_service(self, continuation, details):
        if details.method.startswith(_OPEN_PREFIXES):
            return await continuation(details)
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(given.encode(), self._expected):
            return await continuation(details)
        handler = await continuation(details)
        return self._deny_stream if handler and handler.response_streaming else self._deny_unary


class _Undecodable:
    """Stands in for a request whose bytes are no valid message (see `RejectUndecodable`)."""

    def __init__(self, error: DecodeError):
        self.error = error


class RejectUndecodable(grpc.aio.ServerInterceptor):
    """INVALID_ARGUMENT for a Tandem request that does not parse (corrupt wire format, a
    string field that is no valid UTF-8); grpc's own answer would be UNKNOWN."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if (
            handler is None
            or not details.method.startswith(f"/{SERVICE_NAME}/")
            or handler.request_streaming
            or handler.request_deserializer is None
        ):
            return handler
        parse = handler.request_deserializer

        def deserialize(data: bytes):
            try:
                return parse(data)
            except DecodeError as e:
                return _Undecodable(e)

        async def check(request, context):
            if isinstance(request, _Undecodable):
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the request is not a valid message of {details.method}: "
                    f"{request.error} (strings must be UTF-8)",
                )

        if handler.response_streaming:

            async def guarded_stream(request, context):
                await check(request, context)
                async for response in handler.unary_stream(request, context):
                    yield response

            return handler._replace(request_deserializer=deserialize, unary_stream=guarded_stream)

        async def guarded_unary(request, context):
            await check(request, context)
            return await handler.unary_unary(request, context)

        return handler._replace(request_deserializer=deserialize, unary_unary=guarded_unary)


class TandemService(pb_grpc.TandemServicer):
    """Generate / ListModels / ClusterStatus over a `Dispatcher`."""

    def __init__(self, dispatcher, preparer: RequestPreparer, metrics=None, actions=()):
        self.dispatcher = dispatcher
        self.preparer = preparer
        self.metrics = metrics
        self.actions = actions  # the pool balancer's latest (scheduler.balancer.Action)
        self.started = time.monotonic()

    def prepare(self, request: pb.GenerateRequest) -> PreparedRequest:
        """The request validated and tokenized (blocking: `Generate` runs it on the
        preparer's thread)."""
        p = self.preparer
        p.check_model(request.model)
        p.check_request_id(request.request_id)
        kind = request.WhichOneof("input")
        if kind is None:
            raise InvalidRequest("the request has no input: set prompt, chat or prompt_token_ids")
        ids = p.prompt_ids(
            prompt=request.prompt if kind == "prompt" else None,
            messages=[{"role": m.role, "content": m.content} for m in request.chat.messages]
            if kind == "chat"
            else None,
            token_ids=list(request.prompt_token_ids.ids) if kind == "prompt_token_ids" else None,
        )
        fields = params_fields(request.params)
        for name in ("logprobs", "prompt_logprobs"):
            check_num_logprobs(p.limits, f"params.{name}", fields[name])
        params = p.sampling_params(len(ids), **fields)
        return PreparedRequest(new_request_id(request.request_id), tuple(ids), params)

    async def Generate(self, request, context):
        try:
            n = request.n if request.HasField("n") else 1
            best_of = request.best_of if request.HasField("best_of") else None
            # best_of > n streams too: the chosen choices' messages come once all have ended.
            check_choices(self.preparer.limits, n, best_of, stream=False)
            req = await self.preparer.run(self.prepare, request)
            key = client_key(dict(context.invocation_metadata()).get("authorization", ""))
            left = context.time_remaining()
            choices = generate_choices(
                lambda r: self.dispatcher.generate(r, key, left), req, n, best_of
            )
            async for chunk in choices:
                yield to_response(chunk)
        except InvalidRequest as e:
            self._count_error("INVALID_ARGUMENT")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except ServingError as e:
            self._count_error(e.code)
            if e.retry_after_s is not None:
                context.set_trailing_metadata((("retry-after", str(e.retry_after_s)),))
            await context.abort(
                getattr(grpc.StatusCode, e.code, grpc.StatusCode.INTERNAL), e.message
            )

    async def ListModels(self, request, context):
        p = self.preparer
        return pb.ListModelsResponse(
            models=[pb.ModelInfo(id=p.model_name, path=p.model_path, max_model_len=p.max_model_len)]
        )

    async def ClusterStatus(self, request, context):
        d = self.dispatcher
        workers = [
            pb.WorkerStatus(
                name=w.name,
                role=w.role,
                kv_address=d.workers[w.name].kv_address,
                healthy=w.healthy,
                num_queued_prompt_tokens=w.num_queued_prompt_tokens,
                num_running=w.num_running,
                num_free_blocks=w.num_free_blocks,
                num_total_blocks=w.num_total_blocks,
            )
            for w in await d.poll_loads()
        ]
        return pb.ClusterStatusResponse(
            mode=d.mode,
            model=self.preparer.model_name,
            workers=workers,
            num_requests_in_flight=d.num_in_flight,
            uptime_s=time.monotonic() - self.started,
            balancer_actions=[
                pb.BalancerAction(
                    age_s=time.monotonic() - a.at_s,
                    kind=a.kind,
                    role=a.role,
                    source=a.source,
                    reason=a.reason,
                    outcome=a.outcome,
                )
                for a in self.actions
            ],
        )

    def _count_error(self, code: str) -> None:
        if self.metrics is not None:
            self.metrics.errors.labels(code).inc()


def to_response(chunk) -> pb.GenerateResponse:
    msg = pb.GenerateResponse(
        request_id=chunk.request_id, token_ids=chunk.token_ids, text=chunk.text, index=chunk.index
    )
    if chunk.logprobs is not None:
        msg.logprobs.extend(_token_logprob(e) for e in chunk.logprobs)
    if chunk.prompt_logprobs is not None:
        msg.prompt_logprobs.extend(_token_logprob(e) for e in chunk.prompt_logprobs[1:] if e)
    if chunk.finish_reason is not None:
        msg.finish_reason = _FINISH.get(chunk.finish_reason, pb.FINISH_REASON_UNSPECIFIED)
        u, t = chunk.usage, chunk.timings
        msg.usage.CopyFrom(
            pb.Usage(
                prompt_tokens=u.prompt_tokens,
                completion_tokens=u.completion_tokens,
                cached_prompt_tokens=u.cached_prompt_tokens,
            )
        )
        msg.timings.CopyFrom(pb.Timings(**t.__dict__))
    return msg


def _token_logprob(e) -> pb.TokenLogprob:
    return pb.TokenLogprob(
        token_id=e.token_id,
        logprob=e.logprob,
        top=[pb.TopLogprob(token_id=t, logprob=v) for t, v in e.top],
    )


async def start_grpc_server(
    service: TandemService,
    host: str,
    port: int,
    api_key: str | None = None,
    tls: TLSConfig | None = None,
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Serve the API, grpc.health.v1 (SERVING for "" and the Tandem service) and reflection,
    over TLS when `tls` is given. Returns the server, its bound port (port 0: ephemeral) and
    the health servicer.
    A message past the preparer's `limits.max_request_bytes` gets RESOURCE_EXHAUSTED."""
    interceptors = [RejectUndecodable()] + ([ApiKeyCheck(api_key)] if api_key else [])
    options = [("grpc.max_receive_message_length", service.preparer.limits.max_request_bytes)]
    server = grpc.aio.server(interceptors=interceptors, options=options)
    pb_grpc.add_TandemServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    address = f"{host}:{port}"
    bound = (
        server.add_secure_port(address, server_credentials(tls))
        if tls
        else server.add_insecure_port(address)
    )
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, bound, health_servicer
