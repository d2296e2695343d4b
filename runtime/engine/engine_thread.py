"""The one thread that owns an engine: it runs the calls handed to it and steps between them."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future

log = logging.getLogger(__name__)
_STOP = object()


class EngineThread:
    """Runs every call that touches one engine on a single thread, and may step the engine.

    Calls submitted from any thread (new requests, aborts, the KV receiver's imports, the KV
    sender's releases) run in submission order between two steps, so none races a forward
    pass; the engine is not thread-safe. Given a `step`, while `has_work()` is true the
    thread calls `step()` after each batch of calls and hands the outputs to `on_outputs` (on
    this thread); a `step` that raises is reported to `on_error` (on this thread), which must
    leave the engine without work it cannot step. Without one it only runs the calls (whoever
    drives the engine submits its steps). When idle it sleeps on the call queue, so an idle
    worker costs no CPU.
    """

    def __init__(
        self,
        name: str = "engine",
        step: Callable[[], list] | None = None,
        has_work: Callable[[], bool] = lambda: False,
        on_outputs: Callable[[list], None] = lambda outputs: None,
        on_error: Callable[[Exception], None] = lambda error: None,
    ):
        self._step: Callable[[], list] = step or list
        self._has_work = (lambda: False) if step is None else has_work
        self._on_outputs, self._on_error = on_outputs, on_error
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn, *args, **kwargs) -> Future:
        future: Future = Future()
        if self._stopped:
            future.set_exception(RuntimeError("the engine thread is stopped"))
            return future
        self._calls.put((future, fn, args, kwargs))
        return future

    def call(self, fn, *args, **kwargs):
        """Run `fn` on the loop thread and wait for its result (re-raises its exception)."""
        return self.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        """Stop after the calls already queued; later submits fail at once."""
        if not self._stopped:
            self._calls.put(_STOP)
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stopped:
            self._run_calls(block=not self._has_work())
            if self._stopped or not self._has_work():
                continue
            try:
                outputs = self._step()
            except Exception as e:  # a bug or a dead peer must not kill the worker
                log.exception("engine step failed")
                self._on_error(e)
                continue
            if outputs:
                self._on_outputs(outputs)
        self._fail_pending()

    def _run_calls(self, block: bool) -> None:
        try:
            item = self._calls.get(block=block)
        except queue.Empty:
            return
        while True:
            if item is _STOP:
                self._stopped = True
                return
            future, fn, args, kwargs = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as e:
                    future.set_exception(e)
            try:
                item = self._calls.get_nowait()
            except queue.Empty:
                return

    def _fail_pending(self) -> None:
        while True:
            try:
                item = self._calls.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                item[0].set_exception(RuntimeError("the engine thread is stopped"))
