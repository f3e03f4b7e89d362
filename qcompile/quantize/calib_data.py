"""Calibration data: an .npz file or a folder of .npy files keyed by input name (arrays of
samples stacked on the batch axis), or any iterable of {input name: batch} dicts. Everything is
checked against the model's inputs before a single batch runs."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import QCompileError
from ..frontends.common import TensorInfo


def read_npy(path, what: str = "") -> np.ndarray:
    """One array from an .npy file, never unpickled; errors name `what` (a flag) and the file."""
    culprit = f"{what} {path}".strip()
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise QCompileError(f"{culprit}: no such file") from None
    except (ValueError, OSError, EOFError) as err:
        raise QCompileError(f"{culprit}: not a readable .npy array ({err})") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive
        arr.close()
        raise QCompileError(f"{culprit}: an .npz archive, not an .npy array")
    return arr


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    if path.is_dir():
        files = sorted(path.glob("*.npy"))
        if not files:
            raise QCompileError(f"{path}: calibration folder holds no .npy files")
        return {f.stem: read_npy(f) for f in files}
    if not path.is_file():
        raise QCompileError(f"{path}: no such calibration data")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (ValueError, OSError) as err:
        raise QCompileError(f"{path}: not a readable .npz file ({err})") from None


def _split_samples(source: str, arrays: dict[str, np.ndarray], inputs: list[TensorInfo]) -> list[dict]:
    """Stacked samples -> batches of the model's batch size (axis 0 of each input)."""
    counts = {}
    for t in inputs:
        arr = arrays[t.name]
        if arr.ndim != len(t.shape) or tuple(arr.shape[1:]) != tuple(t.shape[1:]):
            raise QCompileError(f"{source}: calibration input '{t.name}' has shape {list(arr.shape)}; "
                                f"expected [N, {', '.join(map(str, t.shape[1:]))}]")
        if arr.shape[0] % t.shape[0]:
            raise QCompileError(f"{source}: calibration input '{t.name}' has {arr.shape[0]} samples, "
                                f"not a multiple of the model's batch size {t.shape[0]}")
        counts[t.name] = arr.shape[0] // t.shape[0]
    if len(set(counts.values())) > 1:
        raise QCompileError(f"{source}: calibration inputs hold different numbers of batches: {counts}")
    n = next(iter(counts.values()), 0)
    return [{t.name: arrays[t.name][i * t.shape[0]:(i + 1) * t.shape[0]] for t in inputs} for i in range(n)]


def _check_batch(source: str, index: int, batch: dict, inputs: list[TensorInfo]) -> dict:
    if not isinstance(batch, dict):
        raise QCompileError(f"{source}: calibration batch {index} is a {type(batch).__name__}, not a dict of input name to array")
    names = [t.name for t in inputs]
    if set(batch) != set(names):
        raise QCompileError(f"{source}: calibration batch {index} has inputs {sorted(batch)}; the model's inputs are {names}")
    checked = {}
    for t in inputs:
        arr = np.asarray(batch[t.name])
        if arr.dtype.kind not in "biuf":
            raise QCompileError(f"{source}: calibration batch {index}, input '{t.name}' holds {arr.dtype} values, "
                                f"not numbers (the model expects {t.dtype})")
        if tuple(arr.shape) != tuple(t.shape):
            raise QCompileError(f"{source}: calibration batch {index}, input '{t.name}': shape {list(arr.shape)}, expected {list(t.shape)}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise QCompileError(f"{source}: calibration batch {index}, input '{t.name}' contains NaN or Inf")
        checked[t.name] = arr.astype(t.dtype, copy=False)
    return checked


def load_calibration(data, inputs: list[TensorInfo]) -> list[dict[str, np.ndarray]]:
    """All calibration batches, validated, each a dict of input name -> array of the input's shape."""
    if isinstance(data, (str, Path)):
        source = str(data)
        arrays = _read_arrays(Path(data))
        names = [t.name for t in inputs]
        if set(arrays) != set(names):
            raise QCompileError(f"{source}: calibration data has inputs {sorted(arrays)}; the model's inputs are {names}")
        batches = _split_samples(source, arrays, inputs)
    elif isinstance(data, Iterable) and not isinstance(data, dict):
        source, batches = "calibration data", list(data)
    else:
        raise QCompileError(f"calibration data must be an .npz path, a folder of .npy files or an iterable of dicts, not {type(data).__name__}")
    if not batches:
        raise QCompileError(f"{source}: the calibration set is empty")
    return [_check_batch(source, i, b, inputs) for i, b in enumerate(batches)]
