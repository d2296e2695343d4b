"""Fault injection for chaos tests and drills: faults at named stages, all off by default.

A `FaultConfig` comes from the cluster file's `faults` section (or a worker's `set_faults`);
each worker holds one `Faults`, which its engine loop, KV sender and KV receiver consult at
the stages below. Nothing here runs unless a fault is configured.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass, fields

log = logging.getLogger(__name__)

# Where `kill_at` can stop a worker process (SIGKILL, as `kill -9` would):
STAGES = {
    "prefill.admitted": "a prefill worker accepted a request, before computing it",
    "prefill.first_token": "a prefill worker computed a request's first token, before its "
    "KV handoff completed",
    "kv.header_received": "a decode worker's KV receiver opened a handoff, before its chunks",
    "decode.token": "a decode worker streamed tokens of a request it decodes",
}


@dataclass(frozen=True)
class FaultConfig:
    """Faults to inject. Each fires on its first `times` occasions in a worker process.

    - `kill_at`: a stage of `STAGES`; the worker kills itself (SIGKILL) there. From the
      cluster file only in its first process, so the worker Ray restarts serves normally.
    - `kv_delay_s`: the KV sender waits this long before each message of a handoff.
    - `kv_drop_chunk`: the sender leaves the first chunk of a handoff out of the stream.
    - `kv_corrupt_chunk`: the sender flips a bit of a handoff's first chunk after its
      checksum was computed.
    - `kv_stall_s`: the sender waits this long before a handoff's trailer (past the KV
      deadline, the call times out).
    - `kv_refuse_blocks`: the KV receiver refuses a handoff as if its cache were full.
    """

    kill_at: str | None = None
    kv_delay_s: float = 0.0
    kv_drop_chunk: bool = False
    kv_corrupt_chunk: bool = False
    kv_stall_s: float = 0.0
    kv_refuse_blocks: bool = False
    times: int = 1

    def __post_init__(self) -> None:
        if self.kill_at is not None and self.kill_at not in STAGES:
            raise ValueError(
                f"faults.kill_at must be one of {sorted(STAGES)}, got {self.kill_at!r}"
            )
        for name in ("kv_delay_s", "kv_stall_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"faults.{name} must be >= 0, got {getattr(self, name)}")
        if self.times < 1:
            raise ValueError(f"faults.times must be >= 1, got {self.times}")

    @property
    def active(self) -> bool:
        return self != FaultConfig()

    @property
    def kv_stream(self) -> bool:
        """A fault that changes a handoff's message stream."""
        return bool(
            self.kv_delay_s or self.kv_drop_chunk or self.kv_corrupt_chunk or self.kv_stall_s
        )


class Faults:
    """One worker's faults: counts occasions and says when a fault fires. Thread-safe.

    `first_process` False (the worker was restarted) disarms the configured `kill_at`, so a
    restarted worker does not die of its cluster file's fault again.
    """

    def __init__(self, config: FaultConfig | None = None, first_process: bool = True):
        self._lock = threading.Lock()
        self.configure(config or FaultConfig())
        self._kill_armed = first_process

    def configure(self, config: FaultConfig) -> None:
        """Replace the faults (armed, `kill_at` too) and start their counts afresh."""
        with self._lock:
            self.config = config
            self._fired = {f.name: 0 for f in fields(FaultConfig)}
            self._kill_armed = True
        if config.active:
            log.warning("fault injection armed: %s", config)

    @property
    def fired(self) -> dict[str, int]:
        """How often each fault fired since the faults were configured."""
        with self._lock:
            return {name: n for name, n in self._fired.items() if n}

    def fire(self, name: str) -> bool:
        """True when fault `name` (a FaultConfig field) is set and fires this time."""
        with self._lock:
            if not getattr(self.config, name) or self._fired[name] >= self.config.times:
                return False
            self._fired[name] += 1
        log.warning("injected fault: %s", name)
        return True

    def at(self, stage: str) -> None:
        """A worker reached `stage`: dies here if `kill_at` names it (and it fires)."""
        if self.config.kill_at == stage and self._kill_armed and self.fire("kill_at"):
            log.warning("injected fault: killing this worker (pid %d) at %s", os.getpid(), stage)
            os.kill(os.getpid(), signal.SIGKILL)
