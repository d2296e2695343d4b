"""The Triton kernel tests under Triton's CPU interpreter, one child pytest per file.

TRITON_INTERPRET=1 has to be in the environment before triton is imported, and it would turn
every Triton kernel of this session into the interpreter, so it goes to a child process only.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
FILES = sorted((HERE / "triton_kernels").glob("test_*.py"))


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_under_interpreter(path):
    env = {
        **os.environ,
        "TRITON_INTERPRET": "1",
        "OMP_NUM_THREADS": "1",
        "TANDEM_KERNEL_BACKEND": "auto",
    }
    run = subprocess.run(
        [sys.executable, "-m", "pytest", str(path), "-q", "-x", "-p", "no:cacheprovider"],
        cwd=HERE.parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
