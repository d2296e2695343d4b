"""One incoming handoff on the decode side: staged KV, coverage, and the trailer's checks."""
from __future__ import annotations

import grpc
import torch

from runtime.engine import KVHandle
from runtime.kv_transfer._proto import kv_transfer_pb2 as pb
from runtime.kv_transfer.errors import KVTransferError
from runtime.kv_transfer.handles import handle_from_proto
from runtime.kv_transfer.wire import WireSpec, decode_chunk


class KVAssembly:
    """Collects one request's verified chunks, decoded to the receiver's dtype, off the engine.

    Chunks may arrive in any layer/token order (layer-wise streaming interleaves them) but
    their `index` must count 0, 1, 2, ...; `finish` admits the KV only when every (layer,
    token) has arrived and the trailer's totals match what came. The decoded chunks stay as
    they are (no staging copy) until `parts` hands them to `Engine.write_kv`.
    """

    def __init__(self, header: pb.Header, spec: WireSpec, dtype: torch.dtype):
        self.request_id = header.request_id
        self.spec = spec
        self.dtype = dtype
        self._parts: list[tuple[int, int, torch.Tensor]] = []   # (layer, token start, kv)
        self._covered = torch.zeros(spec.num_layers, spec.num_tokens, dtype=torch.bool)
        self.num_chunks = 0
        self.num_bytes = 0

    @staticmethod
    def staging_nbytes(spec: WireSpec, dtype: torch.dtype) -> int:
        return (spec.num_layers * 2 * spec.num_tokens * spec.num_kv_heads * spec.head_dim
                * dtype.itemsize)

    def add(self, chunk: pb.Chunk) -> None:
        """Verify and stage one chunk (DATA_LOSS / INVALID_ARGUMENT on a bad one)."""
        if chunk.index != self.num_chunks:
            raise KVTransferError(grpc.StatusCode.DATA_LOSS,
                                  f"chunk {chunk.index} arrived where chunk {self.num_chunks} "
                                  f"was due", self.request_id)
        values = decode_chunk(chunk, self.spec, self.dtype, self.request_id)
        l0, l1, t0, t1 = chunk.layer_start, chunk.layer_end, chunk.token_start, chunk.token_end
        self._parts.append((l0, t0, values))
        self._covered[l0:l1, t0:t1] = True
        self.num_chunks += 1
        self.num_bytes += len(chunk.data) + len(chunk.scales)

    def finish(self, trailer: pb.Trailer) -> KVHandle:
        """The request's handle once the KV is complete; DATA_LOSS otherwise."""
        if trailer.num_chunks != self.num_chunks or trailer.num_bytes != self.num_bytes:
            raise KVTransferError(grpc.StatusCode.DATA_LOSS,
                                  f"trailer counts {trailer.num_chunks} chunks / "
                                  f"{trailer.num_bytes} bytes, received {self.num_chunks} / "
                                  f"{self.num_bytes}", self.request_id)
        if not bool(self._covered.all()):
            missing = (~self._covered).nonzero()[0].tolist()
            raise KVTransferError(grpc.StatusCode.DATA_LOSS,
                                  f"KV incomplete: layer {missing[0]} token {missing[1]} never "
                                  f"arrived", self.request_id)
        try:
            handle = handle_from_proto(self.request_id, trailer.request)
        except ValueError as e:
            raise KVTransferError(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"bad request state in the trailer: {e}", self.request_id)
        if handle.num_kv_tokens != self.spec.num_tokens or not handle.output_token_ids:
            raise KVTransferError(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"trailer has {handle.num_kv_tokens} prompt tokens and "
                                  f"{len(handle.output_token_ids)} output tokens; the header "
                                  f"announced KV of {self.spec.num_tokens} tokens",
                                  self.request_id)
        return handle

    def parts(self):
        """(layer, token start, k, v) of every chunk in arrival order, for `Engine.write_kv`;
        k and v [tokens, kv_heads, head_dim]. A later chunk wins where two overlap."""
        for l0, t0, kv in self._parts:
            for i in range(kv.shape[0]):
                yield l0 + i, t0, kv[i, 0], kv[i, 1]
