"""The prefill side of the KV handoff: stream each routed request's KV to its decode worker."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import grpc
import torch
from opentelemetry.trace import Span, SpanKind

from kernels.kv_pack import pack_kv
from runtime.engine import Engine, EngineThread, KVHandle, RequestOutput
from runtime.faults import Faults
from runtime.kv_transfer._proto import kv_transfer_pb2 as pb
from runtime.kv_transfer.allocator import keep_message_buffers_on_heap
from runtime.kv_transfer.auth import make_channel, secret_metadata
from runtime.kv_transfer.config import KVTransferConfig
from runtime.kv_transfer.errors import KVTransferError
from runtime.kv_transfer.fault_stream import with_faults
from runtime.kv_transfer.fingerprint import model_fingerprint
from runtime.kv_transfer.handles import state_to_proto
from runtime.kv_transfer.outbox import ByteBudget, Outbox
from runtime.kv_transfer.wire import (
    HANDOFF_METHOD,
    WireSpec,
    chunk_message,
    make_header,
    token_splits,
)
from runtime.observability.tracing import end_span, start_span, traceparent_of

# Layer-wise streaming from this prompt length up on GPU prefill engines: a placeholder
# until the crossover is measured on a GPU (`make bench-kv` prints it).
GPU_LAYERWISE_MIN_TOKENS = 512


@dataclass(frozen=True)
class HandoffResult:
    """A completed handoff. `finished_on_prefill`: the request ended with its first token, so
    there was nothing to hand off. `num_bytes`: encoded KV bytes moved."""

    request_id: str
    target: str
    num_chunks: int = 0
    num_bytes: int = 0
    layerwise: bool = False
    seconds: float = 0.0
    finished_on_prefill: bool = False
    encoding: str = ""  # the wire encoding the KV went in ("raw", "int8", "fp8")


@dataclass(eq=False)
class _Handoff:
    request_id: str
    target: str
    future: Future = field(default_factory=Future)
    spec: WireSpec | None = None
    outbox: Outbox | None = None
    call: grpc.Future | None = None
    layerwise: bool = False
    next_token: int = 0  # tokens [0, next_token) of every layer are queued
    pending: list = field(default_factory=list)  # (layer, StagedKV [2, T, H, D]) to coalesce
    pending_range: tuple[int, int] = (0, 0)
    num_chunks: int = 0  # counted as chunks are encoded, for the trailer
    num_bytes: int = 0
    started: float = 0.0
    outcome: HandoffResult | None = None  # set when settled without the call's verdict
    resolved: bool = False
    span: Span | None = None  # the handoff's `kv_send` span, its context sent in the header

    @property
    def wire(self) -> WireSpec:
        """The stream's layout: set when its stream opens, before any message is built."""
        assert self.spec is not None, f"{self.request_id}: its stream is not open"
        return self.spec


class KVSender:
    """Streams routed requests' KV from a prefill engine to decode workers' `KVReceiver`s.

    Use: `route(request_id, target)` for each request to hand off, then drive the engine with
    `sender.step()` in place of `engine.step()`. Prompts of at least `layerwise_min_tokens`
    (by default 512 on a GPU engine, none on a CPU one: see `KVTransferConfig`) stream layer by
    layer during their prefill (each layer leaves once `layer_done` reports it in the cache,
    while later layers compute); shorter ones go as one message after it.
    `send(handle, target)` hands off a request that is already prefilled. Each returns a
    Future of `HandoffResult`, failing with `KVTransferError`.

    Threading: `step` and `send` run on the engine's thread (`EngineThread`): the engine is not
    thread-safe; `route` and `cancel` may run anywhere. Encoding and checksums run on the
    thread gRPC pulls each call's messages on, one chunk at a time; `release` (after the ack)
    and `abort` (after a failure) go back through the engine thread. Layer-wise KV is staged
    out of the cache from the engine thread (its blocks may be preempted and reused before it
    is sent): `runner.stage_kv`, a copy on a CPU engine, an asynchronous copy to pinned memory
    on a GPU one, which the chunk's encoding waits for. A prefilled request's KV is read
    straight from its blocks on gRPC's thread, safe because those blocks are held and never
    written until the release that follows the ack.

    Ownership: the engine keeps a request's blocks until its receiver acknowledges; on any
    failure (deadline, cancellation, dead peer, a refusal) the request is aborted, freeing its
    blocks, and its future fails with the call's status. Abort a routed request with `cancel`
    (not `engine.abort`), so its call ends too.
    """

    def __init__(
        self,
        engine: Engine,
        engine_thread: EngineThread,
        config: KVTransferConfig,
        channel_factory=None,
        fingerprint: str | None = None,
        faults: Faults | None = None,
    ):
        self.engine = engine
        self.faults = faults
        self.engine_thread = engine_thread
        self.config = config
        self.fingerprint = fingerprint or model_fingerprint(engine.kv.model_path)
        keep_message_buffers_on_heap()
        self._channel_factory = channel_factory or (lambda t: make_channel(t, config))
        self._channels: dict[str, grpc.Channel] = {}
        self._budget = ByteBudget(config.max_inflight_bytes)
        self._lock = threading.Lock()
        self._handoffs: dict[str, _Handoff] = {}
        self._spans: list = []
        self._tables: dict[str, torch.Tensor] = {}
        self.layerwise_min_tokens = config.layerwise_min_tokens
        if self.layerwise_min_tokens is None and engine.kv.on_gpu:
            self.layerwise_min_tokens = GPU_LAYERWISE_MIN_TOKENS

    # -- the API --------------------------------------------------------------------------
    def route(self, request_id: str, target: str, traceparent: str = "") -> Future:
        """Hand off `request_id`'s KV to the receiver at `target` once it is computed.
        `traceparent`: the request's trace context; the handoff's `kv_send` span joins it
        and the receiver's span joins that one (through the stream's header)."""
        h = _Handoff(request_id, target)
        h.span = start_span(
            "kv_send",
            traceparent,
            attributes={"tandem.request_id": request_id, "tandem.kv.target": target},
            kind=SpanKind.PRODUCER,
        )
        with self._lock:
            if request_id in self._handoffs:
                raise ValueError(f"request {request_id!r} is already routed")
            self._handoffs[request_id] = h
        return h.future

    def step(self) -> list[RequestOutput]:
        """`engine.step()` with layer-wise streaming; starts the handoffs that became ready."""
        layerwise = self.layerwise_min_tokens is not None
        outputs = self.engine.step(layer_done=self._layer_done if layerwise else None)
        self._spans = []
        for out in outputs:
            h = self._get(out.request_id)
            if h is None:
                continue
            if out.kv_handle is not None:
                self._finish(h, out.kv_handle)
            elif out.finished:
                self._settle(h, HandoffResult(h.request_id, h.target, finished_on_prefill=True))
        return outputs

    def send(self, handle: KVHandle, target: str) -> Future:
        """Hand off an already prefilled request (held by the engine until the ack)."""
        future = self.route(handle.request_id, target)
        h = self._get(handle.request_id)
        assert h is not None  # routed just above
        try:
            self._finish(h, handle)
        except BaseException:
            self._forget(h)  # e.g. not a prefilled request: nothing was sent
            raise
        return future

    def cancel(self, request_id: str) -> None:
        """Give up on a handoff: cancels the call; the request is aborted on the engine."""
        h = self._get(request_id)
        if h is None:
            return
        if h.call is not None:
            h.call.cancel()
        else:
            self._fail(h, KVTransferError(grpc.StatusCode.CANCELLED, "cancelled", request_id))

    def close(self) -> None:
        with self._lock:
            pending = list(self._handoffs.values())
        for h in pending:
            self.cancel(h.request_id)
        for channel in self._channels.values():
            channel.close()

    # -- layer-wise streaming (engine thread, inside the forward) --------------------------
    def _layer_done(self, layer: int) -> None:
        if layer == 0:
            threshold = self.layerwise_min_tokens
            assert threshold is not None  # `step` hooks this in only then
            self._spans = [
                s
                for s in self.engine.scheduled_prompt_spans()
                if s.num_prompt_tokens >= threshold and self._get(s.request_id) is not None
            ]
            self._tables = {
                s.request_id: torch.tensor(s.block_table, dtype=torch.long) for s in self._spans
            }
        last = layer == self.engine.kv.num_layers - 1
        for s in self._spans:
            h = self._get(s.request_id)
            if h is None or s.end <= h.next_token:
                continue
            if h.outbox is None:
                self._open_stream(h, s.num_prompt_tokens, layerwise=True)
            # Copied out now: preemption could hand these blocks to another request before
            # the chunk is encoded (on a GPU the copy lands while later layers compute).
            staged = self.engine.kv.stage(layer, self._tables[s.request_id], h.next_token, s.end)
            self._stage(h, layer, h.next_token, s.end, staged, last)
            if last:
                h.next_token = s.end

    def _stage(self, h: _Handoff, layer: int, start: int, end: int, staged, last: bool) -> None:
        """Coalesce consecutive layers of one token range into ~chunk_bytes chunks."""
        size = int((end - start) * h.wire.layer_token_bytes())
        if h.pending and (
            h.pending_range != (start, end) or (len(h.pending) + 1) * size > self.config.chunk_bytes
        ):
            self._flush(h)
        h.pending.append((layer, staged))
        h.pending_range = (start, end)
        if last or (len(h.pending) + 1) * size > self.config.chunk_bytes:
            self._flush(h)

    def _flush(self, h: _Handoff) -> None:
        pending, h.pending = h.pending, []
        if not pending:
            return
        first, (start, end) = pending[0][0], h.pending_range
        staged = [st for _, st in pending]
        spec, outbox = h.wire, h.outbox  # the budget counts the staged copies' bytes
        assert outbox is not None  # a layer-wise stream has one from its first layer
        token_bytes = len(staged) * 2 * spec.num_kv_heads * spec.head_dim * spec.dtype.itemsize
        for a, b in token_splits(spec, len(pending), start, end, self.config.chunk_bytes):
            outbox.put(
                lambda a=a, b=b: self._encode_staged(h, first, staged, start, a, b),
                (b - a) * token_bytes,
            )

    # -- building the stream --------------------------------------------------------------
    def _spec(self, num_tokens: int) -> WireSpec:
        kv = self.engine.kv
        group = self.config.group_tokens or kv.block_size
        return WireSpec(
            kv.dtype,
            kv.num_layers,
            kv.num_kv_heads,
            kv.head_dim,
            num_tokens,
            self.config.encoding,
            group,
        )

    def _open_stream(self, h: _Handoff, num_tokens: int, layerwise: bool) -> None:
        h.spec = self._spec(num_tokens)
        h.layerwise = layerwise
        h.outbox = outbox = Outbox(self._budget)
        outbox.put(lambda: self._header(h))
        self._start_call(h, iter(outbox))

    # Messages go out serialized (bytes): chunks skip protobuf's copies (wire.chunk_message).
    def _header(self, h: _Handoff) -> bytes:
        header = make_header(h.request_id, self.fingerprint, h.wire, self.engine.kv.block_size)
        if h.span is not None:
            header.traceparent, header.tracestate = traceparent_of(h.span)
        return pb.HandoffMessage(header=header).SerializeToString()

    def _encode_staged(
        self, h: _Handoff, l0: int, staged: list, start: int, a: int, b: int
    ) -> bytes:
        """A chunk of layers [l0, l0 + len(staged)) x tokens [a, b) out of staged copies of
        tokens [start, ...) (waiting for any still landing)."""

        def pack_into(out):
            for i, st in enumerate(staged):
                out[i].copy_(st.wait()[:, a - start : b - start])

        return self._chunk(h, l0, l0 + len(staged), a, b, pack_into)

    def _encode_packed(self, h: _Handoff, l0: int, l1: int, a: int, b: int, cache, table) -> bytes:
        """A chunk of layers [l0, l1) x tokens [a, b), gathered from the cache for it (in one
        call for all its layers; a GPU cache packs on the device, then copies to the host)."""

        def pack_into(out):
            if cache.is_cuda:
                out.copy_(pack_kv(cache[l0:l1], table, a, b))
            else:
                pack_kv(cache[l0:l1], table, a, b, out=out)

        return self._chunk(h, l0, l1, a, b, pack_into)

    def _chunk(self, h: _Handoff, l0: int, l1: int, a: int, b: int, pack_into) -> bytes:
        message, nbytes = chunk_message(h.num_chunks, l0, l1, a, b, h.wire, pack_into)
        h.num_chunks += 1
        h.num_bytes += nbytes
        return message

    def _trailer(self, h: _Handoff, handle: KVHandle) -> bytes:
        trailer = pb.Trailer(
            num_chunks=h.num_chunks, num_bytes=h.num_bytes, request=state_to_proto(handle)
        )
        return pb.HandoffMessage(trailer=trailer).SerializeToString()

    def _finish(self, h: _Handoff, handle: KVHandle) -> None:
        """The request is prefilled: end its layer-wise stream, or send its KV now."""
        if h.outbox is not None:
            self._flush(h)
            h.outbox.put(lambda: self._trailer(h, handle), last=True)
            return
        self._open_stream_lazy(h, handle)

    def _open_stream_lazy(self, h: _Handoff, handle: KVHandle) -> None:
        h.spec = self._spec(handle.num_kv_tokens)
        table = torch.tensor(self.engine.block_table(h.request_id), dtype=torch.long)
        self._start_call(h, self._prefilled_messages(h, handle, table))

    def _prefilled_messages(self, h: _Handoff, handle: KVHandle, table: torch.Tensor):
        """Header, chunks and trailer of a prefilled request, read from its held blocks on
        the call's own thread; all in one message when the KV fits one chunk."""
        spec, cache = h.wire, self.engine.kv.cache
        total = spec.num_tokens
        per_layer = total * spec.layer_token_bytes()
        group = max(1, min(spec.num_layers, int(self.config.chunk_bytes // max(per_layer, 1))))

        def chunks():  # each gathered from the blocks straight into (or for) its message
            for l0 in range(0, spec.num_layers, group):
                l1 = min(l0 + group, spec.num_layers)
                for a, b in token_splits(spec, l1 - l0, 0, total, self.config.chunk_bytes):
                    yield self._encode_packed(h, l0, l1, a, b, cache, table)

        if per_layer * spec.num_layers <= self.config.chunk_bytes:
            parts = list(chunks())  # serialized messages concatenate into their merge
            yield b"".join([self._header(h), *parts, self._trailer(h, handle)])
            return
        yield self._header(h)
        yield from chunks()
        yield self._trailer(h, handle)

    # -- the call and its outcome ---------------------------------------------------------
    def _start_call(self, h: _Handoff, messages) -> None:
        channel = self._channels.get(h.target)
        if channel is None:
            channel = self._channels[h.target] = self._channel_factory(h.target)
        handoff = channel.stream_unary(
            HANDOFF_METHOD, request_serializer=None, response_deserializer=pb.HandoffAck.FromString
        )
        h.started = time.perf_counter()
        if self.faults is not None and self.faults.config.kv_stream:
            messages = with_faults(messages, self.faults)
        # gRPC's own thread pulls `messages`, encoding each chunk as it goes: the transport
        # still writes the previous one meanwhile, and an encoder thread ahead of it cost more
        # in thread hops than it overlapped (94 MB handoffs 25-40% slower on 2 cores).
        h.call = handoff.future(
            messages, timeout=self.config.deadline_s, metadata=secret_metadata(self.config.secret)
        )
        h.call.add_done_callback(lambda call: self._on_call_done(h, call))

    def _on_call_done(self, h: _Handoff, call) -> None:
        if h.outbox is not None:
            h.outbox.close()
        if h.outcome is not None:  # settled already (e.g. finished on the prefill side)
            return
        try:
            ack = call.result()
        except grpc.RpcError as e:
            return self._fail(h, KVTransferError.from_rpc_error(e, h.request_id))
        except grpc.FutureCancelledError:
            return self._fail(
                h,
                KVTransferError(
                    grpc.StatusCode.CANCELLED, "the handoff was cancelled", h.request_id
                ),
            )
        result = HandoffResult(
            h.request_id,
            h.target,
            ack.num_chunks,
            ack.num_bytes,
            h.layerwise,
            time.perf_counter() - h.started,
            encoding=h.wire.encoding,
        )

        def release():
            try:
                self.engine.release(h.request_id)
            except KeyError:
                pass  # aborted here meanwhile: its blocks are free already

        self._on_engine(h, release, result, None)

    def _fail(self, h: _Handoff, error: KVTransferError) -> None:
        self._on_engine(h, lambda: self.engine.abort(h.request_id), None, error)

    def _settle(self, h: _Handoff, result: HandoffResult) -> None:
        h.outcome = result
        self._forget(h)
        if h.call is not None:
            h.call.cancel()
        self._resolve(h, result, None)

    def _on_engine(self, h: _Handoff, fn, result, error) -> None:
        """Run the engine side of the outcome on the engine thread, then settle the future."""
        self._forget(h)

        def settle(done: Future) -> None:
            self._resolve(h, result, error or done.exception())

        self.engine_thread.submit(fn).add_done_callback(settle)

    def _resolve(self, h: _Handoff, result, error) -> None:
        with self._lock:  # a call's verdict and a local settle may race: the first one wins
            if h.resolved:
                return
            h.resolved = True
        if h.span is not None:
            end_span(h.span, _span_error(error), _span_attributes(h, result))
        if error is not None:  # outside the lock: callbacks run here and may call route()
            h.future.set_exception(error)
        else:
            h.future.set_result(result)

    def _get(self, request_id: str) -> _Handoff | None:
        with self._lock:
            return self._handoffs.get(request_id)

    def _forget(self, h: _Handoff) -> None:
        with self._lock:
            if self._handoffs.get(h.request_id) is h:
                del self._handoffs[h.request_id]


def _span_error(error: BaseException | None) -> str | None:
    if error is None:
        return None
    return (
        f"{error.code.name}: {error.message}" if isinstance(error, KVTransferError) else str(error)
    )


def _span_attributes(h: _Handoff, result: HandoffResult | None) -> dict:
    """What the `kv_send` span reports: bytes and encoding moved, or that nothing moved."""
    if result is None:
        return {}
    if result.finished_on_prefill:
        return {"tandem.kv.finished_on_prefill": True}
    return {
        "tandem.kv.bytes": result.num_bytes,
        "tandem.kv.chunks": result.num_chunks,
        "tandem.kv.encoding": result.encoding,
        "tandem.kv.layerwise": result.layerwise,
    }
