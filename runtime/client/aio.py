"""The asyncio client of Tandem's gRPC API (same calls as `Client`, awaitable)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runtime.api._proto import tandem_pb2 as pb
from runtime.api._proto import tandem_pb2_grpc as pb_grpc
from runtime.client._channel import call_metadata, open_channel
from runtime.client._retry import RetryPolicy
from runtime.client.errors import error_from_rpc
from runtime.client.results import (
    ChoicesBuilder,
    Completion,
    CompletionBuilder,
    StreamChunk,
    Tokenized,
    Version,
    build_request,
    build_tokenize_request,
    check_single,
    chunk_from_proto,
    tokenized_from_proto,
    version_from_proto,
)


class AsyncClient:
    """`Client`'s contract on grpc.aio: `async for chunk in client.stream(...)`, `await
    client.generate(...)`. Create it inside the event loop that uses it."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout: float | None = 60.0,
        retry: RetryPolicy = RetryPolicy(),
        tls: bool | None = None,
        ca_file: str | None = None,
        server_name: str | None = None,
    ):
        self._channel = open_channel(
            url, tls=tls, ca_file=ca_file, server_name=server_name, aio=True
        )
        self._stub = pb_grpc.TandemStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = call_metadata(api_key)
        self.timeout, self.retry = timeout, retry

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def stream(
        self,
        prompt: str | None = None,
        *,
        messages: list[dict] | None = None,
        prompt_token_ids: list[int] | None = None,
        model: str = "",
        timeout: float | None = None,
        **sampling,
    ) -> AsyncIterator[StreamChunk]:
        request = build_request(
            prompt, messages=messages, prompt_token_ids=prompt_token_ids, model=model, **sampling
        )
        attempt = 0
        while True:
            attempt += 1
            call = self._stub.Generate(
                request, timeout=self._deadline(timeout), metadata=self._metadata
            )
            received = False
            try:
                async for msg in call:
                    received = True
                    yield chunk_from_proto(msg)
                return
            except grpc.RpcError as e:
                if received or not self.retry.should_retry(e, attempt):
                    raise error_from_rpc(e) from None
            finally:
                call.cancel()
            await asyncio.sleep(self.retry.backoff(attempt))

    async def generate(self, prompt: str | None = None, **kwargs) -> Completion:
        check_single(kwargs)
        builder = CompletionBuilder()
        async for chunk in self.stream(prompt, **kwargs):
            builder.add(chunk)
        return builder.build()

    async def generate_choices(
        self, prompt: str | None = None, *, n: int = 1, **kwargs
    ) -> list[Completion]:
        """`n` completions (see `Client.generate_choices`)."""
        builder = ChoicesBuilder()
        async for chunk in self.stream(prompt, n=n, **kwargs):
            builder.add(chunk)
        return builder.build()

    async def chat(self, messages: list[dict], **kwargs) -> Completion:
        return await self.generate(messages=messages, **kwargs)

    async def list_models(self, timeout: float | None = None) -> list[pb.ModelInfo]:
        resp = await self._unary(self._stub.ListModels, pb.ListModelsRequest(), timeout)
        return list(resp.models)

    async def cluster_status(self, timeout: float | None = None) -> pb.ClusterStatusResponse:
        return await self._unary(self._stub.ClusterStatus, pb.ClusterStatusRequest(), timeout)

    async def tokenize(
        self,
        prompt: str | None = None,
        *,
        messages: list[dict] | None = None,
        model: str = "",
        return_token_strs: bool = False,
        timeout: float | None = None,
    ) -> Tokenized:
        """The token ids a request with this `prompt` or these chat `messages` would run on
        (the server's tokenizer and chat template), and the context they share."""
        request = build_tokenize_request(
            prompt, messages=messages, model=model, return_token_strs=return_token_strs
        )
        resp = await self._unary(self._stub.Tokenize, request, timeout)
        return tokenized_from_proto(resp, return_token_strs)

    async def detokenize(
        self, token_ids: list[int], *, model: str = "", timeout: float | None = None
    ) -> str:
        """The text of `token_ids` (special tokens included)."""
        request = pb.DetokenizeRequest(model=model, token_ids=list(token_ids))
        return (await self._unary(self._stub.Detokenize, request, timeout)).text

    async def version(self, timeout: float | None = None) -> Version:
        """The server's package version, API package and KV contract version."""
        return version_from_proto(
            await self._unary(self._stub.GetVersion, pb.GetVersionRequest(), timeout)
        )

    async def health(self, service: str = "", timeout: float | None = 5.0) -> str:
        resp = await self._unary(
            self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    async def _unary(self, method, request, timeout):
        attempt = 0
        while True:
            attempt += 1
            try:
                return await method(
                    request, timeout=self._deadline(timeout), metadata=self._metadata
                )
            except grpc.RpcError as e:
                if not self.retry.should_retry(e, attempt):
                    raise error_from_rpc(e) from None
            await asyncio.sleep(self.retry.backoff(attempt))

    def _deadline(self, timeout: float | None) -> float | None:
        return timeout if timeout is not None else self.timeout
