"""The one thread that drives an engine; other threads hand it work (the engine is not thread-safe)."""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor


class EngineThread:
    """A single worker thread that runs every call touching one engine, in submission order.

    The worker's loop submits `engine.step` (or `KVSender.step`) here, and the KV sender and
    receiver submit their engine calls (import, release, abort) here too, so those calls land
    between steps and never race a forward pass.
    """

    def __init__(self, name: str = "engine"):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def submit(self, fn, *args, **kwargs) -> Future:
        return self._pool.submit(fn, *args, **kwargs)

    def call(self, fn, *args, **kwargs):
        """Run `fn` on the engine thread and wait for its result (re-raises its exception)."""
        return self._pool.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
