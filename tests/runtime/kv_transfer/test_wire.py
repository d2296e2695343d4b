"""The wire format alone: byte-exact raw round trips across block sizes, layouts and dtypes."""

import grpc
import pytest
import torch

from kernels.kv_pack import pack_kv, unpack_kv
from runtime.engine import KVHandle, SamplingParams
from runtime.kv_transfer import KVTransferError, model_fingerprint
from runtime.kv_transfer._proto import kv_transfer_pb2 as pb
from runtime.kv_transfer.assembly import KVAssembly
from runtime.kv_transfer.handles import handle_from_proto, state_to_proto
from runtime.kv_transfer.wire import (
    WireSpec,
    decode_chunk,
    encode_chunk,
    make_header,
    spec_from_header,
    token_splits,
)

LAYERS, HEADS, DIM = 3, 2, 8


def paged_cache(num_tokens, block_size, layout, dtype, seed):
    """A random cache holding one sequence's KV in shuffled blocks, and its block table."""
    gen = torch.Generator().manual_seed(seed)
    nblocks = -(-num_tokens // block_size) + 5
    shape = (
        (LAYERS, 2, nblocks, block_size, HEADS, DIM)
        if layout == "NHD"
        else (LAYERS, 2, nblocks, HEADS, block_size, DIM)
    )
    cache = torch.randn(shape, generator=gen).to(dtype)
    table = torch.randperm(nblocks, generator=gen)[: -(-num_tokens // block_size)]
    return cache, table


def send(cache, table, layout, spec, chunk_bytes):
    """The stream a sender puts on the wire: serialized messages of ~chunk_bytes chunks."""
    wire = [make_header("r", "fp", spec, cache.shape[3], layout).SerializeToString()]
    index = 0
    for layer in range(spec.num_layers):
        kv = pack_kv(cache[layer], table, 0, spec.num_tokens, layout)[None]
        for a, b in token_splits(spec, 1, 0, spec.num_tokens, chunk_bytes):
            chunk = encode_chunk(index, layer, a, kv[:, :, a:b], spec)
            wire.append(pb.HandoffMessage(chunks=[chunk]).SerializeToString())
            index += 1
    return wire


def receive(wire, dst_cache, dst_table, layout):
    header = pb.Header.FromString(wire[0])
    spec = spec_from_header(header)
    assembly = KVAssembly(header, spec, dst_cache.dtype)
    for raw in wire[1:]:
        for chunk in pb.HandoffMessage.FromString(raw).chunks:
            layer, start, kv = assembly.add(chunk)
            unpack_kv(dst_cache[layer : layer + kv.shape[0]], dst_table, kv, start, layout)
    return assembly


@pytest.mark.parametrize(
    "src_bs,src_layout,dst_bs,dst_layout",
    [
        (16, "NHD", 16, "NHD"),
        (4, "NHD", 16, "NHD"),
        (16, "NHD", 5, "HND"),
        (8, "HND", 8, "NHD"),
        (3, "HND", 32, "HND"),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_raw_round_trip_is_byte_exact(src_bs, src_layout, dst_bs, dst_layout, dtype):
    tokens = 77
    src, src_table = paged_cache(tokens, src_bs, src_layout, dtype, seed=0)
    dst, dst_table = paged_cache(tokens, dst_bs, dst_layout, dtype, seed=1)
    spec = WireSpec(dtype, LAYERS, HEADS, DIM, tokens, "raw", src_bs)
    wire = send(src, src_table, src_layout, spec, chunk_bytes=1000)
    assert len(wire) > 1 + LAYERS  # token ranges really were split
    receive(wire, dst, dst_table, dst_layout)
    for layer in range(LAYERS):
        want = pack_kv(src[layer], src_table, 0, tokens, src_layout)
        got = pack_kv(dst[layer], dst_table, 0, tokens, dst_layout)
        assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))


def test_raw_round_trip_converts_dtype_exactly():
    src, table = paged_cache(20, 4, "NHD", torch.bfloat16, seed=0)
    dst, dst_table = paged_cache(20, 8, "NHD", torch.float32, seed=1)
    spec = WireSpec(torch.bfloat16, LAYERS, HEADS, DIM, 20, "raw", 4)
    receive(send(src, table, "NHD", spec, 1 << 20), dst, dst_table, "NHD")
    for layer in range(LAYERS):
        assert torch.equal(
            pack_kv(dst[layer], dst_table, 0, 20), pack_kv(src[layer], table, 0, 20).float()
        )


@pytest.mark.parametrize("encoding,max_rel_err", [("int8", 0.01), ("fp8", 0.07)])
def test_quantized_round_trip_is_close_and_smaller(encoding, max_rel_err):
    tokens = 64
    src, table = paged_cache(tokens, 16, "NHD", torch.bfloat16, seed=0)
    dst, dst_table = paged_cache(tokens, 16, "NHD", torch.bfloat16, seed=1)
    raw = WireSpec(torch.bfloat16, LAYERS, HEADS, DIM, tokens, "raw", 16)
    spec = WireSpec(torch.bfloat16, LAYERS, HEADS, DIM, tokens, encoding, 16)
    received = receive(send(src, table, "NHD", spec, 1 << 20), dst, dst_table, "NHD")
    raw_bytes = sum(raw.chunk_nbytes(LAYERS, tokens))
    assert raw_bytes / received.num_bytes >= 1.9
    for layer in range(LAYERS):
        want = pack_kv(src[layer], table, 0, tokens).float()
        got = pack_kv(dst[layer], dst_table, 0, tokens).float()
        assert ((got - want).abs().max() / want.abs().max()) < max_rel_err


def test_uneven_groups_quantize_per_layer():
    spec = WireSpec(torch.float32, 2, HEADS, DIM, 10, "int8", 4)  # 10 tokens: groups 4, 4, 2
    kv = torch.randn(2, 2, 10, HEADS, DIM)
    chunk = encode_chunk(0, 0, 0, kv, spec)
    assert len(chunk.scales) == 2 * 2 * 3 * HEADS * 4
    assert (decode_chunk(chunk, spec, torch.float32) - kv).abs().max() < 0.05


def chunk_of(spec, **overrides):
    chunk = encode_chunk(0, 0, 0, torch.randn(1, 2, 4, HEADS, DIM), spec)
    for key, value in overrides.items():
        setattr(chunk, key, value)
    return chunk


def test_decode_refuses_corrupt_short_and_stray_chunks():
    spec = WireSpec(torch.float32, LAYERS, HEADS, DIM, 8, "raw", 4)
    good = chunk_of(spec)
    flipped = bytearray(good.data)
    flipped[3] ^= 1
    cases = [
        (chunk_of(spec, data=bytes(flipped)), grpc.StatusCode.DATA_LOSS),
        (chunk_of(spec, xxh3=good.xxh3 ^ 1), grpc.StatusCode.DATA_LOSS),
        (chunk_of(spec, token_end=9), grpc.StatusCode.INVALID_ARGUMENT),
        (chunk_of(spec, layer_start=3, layer_end=4), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    short = chunk_of(spec)
    short.data = good.data[:-4]
    from runtime.kv_transfer.wire import checksum

    short.xxh3 = checksum(short.data, b"")
    cases.append((short, grpc.StatusCode.DATA_LOSS))
    for chunk, code in cases:
        with pytest.raises(KVTransferError) as info:
            decode_chunk(chunk, spec, torch.float32)
        assert info.value.code == code


def test_assembly_refuses_missing_chunks_and_wrong_totals():
    spec = WireSpec(torch.float32, 2, HEADS, DIM, 8, "raw", 4)
    header = make_header("r", "fp", spec, 4)
    handle = KVHandle("r", tuple(range(8)), (1,), SamplingParams(), 8)
    assembly = KVAssembly(header, spec, torch.float32)
    assembly.add(encode_chunk(0, 0, 0, torch.randn(1, 2, 8, HEADS, DIM), spec))
    with pytest.raises(KVTransferError) as info:  # layer 1 never came
        assembly.finish(
            pb.Trailer(num_chunks=1, num_bytes=assembly.num_bytes, request=state_to_proto(handle))
        )
    assert info.value.code == grpc.StatusCode.DATA_LOSS and "layer 1" in info.value.message
    with pytest.raises(KVTransferError) as info:  # chunk 1 skipped
        assembly.add(encode_chunk(2, 1, 0, torch.randn(1, 2, 8, HEADS, DIM), spec))
    assert info.value.code == grpc.StatusCode.DATA_LOSS
    assembly.add(encode_chunk(1, 1, 0, torch.randn(1, 2, 8, HEADS, DIM), spec))
    with pytest.raises(KVTransferError) as info:
        assembly.finish(
            pb.Trailer(num_chunks=3, num_bytes=assembly.num_bytes, request=state_to_proto(handle))
        )
    assert info.value.code == grpc.StatusCode.DATA_LOSS
    done = assembly.finish(
        pb.Trailer(num_chunks=2, num_bytes=assembly.num_bytes, request=state_to_proto(handle))
    )
    assert done == handle


def test_request_state_round_trip():
    params = SamplingParams(
        max_tokens=7,
        temperature=0.7,
        top_k=5,
        top_p=0.9,
        min_p=0.05,
        seed=123,
        stop=("\n\n", "END"),
        stop_token_ids=(3, 4),
        ignore_eos=True,
        logprobs=2,
        prompt_logprobs=3,
        include_stop_str_in_output=True,
        skip_special_tokens=False,
    )
    handle = KVHandle("req-9", (1, 2, 3), (42,), params, 3, (-0.125,), ([(42, -0.125), (7, -2.5)],))
    msg = pb.RequestState.FromString(state_to_proto(handle).SerializeToString())
    assert handle_from_proto("req-9", msg) == handle
    plain = KVHandle("r", (1,), (2,), SamplingParams(), 1, (None,), (None,))
    assert handle_from_proto("r", state_to_proto(plain)) == plain


def test_fingerprint_follows_weights_not_paths(tiny_model_dir, tmp_path):
    import shutil

    from tiny_model import make_tiny_model

    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    other = make_tiny_model(tmp_path / "other", seed=1)
    fp = model_fingerprint(tiny_model_dir)
    assert fp.startswith("sha256:") and len(fp) == len("sha256:") + 16
    assert model_fingerprint(copy) == fp
    assert model_fingerprint(other) != fp


def message_of(index, layer_start, token_start, kv, spec):
    """wire.chunk_message of given values kv [layers, 2, tokens, heads, dim]."""
    from runtime.kv_transfer.wire import chunk_message

    return chunk_message(
        index,
        layer_start,
        layer_start + kv.shape[0],
        token_start,
        token_start + kv.shape[2],
        spec,
        lambda out: out.copy_(kv),
    )


@pytest.mark.parametrize("encoding", ["raw", "int8"])
def test_preserialized_chunk_message_parses_as_protobufs_own(encoding):
    spec = WireSpec(torch.bfloat16, LAYERS, HEADS, DIM, 300, encoding, 16)
    kv = torch.randn(2, 2, 300, HEADS, DIM).to(torch.bfloat16)[:, :, 7:207]  # not contiguous
    message, nbytes = message_of(5, 1, 7, kv, spec)
    want = pb.HandoffMessage(chunks=[encode_chunk(5, 1, 7, kv, spec)])
    assert pb.HandoffMessage.FromString(message) == want
    assert nbytes == len(want.chunks[0].data) + len(want.chunks[0].scales)
    header = pb.HandoffMessage(header=make_header("r", "fp", spec, 16)).SerializeToString()
    merged = pb.HandoffMessage.FromString(header + message)
    assert merged.header.request_id == "r" and merged.chunks[0] == want.chunks[0]


@pytest.mark.parametrize("encoding", ["raw", "int8", "fp8"])
def test_parse_message_views_payloads_like_protobuf(encoding):
    from runtime.kv_transfer.wire import parse_message

    spec = WireSpec(torch.bfloat16, LAYERS, HEADS, DIM, 300, encoding, 16)
    kv = torch.randn(2, 2, 300, HEADS, DIM).to(torch.bfloat16)[:, :, 5:205]
    header = pb.HandoffMessage(header=make_header("r", "fp", spec, 16)).SerializeToString()
    trailer = pb.HandoffMessage(trailer=pb.Trailer(num_chunks=2)).SerializeToString()
    for index in (0, 1, 300, 70000):
        message, _ = message_of(index, 1, 5, kv, spec)
        got_header, chunks, got_trailer = parse_message(header + message + trailer)
        want = pb.HandoffMessage.FromString(message).chunks[0]
        assert got_header.request_id == "r" and got_trailer.num_chunks == 2
        (chunk,) = chunks
        for name in ("index", "layer_start", "layer_end", "token_start", "token_end", "xxh3"):
            assert getattr(chunk, name) == getattr(want, name)
        assert bytes(chunk.data) == want.data and bytes(chunk.scales) == want.scales
        assert isinstance(chunk.data, memoryview)  # a view, not a copy
        assert torch.equal(
            decode_chunk(chunk, spec, torch.bfloat16), decode_chunk(want, spec, torch.bfloat16)
        )
        # The data payload sits 8-byte aligned in the chunk's own message.
        _, (alone,), _ = parse_message(message)
        assert torch.frombuffer(alone.data, dtype=torch.uint8).data_ptr() % 8 == 0


def test_parse_message_refuses_malformed_input():
    from runtime.kv_transfer.errors import KVTransferError
    from runtime.kv_transfer.wire import parse_message

    spec = WireSpec(torch.float32, LAYERS, HEADS, DIM, 8)
    good = pb.HandoffMessage(
        chunks=[encode_chunk(0, 0, 0, torch.randn(1, 2, 8, HEADS, DIM), spec)]
    ).SerializeToString()
    for bad in (good[:-3], b"\x12", b"\x12\xff\xff\xff\xff\x0f", b"\x0b", b"\x10\x01"):
        with pytest.raises(KVTransferError) as e:
            parse_message(bad)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    header, chunks, trailer = parse_message(b"")
    assert header is None and chunks == [] and trailer is None


@pytest.mark.parametrize(
    "encoding,tokens", [("raw", (3, 90)), ("int8", (16, 96)), ("int8", (3, 90)), ("fp8", (0, 100))]
)
def test_chunk_message_packed_from_the_cache(encoding, tokens):
    # As the sender builds a prefilled request's chunks: a layer range gathered straight
    # from the paged cache into the message.
    from runtime.kv_transfer.wire import chunk_message

    a, b = tokens
    cache, table = paged_cache(100, 16, "NHD", torch.bfloat16, seed=3)
    spec = WireSpec(torch.bfloat16, LAYERS, HEADS, DIM, 100, encoding, 16)
    kv = torch.stack([pack_kv(cache[i], table, 0, 100) for i in range(LAYERS)])
    got, n = chunk_message(
        4, 1, 3, a, b, spec, lambda out: pack_kv(cache[1:3], table, a, b, out=out)
    )
    want = encode_chunk(4, 1, a, kv[1:3, :, a:b], spec)
    assert pb.HandoffMessage.FromString(got) == pb.HandoffMessage(chunks=[want])
    assert n == len(want.data) + len(want.scales)
