"""Triton kernels against their torch references, on fresh random inputs, outputs poisoned.

Two ways these run. On CPU through Triton's interpreter, which must be switched on before
triton is imported: `tests/kernels/test_triton_interpreter.py` runs each file here in a child
pytest with TRITON_INTERPRET=1 (fp32 and fp16; the interpreter's bf16 arithmetic is wrong).
On a GPU, the main session collects them directly: compiled kernels on CUDA, bf16 included.
Without either (no CUDA in the main session), this directory is not collected.
"""

import importlib.util
import os
import zlib

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
ON_GPU = not INTERPRET and torch.cuda.is_available()
DEVICE = "cpu" if INTERPRET else "cuda"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else [])

if importlib.util.find_spec("triton") is None or not (INTERPRET or ON_GPU):
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def _seed(request):
    # Fresh inputs per test case, reproducible per test id.
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


def pytest_generate_tests(metafunc):
    if "dtype" in metafunc.fixturenames:
        metafunc.parametrize("dtype", DTYPES, ids=str)


@pytest.fixture
def poison(device):
    """poison(shape, dtype): an output buffer no kernel would write: NaN, or for integers
    0x80 bytes (int8 -128, outside quantization's +-127), so any element left unwritten
    shows up."""

    def make(shape, dtype):
        if dtype.is_floating_point:
            return torch.full(shape, float("nan"), dtype=dtype, device=device)
        return torch.full(shape, 0x80, dtype=torch.uint8, device=device).view(dtype)

    return make
