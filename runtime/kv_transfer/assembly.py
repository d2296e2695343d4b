"""One incoming handoff on the decode side: chunk order, coverage, and the trailer's checks."""

from __future__ import annotations

import grpc
import numpy as np
import torch

from runtime.engine import KVHandle
from runtime.kv_transfer._proto import kv_transfer_pb2 as pb
from runtime.kv_transfer.errors import KVTransferError
from runtime.kv_transfer.handles import handle_from_proto
from runtime.kv_transfer.wire import WireSpec, decode_chunk


class KVAssembly:
    """The bookkeeping of one incoming handoff on the decode side: chunk order, coverage, and
    the trailer's checks. It holds no KV: `add` verifies and decodes one chunk and returns its
    values for the receiver to write into the blocks reserved for the request.

    Chunks may arrive in any layer/token order (layer-wise streaming interleaves them) but
    their `index` must count 0, 1, 2, ...; `finish` admits the KV only when every (layer,
    token) has arrived and the trailer's totals match what came.
    """

    def __init__(self, header: pb.Header, spec: WireSpec, dtype: torch.dtype):
        self.request_id = header.request_id
        self.spec = spec
        self.dtype = dtype
        # numpy: one slice assignment per chunk costs ~1 us there, ~10 us as a torch op
        self._covered = np.zeros((spec.num_layers, spec.num_tokens), dtype=bool)
        self.num_chunks = 0
        self.num_bytes = 0

    def add(self, chunk: pb.Chunk) -> tuple[int, int, torch.Tensor]:
        """Verify and decode one chunk (DATA_LOSS / INVALID_ARGUMENT on a bad one): its
        (first layer, first token, kv [layers, 2, tokens, kv_heads, head_dim]) in the
        receiver's dtype, for `Engine.write_kv` (a view of the received bytes for raw KV)."""
        if chunk.index != self.num_chunks:
            raise KVTransferError(
                grpc.StatusCode.DATA_LOSS,
                f"chunk {chunk.index} arrived where chunk {self.num_chunks} was due",
                self.request_id,
            )
        values = decode_chunk(chunk, self.spec, self.dtype, self.request_id)
        l0, l1, t0, t1 = chunk.layer_start, chunk.layer_end, chunk.token_start, chunk.token_end
        self._covered[l0:l1, t0:t1] = True
        self.num_chunks += 1
        self.num_bytes += len(chunk.data) + len(chunk.scales)
        return l0, t0, values

    def finish(self, trailer: pb.Trailer) -> KVHandle:
        """The request's handle once the KV is complete; DATA_LOSS otherwise."""
        if trailer.num_chunks != self.num_chunks or trailer.num_bytes != self.num_bytes:
            raise KVTransferError(
                grpc.StatusCode.DATA_LOSS,
                f"trailer counts {trailer.num_chunks} chunks / "
                f"{trailer.num_bytes} bytes, received {self.num_chunks} / "
                f"{self.num_bytes}",
                self.request_id,
            )
        if not self._covered.all():
            missing = np.argwhere(~self._covered)[0].tolist()
            raise KVTransferError(
                grpc.StatusCode.DATA_LOSS,
                f"KV incomplete: layer {missing[0]} token {missing[1]} never arrived",
                self.request_id,
            )
        try:
            handle = handle_from_proto(self.request_id, trailer.request)
        except ValueError as e:
            raise KVTransferError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"bad request state in the trailer: {e}",
                self.request_id,
            )
        if handle.num_kv_tokens != self.spec.num_tokens or not handle.output_token_ids:
            raise KVTransferError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"trailer has {handle.num_kv_tokens} prompt tokens and "
                f"{len(handle.output_token_ids)} output tokens; the header "
                f"announced KV of {self.spec.num_tokens} tokens",
                self.request_id,
            )
        return handle
