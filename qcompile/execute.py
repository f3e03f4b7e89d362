"""Run an artifact on inputs keyed by name, through the backend of the target it was built for
(natively, under qemu-user, or on a Vulkan device); outputs keyed by name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .artifact import read_metadata
from .atomic import atomic_file, check_writable
from .backends import backend_for
from .errors import QCompileError
from .targets import TargetSpec


@dataclass
class RunResult:
    outputs: dict[str, np.ndarray]
    latency_ms: float | None
    how: str


def load_inputs(inputs, meta: dict, source: str = "inputs") -> list[np.ndarray]:
    """The model's inputs in parameter order, checked against the artifact's signature."""
    if isinstance(inputs, (str, Path)):
        source = str(inputs)
        try:
            with np.load(inputs, allow_pickle=False) as npz:
                inputs = {k: npz[k] for k in npz.files}
        except FileNotFoundError:
            raise QCompileError(f"{source}: no such input file") from None
        except (ValueError, OSError) as err:
            raise QCompileError(f"{source}: not a readable .npz file ({err})") from None
    expected = [t["name"] for t in meta["inputs"]]
    unknown = sorted(set(inputs) - set(expected))
    missing = [n for n in expected if n not in inputs]
    if unknown or missing:
        raise QCompileError(f"{source}: inputs {unknown or missing} do not match the model's inputs {expected}")
    arrays = []
    for t in meta["inputs"]:
        arr = np.asarray(inputs[t["name"]])
        if tuple(arr.shape) != tuple(t["shape"]):
            raise QCompileError(f"{source}: input '{t['name']}' has shape {list(arr.shape)}, the model expects {t['shape']}")
        if str(arr.dtype) != t["dtype"]:
            raise QCompileError(f"{source}: input '{t['name']}' has dtype {arr.dtype}, the model expects {t['dtype']}")
        arrays.append(np.ascontiguousarray(arr))
    return arrays


def name_outputs(values: list[np.ndarray], meta: dict) -> dict[str, np.ndarray]:
    """The model's outputs keyed by the artifact's output names, in their order (output_0, ... if
    the count differs)."""
    names = [t["name"] for t in meta["outputs"]]
    if len(values) != len(names):
        names = [f"output_{i}" for i in range(len(values))]
    return dict(zip(names, values))


def run(artifact, inputs, output=None, *, bundle=None, repeat: int = 0) -> RunResult:
    """Run `artifact` on `inputs` (.npz path or dict by input name); write `output` .npz if given."""
    path = Path(artifact)
    if output is not None:
        check_writable(output)
    meta = read_metadata(path, verify=True)
    arrays = load_inputs(inputs, meta)
    backend = backend_for(TargetSpec.from_json(meta["target_spec"]))
    values, latency, how = backend.run(path, arrays, meta, repeat, bundle)
    outputs = name_outputs(values, meta)
    if output is not None:
        with atomic_file(output) as tmp, open(tmp, "wb") as f:
            np.savez(f, **outputs)
    return RunResult(outputs, latency, how)
