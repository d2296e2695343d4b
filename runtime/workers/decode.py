"""The decode worker: admits handed-off requests through its KV receiver and decodes them."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

import ray

from runtime.engine import Engine
from runtime.kv_transfer import KVReceiver
from runtime.workers.base import Worker
from runtime.workers.config import WorkerConfig
from runtime.workers.events import TokenEvent

_MAX_CANCELLED = 10_000


class DecodeWorker(Worker):
    """A decode-role engine behind a `KVReceiver` gRPC service; imports land between steps.

    A request's events may be produced before anyone streams them (the handoff races the
    frontend's `stream` call), so its queue is created by whichever comes first.
    """

    role = "decode"

    def __init__(self, config: WorkerConfig, engine: Engine | None = None):
        super().__init__(config, engine)
        # Aborts that may overtake their request's KV import: a late import is dropped.
        self._cancelled: OrderedDict[str, None] = OrderedDict()
        assert config.kv is not None  # WorkerConfig requires it of a decode worker
        self.receiver = KVReceiver(self.engine, self.loop, config.kv, faults=self.faults)
        port = self.receiver.start(f"{config.kv_bind_host}:{config.kv_port}")
        self._kv_address = f"{self._advertise_host()}:{port}"

    @property
    def kv_address(self) -> str:
        return self._kv_address

    def counters(self) -> dict[str, int]:
        r = self.receiver
        return {
            "handoffs_admitted": r.num_admitted,
            "handoffs_waited_for_blocks": r.num_waited_for_blocks,
        }

    def stream(self, request_id: str) -> Iterator[list[TokenEvent]]:
        """Stream batches of `TokenEvent`s of a request handed off here, until it finishes."""
        yield from self.streams.drain(request_id, lambda ev: ev.finished)

    def close(self) -> None:
        self.receiver.stop(grace=1.0)
        super().close()

    def _advertise_host(self) -> str:
        host = self.config.kv_advertise_host or self.config.kv_bind_host
        if host in ("0.0.0.0", "::", ""):
            host = ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"
        return host

    def _dispatch(self, outputs: list) -> None:
        kept = []
        for out in outputs:
            if out.request_id in self._cancelled:
                self.engine.abort(out.request_id)
            else:
                kept.append(out)
        for out in kept:
            self.streams.put(out.request_id, TokenEvent.from_output(out, False), create=True)
        self._update_load()
        if kept:
            self.faults.at("decode.token")

    def _abort(self, request_id: str) -> None:
        if not self.engine.abort(request_id):
            self._cancelled[request_id] = None
            while len(self._cancelled) > _MAX_CANCELLED:
                self._cancelled.popitem(last=False)
        self.streams.put(request_id, TokenEvent.aborted(request_id), create=True)
        self._update_load()
