"""A model fingerprint from its config and weights: the KV of two models mixes only if equal."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

# Keys that describe how a checkpoint was saved or run, not what the model computes.
_VOLATILE_KEYS = {"transformers_version", "_name_or_path", "torch_dtype", "dtype", "use_cache"}
_ROWS = 64  # leading rows hashed of each sampled tensor
_SAMPLES = 4  # tensors sampled, spread over the sorted names


@lru_cache(maxsize=16)
def model_fingerprint(path: str | Path) -> str:
    """ "sha256:<16 hex>" over the canonical config.json and a few weight tensors' leading rows.

    Weights are hashed as float32 values, so a bf16 and an fp32 copy of the same weights agree,
    as do two engines that load them in different dtypes. Cheap: reads a few KiB of weights.
    """
    from safetensors import safe_open

    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    for key in _VOLATILE_KEYS:
        config.pop(key, None)
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    tensors = []
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as sf:
            tensors += [(name, f) for name in sf.keys()]
    tensors.sort()
    step = max(1, len(tensors) // _SAMPLES)
    for name, f in tensors[::step][:_SAMPLES] + tensors[-1:]:
        with safe_open(str(f), framework="pt") as sf:
            part = sf.get_slice(name)[:_ROWS]
        h.update(name.encode())
        h.update(part.float().contiguous().numpy().tobytes())
    return "sha256:" + h.hexdigest()[:16]
