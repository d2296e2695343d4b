"""Which implementation a dispatch function runs: Triton, the C++ CPU kernel or the reference.

"auto" (the default): Triton for CUDA tensors when triton is installed; the C++ CPU kernel
(kernels.cpu) for bfloat16/float16 CPU tensors of the ops that have one, when it builds on this
machine, and for CPU tensors of any dtype where the kernel only copies bytes (KV pack/unpack);
the torch reference for everything else. float32 arithmetic stays on the reference under "auto"
because its op order is what keeps greedy tokens bit-exact with transformers. "torch": always
the reference. "cpu": the C++ kernel for CPU tensors of any dtype (an error if it cannot be
built). "triton": always Triton; on CPU tensors that needs Triton's interpreter
(`TRITON_INTERPRET=1` in the environment before triton is imported), which is how the kernel
tests drive the Triton code on machines without a GPU.

The process-wide default comes from `TANDEM_KERNEL_BACKEND`; every dispatch function also takes
`backend=` for one call, and `use_backend` overrides the default inside a `with` block.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator

import torch

from kernels import cpu

BACKENDS = ("auto", "torch", "triton", "cpu")
_default = os.environ.get("TANDEM_KERNEL_BACKEND", "auto")
_has_triton: bool | None = None


def triton_available() -> bool:
    """Whether triton can be imported (looked up once, without importing it)."""
    global _has_triton
    if _has_triton is None:
        _has_triton = importlib.util.find_spec("triton") is not None
    return _has_triton


def interpreting() -> bool:
    """Whether Triton kernels run in the interpreter (on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def _check(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"kernel backend must be one of {BACKENDS}, got {name!r}")
    return name


def default_backend() -> str:
    return _check(_default)


def set_default_backend(name: str) -> None:
    global _default
    _default = _check(name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the enclosed dispatch calls (those without their own `backend=`) on `name`."""
    global _default
    previous, _default = _default, _check(name)
    try:
        yield
    finally:
        _default = previous


def use_triton(x: torch.Tensor, backend: str | None = None) -> bool:
    """True when a dispatch call on tensor `x` should launch its Triton kernel."""
    name = _check(backend or _default)
    if name in ("torch", "cpu"):
        return False
    if name == "auto":
        return x.is_cuda and triton_available()
    if not triton_available():
        raise RuntimeError("backend='triton' needs the triton package (pip install triton)")
    if not x.is_cuda and not interpreting():
        raise RuntimeError(
            "backend='triton' on CPU tensors needs TRITON_INTERPRET=1, set "
            "before triton is first imported"
        )
    return True


def cpu_kernels():
    """`torch.ops.tandem_cpu` when the C++ CPU kernels are built and loaded, else None."""
    return cpu.ops()


def cpu_bf16_dot_available() -> bool:
    """Whether the C++ kernels built on AVX512-BF16 dot products (small-batch GEMV, the
    decode stack, prefill attention) run here: the library loaded and this CPU has them."""
    if "bf16_dot" not in _bf16_dot:  # asked on every small-batch matmul: look it up once
        ops = cpu_kernels()
        _bf16_dot["bf16_dot"] = ops is not None and bool(ops.has_avx512_bf16())
    return _bf16_dot["bf16_dot"]


_bf16_dot: dict = {}


def use_cpu_kernel(
    x: torch.Tensor,
    backend: str | None = None,
    dtype: torch.dtype | None = None,
    exact: bool = False,
) -> bool:
    """True when a dispatch call on tensor `x` should run its C++ CPU kernel. `dtype`: the
    precision "auto" decides on, when it is not x's (a dequantization's output dtype).
    `exact`: the kernel is bit-identical to its reference in every dtype (byte copies), so
    "auto" takes it for float32 too."""
    name = _check(backend or _default)
    if name == "auto":
        return (
            not x.is_cuda
            and (exact or (dtype or x.dtype) in (torch.bfloat16, torch.float16))
            and cpu_kernels() is not None
        )
    if name != "cpu":
        return False
    if x.is_cuda:
        raise RuntimeError("backend='cpu' needs CPU tensors")
    if cpu_kernels() is None:
        raise RuntimeError(
            f"backend='cpu': the C++ CPU kernels are unavailable ({cpu.load_error()})"
        )
    return True
