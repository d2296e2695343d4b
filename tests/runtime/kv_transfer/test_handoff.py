"""Handoffs between two engines in one process over loopback gRPC: results and every failure."""

import socket
import time

import grpc
import pytest
import torch
from kv_handoff_helpers import GREEDY, PROMPTS, SECRET, config
from tls_helpers import self_signed_cert

from runtime.kv_transfer import KVTransferError
from runtime.kv_transfer._proto import kv_transfer_pb2 as pb


def wait_for(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.01)


def error_of(future, timeout=30.0) -> KVTransferError:
    with pytest.raises(KVTransferError) as info:
        future.result(timeout=timeout)
    return info.value


def assert_clean(pair, start):
    """Both sides hold nothing for failed handoffs: free blocks back where they started."""
    wait_for(lambda: pair.receiver.num_active == 0)
    assert pair.free_blocks() == start
    assert not pair.p_thread.call(pair.prefill.has_unfinished_requests)
    assert not pair.d_thread.call(pair.decode.has_unfinished_requests)


# The prefill engine on the CPU, or on a GPU handing off to a CPU decode engine (mixed
# hardware: a GPU cache packs on the device; layer-wise KV is staged on a side stream).
PREFILL_DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
    ),
]


@pytest.mark.parametrize("prefill_device", PREFILL_DEVICES)
@pytest.mark.parametrize(
    "layerwise_min_tokens,chunk_bytes,budget",
    [
        (10**9, 1 << 20, 2048),  # every prompt after its prefill, small ones in one message
        (1, 4096, 16),  # every prompt layer by layer over chunked-prefill steps
        (40, 2048, 64),  # mixed, with chunks split by tokens
    ],
)
def test_handoff_equals_colocated(
    make_pair, colocated_reference, layerwise_min_tokens, chunk_bytes, budget, prefill_device
):
    pair = make_pair(
        prefill_kw={"budget": budget, "device": prefill_device},
        sender_cfg=config(layerwise_min_tokens=layerwise_min_tokens, chunk_bytes=chunk_bytes),
    )
    start = pair.free_blocks()
    submitted = [pair.submit(p) for p in PROMPTS]
    futures = [f for _, f in submitted]
    pair.prefill_until(futures)
    results = [f.result() for f in futures]
    assert [r.layerwise for r in results] == [len(p) >= layerwise_min_tokens for p in PROMPTS]
    assert all(r.num_chunks >= 1 and r.num_bytes > 0 for r in results)
    assert pair.free_blocks()[0] == start[0]  # released after each ack
    outputs = pair.decode_all()
    assert [outputs[rid] for rid, _ in submitted] == colocated_reference
    assert pair.free_blocks() == start


@pytest.mark.parametrize("prefill_device", PREFILL_DEVICES)
def test_send_converts_dtype_and_block_size_exactly(make_pair, prefill_device):
    pair = make_pair(
        prefill_kw={"dtype": "bfloat16", "block_size": 4, "device": prefill_device},
        decode_kw={"dtype": "float32", "block_size": 16},
    )
    prompt = PROMPTS[6]
    out = pair.p_thread.call(pair.prefill.generate, prompt_token_ids=[prompt], params=GREEDY)[0]
    sent = pair.p_thread.call(
        lambda: [
            (layer, k.cpu(), v.cpu()) for layer, k, v in pair.prefill.export_kv(out.request_id)
        ]
    )
    result = pair.sender.send(out.kv_handle, pair.target).result(timeout=30)
    layers, kv_heads, head_dim, bf16 = 2, 2, 16, 2
    assert result.num_bytes == layers * 2 * len(prompt) * kv_heads * head_dim * bf16

    def imported():
        seq = pair.decode.requests[out.request_id].seq
        return [
            pair.decode.runner.read_kv(seq.block_table, len(prompt), layer)
            for layer in range(len(sent))
        ]

    for (layer, k, v), (k2, v2) in zip(sent, pair.d_thread.call(imported)):
        assert k2.dtype == torch.float32
        assert torch.equal(k2, k.float()) and torch.equal(v2, v.float())


class FlipOneByte(grpc.StreamUnaryClientInterceptor):
    """Flips one bit in the data of the first chunk that goes out."""

    def intercept_stream_unary(self, continuation, details, request_iterator):
        def corrupted():
            done = False
            for raw in request_iterator:  # the sender hands gRPC serialized messages
                msg = pb.HandoffMessage.FromString(raw)
                if msg.chunks and not done:
                    data = bytearray(msg.chunks[0].data)
                    data[len(data) // 2] ^= 0x10
                    msg.chunks[0].data = bytes(data)
                    raw, done = msg.SerializeToString(), True
                yield raw

        return continuation(details, corrupted())


@pytest.mark.parametrize("layerwise_min_tokens", [1, 10**9])
def test_flipped_byte_is_data_loss_and_both_sides_free(make_pair, layerwise_min_tokens):
    from runtime.kv_transfer.auth import make_channel

    cfg = config(layerwise_min_tokens=layerwise_min_tokens, chunk_bytes=2048)
    pair = make_pair(
        sender_cfg=cfg,
        prefill_kw={"budget": 32},
        channel_factory=lambda t: grpc.intercept_channel(make_channel(t, cfg), FlipOneByte()),
    )
    start = pair.free_blocks()
    _, future = pair.submit(PROMPTS[6])
    pair.prefill_until([future])
    err = error_of(future)
    assert err.code == grpc.StatusCode.DATA_LOSS and "checksum" in err.message
    assert_clean(pair, start)


def test_stalled_sender_is_deadline_exceeded_and_both_sides_free(make_pair):
    pair = make_pair(
        sender_cfg=config(layerwise_min_tokens=1, deadline_s=1.0), prefill_kw={"budget": 16}
    )
    start = pair.free_blocks()
    _, future = pair.submit(PROMPTS[6])
    for _ in range(3):  # a few layer-wise chunks leave, then the prefill stalls
        pair.p_thread.call(pair.sender.step)
    wait_for(lambda: pair.receiver.num_active == 1)
    err = error_of(future)
    assert err.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert_clean(pair, start)


def test_cancelled_handoff_frees_both_sides(make_pair):
    pair = make_pair(sender_cfg=config(layerwise_min_tokens=1), prefill_kw={"budget": 16})
    start = pair.free_blocks()
    rid, future = pair.submit(PROMPTS[6])
    pair.p_thread.call(pair.sender.step)
    wait_for(lambda: pair.receiver.num_active == 1)
    pair.sender.cancel(rid)
    assert error_of(future).code == grpc.StatusCode.CANCELLED
    assert_clean(pair, start)


def test_model_mismatch_is_failed_precondition_naming_both(make_pair, tmp_path):
    from tiny_model import make_tiny_model

    other = make_tiny_model(tmp_path / "other", seed=1)
    pair = make_pair(decode_model=other)
    start = pair.free_blocks()
    _, future = pair.submit(PROMPTS[0])
    pair.prefill_until([future])
    err = error_of(future)
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert pair.sender.fingerprint in err.message and pair.receiver.fingerprint in err.message
    assert pair.sender.fingerprint != pair.receiver.fingerprint
    assert_clean(pair, start)


def test_receiver_out_of_blocks_is_resource_exhausted(make_pair):
    pair = make_pair(decode_kw={"num_blocks": 4})
    start = pair.free_blocks()
    _, future = pair.submit(PROMPTS[3])  # 50 tokens > 4 blocks of 8
    pair.prefill_until([future])
    err = error_of(future)
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "free KV blocks" in err.message
    assert_clean(pair, start)


def test_full_decode_side_makes_the_handoff_wait_not_fail(make_pair, colocated_reference):
    # 8 blocks of 8 tokens: the first request's 51 tokens (+ its outputs) leave no room for
    # the second's 38; the second handoff waits until the first finishes, then lands.
    pair = make_pair(decode_kw={"num_blocks": 8})
    start = pair.free_blocks()
    first, f1 = pair.submit(PROMPTS[3])
    pair.prefill_until([f1])
    assert f1.result().num_chunks
    second, f2 = pair.submit(PROMPTS[5])
    for _ in range(3):  # computes the second prompt; its header waits
        pair.p_thread.call(pair.sender.step)
    wait_for(lambda: pair.receiver.num_waiting_for_blocks == 1)
    assert not f2.done()
    results = {}
    while not f2.done() or pair.d_thread.call(pair.decode.has_unfinished_requests):
        pair.p_thread.call(pair.sender.step)  # releases the first's prefill blocks after its ack
        for out in pair.d_thread.call(pair.decode.step):
            if out.finished:
                results[out.request_id] = out.token_ids
    assert f2.result().num_chunks and pair.receiver.num_waited_for_blocks == 1
    assert results == {first: colocated_reference[3], second: colocated_reference[5]}
    assert pair.receiver.num_waiting_for_blocks == 0
    assert_clean(pair, start)


def test_a_handoff_waits_for_blocks_only_block_wait_s(make_pair):
    pair = make_pair(decode_kw={"num_blocks": 8}, receiver_cfg=config(block_wait_s=0.3))
    start = pair.free_blocks()
    first, f1 = pair.submit(PROMPTS[3])
    pair.prefill_until([f1])
    _, f2 = pair.submit(PROMPTS[5])
    began = time.monotonic()
    pair.prefill_until([f2])
    err = error_of(f2)
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "after waiting" in err.message
    assert 0.3 <= time.monotonic() - began < 10
    pair.d_thread.call(pair.decode.abort, first)
    assert_clean(pair, start)


def test_dead_peer_is_unavailable_and_prefill_frees(make_pair):
    pair = make_pair()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    start = pair.free_blocks()
    _, future = pair.submit(PROMPTS[0], target=dead)
    pair.prefill_until([future])
    assert error_of(future).code == grpc.StatusCode.UNAVAILABLE
    assert_clean(pair, start)


@pytest.mark.parametrize("secret", ["wrong-secret", None])
def test_missing_or_wrong_secret_is_unauthenticated(make_pair, secret):
    from runtime.kv_transfer._proto import kv_transfer_pb2_grpc as pb_grpc

    pair = make_pair()
    if secret is not None:
        sender = type(pair.sender)(pair.prefill, pair.p_thread, config(secret=secret))
        start = pair.free_blocks()
        rid = pair.p_thread.call(
            pair.prefill.add_request, params=GREEDY, prompt_token_ids=PROMPTS[0]
        )
        future = sender.route(rid, pair.target)
        for _ in range(5):
            pair.p_thread.call(sender.step)
        err = error_of(future)
        assert err.code == grpc.StatusCode.UNAUTHENTICATED
        assert_clean(pair, start)
        sender.close()
        return
    with grpc.insecure_channel(pair.target) as channel:
        stub = pb_grpc.KVTransferStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Handoff(iter([pb.HandoffMessage()]), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_eight_concurrent_handoffs_complete(make_pair, colocated_reference):
    pair = make_pair(
        sender_cfg=config(layerwise_min_tokens=20, chunk_bytes=4096, max_inflight_bytes=32 << 10),
        prefill_kw={"budget": 96},
    )
    start = pair.free_blocks()
    prompts = (PROMPTS + PROMPTS)[:8]
    submitted = [pair.submit(p) for p in prompts]
    pair.prefill_until([f for _, f in submitted])
    assert all(f.result().num_bytes > 0 for _, f in submitted)
    outputs = pair.decode_all()
    assert [outputs[rid] for rid, _ in submitted] == (colocated_reference * 2)[:8]
    assert pair.free_blocks() == start
    assert pair.sender._budget.used == 0


def test_request_finishing_on_prefill_has_nothing_to_hand_off(make_pair):
    from runtime.engine import SamplingParams

    pair = make_pair(sender_cfg=config(layerwise_min_tokens=1))
    start = pair.free_blocks()
    _, future = pair.submit(PROMPTS[6], params=SamplingParams(temperature=0.0, max_tokens=1))
    pair.prefill_until([future])
    assert future.result().finished_on_prefill
    assert_clean(pair, start)


def test_tls_handoff(make_pair, colocated_reference, tmp_path):
    cert, key = self_signed_cert(tmp_path)
    from runtime.kv_transfer import TLSConfig

    server_cfg = config(tls=TLSConfig(cert_file=str(cert), key_file=str(key)))
    client_cfg = config(tls=TLSConfig(ca_file=str(cert), server_name="localhost"))
    pair = make_pair(sender_cfg=client_cfg, receiver_cfg=server_cfg, tls_address="localhost")
    rid, future = pair.submit(PROMPTS[0])
    pair.prefill_until([future])
    future.result()
    assert pair.decode_all()[rid] == colocated_reference[0]
    plain = type(pair.sender)(pair.prefill, pair.p_thread, config())  # no TLS: refused
    rid = pair.p_thread.call(pair.prefill.add_request, params=GREEDY, prompt_token_ids=PROMPTS[1])
    future = plain.route(rid, pair.target)
    for _ in range(3):
        pair.p_thread.call(plain.step)
    assert error_of(future).code == grpc.StatusCode.UNAVAILABLE
    plain.close()


def mid_stream(make_pair):
    """A layer-wise handoff one prefill step in: the decode side has reserved its blocks."""
    pair = make_pair(sender_cfg=config(layerwise_min_tokens=1), prefill_kw={"budget": 16})
    start = pair.free_blocks()
    rid, future = pair.submit(PROMPTS[6])
    pair.p_thread.call(pair.sender.step)
    need = pair.decode.block_manager.blocks_needed(len(PROMPTS[6]) + 1)
    wait_for(lambda: pair.free_blocks()[1] == start[1] - need)
    return pair, start, rid, future


def test_decode_engine_runs_nothing_until_commit(make_pair):
    """Mid-stream the decode side holds the request's blocks (reserved at the header, KV
    written as it lands) but no request: nothing decodes incomplete KV."""
    pair, _, rid, future = mid_stream(make_pair)
    assert pair.receiver.num_active == 1
    assert not pair.d_thread.call(lambda: rid in pair.decode.requests)
    assert not pair.d_thread.call(pair.decode.has_unfinished_requests)
    pair.prefill_until([future])
    assert future.result().layerwise
    assert pair.d_thread.call(lambda: rid in pair.decode.requests)


def test_decode_side_abort_mid_stream_is_cancelled_and_both_sides_free(make_pair):
    """A client cancel reaching the decode worker while the KV streams in: the import's
    blocks are freed at once, the call ends CANCELLED and the prefill side frees too."""
    pair, start, rid, future = mid_stream(make_pair)
    assert pair.d_thread.call(pair.decode.abort, rid)
    pair.prefill_until([future])
    err = error_of(future)
    assert err.code == grpc.StatusCode.CANCELLED and "aborted" in err.message
    assert_clean(pair, start)


def test_cpu_prefill_defaults_to_one_message_after_the_prefill(make_pair):
    """Layer-wise streaming is off by default on a CPU engine (it only slowed handoffs there)."""
    pair = make_pair(prefill_kw={"budget": 16})
    assert pair.sender.layerwise_min_tokens is None
    _, future = pair.submit(PROMPTS[6])
    pair.prefill_until([future])
    assert not future.result().layerwise


def test_calls_without_a_deadline_are_refused(make_pair):
    from runtime.kv_transfer._proto import kv_transfer_pb2_grpc as pb_grpc
    from runtime.kv_transfer.auth import secret_metadata

    pair = make_pair()
    with grpc.insecure_channel(pair.target) as channel:
        stub = pb_grpc.KVTransferStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Handoff(iter([pb.HandoffMessage()]), metadata=secret_metadata(SECRET))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "deadline" in info.value.details()


def test_a_v1_sender_is_refused_naming_both_versions(make_pair):
    """A contract-v1 stream (its chunks carry a fixed32 CRC-32C in field 8) in one message:
    the receiver skips the retired field as protobuf would and refuses at the version check."""
    from runtime.kv_transfer.auth import secret_metadata
    from runtime.kv_transfer.wire import CONTRACT_VERSION, HANDOFF_METHOD

    pair = make_pair()
    header = pb.Header(
        version=1, request_id="old", num_layers=2, num_kv_heads=2, head_dim=8, num_tokens=4
    )
    v1_chunk = pb.Chunk(index=0, layer_end=1, token_end=4, data=b"\0" * 64).SerializeToString()
    v1_chunk += b"\x45" + (1234).to_bytes(4, "little")  # field 8, wire type 5 (fixed32)
    message = (
        pb.HandoffMessage(header=header).SerializeToString()
        + b"\x12"
        + bytes([len(v1_chunk)])
        + v1_chunk
    )  # one-byte length: < 128
    start = pair.free_blocks()
    with grpc.insecure_channel(pair.target) as channel:
        handoff = channel.stream_unary(HANDOFF_METHOD, request_serializer=None)
        with pytest.raises(grpc.RpcError) as info:
            handoff(iter([message]), timeout=10, metadata=secret_metadata(SECRET))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"v1, this receiver v{CONTRACT_VERSION}" in info.value.details()
    assert_clean(pair, start)
