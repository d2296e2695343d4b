"""The request path: route to workers, run prefill -> KV handoff -> decode, stream tokens back."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

from ray.exceptions import RayActorError, RayTaskError

from runtime.frontend.registry import WorkerRegistry
from runtime.frontend.request_spans import record_stage_spans
from runtime.frontend.requests import InvalidRequest, PreparedRequest
from runtime.frontend.results import GenerationChunk, ServingError, Timings, Usage
from runtime.observability.tracing import current_traceparent
from runtime.workers.events import HandoffEvent, TokenEvent
from runtime.workers.handle import WorkerHandle
from runtime.workers.load import WorkerLoad
from runtime.workers.streams import StreamTimeout
from scheduler import NoWorkerError, Overloaded, Router

log = logging.getLogger(__name__)
# Handoff failures worth another prefill/decode pair (DATA_LOSS: a chunk corrupted or lost
# on the link); others (a bad request, a model mismatch) are final.
RETRYABLE = {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "INTERNAL", "DATA_LOSS"}
# What clients are told to wait before retrying a request refused for want of a worker.
RETRY_AFTER_S = 5


class WorkerLost(Exception):
    """A worker serving the request died (or its KV receiver went away); internal."""

    def __init__(self, worker: str, detail: str):
        super().__init__(f"worker {worker} lost: {detail}")
        self.worker = worker


class _Attempt:
    """Bookkeeping of one request across its (re)tries."""

    def __init__(self, req: PreparedRequest, key: str):
        self.req = req
        self.key = key  # the request's id on the workers, unique in the cluster
        self.recover_by: float | None = None  # set once a worker died under it
        self.deadline: float | None = None  # the client's, on the monotonic clock
        self.running: tuple[str, tuple[WorkerHandle, ...]] = ("", ())  # key on which workers
        self.shut_down = False  # ended by the server's shutdown
        self.arrival = req.received_at if req.received_at is not None else time.monotonic()
        self.predicted_ttft_s: float | None = None  # admission's, for its learned margin
        self.first_sent: float | None = None
        self.last_sent: float | None = None  # when the latest token reached the frontend
        self.token_gaps: list[float] = []  # inter-token latencies not yet reported
        self.token_ids: list[int] = []
        self.timings = Timings()
        self.usage = Usage(prompt_tokens=len(req.prompt_token_ids))
        self.finish_reason: str | None = None
        self.handoff: HandoffEvent | None = None  # the last good one, for its trace span
        self.handoff_at = 0.0  # when it reached the frontend
        self.sent_prompt_logprobs = False

    def chunk(self, ev: TokenEvent) -> GenerationChunk:
        now = time.monotonic()
        if ev.new_token_ids and self.first_sent is None:
            self.first_sent = now
        if ev.queue_s is not None and ev.prefill_s is not None:
            self.timings.queue_s, self.timings.prefill_s = ev.queue_s, ev.prefill_s
            self.usage.cached_prompt_tokens = ev.num_cached_tokens
        if ev.decode_s is not None:
            self.timings.decode_s = ev.decode_s
        self._time_tokens(ev, now)
        self.token_ids += ev.new_token_ids
        out = GenerationChunk(
            self.req.request_id, list(ev.new_token_ids), ev.delta_text, logprobs=ev.logprobs
        )
        if ev.prompt_logprobs is not None and not self.sent_prompt_logprobs:
            # A resumed try's prompt holds the tokens already sent: keep the client's prompt.
            out.prompt_logprobs = ev.prompt_logprobs[: len(self.req.prompt_token_ids)]
            self.sent_prompt_logprobs = True
        if ev.finished and ev.finish_reason == "abort" and self.shut_down:
            raise _shutting_down()
        if ev.finished:
            self.finish_reason = ev.finish_reason
            out.finish_reason, out.usage, out.timings = ev.finish_reason, self.usage, self.timings
            self.usage.completion_tokens = len(self.token_ids)
            self.timings.ttft_s = (self.first_sent or now) - self.arrival
            self.timings.e2e_s = now - self.arrival
        return out

    def _time_tokens(self, ev: TokenEvent, now: float) -> None:
        """Each new token's gap to the previous: the engine's, where it sampled both; else
        (the first token after a KV handoff or a resume) between their arrivals here."""
        gaps = ev.token_gaps_s
        for i in range(len(ev.new_token_ids)):
            gap = gaps[i] if i < len(gaps) else None
            if gap is not None:
                self.token_gaps.append(gap)
            elif self.last_sent is not None:
                self.token_gaps.append(now - self.last_sent)
            self.last_sent = now


class Dispatcher:
    """Runs requests on the cluster's workers and streams `GenerationChunk`s back.

    Disaggregated: the router picks a prefill and a decode worker; the decode worker's stream
    is opened first (so no token can be missed), then the prefill worker computes the prompt,
    streams the first token and hands the KV to the decode worker, which streams the rest.
    Colocated: one worker does everything.

    Recovery: a request resumes from the tokens already sent (they join the prompt, so the
    stream goes on without duplicates or gaps) on another pair, or the same restarted one,
    when a worker under it dies or a handoff fails with a retryable status. After a worker
    death it waits up to `recovery_timeout_s` for a healthy worker, then ends UNAVAILABLE;
    other handoff failures get one retry. New requests while a pool has no healthy worker
    get UNAVAILABLE at once, with a retry hint.

    Each request runs on the workers under its own cluster-unique key (the client's request
    id plus a suffix), so two clients sending the same request id never touch each other's
    request. Cancellation: when the consumer stops iterating (client gone, deadline), every
    worker that may hold the request is told to abort it, which frees its KV blocks.

    Callbacks (for metrics and the pool balancer): `on_finished(timings, usage,
    finish_reason)` once per request that finished, `on_refused(reason)` once per request
    admission refused, `on_inter_token(gaps_s)` with the inter-token latencies of the tokens
    of each chunk as it is yielded (one per token but a request's first).
    """

    def __init__(
        self,
        workers: list[WorkerHandle],
        router: Router | None = None,
        on_finished=None,
        recovery_timeout_s: float = 20.0,
        max_streams_per_key: int = 0,
        on_refused=None,
        on_inter_token=None,
    ):
        self.registry = WorkerRegistry(workers, router)
        self.router = self.registry.router
        self.mode = self.registry.mode
        self.recovery_timeout_s = recovery_timeout_s
        self.max_streams_per_key = max_streams_per_key
        self.num_in_flight = 0
        self._per_key: dict[str, int] = {}
        self._on_finished = on_finished
        self._on_refused = on_refused
        self._on_inter_token = on_inter_token
        self._keys = itertools.count()
        self._prefix = uuid.uuid4().hex[:6]
        self._attempts: dict[str, _Attempt] = {}
        self._closing = False
        self._hurry = asyncio.Event()

    @property
    def workers(self) -> dict[str, WorkerHandle]:
        return self.registry.handles

    @property
    def serving(self) -> bool:
        return self.registry.serving

    async def poll_loads(self) -> list[WorkerLoad]:
        """Ask every worker for its load snapshot and hand them to the router."""
        return await self.registry.poll()

    async def generate(
        self, req: PreparedRequest, client_key: str = "", deadline_s: float | None = None
    ) -> AsyncIterator[GenerationChunk]:
        """The request's chunks. `client_key` names who sent it (see `client_key`): each
        may have `max_streams_per_key` requests in flight; past that RESOURCE_EXHAUSTED.
        `deadline_s`: seconds the client gives it (its gRPC deadline), None: no deadline.

        Admission (the router's): a request predicted to miss its TTFT target (the
        scheduler's SLO, or its deadline), or its TPOT target on every decode worker, or
        meeting a full prefill queue is refused at once,
        before any worker sees it, with RESOURCE_EXHAUSTED and a retry hint."""
        if self._closing:
            raise _shutting_down()
        held = self._per_key.get(client_key, 0)
        if self.max_streams_per_key and held >= self.max_streams_per_key:
            if self._on_refused:
                self._on_refused("api_key")
            raise ServingError(
                "RESOURCE_EXHAUSTED",
                f"this API key has {held} requests in "
                f"flight, the most the server allows at once; retry when one "
                f"has ended",
                retry_after_s=1,
            )
        self._per_key[client_key] = held + 1
        self.num_in_flight += 1
        attempt = _Attempt(req, f"{req.request_id}@{self._prefix}.{next(self._keys)}")
        if deadline_s is not None:
            attempt.deadline = time.monotonic() + deadline_s  # deadline_s is what is left now
        self._attempts[attempt.key] = attempt
        try:
            async for chunk in self._recovering(attempt):
                if attempt.predicted_ttft_s is not None and attempt.first_sent is not None:
                    self._observe_ttft(attempt)
                if attempt.token_gaps and self._on_inter_token:
                    self._on_inter_token(attempt.token_gaps)
                attempt.token_gaps = []
                yield chunk
            if self._on_finished and attempt.finish_reason:
                self._on_finished(attempt.timings, attempt.usage, attempt.finish_reason)
            if attempt.finish_reason:
                a = attempt
                record_stage_spans(a.arrival, a.timings, a.usage, a.handoff, a.handoff_at)
        finally:
            self.num_in_flight -= 1
            del self._attempts[attempt.key]
            self._per_key[client_key] -= 1
            if not self._per_key[client_key]:
                del self._per_key[client_key]

    def _observe_ttft(self, a: _Attempt) -> None:
        """Tell admission how the prediction fared, once per request; a request that lost a
        worker before its first token says nothing about the prediction."""
        assert a.predicted_ttft_s is not None and a.first_sent is not None
        if a.recover_by is None:
            role = "colocated" if self.mode == "colocated" else "prefill"
            self.router.observe_ttft(role, a.predicted_ttft_s, a.first_sent - a.arrival)
        a.predicted_ttft_s = None

    def _route_prompt(self, a: _Attempt, role: str, ids, exclude, admit: bool) -> str:
        route = self.router.route_prompt(role, ids, exclude, admit, self._left_s(a))
        if admit:
            a.predicted_ttft_s = route.predicted_ttft_s
        return route.worker

    def holds(self, worker: str) -> bool:
        """Whether a request in flight runs on (or last ran on) `worker`."""
        return any(worker in (w.name for w in a.running[1]) for a in self._attempts.values())

    async def drain(self, grace_s: float) -> None:
        """Shutdown: refuse new requests (UNAVAILABLE), let those in flight finish for up to
        `grace_s` (or until `hurry()`), then end the rest with UNAVAILABLE by aborting them
        on their workers, which frees their blocks; returns once they have ended (or after
        a few more seconds)."""
        self._closing = True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle_or_hurried(), grace_s)
        for a in list(self._attempts.values()):
            a.shut_down = True
            key, workers = a.running
            for worker in workers:
                _abort(worker, key)
        if self._attempts:
            log.warning("shutting down: ending %d requests still in flight", len(self._attempts))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle_or_hurried(), 3.0)

    def hurry(self) -> None:
        """End the drain's grace period now (a second Ctrl-C)."""
        self._hurry.set()

    async def _idle_or_hurried(self) -> None:
        while self._attempts and not self._hurry.is_set():
            await asyncio.sleep(0.05)

    async def _recovering(self, a: _Attempt):
        """Runs the request, resuming it after a worker death or a failed handoff."""
        tried: set[str] = set()
        handoff_retries = 0
        for number in itertools.count():
            if a.shut_down:
                raise _shutting_down()
            sub = self._continuation(a, number)
            failure: HandoffEvent | WorkerLost | None = None
            try:
                async for item in self._run(a, sub, tried, admit=not number):
                    if isinstance(item, HandoffEvent):
                        failure = item
                    else:
                        yield item
            except WorkerLost as e:
                failure = e
            if failure is None:
                return
            if isinstance(failure, HandoffEvent) and failure.code != "UNAVAILABLE":
                handoff_retries += 1
                if failure.code not in RETRYABLE or handoff_retries > 1:
                    log.warning(
                        "request %s: KV handoff failed (%s: %s)",
                        a.key,
                        failure.code,
                        failure.message,
                    )
                    raise ServingError(
                        failure.code or "INTERNAL",
                        f"the KV handoff of request {a.req.request_id} failed ({failure.code})",
                    )
                log.warning(
                    "request %s: KV handoff failed (%s: %s); retrying on another pair",
                    a.key,
                    failure.code,
                    failure.message,
                )
                tried |= {a.timings.prefill_worker, a.timings.decode_worker}
                continue
            # A dead worker (or an unreachable KV receiver: a decode worker restarting).
            lost = failure.worker if isinstance(failure, WorkerLost) else a.timings.decode_worker
            log.warning(
                "request %s: %s; resuming after %d of its tokens",
                a.key,
                failure
                if isinstance(failure, WorkerLost)
                else f"KV receiver of {lost} unreachable: {failure.message}",
                len(a.token_ids),
            )
            self.registry.mark_down(lost)
            tried = {lost}
            if a.recover_by is None:
                a.recover_by = time.monotonic() + self.recovery_timeout_s

    def _run(self, a: _Attempt, sub: PreparedRequest, tried: set[str], admit: bool):
        """One try; `admit`: the first, which admission may refuse (a retry was admitted)."""
        if self.mode == "colocated":
            return self._colocated(a, sub, tried, admit)
        return self._disaggregated(a, sub, tried, admit)

    def _left_s(self, a: _Attempt) -> float | None:
        return None if a.deadline is None else a.deadline - time.monotonic()

    async def _colocated(self, a: _Attempt, sub: PreparedRequest, tried: set[str], admit: bool):
        ids = sub.prompt_token_ids
        worker = await self._pick(
            a, lambda x: self._route_prompt(a, "colocated", ids, x, admit), tried
        )
        a.timings.prefill_worker = a.timings.decode_worker = worker.name
        a.running = (sub.request_id, (worker,))
        done = False
        try:
            gen = worker.actor.generate.remote(sub.request_id, sub.prompt_token_ids, sub.params)
            async for ev in _events(gen, worker, a):
                done = ev.finished
                yield a.chunk(ev)
        finally:
            if not done:
                _abort(worker, sub.request_id)

    async def _disaggregated(self, a: _Attempt, sub: PreparedRequest, tried: set[str], admit: bool):
        ids = sub.prompt_token_ids
        prefill = await self._pick(
            a, lambda x: self._route_prompt(a, "prefill", ids, x, admit), tried
        )
        decode = await self._pick(a, lambda x: self.router.pick_decode(x, len(ids)), tried)
        a.timings.prefill_worker, a.timings.decode_worker = prefill.name, decode.name
        async for item in self._run_pair(a, sub, prefill, decode):
            yield item

    @staticmethod
    def _continuation(a: _Attempt, number: int) -> PreparedRequest:
        """The request itself, or on a later try what is left of it: the tokens already sent
        join the prompt, max_tokens and min_tokens shrink by as many, and the presence and
        frequency penalties go on counting them as output."""
        if not number:
            return replace(a.req, request_id=a.key)
        ids = a.req.prompt_token_ids + tuple(a.token_ids)
        return PreparedRequest(f"{a.key}~{number}", ids, a.req.params.resumed(len(a.token_ids)))

    async def _run_pair(
        self, a: _Attempt, sub: PreparedRequest, prefill: WorkerHandle, decode: WorkerHandle
    ):
        """Yields the request's chunks; ends with a failed HandoffEvent if the handoff failed
        (both workers have freed the request then). Whatever way it ends, neither worker
        keeps anything of the request: the decode side's stream is aborted unless it
        finished, the prefill side's unless its stream ended."""
        rid = sub.request_id
        a.running = (rid, (prefill, decode))
        decode_gen = decode.actor.stream.remote(rid)
        prefill_open = decode_open = True
        try:
            # The trace context crosses the actor call: the handoff's spans join the trace.
            prefill_gen = prefill.actor.prefill.remote(
                rid, sub.prompt_token_ids, sub.params, decode.kv_address, current_traceparent()
            )
            handoff, finished = None, False
            async for ev in _events(prefill_gen, prefill, a):
                if isinstance(ev, HandoffEvent):
                    handoff = ev
                else:
                    finished = ev.finished
                    yield a.chunk(ev)
            prefill_open = False
            if handoff is not None and handoff.ok:
                a.handoff, a.handoff_at = handoff, time.monotonic()
                a.timings.kv_transfer_s += handoff.seconds
                a.timings.kv_transfer_bytes += handoff.num_bytes
            if finished or handoff is None or not handoff.ok or handoff.finished_on_prefill:
                # Nothing (more) comes from the decode side: end its stream there.
                if not finished and (handoff is None or not handoff.ok):
                    yield handoff or HandoffEvent(
                        rid,
                        False,
                        code="INTERNAL",
                        message="prefill worker ended without a handoff",
                    )
                return
            async for ev in _events(decode_gen, decode, a):
                decode_open = not ev.finished
                yield a.chunk(ev)
        finally:
            if prefill_open:
                _abort(prefill, rid)
            if decode_open:
                _abort(decode, rid)

    async def _pick(self, a: _Attempt, choose, avoid: set[str]) -> WorkerHandle:
        """A healthy worker outside `avoid` (the failed ones) if there is one, else any
        healthy one. A request resuming after a worker death waits for one until its
        recovery deadline; any other gets UNAVAILABLE at once. A request admission refuses
        gets RESOURCE_EXHAUSTED."""
        while True:
            try:
                try:
                    return self.workers[choose(frozenset(avoid))]
                except NoWorkerError:
                    if not avoid:
                        raise
                    return self.workers[choose(frozenset())]
            except Overloaded as e:
                if self._on_refused:
                    self._on_refused(e.kind)
                raise ServingError(
                    "RESOURCE_EXHAUSTED", e.reason, retry_after_s=e.retry_after_s
                ) from None
            except NoWorkerError:
                if a.recover_by is None or time.monotonic() >= a.recover_by or a.shut_down:
                    break
            await asyncio.sleep(0.1)
        missing = " and ".join(self.registry.missing_roles()) or "matching"
        waited = (
            f" (waited {self.recovery_timeout_s:.0f} s for one to come back)"
            if a.recover_by is not None
            else ""
        )
        raise ServingError(
            "UNAVAILABLE",
            f"no healthy {missing} worker{waited}; retry in {RETRY_AFTER_S} s",
            retry_after_s=RETRY_AFTER_S,
        )


def client_key(authorization: str) -> str:
    """Who sent a request, for per-key limits: a digest of its Authorization value (never
    the key itself), "" without one."""
    return hashlib.sha256(authorization.encode()).hexdigest()[:16] if authorization else ""


def _shutting_down() -> ServingError:
    return ServingError(
        "UNAVAILABLE",
        "the server is shutting down; retry the request on another replica",
        retry_after_s=RETRY_AFTER_S,
    )


def _abort(worker: WorkerHandle, request_id: str) -> None:
    """Fire-and-forget abort; a dead or restarting worker holds nothing to free."""
    ref = worker.actor.abort.remote(request_id)
    ref.future().add_done_callback(lambda f: f.exception())  # retrieved: Ray stays quiet


async def _get(ref, worker: WorkerHandle, a: _Attempt):
    """A worker's event batch. A dead worker is WorkerLost; a request the engine refused is
    InvalidRequest; a stream the worker closed for want of output (its idle timeout, the
    deadline of every stage on a worker) is DEADLINE_EXCEEDED; anything else is INTERNAL, its
    details logged, not sent to the client."""
    try:
        return await ref
    except RayActorError as e:
        raise WorkerLost(worker.name, f"{type(e).__name__}: {e}") from None
    except RayTaskError as e:
        cause = e.cause if getattr(e, "cause", None) is not None else e
        if isinstance(cause, ValueError):
            raise InvalidRequest(str(cause)) from None
        if isinstance(cause, StreamTimeout):
            log.warning("request %s: %s on worker %s", a.key, cause, worker.name)
            raise ServingError(
                "DEADLINE_EXCEEDED",
                f"request {a.req.request_id} produced no output within the worker's idle limit",
            ) from None
        log.error("request %s failed on worker %s: %s", a.key, worker.name, e)
        raise ServingError(
            "INTERNAL",
            f"internal error while serving request "
            f"{a.req.request_id}; the server log has the details",
        ) from None
    except ValueError as e:
        raise InvalidRequest(str(e)) from None


async def _events(gen, worker: WorkerHandle, a: _Attempt):
    """A worker's stream of event batches (a Ray streaming generator), one event at a time."""
    try:
        async for ref in gen:
            for ev in await _get(ref, worker, a):
                yield ev
    except RayActorError as e:  # the stream itself broke off: the worker died
        raise WorkerLost(worker.name, f"{type(e).__name__}: {e}") from None
