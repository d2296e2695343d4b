"""Chaos tests: faults injected into a real local cluster (Ray, 1 prefill + 1 decode)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "e2e"))
