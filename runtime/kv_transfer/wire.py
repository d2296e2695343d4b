"""Wire format of the KV handoff: the header's geometry, chunk encode/decode, checksums.

A chunk carries layers [l0, l1) by tokens [t0, t1) of K and V as one token-major tensor
[layers, 2, tokens, kv_heads, head_dim] (the layout `kernels.kv_pack.pack_kv` produces per
layer), encoded by `kernels.kv_quant` and checksummed with CRC-32C.
"""
from __future__ import annotations

from dataclasses import dataclass

import crc32c
import grpc
import torch

from kernels.kv_quant import dequantize_kv, encoded_nbytes, quantize_kv
from runtime.kv_transfer._proto import kv_transfer_pb2 as pb
from runtime.kv_transfer.errors import KVTransferError

CONTRACT_VERSION = 1
HANDOFF_METHOD = f"/{pb.DESCRIPTOR.services_by_name['KVTransfer'].full_name}/Handoff"

_DTYPES = {torch.float32: pb.FLOAT32, torch.bfloat16: pb.BFLOAT16, torch.float16: pb.FLOAT16}
_ENCODINGS = {"raw": pb.RAW, "int8": pb.INT8, "fp8": pb.FP8_E4M3}
_LAYOUTS = {"NHD": pb.NHD, "HND": pb.HND}
_QDTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}


@dataclass(frozen=True)
class WireSpec:
    """The geometry and encoding a Header announces; everything a chunk is checked against."""

    dtype: torch.dtype            # the sender cache's dtype: what raw chunks carry
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
        return 2 * encoded_nbytes(g, self.num_kv_heads, self.head_dim, self.encoding, g,
                                  self.dtype) / g

    def chunk_nbytes(self, num_layers: int, num_tokens: int) -> tuple[int, int]:
        """(data, scales) bytes of a chunk of that many layers and tokens."""
        values = num_layers * 2 * num_tokens * self.num_kv_heads * self.head_dim
        if self.encoding == "raw":
            return values * self.dtype.itemsize, 0
        groups = -(-num_tokens // self.group_tokens)
        return values, num_layers * 2 * groups * self.num_kv_heads * 4


def make_header(request_id: str, fingerprint: str, spec: WireSpec, block_size: int,
                layout: str = "NHD") -> pb.Header:
    return pb.Header(version=CONTRACT_VERSION, request_id=request_id,
                     model_fingerprint=fingerprint, dtype=_DTYPES[spec.dtype],
                     cache_layout=_LAYOUTS[layout], block_size=block_size,
                     num_layers=spec.num_layers, num_kv_heads=spec.num_kv_heads,
                     head_dim=spec.head_dim, num_tokens=spec.num_tokens,
                     encoding=_ENCODINGS[spec.encoding], group_tokens=spec.group_tokens)


def spec_from_header(header: pb.Header) -> WireSpec:
    """The header's WireSpec; INVALID_ARGUMENT when a field is missing or unknown."""
    dtypes = {v: k for k, v in _DTYPES.items()}
    encodings = {v: k for k, v in _ENCODINGS.items()}
    if header.dtype not in dtypes or header.encoding not in encodings:
        raise KVTransferError(grpc.StatusCode.INVALID_ARGUMENT,
                              f"header has unknown dtype {header.dtype} or encoding "
                              f"{header.encoding}", header.request_id)
    if min(header.num_layers, header.num_kv_heads, header.head_dim, header.num_tokens,
           header.group_tokens) < 1:
        raise KVTransferError(grpc.StatusCode.INVALID_ARGUMENT,
                              "header needs num_layers, num_kv_heads, head_dim, num_tokens and "
                              "group_tokens >= 1", header.request_id)
    return WireSpec(dtypes[header.dtype], header.num_layers, header.num_kv_heads,
                    header.head_dim, header.num_tokens, encodings[header.encoding],
                    header.group_tokens)


def _payload(t: torch.Tensor) -> memoryview:
    """A tensor's bytes, C order, without copying a contiguous tensor."""
    return memoryview(t.contiguous().view(torch.uint8).numpy().reshape(-1))


def _from_bytes(data: bytes, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    # bytearray: torch only wraps writable buffers without a warning; the copy is 1 memcpy.
    return torch.frombuffer(bytearray(data), dtype=dtype).view(shape)


def checksum(data, scales) -> int:
    return crc32c.crc32c(scales, crc32c.crc32c(data))


def _quantize(kv: torch.Tensor, spec: WireSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """q [L, 2, T, H, D] and scales [L, 2, groups, H] of a chunk's values."""
    n_l, _, t, h, d = kv.shape
    g = spec.group_tokens
    if t % g == 0:  # groups never straddle a (layer, k/v) boundary: quantize all in one call
        q, s = quantize_kv(kv.reshape(n_l * 2 * t, h, d), spec.encoding, g)
        return q.view(kv.shape), s.view(n_l, 2, t // g, h)
    parts = [quantize_kv(kv[i, j], spec.encoding, g) for i in range(n_l) for j in range(2)]
    q = torch.stack([p[0] for p in parts]).view(kv.shape)
    return q, torch.stack([p[1] for p in parts]).view(n_l, 2, -1, h)


def _encode_values(kv: torch.Tensor, spec: WireSpec) -> tuple[memoryview, memoryview]:
    if spec.encoding == "raw":
        return _payload(kv), memoryview(b"")
    q, s = _quantize(kv, spec)
    return _payload(q), _payload(s)


def _chunk_meta(index: int, layer_start: int, token_start: int, kv: torch.Tensor,
                crc: int) -> pb.Chunk:
    return pb.Chunk(index=index, layer_start=layer_start, layer_end=layer_start + kv.shape[0],
                    token_start=token_start, token_end=token_start + kv.shape[2], crc32c=crc)


def encode_chunk(index: int, layer_start: int, token_start: int, kv: torch.Tensor,
                 spec: WireSpec) -> pb.Chunk:
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


def _field(message_type, name: str, size: int) -> bytes:
    """The key and length of a length-delimited field of `message_type`."""
    number = message_type.DESCRIPTOR.fields_by_name[name].number
    return _varint(number << 3 | 2) + _varint(size)


def chunk_message(index: int, layer_start: int, token_start: int, kv: torch.Tensor,
                  spec: WireSpec) -> tuple[bytes, int]:
    """A serialized HandoffMessage carrying one chunk of `kv`, and the chunk's payload bytes.

    It parses as `HandoffMessage(chunks=[encode_chunk(...)])`, but the payload is copied once
    (into the result) instead of through protobuf's builder and serializer: protobuf's wire
    format lets the payload fields follow the chunk's other fields. Serialized messages of one
    type also concatenate into their merge, so header, chunk and trailer messages joined form
    a single message.
    """
    data, scales = _encode_values(kv, spec)
    meta = _chunk_meta(index, layer_start, token_start, kv,
                       checksum(data, scales)).SerializeToString()
    parts = [meta]
    for name, payload in (("data", data), ("scales", scales)):
        if payload.nbytes:
            parts += [_field(pb.Chunk, name, payload.nbytes), payload]
    size = sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts)
    return b"".join([_field(pb.HandoffMessage, "chunks", size), *parts]), data.nbytes + scales.nbytes


def decode_chunk(chunk: pb.Chunk, spec: WireSpec, dtype: torch.dtype,
                 request_id: str = "") -> torch.Tensor:
    """A chunk's values as [layers, 2, tokens, kv_heads, head_dim] in `dtype`.

    INVALID_ARGUMENT for ranges outside the header; DATA_LOSS for a checksum or size mismatch.
    """
    l0, l1, t0, t1 = chunk.layer_start, chunk.layer_end, chunk.token_start, chunk.token_end
    if not (0 <= l0 < l1 <= spec.num_layers and 0 <= t0 < t1 <= spec.num_tokens):
        raise KVTransferError(grpc.StatusCode.INVALID_ARGUMENT,
                              f"chunk {chunk.index} covers layers [{l0}, {l1}) x tokens "
                              f"[{t0}, {t1}), outside the header's {spec.num_layers} layers x "
                              f"{spec.num_tokens} tokens", request_id)
    if checksum(chunk.data, chunk.scales) != chunk.crc32c:
        raise KVTransferError(grpc.StatusCode.DATA_LOSS,
                              f"chunk {chunk.index} (layers [{l0}, {l1}) x tokens [{t0}, {t1})) "
                              f"fails its CRC-32C check", request_id)
    n_data, n_scales = spec.chunk_nbytes(l1 - l0, t1 - t0)
    if len(chunk.data) != n_data or len(chunk.scales) != n_scales:
        raise KVTransferError(grpc.StatusCode.DATA_LOSS,
                              f"chunk {chunk.index} carries {len(chunk.data)}+"
                              f"{len(chunk.scales)} bytes, expected {n_data}+{n_scales}",
                              request_id)
    shape = (l1 - l0, 2, t1 - t0, spec.num_kv_heads, spec.head_dim)
    values = _from_bytes(chunk.data, spec.value_dtype, shape)
    if spec.encoding == "raw":
        return values.to(dtype)
    groups = -(-(t1 - t0) // spec.group_tokens)
    scales = _from_bytes(chunk.scales, torch.float32, (shape[0], 2, groups, shape[3]))
    if (t1 - t0) % spec.group_tokens == 0:  # as in _quantize: one call for the whole chunk
        flat = values.view(-1, shape[3], shape[4])
        return dequantize_kv(flat, scales.reshape(-1, shape[3]), spec.encoding,
                             spec.group_tokens, dtype).view(shape)
    out = torch.empty(shape, dtype=dtype)
    for i in range(shape[0]):
        for j in range(2):
            out[i, j] = dequantize_kv(values[i, j], scales[i, j], spec.encoding,
                                      spec.group_tokens, dtype)
    return out


def token_splits(spec: WireSpec, num_layers: int, start: int, end: int,
                 chunk_bytes: int) -> list[tuple[int, int]]:
    """Token sub-ranges of [start, end) so a chunk of `num_layers` layers stays near
    `chunk_bytes`; boundaries fall on multiples of group_tokens where the size allows."""
    per_token = max(1.0, num_layers * spec.layer_token_bytes())
    step = max(1, int(chunk_bytes // per_token))
    if step >= spec.group_tokens:
        step -= step % spec.group_tokens
    return [(a, min(a + step, end)) for a in range(start, end, step)]
