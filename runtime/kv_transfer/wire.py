"""Wire format of the KV handoff: the header's geometry, chunk encode/decode, checksums.

A chunk carries layers [l0, l1) by tokens [t0, t1) of K and V as one token-major tensor
[layers, 2, tokens, kv_heads, head_dim] (the layout `kernels.kv_pack.pack_kv` produces per
layer), encoded by `kernels.kv_quant` and checksummed with XXH3-64.
"""

from __future__ import annotations

import ctypes
import warnings
from dataclasses import dataclass

import grpc
import torch
import xxhash
from google.protobuf import descriptor_pb2

from kernels.kv_quant import dequantize_kv, encoded_nbytes, quantize_kv
from runtime.kv_transfer._proto import kv_transfer_pb2 as pb
from runtime.kv_transfer.errors import KVTransferError

# v2: chunks carry an XXH3-64 checksum instead of v1's CRC-32C. On a 1 MiB chunk on this
# project's 2-core host XXH3-64 hashes 97 GB/s in cache (CRC-32C 29) and 24 GB/s from memory
# (13), and both sides checksum every byte of a handoff.
# v3: the request state carries penalties, logit_bias, min_tokens, a grammar and
# prompt_logprobs, and the header a trace context; a v2 receiver would drop them and continue
# a different request than was asked, so the versions refuse each other.
CONTRACT_VERSION = 3
HANDOFF_METHOD = f"/{pb.DESCRIPTOR.services_by_name['KVTransfer'].full_name}/Handoff"

_DTYPES = {torch.float32: pb.FLOAT32, torch.bfloat16: pb.BFLOAT16, torch.float16: pb.FLOAT16}
_ENCODINGS = {"raw": pb.RAW, "int8": pb.INT8, "fp8": pb.FP8_E4M3}
_LAYOUTS = {"NHD": pb.NHD, "HND": pb.HND}
_QDTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}


@dataclass(frozen=True)
class WireSpec:
    """The geometry and encoding a Header announces; everything a chunk is checked against."""

    dtype: torch.dtype  # the sender cache's dtype: what raw chunks carry
    num_layers: int
    num_kv_heads: int
    head_dim: int
    num_tokens: int
    encoding: str = "raw"
    group_tokens: int = 16

    @property
    def value_dtype(self) -> torch.dtype:
        return _QDTYPES.get(self.encoding, self.dtype)

    def layer_token_bytes(self) -> float:
        """Encoded bytes per (layer, token), K and V together, scales amortized."""
        g = self.group_tokens
        return (
            2
            * encoded_nbytes(g, self.num_kv_heads, self.head_dim, self.encoding, g, self.dtype)
            / g
        )

    def chunk_nbytes(self, num_layers: int, num_tokens: int) -> tuple[int, int]:
        """(data, scales) bytes of a chunk of that many layers and tokens."""
        values = num_layers * 2 * num_tokens * self.num_kv_heads * self.head_dim
        if self.encoding == "raw":
            return values * self.dtype.itemsize, 0
        groups = -(-num_tokens // self.group_tokens)
        return values, num_layers * 2 * groups * self.num_kv_heads * 4


def make_header(
    request_id: str, fingerprint: str, spec: WireSpec, block_size: int, layout: str = "NHD"
) -> pb.Header:
    return pb.Header(
        version=CONTRACT_VERSION,
        request_id=request_id,
        model_fingerprint=fingerprint,
        dtype=_DTYPES[spec.dtype],
        cache_layout=_LAYOUTS[layout],
        block_size=block_size,
        num_layers=spec.num_layers,
        num_kv_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        num_tokens=spec.num_tokens,
        encoding=_ENCODINGS[spec.encoding],
        group_tokens=spec.group_tokens,
    )


def encoding_name(encoding: int) -> str:
    """A header's `WireEncoding` by its config name ("raw", "int8", "fp8")."""
    return next((k for k, v in _ENCODINGS.items() if v == encoding), "unspecified")


def spec_from_header(header: pb.Header) -> WireSpec:
    """The header's WireSpec; INVALID_ARGUMENT when a field is missing or unknown."""
    dtypes = {v: k for k, v in _DTYPES.items()}
    encodings = {v: k for k, v in _ENCODINGS.items()}
    if header.dtype not in dtypes or header.encoding not in encodings:
        raise KVTransferError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"header has unknown dtype {header.dtype} or encoding {header.encoding}",
            header.request_id,
        )
    if (
        min(
            header.num_layers,
            header.num_kv_heads,
            header.head_dim,
            header.num_tokens,
            header.group_tokens,
        )
        < 1
    ):
        raise KVTransferError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "header needs num_layers, num_kv_heads, head_dim, num_tokens and group_tokens >= 1",
            header.request_id,
        )
    return WireSpec(
        dtypes[header.dtype],
        header.num_layers,
        header.num_kv_heads,
        header.head_dim,
        header.num_tokens,
        encodings[header.encoding],
        header.group_tokens,
    )


def _payload(t: torch.Tensor) -> memoryview:
    """A tensor's bytes, C order, without copying a contiguous tensor."""
    return t.contiguous().view(torch.uint8).numpy().reshape(-1).data


# Received payloads are wrapped read-only (no copy) and only ever read; torch warns (once)
# that it cannot mark such a tensor read-only.
warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning)


def _from_bytes(data, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """A read-only view of received bytes (bytes or memoryview) as a tensor: no copy."""
    if len(data) == 0:
        return torch.empty(shape, dtype=dtype)
    raw = torch.frombuffer(data, dtype=torch.uint8)
    if raw.data_ptr() % 8:  # not where chunk_message puts it: copy to an aligned buffer
        raw = raw.clone()
    return raw.view(dtype).view(shape)


_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.restype, _new_bytes.argtypes = ctypes.py_object, [ctypes.c_char_p, ctypes.c_ssize_t]
_bytes_ptr = ctypes.pythonapi.PyBytes_AsString
_bytes_ptr.restype, _bytes_ptr.argtypes = ctypes.c_void_p, [ctypes.py_object]


def _fresh_bytes(n: int) -> tuple[bytes, memoryview]:
    """A new, not yet shared `bytes` of n bytes and a writable memoryview of its contents.

    gRPC only sends `bytes`; filling a fresh one in place (the C API's
    PyBytes_FromStringAndSize(NULL, n) contract) saves building the message in a buffer and
    copying it. Only write through the view before the bytes object is handed on.
    """
    b = _new_bytes(None, n)
    return b, memoryview((ctypes.c_char * n).from_address(_bytes_ptr(b))).cast("B")


def checksum(data, scales) -> int:
    """XXH3-64 (seed 0) of data then scales (bytes or memoryviews, read in place)."""
    if not len(scales):
        return xxhash.xxh3_64_intdigest(data)
    h = xxhash.xxh3_64(data)
    h.update(scales)
    return h.intdigest()


def _quantize(
    kv: torch.Tensor, spec: WireSpec, q_out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """q [L, 2, T, H, D] (written into `q_out` when given, contiguous) and scales
    [L, 2, groups, H] of a chunk's values."""
    n_l, _, t, h, d = kv.shape
    g = spec.group_tokens
    if t % g == 0:  # groups never straddle a (layer, k/v) boundary: quantize all in one call
        flat = None if q_out is None else q_out.view(n_l * 2 * t, h, d)
        q, s = quantize_kv(kv.reshape(n_l * 2 * t, h, d), spec.encoding, g, q_out=flat)
        return q.view(kv.shape), s.view(n_l, 2, t // g, h)
    parts = [
        quantize_kv(kv[i, j], spec.encoding, g, q_out=None if q_out is None else q_out[i, j])
        for i in range(n_l)
        for j in range(2)
    ]
    q = torch.stack([p[0] for p in parts]).view(kv.shape) if q_out is None else q_out
    return q, torch.stack([p[1] for p in parts]).view(n_l, 2, -1, h)


def _quantize_into(
    kv: torch.Tensor, spec: WireSpec, data: torch.Tensor, scales: torch.Tensor
) -> None:
    """Quantize a chunk's values into its message's payload (uint8 views): q straight into
    `data`, the small scales through a copy (they need not be 4-byte aligned there)."""
    _, s = _quantize(kv, spec, q_out=data.view(spec.value_dtype).view(kv.shape))
    scales.copy_(s.contiguous().view(torch.uint8).view(-1))


def _encode_values(kv: torch.Tensor, spec: WireSpec) -> tuple[memoryview, memoryview]:
    if spec.encoding == "raw":
        return _payload(kv), memoryview(b"")
    q, s = _quantize(kv, spec)
    return _payload(q), _payload(s)


def _chunk_meta(
    index: int, layer_start: int, token_start: int, kv: torch.Tensor, digest: int
) -> pb.Chunk:
    return pb.Chunk(
        index=index,
        layer_start=layer_start,
        layer_end=layer_start + kv.shape[0],
        token_start=token_start,
        token_end=token_start + kv.shape[2],
        xxh3=digest,
    )


def encode_chunk(
    index: int, layer_start: int, token_start: int, kv: torch.Tensor, spec: WireSpec
) -> pb.Chunk:
    """One chunk of `kv` [layers, 2, tokens, kv_heads, head_dim] (the sender cache's dtype)."""
    data, scales = _encode_values(kv, spec)
    chunk = _chunk_meta(index, layer_start, token_start, kv, checksum(data, scales))
    chunk.data, chunk.scales = bytes(data), bytes(scales)
    return chunk


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _number(message_type, name: str) -> int:
    """A field's number, from the contract (proto/kv_transfer.proto) as compiled."""
    return message_type.DESCRIPTOR.fields_by_name[name].number


def _key(message_type, name: str, wire_type: int) -> bytes:
    return _varint(_number(message_type, name) << 3 | wire_type)


def _reserved_numbers(message_type) -> frozenset[int]:
    proto = descriptor_pb2.DescriptorProto()
    message_type.DESCRIPTOR.CopyToProto(proto)
    return frozenset(n for r in proto.reserved_range for n in range(r.start, r.end))


# Field keys of a chunk message, once (a handoff writes one message per chunk).
_CHUNKS_KEY = _key(pb.HandoffMessage, "chunks", 2)
_INDEX_KEY = _key(pb.Chunk, "index", 0)
_RANGE_KEYS = tuple(
    _key(pb.Chunk, name, 0) for name in ("layer_start", "layer_end", "token_start", "token_end")
)
_DATA_KEY, _SCALES_KEY = _key(pb.Chunk, "data", 2), _key(pb.Chunk, "scales", 2)
_SUM_KEY = _key(pb.Chunk, "xxh3", 1)


def _padded_varint(n: int, extra: int) -> bytes:
    """n as a varint `extra` bytes longer than needed (overlong varints parse as n)."""
    out = bytearray(_varint(n))
    for _ in range(extra):
        out[-1] |= 0x80
        out.append(0)
    return bytes(out)


def _chunk_bytes(
    index: int,
    layer_start: int,
    token_start: int,
    num_layers: int,
    num_tokens: int,
    data_nbytes: int,
    scales_nbytes: int,
    fill,
) -> bytes:
    """A serialized HandoffMessage with one chunk, its payload written in place by
    `fill(data, scales)` (uint8 tensors over the message's own bytes).

    The data starts 8-byte aligned in the message (the chunk's `index` varint is padded to
    get there: overlong varints parse as the same value), so it can be viewed in any dtype
    and as words. The checksum field follows the payload (fields may come in any order).
    """
    values = (layer_start, layer_start + num_layers, token_start, token_start + num_tokens)
    rest = b"".join(key + _varint(v) for key, v in zip(_RANGE_KEYS, values) if v)  # proto3
    data_field = _DATA_KEY + _varint(data_nbytes) if data_nbytes else b""
    scales_field = _SCALES_KEY + _varint(scales_nbytes) if scales_nbytes else b""
    tail = len(data_field) + data_nbytes + len(scales_field) + scales_nbytes + len(_SUM_KEY) + 8
    pad = 0
    for _ in range(3):  # the padding can lengthen the outer length varint: settle it
        meta = _INDEX_KEY + _padded_varint(index, pad) + rest
        outer = _CHUNKS_KEY + _varint(len(meta) + tail)
        misalign = (len(outer) + len(meta) + len(data_field)) % 8
        if not misalign:
            break
        pad += 8 - misalign
    assert pad <= 10, "chunk index too large to pad"
    head = outer + meta + data_field
    message, buf = _fresh_bytes(len(head) + tail - len(data_field))
    buf[: len(head)] = head
    pos = len(head)
    data = buf[pos : pos + data_nbytes]
    pos += data_nbytes
    buf[pos : pos + len(scales_field)] = scales_field
    pos += len(scales_field)
    scales = buf[pos : pos + scales_nbytes]
    pos += scales_nbytes
    empty = torch.empty(0, dtype=torch.uint8)
    fill(
        torch.frombuffer(data, dtype=torch.uint8) if data_nbytes else empty,
        torch.frombuffer(scales, dtype=torch.uint8) if scales_nbytes else empty,
    )
    buf[pos:] = _SUM_KEY + checksum(data, scales).to_bytes(8, "little")
    return message


def chunk_message(
    index: int,
    layer_start: int,
    layer_end: int,
    token_start: int,
    token_end: int,
    spec: WireSpec,
    pack_into,
) -> tuple[bytes, int]:
    """A serialized HandoffMessage carrying one chunk, layers [layer_start, layer_end) x tokens
    [token_start, token_end), and the chunk's payload bytes.

    `pack_into(out)` writes the chunk's values into `out`, a contiguous [layers, 2, tokens,
    kv_heads, head_dim] tensor of spec.dtype: for raw, the message's own payload; for
    int8/fp8, a scratch buffer that the quantizer reads into the message. The message parses
    as `HandoffMessage(chunks=[encode_chunk(...)])` of those values, but the payload is
    written once, straight into the message's bytes (which gRPC then sends as they are),
    instead of through protobuf's builder and serializer. Serialized messages of one type
    also concatenate into their merge, so header, chunk and trailer messages joined form a
    single message.
    """
    n_l, n_t = layer_end - layer_start, token_end - token_start
    n_data, n_scales = spec.chunk_nbytes(n_l, n_t)
    shape = (n_l, 2, n_t, spec.num_kv_heads, spec.head_dim)

    def fill(data, scales):
        if spec.encoding == "raw":
            pack_into(data.view(spec.dtype).view(shape))
            return
        values = torch.empty(shape, dtype=spec.dtype)
        pack_into(values)
        _quantize_into(values, spec, data, scales)

    message = _chunk_bytes(index, layer_start, token_start, n_l, n_t, n_data, n_scales, fill)
    return message, n_data + n_scales


def decode_chunk(
    chunk: pb.Chunk, spec: WireSpec, dtype: torch.dtype, request_id: str = ""
) -> torch.Tensor:
    """A chunk's values as [layers, 2, tokens, kv_heads, head_dim] in `dtype`.

    INVALID_ARGUMENT for ranges outside the header; DATA_LOSS for a checksum or size mismatch.
    """
    l0, l1, t0, t1 = chunk.layer_start, chunk.layer_end, chunk.token_start, chunk.token_end
    if not (0 <= l0 < l1 <= spec.num_layers and 0 <= t0 < t1 <= spec.num_tokens):
        raise KVTransferError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"chunk {chunk.index} covers layers [{l0}, {l1}) x tokens "
            f"[{t0}, {t1}), outside the header's {spec.num_layers} layers x "
            f"{spec.num_tokens} tokens",
            request_id,
        )
    if checksum(chunk.data, chunk.scales) != chunk.xxh3:
        raise KVTransferError(
            grpc.StatusCode.DATA_LOSS,
            f"chunk {chunk.index} (layers [{l0}, {l1}) x tokens [{t0}, {t1})) "
            f"fails its checksum (XXH3-64)",
            request_id,
        )
    n_data, n_scales = spec.chunk_nbytes(l1 - l0, t1 - t0)
    if len(chunk.data) != n_data or len(chunk.scales) != n_scales:
        raise KVTransferError(
            grpc.StatusCode.DATA_LOSS,
            f"chunk {chunk.index} carries {len(chunk.data)}+"
            f"{len(chunk.scales)} bytes, expected {n_data}+{n_scales}",
            request_id,
        )
    shape = (l1 - l0, 2, t1 - t0, spec.num_kv_heads, spec.head_dim)
    values = _from_bytes(chunk.data, spec.value_dtype, shape)
    if spec.encoding == "raw":
        return values if values.dtype == dtype else values.to(dtype)
    groups = -(-(t1 - t0) // spec.group_tokens)
    scales = _from_bytes(chunk.scales, torch.float32, (shape[0], 2, groups, shape[3]))
    if (t1 - t0) % spec.group_tokens == 0:  # as in _quantize: one call for the whole chunk
        flat = values.view(-1, shape[3], shape[4])
        return dequantize_kv(
            flat, scales.reshape(-1, shape[3]), spec.encoding, spec.group_tokens, dtype
        ).view(shape)
    out = torch.empty(shape, dtype=dtype)
    for i in range(shape[0]):
        for j in range(2):
            out[i, j] = dequantize_kv(
                values[i, j], scales[i, j], spec.encoding, spec.group_tokens, dtype
            )
    return out


def token_splits(
    spec: WireSpec, num_layers: int, start: int, end: int, chunk_bytes: int
) -> list[tuple[int, int]]:
    """Token sub-ranges of [start, end) so a chunk of `num_layers` layers stays near
    `chunk_bytes`; boundaries fall on multiples of group_tokens where the size allows."""
    per_token = max(1.0, num_layers * spec.layer_token_bytes())
    step = max(1, int(chunk_bytes // per_token))
    if step >= spec.group_tokens:
        step -= step % spec.group_tokens
    return [(a, min(a + step, end)) for a in range(start, end, step)]


# -- parsing received messages without copying their payloads ------------------------------
class ChunkView:
    """A received Chunk whose `data` and `scales` are memoryviews into the message's bytes
    (protobuf's parser would copy each payload, and again on every access)."""

    __slots__ = (
        "index",
        "layer_start",
        "layer_end",
        "token_start",
        "token_end",
        "data",
        "scales",
        "xxh3",
    )

    def __init__(self):
        self.index = self.layer_start = self.layer_end = self.token_start = 0
        self.token_end = self.xxh3 = 0
        self.data = self.scales = memoryview(b"")


def _malformed(what: str) -> KVTransferError:
    return KVTransferError(grpc.StatusCode.INVALID_ARGUMENT, f"malformed handoff message: {what}")


def _read_varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    if pos < end and buf[pos] < 0x80:  # most keys and small values: one byte
        return buf[pos], pos + 1
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _malformed("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview, pos: int, end: int):
    """(field number, wire type, value) of each field in buf[pos:end]: an int for varint and
    fixed fields, a memoryview for length-delimited ones."""
    value: int | memoryview
    while pos < end:
        key, pos = _read_varint(buf, pos, end)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _read_varint(buf, pos, end)
        elif wire_type == 2:
            n, pos = _read_varint(buf, pos, end)
            if pos + n > end:
                raise _malformed("a field runs past the message's end")
            value, pos = buf[pos : pos + n], pos + n
        elif wire_type in (1, 5):
            n = 8 if wire_type == 1 else 4
            if pos + n > end:
                raise _malformed("a field runs past the message's end")
            value, pos = int.from_bytes(buf[pos : pos + n], "little"), pos + n
        else:
            raise _malformed(f"unsupported wire type {wire_type}")
        if number == 0:
            raise _malformed("field number 0")
        yield number, wire_type, value


# The parser's field numbers, read from the contract like the writer's keys.
_HEADER, _CHUNKS, _TRAILER = (
    _number(pb.HandoffMessage, n) for n in ("header", "chunks", "trailer")
)
_CHUNK_INTS = {
    _number(pb.Chunk, n): n
    for n in ("index", "layer_start", "layer_end", "token_start", "token_end")
}
_DATA, _SCALES, _XXH3 = (_number(pb.Chunk, n) for n in ("data", "scales", "xxh3"))
_LAST_CHUNK_FIELD = max(f.number for f in pb.Chunk.DESCRIPTOR.fields)
# Skipped like any unknown field, as protobuf does: v1's CRC-32C, so that a v1 sender reaches
# the header's version check (FAILED_PRECONDITION) instead of a parse error.
_RESERVED_CHUNK_FIELDS = _reserved_numbers(pb.Chunk)


def _parse_chunk(buf: memoryview) -> ChunkView:
    chunk = ChunkView()
    for number, wire_type, value in _fields(buf, 0, len(buf)):
        if number in _CHUNK_INTS and wire_type == 0:
            setattr(chunk, _CHUNK_INTS[number], value & 0xFFFFFFFF)  # uint32, as protobuf
        elif number == _DATA and wire_type == 2:
            chunk.data = value
        elif number == _SCALES and wire_type == 2:
            chunk.scales = value
        elif number == _XXH3 and wire_type == 1:
            chunk.xxh3 = value
        elif number <= _LAST_CHUNK_FIELD and number not in _RESERVED_CHUNK_FIELDS:
            raise _malformed(f"chunk field {number} has wire type {wire_type}")
    return chunk


def parse_message(message) -> tuple[pb.Header | None, list[ChunkView], pb.Trailer | None]:
    """A serialized HandoffMessage's header, chunks and trailer (None where absent), the
    chunks' payloads as views of `message`, not copies. Parses as protobuf would: repeated
    occurrences of the header or trailer merge; INVALID_ARGUMENT if malformed."""
    if not isinstance(message, (bytes, bytearray, memoryview)):  # a protobuf message
        return (
            message.header if message.HasField("header") else None,
            list(message.chunks),
            message.trailer if message.HasField("trailer") else None,
        )
    buf = memoryview(message).cast("B")
    headers, chunks, trailers = [], [], []
    for number, wire_type, value in _fields(buf, 0, len(buf)):
        if number in (_HEADER, _CHUNKS, _TRAILER) and wire_type != 2:
            raise _malformed(f"field {number} has wire type {wire_type}")
        if number == _HEADER:
            headers.append(bytes(value))
        elif number == _CHUNKS:
            chunks.append(_parse_chunk(value))
        elif number == _TRAILER:
            trailers.append(bytes(value))
    try:
        header = pb.Header.FromString(b"".join(headers)) if headers else None
        trailer = pb.Trailer.FromString(b"".join(trailers)) if trailers else None
    except Exception as e:  # protobuf's DecodeError
        raise _malformed(str(e)) from None
    return header, chunks, trailer
