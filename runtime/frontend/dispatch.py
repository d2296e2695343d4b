"""The request path: route to workers, run prefill -> KV handoff -> decode, stream tokens back."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import ray
from ray.exceptions import RayActorError, RayTaskError

from runtime.frontend.requests import InvalidRequest, PreparedRequest
from runtime.frontend.results import GenerationChunk, ServingError, Timings, Usage
from runtime.workers.builder import WorkerHandle
from runtime.workers.events import HandoffEvent, TokenEvent
from scheduler.router import NoWorkerError, Router, WorkerLoad

log = logging.getLogger(__name__)
# Handoff failures worth another prefill/decode pair; others (a bad request) are final.
RETRYABLE = {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "INTERNAL"}


class _Attempt:
    """Bookkeeping of one request across its (re)tries."""

    def __init__(self, req: PreparedRequest):
        self.req = req
        self.arrival = time.monotonic()
        self.first_sent: float | None = None
        self.token_ids: list[int] = []
        self.timings = Timings()
        self.usage = Usage(prompt_tokens=len(req.prompt_token_ids))
        self.finish_reason: str | None = None

    def chunk(self, ev: TokenEvent) -> GenerationChunk:
        now = time.monotonic()
        if ev.new_token_ids and self.first_sent is None:
            self.first_sent = now
        if ev.queue_s is not None:
            self.timings.queue_s, self.timings.prefill_s = ev.queue_s, ev.prefill_s
            self.usage.cached_prompt_tokens = ev.num_cached_tokens
        if ev.decode_s is not None:
            self.timings.decode_s = ev.decode_s
        self.token_ids += ev.new_token_ids
        out = GenerationChunk(self.req.request_id, list(ev.new_token_ids), ev.delta_text)
        if ev.finished:
            self.finish_reason = ev.finish_reason
            out.finish_reason, out.usage, out.timings = ev.finish_reason, self.usage, self.timings
            self.usage.completion_tokens = len(self.token_ids)
            self.timings.ttft_s = (self.first_sent or now) - self.arrival
            self.timings.e2e_s = now - self.arrival
        return out


class Dispatcher:
    """Runs requests on the cluster's workers and streams `GenerationChunk`s back.

    Disaggregated: the router picks a prefill and a decode worker; the decode worker's stream
    is opened first (so no token can be missed), then the prefill worker computes the prompt,
    streams the first token and hands the KV to the decode worker, which streams the rest.
    A handoff that fails with a retryable status before the decode side admitted the request
    is retried once on another pair, continuing from the tokens already sent. Colocated: one
    worker does everything.

    Cancellation: when the consumer stops iterating (client gone, deadline), every worker
    that may hold the request is told to abort it, which frees its KV blocks.
    """

    def __init__(self, workers: list[WorkerHandle], router: Router | None = None,
                 on_finished=None):
        self.workers = {w.name: w for w in workers}
        self.router = router or Router()
        self.mode = "colocated" if any(w.role == "colocated" for w in workers) else "disaggregated"
        self.num_in_flight = 0
        self._on_finished = on_finished
        for w in workers:
            self.router.report(WorkerLoad(w.name, w.role))

    async def poll_loads(self) -> list[WorkerLoad]:
        """Ask every worker for its load snapshot and hand them to the router."""
        names = list(self.workers)
        results = await asyncio.gather(*(self.workers[n].actor.load.remote() for n in names),
                                       return_exceptions=True)
        for name, load in zip(names, results):
            if isinstance(load, BaseException):
                log.warning("worker %s did not report its load: %s", name, load)
                load = WorkerLoad(name, self.workers[name].role, healthy=False)
            self.router.report(load)
        return self.router.loads()

    async def generate(self, req: PreparedRequest) -> AsyncIterator[GenerationChunk]:
        self.num_in_flight += 1
        attempt = _Attempt(req)
        try:
            if self.mode == "colocated":
                stream = self._colocated(attempt)
            else:
                stream = self._disaggregated(attempt)
            async for chunk in stream:
                yield chunk
            if self._on_finished and attempt.finish_reason:
                self._on_finished(attempt.timings, attempt.usage, attempt.finish_reason)
        finally:
            self.num_in_flight -= 1

    # -- colocated ------------------------------------------------------------------------
    async def _colocated(self, a: _Attempt):
        req = a.req
        worker = self._pick(lambda x: self.router.pick_colocated(len(req.prompt_token_ids), x))
        a.timings.prefill_worker = a.timings.decode_worker = worker.name
        done = False
        try:
            gen = worker.actor.generate.remote(req.request_id, req.prompt_token_ids, req.params)
            async for ev in _events(gen):
                done = ev.finished
                yield a.chunk(ev)
        finally:
            if not done:
                worker.actor.abort.remote(req.request_id)

    # -- disaggregated --------------------------------------------------------------------
    async def _disaggregated(self, a: _Attempt):
        tried: set[str] = set()
        req, retries = a.req, 0
        while True:
            sub = self._continuation(a, retries)
            n = len(sub.prompt_token_ids)
            prefill = self._pick(lambda x: self.router.pick_prefill(n, x), tried)
            decode = self._pick(lambda x: self.router.pick_decode(x), tried)
            a.timings.prefill_worker, a.timings.decode_worker = prefill.name, decode.name
            failure = None
            async for item in self._run_pair(a, sub, prefill, decode):
                if isinstance(item, HandoffEvent):
                    failure = item
                else:
                    yield item
            if failure is None:
                return
            retries += 1
            tried |= {prefill.name, decode.name}
            if failure.code not in RETRYABLE or retries > 1:
                raise ServingError(failure.code or "INTERNAL",
                                   f"KV handoff of {req.request_id} failed: {failure.message}")
            log.warning("handoff of %s failed (%s: %s); retrying on another pair",
                        req.request_id, failure.code, failure.message)

    @staticmethod
    def _continuation(a: _Attempt, retry: int) -> PreparedRequest:
        """The request itself, or after a failed handoff what is left of it: the tokens
        already sent join the prompt and max_tokens shrinks by as many."""
        if not retry:
            return a.req
        ids = a.req.prompt_token_ids + tuple(a.token_ids)
        left = a.req.params.max_tokens - len(a.token_ids)
        return PreparedRequest(f"{a.req.request_id}~{retry}", ids,
                               replace(a.req.params, max_tokens=max(left, 1)))

    async def _run_pair(self, a: _Attempt, sub: PreparedRequest, prefill: WorkerHandle,
                        decode: WorkerHandle):
        """Yields the request's chunks; ends with a failed HandoffEvent if the handoff failed
        (both workers have freed the request then)."""
        rid = sub.request_id
        decode_gen = decode.actor.stream.remote(rid)
        done = False
        try:
            prefill_gen = prefill.actor.prefill.remote(rid, sub.prompt_token_ids, sub.params,
                                                       decode.kv_address)
            handoff = None
            async for ev in _events(prefill_gen):
                if isinstance(ev, HandoffEvent):
                    handoff = ev
                else:
                    done = ev.finished
                    yield a.chunk(ev)
            if done:
                return
            if handoff is None or not handoff.ok:
                decode.actor.abort.remote(rid)
                done = True
                yield handoff or HandoffEvent(rid, False, code="INTERNAL",
                                              message="prefill worker ended without a handoff")
                return
            a.timings.kv_transfer_s += handoff.seconds
            a.timings.kv_transfer_bytes += handoff.num_bytes
            if handoff.finished_on_prefill:   # nothing was handed off: end the decode stream
                decode.actor.abort.remote(rid)
                done = True
                return
            async for ev in _events(decode_gen):
                done = ev.finished
                yield a.chunk(ev)
        finally:
            if not done:
                prefill.actor.abort.remote(rid)
                decode.actor.abort.remote(rid)

    def _pick(self, choose, avoid: set[str] = frozenset()) -> WorkerHandle:
        """A worker outside `avoid` (the failed ones) if there is one, else any healthy one."""
        try:
            try:
                return self.workers[choose(frozenset(avoid))]
            except NoWorkerError:
                if not avoid:
                    raise
                return self.workers[choose(frozenset())]
        except NoWorkerError as e:
            raise ServingError("UNAVAILABLE", str(e)) from None


async def _get(ref):
    """A worker's event batch; worker-side errors become InvalidRequest or ServingError."""
    try:
        return await ref
    except RayActorError as e:
        raise ServingError("UNAVAILABLE", f"a worker died: {e}") from None
    except RayTaskError as e:
        cause = e.cause if getattr(e, "cause", None) is not None else e
        if isinstance(cause, ValueError):
            raise InvalidRequest(str(cause)) from None
        raise ServingError("INTERNAL", f"{type(cause).__name__}: {cause}") from None
    except ValueError as e:
        raise InvalidRequest(str(e)) from None


async def _events(gen):
    """A worker's stream of event batches (a Ray streaming generator), one event at a time."""
    async for ref in gen:
        for ev in await _get(ref):
            yield ev


__all__ = ["Dispatcher", "ray"]
