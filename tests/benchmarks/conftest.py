"""The benchmark scripts import their helpers as top-level modules (benchmarks/ is a folder of
scripts, not a package): put the folder on the path for their tests."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
