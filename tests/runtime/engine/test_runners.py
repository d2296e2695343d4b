"""One factory picks the device runner; the CPU and CUDA runners are siblings."""

import pytest
import torch

from runtime.config import CacheConfig, ModelConfig
from runtime.engine.cpu_runner import CpuModelRunner
from runtime.engine.cuda_runner import CudaModelRunner
from runtime.engine.model_runner import ModelRunner
from runtime.engine.runners import make_runner


def test_runners_are_siblings():
    assert issubclass(CpuModelRunner, ModelRunner) and issubclass(CudaModelRunner, ModelRunner)
    assert not issubclass(CudaModelRunner, CpuModelRunner)
    assert not issubclass(CpuModelRunner, CudaModelRunner)
    with pytest.raises(TypeError):
        ModelRunner(ModelConfig(path="unused"), CacheConfig())  # abstract


def test_cpu_device_gets_the_cpu_runner(tiny_model_dir):
    runner = make_runner(ModelConfig(path=str(tiny_model_dir)), CacheConfig(num_blocks=8))
    assert type(runner) is CpuModelRunner
    assert runner.kv_cache.device.type == "cpu" and runner.kv_cache.shape[2] == 8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_device_gets_the_cuda_runner(tiny_model_dir):
    runner = make_runner(
        ModelConfig(path=str(tiny_model_dir), device="cuda:0", enforce_eager=True),
        CacheConfig(num_blocks=8),
    )
    assert type(runner) is CudaModelRunner and runner.graphs is None
    assert runner.kv_cache.is_cuda and runner.num_blocks == 8


def test_the_cuda_runner_refuses_a_host_device(tiny_model_dir):
    with pytest.raises(ValueError, match="CUDA device"):
        CudaModelRunner(
            ModelConfig(path=str(tiny_model_dir)), CacheConfig(num_blocks=8), device="cpu"
        )


def test_write_kv_checks_the_token_range(tiny_model_dir):
    runner = make_runner(
        ModelConfig(path=str(tiny_model_dir)), CacheConfig(num_blocks=8, block_size=4)
    )
    g = runner.geometry
    kv = torch.zeros(1, 2, 5, g.num_kv_heads, g.head_dim)
    with pytest.raises(IndexError, match="outside the 1 blocks"):
        runner.write_kv([0], 0, kv)
    runner.write_kv([0], 0, kv[:, :, :0], start=9)  # an empty chunk writes nothing
