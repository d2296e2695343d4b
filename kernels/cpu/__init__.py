"""C++ kernels for CPUs, compiled once per machine on first use (torch's cpp_extension + ninja).

`ops()` returns the `torch.ops.tandem_cpu` namespace once the library is built and loaded, or
None when it cannot be (no C++ compiler, `TANDEM_CPU_KERNELS=0`); the dispatch functions then
keep the torch reference, and `load_error()` says why. The build is compiled for the CPU it
runs on (-march=native), so its cache folder is keyed by the sources (their contents and
where they are), the torch version and this CPU's model and flags: a home directory shared
between different machines never loads a library built for another CPU. The folder is
`$TANDEM_KERNEL_CACHE`, by default `$TANDEM_HOME/kernels` (`~/.cache/tandem/kernels`); torch's
file lock serialises concurrent builds (several workers starting at once).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_HERE = Path(__file__).parent
SOURCES = tuple(
    _HERE / f
    for f in (
        "attention.cpp",
        "layer_ops.cpp",
        "gemv.cpp",
        "decoder.cpp",
        "prefill_attention.cpp",
        "kv_quant.cpp",
        "kv_pack.cpp",
    )
)
HEADERS = tuple(sorted(_HERE.glob("*.h")))
# No FMA contraction: the rotary kernel rounds each product like the torch reference does.
CFLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-DNDEBUG")
_lock = threading.Lock()
_state: dict = {}


def _cpu_signature() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [ln for ln in lines if ln.startswith(("model name", "flags"))][:2]
    return "\n".join(keep) or platform.machine()


def build_key() -> str:
    h = hashlib.sha256()
    for src in SOURCES + HEADERS:
        h.update(src.read_bytes())
    h.update(" ".join(CFLAGS).encode())
    h.update(torch.__version__.encode())
    h.update(_cpu_signature().encode())
    # ninja's build file names the sources by absolute path: two checkouts sharing one
    # folder would each see the other's build as stale and rebuild it, minutes on a small
    # host, while a restarted worker waits on the lock. Each checkout gets its own.
    h.update(str(_HERE.resolve()).encode())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    base = os.environ.get("TANDEM_KERNEL_CACHE")
    if base:
        return Path(base)
    home = os.environ.get("TANDEM_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache", "tandem"
    )
    return Path(home) / "kernels"


def _build():
    from torch.utils.cpp_extension import load

    name = f"tandem_cpu_{build_key()}"
    folder = cache_dir() / name
    folder.mkdir(parents=True, exist_ok=True)
    load(
        name=name,
        sources=[str(s) for s in SOURCES],
        extra_cflags=list(CFLAGS),
        extra_ldflags=["-fopenmp"],
        build_directory=str(folder),
        is_python_module=False,
        verbose=False,
    )
    return torch.ops.tandem_cpu


def ops():
    """`torch.ops.tandem_cpu` (building it the first time), or None when it is unavailable."""
    if "ops" not in _state:
        with _lock:
            if "ops" not in _state:
                if os.environ.get("TANDEM_CPU_KERNELS", "1") == "0":
                    _state.update(ops=None, error="disabled by TANDEM_CPU_KERNELS=0")
                else:
                    try:
                        _state.update(ops=_build(), error=None)
                    except Exception as exc:  # no compiler, no ninja, a build error
                        _state.update(ops=None, error=f"{type(exc).__name__}: {exc}")
                        log.warning(
                            "CPU kernels unavailable, using torch references: %s", _state["error"]
                        )
    return _state["ops"]


def load_error() -> str | None:
    """Why `ops()` returned None (None when it loaded or was not tried yet)."""
    return _state.get("error")
