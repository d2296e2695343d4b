"""Keep KV handoff message buffers on the heap instead of fresh memory mappings.

glibc's malloc serves blocks above its mmap threshold (128 KiB, raised on the fly only up to
the largest block freed so far) with new mappings, and a new mapping page-faults its way in on
first write. A handoff allocates one chunk-sized buffer (4 MiB by default) per chunk on each
side (the sender's message bytes; gRPC's received message and its Python bytes), so on a 2-core
host those faults cost about as much CPU as the gRPC transfer itself: filling 122 fresh 1 MiB
buffers took 26.6 ms, 1.2 ms once served from the heap. `keep_message_buffers_on_heap()` raises
the mmap threshold to 32 MiB and the trim threshold to 512 MiB for the process, so freed chunk
buffers are reused rather than unmapped and faulted in again; the heap then holds on to up to
the bytes in flight (bounded by `KVTransferConfig.max_inflight_bytes` on the sender and gRPC's
flow-control window on the receiver, which writes each chunk into the cache as it lands).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_lock = threading.Lock()
_done: list[bool] = []


def keep_message_buffers_on_heap() -> bool:
    """Tune this process's glibc malloc once (see the module docstring); False where the C
    library is not glibc (nothing is changed there)."""
    with _lock:
        if not _done:
            _done.append(_tune())
        return _done[0]


def _tune() -> bool:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(
        mallopt(_M_TRIM_THRESHOLD, 512 << 20)
    )
