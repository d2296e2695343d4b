"""What every worker shares: an engine on its own engine thread, output streams, load reports."""

from __future__ import annotations

import logging
import os
import time
import uuid
import warnings

import psutil
import ray

from runtime.engine import Engine, EngineThread
from runtime.faults import FaultConfig, Faults
from runtime.observability import configure_logging, configure_tracing, shutdown_tracing
from runtime.workers.config import WorkerConfig
from runtime.workers.events import TokenEvent
from runtime.workers.load import WorkerLoad
from runtime.workers.streams import OutputStreams
from scheduler.load import RateMeter, StepTimeModel

log = logging.getLogger(__name__)


class Worker:
    """A plain class around one engine role; the Ray builder turns it into an actor.

    Every engine call runs on the worker's `EngineThread`, which steps the engine. Public
    methods are safe to call from any thread (Ray runs a threaded actor's calls
    concurrently); streaming methods block their calling thread while they wait for events.
    """

    role = ""

    def __init__(self, config: WorkerConfig, engine: Engine | None = None):
        if config.engine.role != self.role:
            raise ValueError(
                f"{type(self).__name__} needs engine role {self.role!r}, got {config.engine.role!r}"
            )
        self.config = config
        self.name = config.name
        if _in_ray_actor():  # its own process: in-process (tests) the host's logging stays
            configure_logging(config.observability)
        configure_tracing(config.observability, self.name)
        self.engine = engine or Engine(config.engine)
        self.incarnation = uuid.uuid4().hex[:12]
        self.faults = Faults(config.faults, first_process=not _restarted_by_ray())
        self.streams = OutputStreams(config.stream_idle_timeout_s)
        self._load = WorkerLoad(self.name, self.role, incarnation=self.incarnation)
        self._prefill_rate = RateMeter()
        self._decode_steps = StepTimeModel()
        self._busy_s = 0.0
        # Failed KV handoffs by gRPC status name (a prefill worker's; loop thread only).
        self.handoff_failures: dict[str, int] = {}
        self.loop = EngineThread(
            f"{self.role}-{self.name}",
            self._metered_step,
            self.engine.has_unfinished_requests,
            self._dispatch,
            self._fail_all,
        )
        self.loop.call(self._update_load)

    # -- any thread -----------------------------------------------------------------------
    def load(self) -> WorkerLoad:
        """The latest load snapshot (refreshed on the loop thread after every step)."""
        return self._load

    def counters(self) -> dict[str, int]:
        """Totals since this process started (what each role counts; for tests and
        operators)."""
        return {}

    def info(self) -> dict:
        """Name, role, incarnation, and where the KV receiver listens (decode workers); a
        readiness probe."""
        return {
            "name": self.name,
            "role": self.role,
            "kv_address": self.kv_address,
            "incarnation": self.incarnation,
            "max_model_len": self.engine.max_model_len,
            "num_total_blocks": self.engine.block_manager.num_blocks,
        }

    @property
    def kv_address(self) -> str:
        return ""

    def num_open_streams(self) -> int:
        """Requests whose event stream is open here (each holds a streaming call's thread
        while it is read); 0 on an idle worker."""
        return len(self.streams)

    def set_faults(self, faults: FaultConfig) -> dict[str, int]:
        """Inject these faults from now on (chaos tests), replacing the configured ones;
        returns how often the replaced ones fired."""
        fired = self.faults.fired
        self.faults.configure(faults)
        return fired

    def rss_bytes(self) -> int:
        """The worker process's resident memory (for soak runs and operators)."""
        return psutil.Process().memory_info().rss

    def pid(self) -> int:
        """The worker's process id (for operators and fault-injection tests)."""
        return os.getpid()

    def num_free_blocks(self) -> int:
        return self.loop.call(lambda: self.engine.block_manager.num_free_blocks)

    def abort(self, request_id: str) -> None:
        """Cancel a request here: its blocks are free once this returns; its stream ends."""
        self.loop.call(self._abort, request_id)

    def close(self) -> None:
        self.loop.close()
        shutdown_tracing()

    # -- the loop thread ------------------------------------------------------------------
    def _step(self) -> list:
        return self.engine.step()

    def _metered_step(self) -> list:
        """`_step`, timed: a step that computed prompt tokens feeds the prefill rate (its
        whole wall time, KV streaming and sampling included, as a queued prompt waits it); a
        step that only decoded feeds the decode step-time model (what a client sees as its
        time per output token)."""
        start = time.monotonic()
        outputs = self._step()
        seconds = time.monotonic() - start
        self._busy_s += seconds
        prompt_tokens = self.engine.last_step.num_prompt_tokens
        if prompt_tokens:
            self._prefill_rate.add(prompt_tokens, seconds)
        elif self.engine.last_step.num_decode_seqs:
            self._decode_steps.add(self.engine.last_step.num_decode_seqs, seconds)
        if not outputs:  # _dispatch refreshes the load otherwise
            self._update_load()
        return outputs

    def _dispatch(self, outputs: list) -> None:
        for out in outputs:
            self.streams.put(out.request_id, TokenEvent.from_output(out, self.role != "decode"))
        self._update_load()

    def _abort(self, request_id: str) -> None:
        self.engine.abort(request_id)
        self.streams.put(request_id, TokenEvent.aborted(request_id))
        self._update_load()

    def _fail_all(self, error: Exception) -> None:
        """A step raised: end every request here rather than step the same failure again."""
        for request_id in list(self.engine.requests):
            self._abort(request_id)

    def _update_load(self) -> None:
        s, bm = self.engine.scheduler, self.engine.block_manager
        queued = sum(
            max(seq.num_prompt_tokens - seq.num_computed_tokens, 0)
            for seq in (*s.waiting, *s.running)
        )
        self._load = WorkerLoad(
            self.name,
            self.role,
            num_queued_prompt_tokens=queued,
            num_running=len(s.running),
            num_waiting=len(s.waiting),
            num_free_blocks=bm.num_free_blocks,
            num_total_blocks=bm.num_blocks,
            block_size=bm.block_size,
            prefill_tokens_per_s=self._prefill_rate.rate,
            decode_step_s=self._decode_steps.base_s,
            decode_step_s_per_seq=self._decode_steps.per_seq_s,
            busy_s=self._busy_s,
            max_num_seqs=self.engine.config.scheduler.max_num_seqs,
            incarnation=self.incarnation,
            num_prefix_cache_queries=s.num_prefix_cache_queries,
            num_prefix_cache_hits=s.num_prefix_cache_hits,
            handoff_failures=tuple(sorted(self.handoff_failures.items())),
            num_preemptions=s.num_preemptions,
        )


def _in_ray_actor() -> bool:
    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None


def _restarted_by_ray() -> bool:
    """True inside a Ray actor process that replaced a dead one."""
    if not ray.is_initialized():
        return False
    context = ray.get_runtime_context()
    if context.get_actor_id() is None:
        return False
    with warnings.catch_warnings():  # the property reads Ray's deprecated `actor_id` itself
        warnings.simplefilter("ignore")
        return bool(context.was_current_actor_reconstructed)
