"""The C++ CPU kernels (kernels/cpu): built and loaded here, keyed by CPU, dispatched, disabled."""

import pytest
import torch
from cpu_kernel_helpers import needs_compiler

from kernels import cpu
from kernels.backend import use_backend, use_cpu_kernel


@needs_compiler
def test_the_library_builds_and_loads_here():
    assert cpu.ops() is not None, cpu.load_error()
    assert cpu.load_error() is None


@needs_compiler
def test_auto_takes_the_cpu_kernel_for_half_precisions_only():
    assert use_cpu_kernel(torch.zeros(1, dtype=torch.bfloat16))
    assert use_cpu_kernel(torch.zeros(1, dtype=torch.float16))
    assert not use_cpu_kernel(torch.zeros(1))  # float32: the reference
    assert use_cpu_kernel(torch.zeros(1), "cpu")
    with use_backend("torch"):
        assert not use_cpu_kernel(torch.zeros(1, dtype=torch.bfloat16))


def test_the_build_is_keyed_by_this_cpu(monkeypatch):
    key = cpu.build_key()
    monkeypatch.setattr(cpu, "_cpu_signature", lambda: "model name: another CPU\nflags: sse2")
    assert cpu.build_key() != key


def test_disabled_kernels_fall_back_with_a_reason(monkeypatch):
    from kernels import backend

    monkeypatch.setattr(cpu, "_state", {})
    monkeypatch.setattr(backend, "_bf16_dot", {})
    monkeypatch.setenv("TANDEM_CPU_KERNELS", "0")
    assert cpu.ops() is None
    assert "TANDEM_CPU_KERNELS=0" in cpu.load_error()
    assert not use_cpu_kernel(torch.zeros(1, dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match="unavailable"):
        use_cpu_kernel(torch.zeros(1), "cpu")
