"""Which implementation the dispatch functions pick (kernels.backend)."""

import pytest
import torch

from kernels import backend
from kernels.backend import use_backend, use_triton


@pytest.fixture(autouse=True)
def _compiled(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def test_cpu_tensors_take_the_reference_by_default():
    assert backend.default_backend() == "auto"
    assert not use_triton(torch.zeros(1))
    assert not use_triton(torch.zeros(1), "torch")


def test_forcing_triton_on_cpu_needs_the_interpreter(monkeypatch):
    if not backend.triton_available():
        pytest.skip("triton not installed")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        use_triton(torch.zeros(1), "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert use_triton(torch.zeros(1), "triton")


def test_use_backend_overrides_the_default_and_restores_it():
    with use_backend("torch"):
        assert backend.default_backend() == "torch"
        with pytest.raises(ValueError, match="kernel backend must be one of"):
            with use_backend("cuda"):
                pass
        assert backend.default_backend() == "torch"
    assert backend.default_backend() == "auto"
    with pytest.raises(ValueError, match="kernel backend must be one of"):
        use_triton(torch.zeros(1), "tritonn")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_tensors_take_triton_by_default():
    assert use_triton(torch.zeros(1, device="cuda")) == backend.triton_available()
    assert not use_triton(torch.zeros(1, device="cuda"), "torch")
