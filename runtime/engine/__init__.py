"""The engine: paged KV cache, continuous batching, our own Llama-family forward, sampling."""

from runtime.engine.engine import Engine, NoFreeBlocksError
from runtime.engine.engine_thread import EngineThread
from runtime.engine.outputs import KVHandle, RequestOutput, TokenLogprob
from runtime.engine.sampling_params import SamplingParams

__all__ = [
    "Engine",
    "EngineThread",
    "KVHandle",
    "NoFreeBlocksError",
    "RequestOutput",
    "SamplingParams",
    "TokenLogprob",
]
