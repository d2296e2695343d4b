"""The sender's flow control: a byte budget shared by all handoffs, and one outbox per handoff."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator


class ByteBudget:
    """At most `limit` bytes of KV queued for gRPC across every handoff of one sender.

    A request bigger than the whole budget is let through alone, so nothing waits forever.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._cv = threading.Condition()

    def acquire(self, n: int, gave_up: Callable[[], bool]) -> bool:
        """Wait for room for `n` bytes; False (nothing taken) once `gave_up()` turns true."""
        with self._cv:
            while self.used and self.used + n > self.limit:
                if gave_up():
                    return False
                self._cv.wait(0.05)
            self.used += n
            return True

    def release(self, n: int) -> None:
        with self._cv:
            self.used -= n
            self._cv.notify_all()


class Outbox:
    """One handoff's outgoing messages, consumed as gRPC's request iterator.

    Producers `put` lazily-built messages (a callable each) with the bytes they hold; gRPC's
    request thread builds (encodes) and sends them in order. The budget of an item returns
    once gRPC has taken it. `close` ends the iterator and returns every byte still held; the
    stream ends by itself after an item put with `last=True`.
    """

    def __init__(self, budget: ByteBudget):
        self._budget = budget
        self._items: deque = deque()
        self._cv = threading.Condition()
        self._held = 0
        self.closed = False

    def put(self, make, nbytes: int = 0, last: bool = False) -> bool:
        """Queue `make() -> HandoffMessage`, waiting for budget; False if the outbox closed."""
        if nbytes and not self._budget.acquire(nbytes, lambda: self.closed):
            return False
        with self._cv:
            if self.closed:
                self._budget.release(nbytes)
                return False
            self._items.append((make, nbytes, last))
            self._held += nbytes
            self._cv.notify()
        return True

    def _done_with(self, nbytes: int) -> None:
        with self._cv:
            if self.closed:
                return  # close() returned it already
            self._held -= nbytes
        self._budget.release(nbytes)

    def close(self) -> None:
        with self._cv:
            if self.closed:
                return
            self.closed = True
            held, self._held = self._held, 0
            self._items.clear()
            self._cv.notify_all()
        self._budget.release(held)

    def __iter__(self) -> Iterator:
        while True:
            with self._cv:
                while not self._items and not self.closed:
                    self._cv.wait()
                if self.closed:
                    return
                make, nbytes, last = self._items.popleft()
            try:
                msg = make()
                yield msg
            finally:
                self._done_with(nbytes)
            if last:
                return
