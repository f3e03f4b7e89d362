"""Real models from the zoo (qcompile/zoo.py), one per frontend and per failure class they
found, built and verified against their own runtime; the whole zoo is benchmarks/zoo.py."""

import re

import numpy as np
import pytest

import qcompile
from qcompile import zoo
from qcompile.frontends import load_model
from qcompile.verification import reference_outputs


def test_every_zoo_model_is_a_pinned_wheel_with_a_checksum():
    for model in zoo.ZOO.values():
        assert re.fullmatch(r"[a-z0-9-]+==[0-9][0-9.]*", model.wheel), model.name
        assert re.fullmatch(r"[0-9a-f]{64}", model.sha256), model.name


def _build_and_compare(tmp_path, name, quantize=None):
    """Build `name` (verified by the build itself), then run it on held-out samples beside the
    model's own runtime: (max |error| relative to the output's magnitude, worst output SQNR dB)."""
    spec = zoo.ZOO[name]
    path = zoo.fetch(name)
    imported = load_model(path, spec.input_shapes, spec.input_values)
    calib = zoo.samples(name, imported.inputs, 4, seed=0)
    result = qcompile.build(path, "host", tmp_path / f"{name}.so", input_shapes=spec.input_shapes,
                            input_values=spec.input_values, quantize=quantize, calib=calib)
    assert result.metadata["verification"]["verified"]
    worst_rel, worst_sqnr = 0.0, np.inf
    for feed in zoo.samples(name, imported.inputs, 2, seed=1):
        got = list(qcompile.run(result.artifact, feed).outputs.values())
        _, ref = reference_outputs(imported, feed)
        for a, b in zip(got, ref):
            b = b.astype(np.float64)
            worst_rel = max(worst_rel, float(np.abs(a - b).max() / max(1.0, np.abs(b).max())))
            noise = float(np.sum((a - b) ** 2))
            worst_sqnr = min(worst_sqnr, np.inf if noise == 0 else 10 * np.log10(float(np.sum(b ** 2)) / noise))
    return worst_rel, worst_sqnr


@pytest.mark.parametrize("name", [
    "silero-vad",  # ONNX: a branch on the sample-rate input (frozen), recurrent state inputs
    "ddddocr",  # ONNX: LSTM (unrolled), shape arithmetic in the graph, a stale declared output shape
    "face-detection",  # TFLite: an epilogue wider than its max-pool (was silently wrong by 1e5)
    "pose-detection",  # TFLite: sparse fp16 weights (DENSIFY -> DEQUANTIZE)
    "mtcnn-onet",  # torch.export .pt2
])
def test_zoo_model_builds_fp32_and_matches_its_own_runtime(tmp_path, name):
    rel, _ = _build_and_compare(tmp_path, name)
    assert rel < 1e-4


@pytest.mark.parametrize("name, min_sqnr_db", [
    ("face-detection", 11.0),  # TFLite NHWC convolutions, quantized along their output channels (14.4 dB measured)
    ("mtcnn-pnet", 17.0),  # torch.export with PReLU and a softmax output (22.2 dB measured)
])
def test_zoo_model_builds_int8_close_to_float(tmp_path, name, min_sqnr_db):
    _, sqnr = _build_and_compare(tmp_path, name, quantize={})
    assert sqnr > min_sqnr_db


def test_a_tflite_custom_op_is_named_in_the_error():
    """mediapipe's selfie segmenter ends in a custom transposed convolution: the user learns its
    name (TVM's converter only says custom operators are not supported)."""
    path = zoo.wheel_file("mediapipe==0.10.14", "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite")
    with pytest.raises(qcompile.QCompileError, match=r": unsupported ops: custom op Convolution2DTransposeBias "
                                                     r"\(nodes: segment\)$"):
        load_model(path)
