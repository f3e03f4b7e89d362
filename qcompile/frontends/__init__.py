"""Frontends: a model file in, a float Relax IRModule out, plus its input/output signature.

`load_model` picks the frontend from the file (ONNX, TFLite, torch.export `.pt2`). Every frontend
checks the whole model for unsupported ops before converting, and reports all of them at once.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import QCompileError
from .common import ImportedModel, TensorInfo

__all__ = ["ImportedModel", "TensorInfo", "load_model"]


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".tflite":
        return "tflite"
    if suffix in (".pt2", ".ep"):
        return "torch"
    with open(path, "rb") as f:
        head = f.read(8)
    if head[4:8] == b"TFL3":
        return "tflite"
    if head[:2] == b"PK":
        return "torch"
    return "onnx"


def load_model(path, input_shapes: dict[str, list[int]] | None = None, input_values: dict | None = None) -> ImportedModel:
    """Import a model file into Relax. `input_shapes` fixes dynamic dimensions by input name;
    `input_values` freezes inputs to constants (ONNX models)."""
    for name, dims in (input_shapes or {}).items():
        bad = next((i for i, d in enumerate(dims) if int(d) < 1), None)
        if bad is not None:
            raise QCompileError(f"--input-shape {name}:{','.join(map(str, dims))}: dimension {bad} is {dims[bad]}; "
                                "every dimension must be >= 1")
    path = Path(path)
    if not path.exists():
        raise QCompileError(f"{path}: no such model file")
    if not path.is_file():
        raise QCompileError(f"{path}: not a file")
    fmt = _format_of(path)
    if input_values and fmt != "onnx":
        raise QCompileError(f"{path}: --input-value freezes inputs of ONNX models; this is a {fmt} model")
    if fmt == "onnx":
        from .onnx import load_onnx

        return load_onnx(path, input_shapes or {}, input_values or {})
    if fmt == "tflite":
        from .tflite import load_tflite as load
    elif fmt == "torch":
        from .torch_export import load_exported_program as load
    else:
        from .onnx import load_onnx as load
    return load(path, input_shapes or {})
