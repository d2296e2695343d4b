"""Run an iterator a few items ahead on its own thread, so producing overlaps consuming."""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

_END = object()


def prefetch(source: Iterable, depth: int = 2, name: str = "kv-prefetch") -> Iterator:
    """Yield `source`'s items, produced up to `depth` ahead on a daemon thread.

    Encoding a chunk (sender) or decoding one (receiver) then overlaps gRPC moving the
    previous one. An exception raised by `source` is re-raised here, in order; when the
    consumer stops early (close, garbage collection) the thread stops at its next item.
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in source:
                if not put((item, None)):
                    return
            put((_END, None))
        except BaseException as e:  # handed to the consumer, raised there
            put((_END, e))

    threading.Thread(target=run, name=name, daemon=True).start()
    try:
        while True:
            item, error = items.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()
