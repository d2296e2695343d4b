"""The public gRPC API (proto/tandem.proto) on grpc.aio, with health checks and reflection."""

from __future__ import annotations

import hmac
import json
import time
import uuid
from dataclasses import replace

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from runtime.api._proto import tandem_pb2 as pb
from runtime.api._proto import tandem_pb2_grpc as pb_grpc
from runtime.frontend.choices import check_choices, check_num_logprobs, generate_choices
from runtime.frontend.dispatch import client_key
from runtime.frontend.grpc_api import (
    ContinuousUsage,
    TokenizerRpcs,
    check_known_fields,
    messages_from_proto,
)
from runtime.frontend.requests import InvalidRequest, PreparedRequest, RequestPreparer
from runtime.frontend.results import ServingError
from runtime.frontend.structured import GrammarRequest, one_grammar, schema_text
from runtime.frontend.tools import ToolUse
from runtime.kv_transfer import TLSConfig
from runtime.kv_transfer.auth import server_credentials
from runtime.observability.grpc_interceptor import GrpcObservability

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Tandem"].full_name
_FINISH = {"stop": pb.STOP, "length": pb.LENGTH, "abort": pb.ABORT, "tool_calls": pb.TOOL_CALLS}
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
        "presence_penalty": opt("presence_penalty"),
        "frequency_penalty": opt("frequency_penalty"),
        "repetition_penalty": opt("repetition_penalty"),
        "logit_bias": dict(p.logit_bias) or None,
        "min_tokens": opt("min_tokens"),
        "grammar": _grammar(p),
        "logprobs": opt("logprobs"),
        "prompt_logprobs": opt("prompt_logprobs"),
    }


def _grammar(p: pb.SamplingParams) -> GrammarRequest | None:
    def given(name: str, kind: str, spec: str) -> GrammarRequest:
        return GrammarRequest(f"params.{name}", kind, spec)

    return one_grammar(
        given("guided_json", "json_schema", schema_text("params.guided_json", p.guided_json))
        if p.guided_json
        else None,
        given("guided_regex", "regex", p.guided_regex) if p.guided_regex else None,
        given("guided_choice", "choice", json.dumps(list(p.guided_choice)))
        if p.guided_choice
        else None,
        given("json_object", "json_object", "") if p.json_object else None,
    )


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


class TandemService(TokenizerRpcs, pb_grpc.TandemServicer):
    """Generate / ListModels / ClusterStatus (and grpc_api's Tokenize / Detokenize /
    GetVersion) over a `Dispatcher`."""

    def __init__(self, dispatcher, preparer: RequestPreparer, metrics=None, actions=()):
        self.dispatcher = dispatcher
        self.preparer = preparer
        self.metrics = metrics
        self.actions = actions  # the pool balancer's latest (scheduler.balancer.Action)
        self.started = time.monotonic()

    def prepare(self, request: pb.GenerateRequest) -> PreparedRequest:
        """The request validated and tokenized (blocking: `Generate` runs it on the
        preparer's thread)."""
        return self.prepare_with_tools(request)[0]

    def prepare_with_tools(
        self, request: pb.GenerateRequest
    ) -> tuple[PreparedRequest, ToolUse | None]:
        """`prepare`, and the request's tools when it may call any."""
        p = self.preparer
        check_known_fields(request)
        p.check_model(request.model)
        p.check_request_id(request.request_id)
        kind = request.WhichOneof("input")
        if kind is None:
            raise InvalidRequest("the request has no input: set prompt, chat or prompt_token_ids")
        tool_use = None
        if request.tools or request.tool_choice:
            if kind != "chat":
                raise InvalidRequest("tools need chat input: send the messages in chat")
            tool_use = ToolUse.from_request(
                tools_from_proto(request.tools),
                _tool_choice(request.tool_choice),
                p.tokenizer.chat_template,
            )
        ids = p.prompt_ids(
            prompt=request.prompt if kind == "prompt" else None,
            messages=messages_from_proto(request.chat) if kind == "chat" else None,
            token_ids=list(request.prompt_token_ids.ids) if kind == "prompt_token_ids" else None,
            tools=list(tool_use.tools) if tool_use is not None else None,
        )
        fields = params_fields(request.params)
        for name in ("logprobs", "prompt_logprobs"):
            check_num_logprobs(p.limits, f"params.{name}", fields[name])
        if tool_use is not None:
            fields["grammar"] = one_grammar(fields["grammar"], tool_use.grammar())
        params = p.sampling_params(len(ids), **fields)
        return PreparedRequest(new_request_id(request.request_id), tuple(ids), params), tool_use

    async def Generate(self, request, context):
        try:
            n = request.n if request.HasField("n") else 1
            best_of = request.best_of if request.HasField("best_of") else None
            # best_of > n streams too: the chosen choices' messages come once all have ended.
            check_choices(self.preparer.limits, n, best_of, stream=False)
            received = time.monotonic()
            req, tool_use = await self.preparer.run(self.prepare_with_tools, request)
            req = replace(req, received_at=received)
            key = client_key(dict(context.invocation_metadata()).get("authorization", ""))
            left = context.time_remaining()
            usage = (
                ContinuousUsage(len(req.prompt_token_ids))
                if request.continuous_usage_stats
                else None
            )
            texts: dict[int, list[str]] = {}  # per choice, for its tool calls
            choices = generate_choices(
                lambda r: self.dispatcher.generate(r, key, left), req, n, best_of
            )
            async for chunk in choices:
                response = to_response(chunk)
                if tool_use is not None:
                    texts.setdefault(chunk.index, []).append(chunk.text)
                    response = with_tool_calls(response, tool_use, "".join(texts[chunk.index]))
                yield usage.stamp(response) if usage else response
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


def tools_from_proto(tools) -> list[dict]:
    """FunctionTool messages as OpenAI tool definitions (what chat templates render)."""
    out = []
    for i, t in enumerate(tools):
        if not t.name:
            raise InvalidRequest(f"tools[{i}].name is empty: name the function")
        function: dict = {"name": t.name}
        if t.description:
            function["description"] = t.description
        if t.parameters_json:
            try:
                function["parameters"] = json.loads(t.parameters_json)
            except ValueError as e:
                raise InvalidRequest(f"tools[{i}].parameters_json is not valid JSON: {e}") from None
            if not isinstance(function["parameters"], dict):
                raise InvalidRequest(f"tools[{i}].parameters_json must be a JSON schema object")
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: str):
    if choice in ("", "auto", "none", "required"):
        return choice or None
    return {"type": "function", "function": {"name": choice}}


def with_tool_calls(msg: pb.GenerateResponse, tool_use: ToolUse, text: str) -> pb.GenerateResponse:
    """The last message of a request with tools gets the calls parsed from its whole text
    (finish TOOL_CALLS when the model chose to call, STOP for a call forced by name)."""
    if msg.finish_reason == pb.FINISH_REASON_UNSPECIFIED:
        return msg
    _, calls = tool_use.parse(text)
    for c in calls:
        f = c["function"]
        msg.tool_calls.add(id=c["id"], name=f["name"], arguments_json=f["arguments"])
    if calls and msg.finish_reason == pb.STOP and not tool_use.named:
        msg.finish_reason = pb.TOOL_CALLS
    return msg


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
    interceptors = [GrpcObservability(), RejectUndecodable()] + (
        [ApiKeyCheck(api_key)] if api_key else []
    )
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
