"""Per-request event queues between a worker's engine thread and the calls streaming them out."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any


class StreamTimeout(RuntimeError):
    """No event for a request within the idle limit: its stream is closed."""


class OutputStreams:
    """One queue per request id. The engine thread `put`s events; `drain` (on a streaming call's
    thread) yields them in batches: everything queued at the time, so a slow reader gets
    fewer, larger messages instead of falling behind. A stream ends after the batch holding
    its terminal event and is then forgotten."""

    def __init__(self, idle_timeout_s: float = 600.0):
        self._queues: dict[str, queue.SimpleQueue] = {}
        self._lock = threading.Lock()
        self.idle_timeout_s = idle_timeout_s

    def open(self, request_id: str) -> None:
        with self._lock:
            self._queues.setdefault(request_id, queue.SimpleQueue())

    def put(self, request_id: str, event, create: bool = False) -> bool:
        """Queue `event`; False (dropped) when the stream is not open and `create` is off."""
        with self._lock:
            q = self._queues.get(request_id)
            if q is None:
                if not create:
                    return False
                q = self._queues[request_id] = queue.SimpleQueue()
        q.put(event)
        return True

    def discard(self, request_id: str) -> None:
        with self._lock:
            self._queues.pop(request_id, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._queues)

    def __contains__(self, request_id: str) -> bool:
        with self._lock:
            return request_id in self._queues

    def drain(self, request_id: str, is_terminal: Callable[[Any], bool]) -> Iterator[list]:
        """Yield lists of events until one is terminal. Raises StreamTimeout when idle."""
        self.open(request_id)
        with self._lock:
            q = self._queues[request_id]
        try:
            while True:
                try:
                    batch = [q.get(timeout=self.idle_timeout_s)]
                except queue.Empty:
                    raise StreamTimeout(
                        f"no output for request {request_id!r} in {self.idle_timeout_s:.0f} s"
                    ) from None
                while True:
                    try:
                        batch.append(q.get_nowait())
                    except queue.Empty:
                        break
                done = any(is_terminal(ev) for ev in batch)
                yield batch
                if done:
                    return
        finally:
            self.discard(request_id)
