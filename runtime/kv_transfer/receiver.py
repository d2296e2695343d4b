"""The decode side of the KV handoff: a gRPC service that admits handed-off requests."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from opentelemetry.trace import SpanKind

from runtime.engine import Engine, EngineThread, NoFreeBlocksError
from runtime.faults import Faults
from runtime.kv_transfer._proto import kv_transfer_pb2 as pb
from runtime.kv_transfer._proto import kv_transfer_pb2_grpc as pb_grpc
from runtime.kv_transfer.allocator import keep_message_buffers_on_heap
from runtime.kv_transfer.assembly import KVAssembly
from runtime.kv_transfer.auth import SecretCheck, server_credentials
from runtime.kv_transfer.config import KVTransferConfig
from runtime.kv_transfer.errors import KVTransferError
from runtime.kv_transfer.fingerprint import model_fingerprint
from runtime.kv_transfer.wire import (
    CONTRACT_VERSION,
    encoding_name,
    parse_message,
    spec_from_header,
)
from runtime.observability.tracing import end_span, start_span

_ABORTED = object()
_NO_DEADLINE_S = 365 * 86400  # gRPC reports a call without a deadline as ~infinitely far off
# How often a handoff waiting for free blocks tries again: about one decode step.
_BLOCK_RETRY_S = 0.02


def _aborted_here(request_id: str) -> KVTransferError:
    """The import is gone: the decode worker aborted the request (a client cancel)."""
    return KVTransferError(
        grpc.StatusCode.CANCELLED,
        "the decode worker aborted the request during its handoff",
        request_id,
    )


def server_options(config: KVTransferConfig) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
    ]


class KVReceiver(pb_grpc.KVTransferServicer):
    """Serves `KVTransfer.Handoff` for one decode engine.

    Flow. The header reserves the request's blocks (`Engine.begin_import`, on the engine's
    `EngineThread`, between two decode steps). A decode side without room right now makes
    the handoff wait for blocks to free up (backpressure: the sender's prefill side keeps
    the KV meanwhile, and nothing is computed twice) for up to `block_wait_s`, and never for
    more than half the time left before the call's deadline; then, or at once when even its
    whole cache could not hold the KV, it refuses with RESOURCE_EXHAUSTED, before any KV
    moves. Each chunk is then verified (checksum,
    ranges), decoded (dequantize, dtype) and written into those blocks on the call's own
    handler thread as it lands (`Engine.write_kv`), so the writes overlap the stream and no
    KV is staged. The trailer's checks (counts, every (layer, token) covered, the request's
    state) precede the commit (`Engine.commit_import`, engine thread), which starts decoding;
    then the ack goes out.

    Ownership. Reserved blocks belong to no sequence and no step reads them, so the engine
    never runs a request whose KV is incomplete. Every failure before the commit (corrupt or
    missing chunk, deadline, cancellation, dead sender, a refusal) aborts the import on the
    engine thread before the call's status goes out, so the blocks are free by the time the
    sender learns of the failure. A decode worker that aborts the request mid-stream (client
    cancel) frees the blocks at once and the call ends CANCELLED. The commit runs only while
    the call is still active. One window remains: a deadline that expires after the commit
    but before the ack arrives leaves the request decoding here while the sender reports
    DEADLINE_EXCEEDED; the request is not lost, and its id lets the router drop the duplicate.
    """

    def __init__(
        self,
        engine: Engine,
        engine_thread: EngineThread,
        config: KVTransferConfig,
        fingerprint: str | None = None,
        faults: Faults | None = None,
    ):
        self.engine = engine
        self.faults = faults or Faults()
        self.engine_thread = engine_thread
        self.config = config
        self.fingerprint = fingerprint or model_fingerprint(engine.kv.model_path)
        keep_message_buffers_on_heap()
        self._lock = threading.Lock()
        self._active: set[str] = set()  # request ids of the handoffs in progress
        self._server: grpc.Server | None = None
        self.num_admitted = 0
        self.num_waiting_for_blocks = 0  # handoffs whose header waits for free blocks now
        self.num_waited_for_blocks = 0  # handoffs that had to wait, since the start

    # -- server lifecycle -----------------------------------------------------------------
    def start(self, address: str = "127.0.0.1:0") -> int:
        """Serve on `address` (port 0: an ephemeral port); returns the bound port."""
        self._server = grpc.server(
            ThreadPoolExecutor(
                max_workers=self.config.max_concurrent_handoffs, thread_name_prefix="kv-recv"
            ),
            interceptors=[SecretCheck(self.config.secret)],
            options=server_options(self.config),
            maximum_concurrent_rpcs=self.config.max_concurrent_handoffs,
        )
        # Requests arrive as the serialized bytes: `parse_message` views the chunks' payloads
        # in place, where protobuf's parser would copy them.
        service = pb.DESCRIPTOR.services_by_name["KVTransfer"].full_name
        self._server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    service,
                    {
                        "Handoff": grpc.stream_unary_rpc_method_handler(
                            self.Handoff,
                            request_deserializer=None,
                            response_serializer=pb.HandoffAck.SerializeToString,
                        )
                    },
                )
            ]
        )
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
        assembly, reserved, committed = None, False, False
        span, error = None, None
        try:
            remaining = context.time_remaining()
            if remaining is None or remaining > _NO_DEADLINE_S:
                raise KVTransferError(
                    grpc.StatusCode.INVALID_ARGUMENT, "KV handoff calls must carry a deadline"
                )
            # No reader thread ahead of this one: on a 2-core host the extra thread hops per
            # message cost more CPU than the overlap won (94 MB handoffs 25-40% slower).
            for header, chunks, trailer in (parse_message(m) for m in request_iterator):
                if header is not None:
                    if assembly is not None:
                        raise KVTransferError(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            "a second header in one handoff",
                            assembly.request_id,
                        )
                    span = _receive_span(header)
                    assembly = self._open(header)
                    self.faults.at("kv.header_received")
                    self._reserve(assembly, context)
                    reserved = True
                elif assembly is None:
                    raise KVTransferError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "the first message of a handoff carries no header",
                    )
                for chunk in chunks:
                    self._write(assembly, chunk)
                if trailer is not None:
                    self._commit(assembly.finish(trailer), context)
                    committed = True
                    return pb.HandoffAck(
                        request_id=assembly.request_id,
                        num_chunks=assembly.num_chunks,
                        num_bytes=assembly.num_bytes,
                    )
            raise KVTransferError(
                grpc.StatusCode.DATA_LOSS,
                "the stream ended before its trailer",
                assembly.request_id if assembly else None,
            )
        except KVTransferError as e:
            error = f"{e.code.name}: {e.message}"
            self._close(assembly, reserved and not committed)
            context.abort(e.code, e.message)
        except grpc.RpcError:
            # The call ended under us (deadline, cancellation, dead sender): nothing to answer.
            error = "CANCELLED: the handoff call ended before its trailer"
            self._close(assembly, reserved and not committed)
            context.abort(grpc.StatusCode.CANCELLED, "the handoff call ended before its trailer")
        finally:  # also after an unexpected error (a bug: gRPC answers UNKNOWN)
            self._close(assembly, reserved and not committed)
            if span is not None:
                end_span(
                    span,
                    None if committed else error or "the handoff failed",
                    {"tandem.kv.bytes": assembly.num_bytes, "tandem.kv.chunks": assembly.num_chunks}
                    if assembly is not None
                    else None,
                )

    def _open(self, header: pb.Header) -> KVAssembly:
        rid = header.request_id
        if header.version != CONTRACT_VERSION:
            raise KVTransferError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"sender speaks KV contract v{header.version}, this receiver v{CONTRACT_VERSION}",
                rid,
            )
        if header.model_fingerprint != self.fingerprint:
            raise KVTransferError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"model mismatch: sender fingerprint "
                f"{header.model_fingerprint or '(none)'}, receiver fingerprint "
                f"{self.fingerprint}",
                rid,
            )
        g = self.engine.kv
        if (header.num_layers, header.num_kv_heads, header.head_dim) != (
            g.num_layers,
            g.num_kv_heads,
            g.head_dim,
        ):
            raise KVTransferError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"KV geometry {header.num_layers}x{header.num_kv_heads}x"
                f"{header.head_dim} (layers x kv heads x head dim) differs from "
                f"this model's {g.num_layers}x{g.num_kv_heads}x{g.head_dim}",
                rid,
            )
        if not rid:
            raise KVTransferError(grpc.StatusCode.INVALID_ARGUMENT, "header has no request id")
        spec = spec_from_header(header)
        with self._lock:
            if rid in self._active:
                raise KVTransferError(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"request {rid!r} is already on this decode worker",
                    rid,
                )
            self._active.add(rid)
        return KVAssembly(header, spec, self.engine.kv.dtype)

    def _reserve(self, assembly: KVAssembly, context) -> None:
        rid, num_tokens = assembly.request_id, assembly.spec.num_tokens

        if self.faults.fire("kv_refuse_blocks"):
            raise KVTransferError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "decode side cannot hold the KV now (injected fault)",
                rid,
            )

        def reserve():  # on the engine thread
            if rid in self.engine.requests:
                raise KVTransferError(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"request {rid!r} is already on this decode worker",
                    rid,
                )
            self.engine.begin_import(rid, num_tokens)

        waited_since, give_up = None, 0.0
        try:
            while True:
                try:
                    self.engine_thread.call(reserve)
                    return
                except NoFreeBlocksError as e:
                    now = time.monotonic()
                    if waited_since is None and e.ever:
                        waited_since = now
                        give_up = now + min(
                            self.config.block_wait_s, 0.5 * (context.time_remaining() or 0.0)
                        )
                        self._count_waiting(+1)
                    if not e.ever or now >= give_up or not context.is_active():
                        waited = (
                            f" after waiting {now - waited_since:.1f} s" if waited_since else ""
                        )
                        raise KVTransferError(
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"decode side cannot hold the KV{waited}: {e}",
                            rid,
                        ) from None
                time.sleep(_BLOCK_RETRY_S)
        except ValueError as e:
            raise KVTransferError(
                grpc.StatusCode.FAILED_PRECONDITION, f"decode engine refused the request: {e}", rid
            )
        finally:
            if waited_since is not None:
                self._count_waiting(-1)

    def _count_waiting(self, delta: int) -> None:
        with self._lock:
            self.num_waiting_for_blocks += delta
            self.num_waited_for_blocks += delta > 0

    def _write(self, assembly: KVAssembly, chunk) -> None:
        """Verify one chunk and write it into the import's blocks (this handler's thread)."""
        try:
            layer, start, kv = assembly.add(chunk)
            self.engine.write_kv(assembly.request_id, layer, kv, start)
        except KeyError:
            raise _aborted_here(assembly.request_id) from None

    def _commit(self, handle, context) -> None:
        def commit():  # on the engine thread
            if not context.is_active():
                return _ABORTED
            self.engine.commit_import(handle)
            self.num_admitted += 1
            return None

        try:
            outcome = self.engine_thread.call(commit)
        except KeyError:
            raise _aborted_here(handle.request_id) from None
        except ValueError as e:
            raise KVTransferError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"decode engine refused the request: {e}",
                handle.request_id,
            )
        if outcome is _ABORTED:
            expired = (context.time_remaining() or 0) <= 0
            raise KVTransferError(
                grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED,
                "the call ended before the KV was admitted",
                handle.request_id,
            )

    def _close(self, assembly: KVAssembly | None, abort_import: bool) -> None:
        """End this call's hold on its request: free an uncommitted import's blocks (waiting
        for the engine thread, so they are free before the status goes out). Idempotent."""
        if assembly is None:
            return
        with self._lock:
            if assembly.request_id not in self._active:
                return
            self._active.discard(assembly.request_id)
        if abort_import:
            try:
                self.engine_thread.call(self.engine.abort, assembly.request_id)
            except RuntimeError:
                pass  # the engine thread is shut down: the engine and its blocks are gone


def _receive_span(header: pb.Header):
    """The `kv_receive` span of a handoff, a child of the sender's span named in `header`."""
    return start_span(
        "kv_receive",
        header.traceparent,
        header.tracestate,
        attributes={
            "tandem.request_id": header.request_id,
            "tandem.kv.encoding": encoding_name(header.encoding),
            "tandem.kv.num_tokens": header.num_tokens,
        },
        kind=SpanKind.CONSUMER,
    )
