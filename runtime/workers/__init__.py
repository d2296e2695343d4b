"""Workers: plain classes around the engine's roles (`runtime.cluster.actors` makes them Ray
actors)."""

from runtime.workers.colocated import ColocatedWorker
from runtime.workers.config import WorkerConfig
from runtime.workers.decode import DecodeWorker
from runtime.workers.events import HandoffEvent, TokenEvent
from runtime.workers.prefill import PrefillWorker

WORKER_CLASSES = {"prefill": PrefillWorker, "decode": DecodeWorker, "colocated": ColocatedWorker}

__all__ = [
    "WORKER_CLASSES",
    "ColocatedWorker",
    "DecodeWorker",
    "HandoffEvent",
    "PrefillWorker",
    "TokenEvent",
    "WorkerConfig",
]
