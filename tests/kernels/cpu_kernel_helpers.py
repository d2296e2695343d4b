"""Shared by the C++ CPU kernel tests (tests/kernels/test_cpu_*.py)."""

import shutil

import pytest
import torch

needs_compiler = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")

# Relative error bounds against float64 for kernels that round their output once.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}
