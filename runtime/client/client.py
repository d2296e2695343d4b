"""The blocking client of Tandem's gRPC API."""

from __future__ import annotations

import time
from collections.abc import Iterator

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


class Client:
    """A connection to one Tandem frontend (`url` is HOST:PORT of its gRPC port).

    Every call takes `timeout` (seconds, the call's deadline; default the client's), raises a
    `TandemError` subclass carrying the gRPC status on failure, and retries UNAVAILABLE with
    backoff per `retry`. Inputs: a text `prompt`, chat `messages` ([{role, content}], the
    model's chat template applied server-side) or `prompt_token_ids`; sampling keywords use
    vLLM's names (max_tokens, temperature, top_p, top_k, min_p, seed, stop, presence_penalty,
    frequency_penalty, repetition_penalty, logit_bias {token id: bias}, min_tokens, ...,
    logprobs and prompt_logprobs: top logprobs per token, of the raw model distribution); `n`
    and `best_of` ask for several choices (streamed chunks carry their `index`; see
    `generate_choices`). `continuous_usage_stats=True` puts the usage so far on every chunk,
    `request_id=` names the request. `tokenize`, `detokenize` and `version` ask the server's
    tokenizer and build.
    Breaking out of `stream()` cancels the request, which frees its KV blocks on the cluster.
    TLS: a grpcs:// URL, `tls=True` or a `ca_file` (PEM roots for a private CA; default the
    system's); `server_name` overrides the name checked against the server's certificate.
    """

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
        self._channel = open_channel(url, tls=tls, ca_file=ca_file, server_name=server_name)
        self._stub = pb_grpc.TandemStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = call_metadata(api_key)
        self.timeout, self.retry = timeout, retry

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    # -- generation -----------------------------------------------------------------------
    def stream(
        self,
        prompt: str | None = None,
        *,
        messages: list[dict] | None = None,
        prompt_token_ids: list[int] | None = None,
        model: str = "",
        timeout: float | None = None,
        **sampling,
    ) -> Iterator[StreamChunk]:
        """Yield `StreamChunk`s as tokens are generated."""
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
                for msg in call:
                    received = True
                    yield chunk_from_proto(msg)
                return
            except grpc.RpcError as e:
                if received or not self.retry.should_retry(e, attempt):
                    raise error_from_rpc(e) from None
            finally:
                call.cancel()  # no-op once finished; frees the request if we stopped early
            time.sleep(self.retry.backoff(attempt))

    def generate(self, prompt: str | None = None, **kwargs) -> Completion:
        """The whole completion at once (streamed underneath)."""
        check_single(kwargs)
        builder = CompletionBuilder()
        for chunk in self.stream(prompt, **kwargs):
            builder.add(chunk)
        return builder.build()

    def generate_choices(
        self, prompt: str | None = None, *, n: int = 1, **kwargs
    ) -> list[Completion]:
        """`n` completions of one prompt, by choice index; with `best_of`, the n with the
        highest cumulative logprob of that many, best first. Choice i of a seeded request
        samples with seed + i."""
        builder = ChoicesBuilder()
        for chunk in self.stream(prompt, n=n, **kwargs):
            builder.add(chunk)
        return builder.build()

    def chat(self, messages: list[dict], **kwargs) -> Completion:
        return self.generate(messages=messages, **kwargs)

    # -- the cluster ----------------------------------------------------------------------
    def list_models(self, timeout: float | None = None) -> list[pb.ModelInfo]:
        return list(self._unary(self._stub.ListModels, pb.ListModelsRequest(), timeout).models)

    def cluster_status(self, timeout: float | None = None) -> pb.ClusterStatusResponse:
        return self._unary(self._stub.ClusterStatus, pb.ClusterStatusRequest(), timeout)

    def tokenize(
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
        resp = self._unary(self._stub.Tokenize, request, timeout)
        return tokenized_from_proto(resp, return_token_strs)

    def detokenize(
        self, token_ids: list[int], *, model: str = "", timeout: float | None = None
    ) -> str:
        """The text of `token_ids` (special tokens included)."""
        request = pb.DetokenizeRequest(model=model, token_ids=list(token_ids))
        return (self._unary(self._stub.Detokenize, request, timeout)).text

    def version(self, timeout: float | None = None) -> Version:
        """The server's package version, API package and KV contract version."""
        return version_from_proto(
            self._unary(self._stub.GetVersion, pb.GetVersionRequest(), timeout)
        )

    def health(self, service: str = "", timeout: float | None = 5.0) -> str:
        """The grpc.health.v1 status name: "SERVING", "NOT_SERVING", ..."""
        resp = self._unary(
            self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def wait_until_serving(self, timeout: float = 60.0) -> None:
        """Block until the health check says SERVING; UnavailableError after `timeout`."""
        end = time.monotonic() + timeout
        while True:
            try:
                if self.health(timeout=2.0) == "SERVING":
                    return
            except Exception:
                if time.monotonic() > end:
                    raise
            if time.monotonic() > end:
                raise TimeoutError(f"not SERVING after {timeout:.0f} s")
            time.sleep(0.2)

    def _unary(self, method, request, timeout):
        attempt = 0
        while True:
            attempt += 1
            try:
                return method(request, timeout=self._deadline(timeout), metadata=self._metadata)
            except grpc.RpcError as e:
                if not self.retry.should_retry(e, attempt):
                    raise error_from_rpc(e) from None
            time.sleep(self.retry.backoff(attempt))

    def _deadline(self, timeout: float | None) -> float | None:
        return timeout if timeout is not None else self.timeout
