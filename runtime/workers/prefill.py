"""The prefill worker: computes each prompt's KV and first token, then hands the KV off."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future

from runtime.engine import Engine, SamplingParams
from runtime.kv_transfer import KVSender, KVTransferError
from runtime.workers.base import Worker
from runtime.workers.config import WorkerConfig
from runtime.workers.events import HandoffEvent, TokenEvent


def _is_terminal(event) -> bool:
    return isinstance(event, HandoffEvent) or (event.finished and event.finish_reason == "abort")


class PrefillWorker(Worker):
    """A prefill-role engine driven through a `KVSender`: layer-wise KV streaming overlaps
    the prompt's forward; the blocks stay held until the decode worker acknowledges."""

    role = "prefill"

    def __init__(self, config: WorkerConfig, engine: Engine | None = None):
        super().__init__(config, engine)
        assert config.kv is not None  # WorkerConfig requires it of a prefill worker
        self.sender = KVSender(self.engine, self.loop, config.kv, faults=self.faults)
        self.num_prefilled = 0  # requests admitted for a prefill (a retry counts again)

    def counters(self) -> dict[str, int]:
        return {"prefilled": self.num_prefilled}

    def prefill(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        target: str,
        traceparent: str = "",
    ) -> Iterator[list]:
        """Prefill one request and hand its KV to the decode worker's receiver at `target`.
        `traceparent`: the request's W3C trace context (the frontend's span), which the
        handoff's spans on both workers join.

        Streams a `TokenEvent` with the first token (and the worker's queue and prefill
        times), then ends with a `HandoffEvent` saying how the handoff went. Raises
        ValueError, before any event, when the engine refuses the prompt.
        """
        self.streams.open(request_id)

        def start() -> None:
            self.engine.add_request(
                params=params, prompt_token_ids=list(prompt_token_ids), request_id=request_id
            )
            try:
                future = self.sender.route(request_id, target, traceparent)
            except BaseException:
                self.engine.abort(request_id)
                raise
            future.add_done_callback(lambda f: self._handoff_done(request_id, f))
            self.num_prefilled += 1
            self._update_load()
            self.faults.at("prefill.admitted")

        try:
            self.loop.call(start)
        except BaseException:
            self.streams.discard(request_id)
            raise
        yield from self.streams.drain(request_id, _is_terminal)

    def close(self) -> None:
        self.sender.close()
        super().close()

    def _step(self) -> list:
        return self.sender.step()

    def _dispatch(self, outputs: list) -> None:
        super()._dispatch(outputs)
        if outputs:
            self.faults.at("prefill.first_token")

    def _abort(self, request_id: str) -> None:
        # A routed request's cancel goes through the sender: it cancels the call in flight,
        # aborts the request on this engine and fails the handoff future (CANCELLED).
        self.sender.cancel(request_id)
        super()._abort(request_id)

    def _handoff_done(self, request_id: str, future: Future) -> None:
        error = future.exception()
        if error is None:
            r = future.result()
            event = HandoffEvent(
                request_id, True, r.seconds, r.num_bytes, r.finished_on_prefill, encoding=r.encoding
            )
        elif isinstance(error, KVTransferError):
            event = HandoffEvent(request_id, False, code=error.code.name, message=error.message)
        else:
            event = HandoffEvent(request_id, False, code="INTERNAL", message=str(error))
        # Through the loop: the callback may fire inside the step that produced the request's
        # first token (a request that ends on it) or on gRPC's thread before that step's
        # outputs are dispatched, and the handoff event ends the stream; queued behind them,
        # it cannot overtake the token.
        queued = self.loop.submit(self._handoff_settled, request_id, event)
        if queued.done() and queued.exception() is not None:  # the loop is stopped
            self.streams.put(request_id, event)

    def _handoff_settled(self, request_id: str, event: HandoffEvent) -> None:
        if not event.ok:
            code = event.code or "INTERNAL"
            self.handoff_failures[code] = self.handoff_failures.get(code, 0) + 1
        self.streams.put(request_id, event)
        self._update_load()


__all__ = ["PrefillWorker", "TokenEvent"]
