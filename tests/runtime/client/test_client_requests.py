"""The SDK's request building, error typing and retry policy (no server needed)."""

import grpc
import pytest

from runtime.api._proto import tandem_pb2 as pb
from runtime.client import InvalidArgumentError, RetryPolicy, TandemError, UnavailableError
from runtime.client.errors import error_from_rpc
from runtime.client.results import build_request, chunk_from_proto


class FakeRpcError(grpc.RpcError):
    def __init__(self, code, details):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


def test_build_request_sets_only_given_fields():
    req = build_request(
        "hi", max_tokens=5, temperature=0.0, stop="\n", stop_token_ids=[2], seed=None
    )
    assert req.WhichOneof("input") == "prompt" and req.params.max_tokens == 5
    assert req.params.HasField("temperature") and not req.params.HasField("seed")
    assert list(req.params.stop) == ["\n"] and list(req.params.stop_token_ids) == [2]
    chat = build_request(messages=[{"role": "user", "content": "x"}])
    assert chat.chat.messages[0].content == "x"
    with pytest.raises(TypeError, match="unknown sampling arguments"):
        build_request("hi", max_token=3)


def test_errors_are_typed_and_carry_the_status():
    err = error_from_rpc(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "prompt is empty"))
    assert isinstance(err, InvalidArgumentError) and err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details == "prompt is empty"
    other = error_from_rpc(FakeRpcError(grpc.StatusCode.INTERNAL, "boom"))
    assert type(other) is TandemError
    assert isinstance(
        error_from_rpc(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "")), UnavailableError
    )


def test_retry_policy_retries_only_unavailable_with_growing_backoff():
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.1, max_backoff_s=0.3)
    unavailable = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "")
    assert policy.should_retry(unavailable, 1) and policy.should_retry(unavailable, 2)
    assert not policy.should_retry(unavailable, 3)
    assert not policy.should_retry(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, ""), 1)
    assert 0.05 <= policy.backoff(1) <= 0.1 and 0.15 <= policy.backoff(3) <= 0.3


def test_last_chunk_carries_usage_and_timings():
    msg = pb.GenerateResponse(
        request_id="r",
        token_ids=[1],
        text="a",
        finish_reason=pb.STOP,
        usage=pb.Usage(prompt_tokens=3, completion_tokens=1),
        timings=pb.Timings(prefill_s=0.5, kv_transfer_bytes=10),
    )
    chunk = chunk_from_proto(msg)
    assert chunk.finish_reason == "stop" and chunk.usage.prompt_tokens == 3
    assert chunk.timings.prefill_s == 0.5 and "KV transfer" in chunk.timings.describe()
