"""The decode side of the KV handoff: a gRPC service that admits handed-off requests."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc

from runtime.engine import Engine, NoFreeBlocksError
from runtime.kv_transfer.allocator import keep_message_buffers_on_heap
from runtime.kv_transfer._proto import kv_transfer_pb2 as pb
from runtime.kv_transfer._proto import kv_transfer_pb2_grpc as pb_grpc
from runtime.kv_transfer.assembly import KVAssembly
from runtime.kv_transfer.auth import SecretCheck, server_credentials
from runtime.kv_transfer.config import KVTransferConfig
from runtime.kv_transfer.engine_thread import EngineThread
from runtime.kv_transfer.errors import KVTransferError
from runtime.kv_transfer.fingerprint import model_fingerprint
from runtime.kv_transfer.prefetch import prefetch
from runtime.kv_transfer.wire import CONTRACT_VERSION, parse_message, spec_from_header

_ABORTED = object()
_NO_DEADLINE_S = 365 * 86400   # gRPC reports a call without a deadline as ~infinitely far off


def server_options(config: KVTransferConfig) -> list[tuple[str, int]]:
    return [("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes)]


class KVReceiver(pb_grpc.KVTransferServicer):
    """Serves `KVTransfer.Handoff` for one decode engine.

    Threading. gRPC runs each call on its own handler thread. A handler verifies, decodes and
    converts every chunk (checksum, dequantize, dtype) and keeps it, without touching the
    engine. Only once the trailer has arrived and the KV is verified complete does it hand ONE
    call to the engine's `EngineThread`: `begin_import` (reserve blocks), `write_kv` of every
    chunk, `commit_import` (abort on any failure), which lands between two decode steps
    because the decode loop submits its steps to that same thread. The handler waits for it,
    then acknowledges.

    Ownership. Nothing reaches the engine before the commit, so every failure before it
    (corrupt or missing chunk, deadline, cancellation, dead sender) only drops the staged
    chunks, and the engine never admits incomplete KV. The commit itself runs only while the
    call is still active. One window remains: a deadline that expires after the commit but
    before the ack arrives leaves the request decoding here while the sender reports
    DEADLINE_EXCEEDED; the request is not lost, and its id lets the router drop the duplicate.

    Admission. At the header the receiver refuses (RESOURCE_EXHAUSTED) a request whose staging
    would pass `max_staging_bytes` or whose blocks exceed the engine's free blocks minus those
    promised to handoffs in flight. That free-block count is read off the engine thread, as a
    hint: the commit's own NoFreeBlocksError is the authority, also RESOURCE_EXHAUSTED.
    """

    def __init__(self, engine: Engine, engine_thread: EngineThread, config: KVTransferConfig,
                 fingerprint: str | None = None):
        self.engine = engine
        self.engine_thread = engine_thread
        self.config = config
        self.fingerprint = fingerprint or model_fingerprint(engine.config.model.path)
        self.geometry = engine.runner.geometry
        keep_message_buffers_on_heap()
        self._lock = threading.Lock()
        self._active: dict[str, tuple[int, int]] = {}   # request id -> (blocks, staging bytes)
        self._server: grpc.Server | None = None
        self.num_admitted = 0

    # -- server lifecycle -----------------------------------------------------------------
    def start(self, address: str = "127.0.0.1:0") -> int:
        """Serve on `address` (port 0: an ephemeral port); returns the bound port."""
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=self.config.max_concurrent_handoffs,
                               thread_name_prefix="kv-recv"),
            interceptors=[SecretCheck(self.config.secret)], options=server_options(self.config),
            maximum_concurrent_rpcs=self.config.max_concurrent_handoffs)
        # Requests arrive as the serialized bytes: `parse_message` views the chunks' payloads
        # in place, where protobuf's parser would copy them.
        service = pb.DESCRIPTOR.services_by_name["KVTransfer"].full_name
        self._server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            service, {"Handoff": grpc.stream_unary_rpc_method_handler(
                self.Handoff, request_deserializer=None,
                response_serializer=pb.HandoffAck.SerializeToString)})])
        if self.config.tls is not None:
            port = self._server.add_secure_port(address, server_credentials(self.config.tls))
        else:
            port = self._server.add_insecure_port(address)
        self._server.start()
        return port

    def stop(self, grace: float | None = None) -> None:
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None

    @property
    def num_active(self) -> int:
        """Handoffs being assembled right now."""
        with self._lock:
            return len(self._active)

    # -- the call -------------------------------------------------------------------------
    def Handoff(self, request_iterator, context):
        assembly = None
        try:
            remaining = context.time_remaining()
            if remaining is None or remaining > _NO_DEADLINE_S:
                raise KVTransferError(grpc.StatusCode.INVALID_ARGUMENT,
                                      "KV handoff calls must carry a deadline")
            messages = (parse_message(m) for m in request_iterator)
            for header, chunks, trailer in prefetch(messages, name="kv-recv"):
                if header is not None:
                    if assembly is not None:
                        raise KVTransferError(grpc.StatusCode.INVALID_ARGUMENT,
                                              "a second header in one handoff",
                                              assembly.request_id)
                    assembly = self._open(header)
                elif assembly is None:
                    raise KVTransferError(grpc.StatusCode.INVALID_ARGUMENT,
                                          "the first message of a handoff carries no header")
                for chunk in chunks:
                    assembly.add(chunk)
                if trailer is not None:
                    self._admit(assembly, assembly.finish(trailer), context)
                    return pb.HandoffAck(request_id=assembly.request_id,
                                         num_chunks=assembly.num_chunks,
                                         num_bytes=assembly.num_bytes)
            raise KVTransferError(grpc.StatusCode.DATA_LOSS, "the stream ended before its trailer",
                                  assembly.request_id if assembly else None)
        except KVTransferError as e:
            context.abort(e.code, e.message)
        except grpc.RpcError:
            # The call ended under us (deadline, cancellation, dead sender): nothing to answer.
            context.abort(grpc.StatusCode.CANCELLED, "the handoff call ended before its trailer")
        finally:
            if assembly is not None:
                with self._lock:
                    self._active.pop(assembly.request_id, None)

    def _open(self, header: pb.Header) -> KVAssembly:
        rid = header.request_id
        if header.version != CONTRACT_VERSION:
            raise KVTransferError(grpc.StatusCode.FAILED_PRECONDITION,
                                  f"sender speaks KV contract v{header.version}, this receiver "
                                  f"v{CONTRACT_VERSION}", rid)
        if header.model_fingerprint != self.fingerprint:
            raise KVTransferError(grpc.StatusCode.FAILED_PRECONDITION,
                                  f"model mismatch: sender fingerprint "
                                  f"{header.model_fingerprint or '(none)'}, receiver fingerprint "
                                  f"{self.fingerprint}", rid)
        g = self.geometry
        if (header.num_layers, header.num_kv_heads, header.head_dim) != (
                g.num_layers, g.num_kv_heads, g.head_dim):
            raise KVTransferError(grpc.StatusCode.FAILED_PRECONDITION,
                                  f"KV geometry {header.num_layers}x{header.num_kv_heads}x"
                                  f"{header.head_dim} (layers x kv heads x head dim) differs from "
                                  f"this model's {g.num_layers}x{g.num_kv_heads}x{g.head_dim}", rid)
        if not rid:
            raise KVTransferError(grpc.StatusCode.INVALID_ARGUMENT, "header has no request id")
        spec = spec_from_header(header)
        dtype = self.engine.runner.dtype
        staging = KVAssembly.staging_nbytes(spec, dtype)
        bm = self.engine.block_manager
        blocks = bm.blocks_needed(spec.num_tokens + 1)
        with self._lock:
            if rid in self._active or rid in self.engine.requests:
                raise KVTransferError(grpc.StatusCode.ALREADY_EXISTS,
                                      f"request {rid!r} is already on this decode worker", rid)
            staged = sum(s for _, s in self._active.values())
            if staged + staging > self.config.max_staging_bytes:
                raise KVTransferError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                      f"{staging} bytes of KV would pass the receiver's staging "
                                      f"limit ({staged} of {self.config.max_staging_bytes} in "
                                      f"use)", rid)
            promised = sum(b for b, _ in self._active.values())
            free = bm.num_free_blocks - promised
            if blocks > free:
                raise KVTransferError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                      f"decode side has {max(free, 0)} free KV blocks, the "
                                      f"request needs {blocks}", rid)
            self._active[rid] = (blocks, staging)
        return KVAssembly(header, spec, dtype)

    def _admit(self, assembly: KVAssembly, handle, context) -> None:
        def commit():  # on the engine thread
            if not context.is_active():
                return _ABORTED
            if handle.request_id in self.engine.requests:
                raise KVTransferError(grpc.StatusCode.ALREADY_EXISTS,
                                      f"request {handle.request_id!r} is already here")
            self.engine.begin_import(handle)
            try:
                for layer, start, k, v in assembly.parts():
                    self.engine.write_kv(handle.request_id, layer, k, v, start)
                self.engine.commit_import(handle.request_id)
            except BaseException:
                self.engine.abort(handle.request_id)
                raise
            self.num_admitted += 1
            return None

        try:
            outcome = self.engine_thread.submit(commit).result()
        except NoFreeBlocksError as e:
            raise KVTransferError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e), handle.request_id)
        except ValueError as e:
            raise KVTransferError(grpc.StatusCode.FAILED_PRECONDITION,
                                  f"decode engine refused the request: {e}", handle.request_id)
        if outcome is _ABORTED:
            expired = (context.time_remaining() or 0) <= 0
            raise KVTransferError(grpc.StatusCode.DEADLINE_EXCEEDED if expired
                                  else grpc.StatusCode.CANCELLED,
                                  "the call ended before the KV was admitted", handle.request_id)
