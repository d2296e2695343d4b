"""Small helpers shared by the Triton launchers."""

from __future__ import annotations

import functools

import torch
import triton

# Same-size integer dtypes: kernels that only move values move their bits, so every value
# (NaN payloads, -0.0, float8) arrives unchanged and one kernel serves every dtype.
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def as_bits(x: torch.Tensor) -> torch.Tensor:
    """x viewed as a same-size integer dtype."""
    return x.view(_BITS[x.element_size()])


def pow2(n: int) -> int:
    return triton.next_power_of_2(max(1, n))


@functools.lru_cache(maxsize=None)
def num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def sm_count(t: torch.Tensor) -> int:
    """Streaming multiprocessors of t's GPU; a nominal 8 for the interpreter on CPU."""
    return num_sms(t.device.index or 0) if t.is_cuda else 8


def check_same_device(*tensors: torch.Tensor) -> None:
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")
