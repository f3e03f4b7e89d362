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
    calib = zoo.samples(name, imported, 4, seed=0)
    result = qcompile.build(path, "host", tmp_path / f"{name}.so", input_shapes=spec.input_shapes,
                            input_values=spec.input_values, quantize=quantize, calib=calib)
    assert result.metadata["verification"]["verified"]
    worst_rel, worst_sqnr = 0.0, np.inf
    for feed in zoo.samples(name, imported, 2, seed=1):
        got = list(qcompile.run(result.artifact, feed).outputs.values())
        _, ref = reference_outputs(imported, feed)
        assert all(d.taken(ref).size for d in spec.decisions)  # its decisions read outputs it has
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


def test_a_decision_is_its_output_above_the_threshold_at_its_channel():
    scores = np.array([[[0.1, 0.9], [0.7, 0.2]]]).transpose(0, 2, 1)  # (1, 2 channels, 2 places)
    outputs = [np.zeros((1, 4)), scores]
    assert zoo.Decision(1, 0.6, channel=1).taken(outputs).tolist() == [True, False]
    assert zoo.Decision(1, 0.6).taken(outputs).tolist() == [False, True, True, False]
    assert zoo.Decision(0, -1.0).taken(outputs).all()


def test_a_tflite_custom_op_is_named_in_the_error():
    """mediapipe's selfie segmenter ends in a custom transposed convolution: the user learns its
    name (TVM's converter only says custom operators are not supported)."""
    path = zoo.wheel_file("mediapipe==0.10.14", "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite")
    with pytest.raises(qcompile.QCompileError, match=r": unsupported ops: custom op Convolution2DTransposeBias "
                                                     r"\(nodes: segment\)$"):
        load_model(path)


def test_zoo_voice_activity_detector_int8_agrees_over_a_stream(tmp_path):
    """silero-vad int8, calibrated on frames with the states a stream carries (not a fresh stream's
    zeros), run over a held-out spoken stream carrying its own state as its wrapper does: its speech
    decisions agree with its own runtime's (96.8% measured over 222 frames)."""
    name = "silero-vad"
    spec, path = zoo.ZOO[name], zoo.fetch(name)
    imported = load_model(path, spec.input_shapes, spec.input_values)
    result = qcompile.build(path, "host", tmp_path / "vad.so", input_shapes=spec.input_shapes,
                            input_values=spec.input_values, quantize={"progress": False},
                            calib=zoo.samples(name, imported, 8, seed=0))
    session = qcompile.load(result.artifact)
    frames = zoo.stream_frames(name, imported, seed=1)
    _, ref = zoo.run_stream(name, imported, frames, lambda feed: reference_outputs(imported, feed)[1])
    _, got = zoo.run_stream(name, imported, frames, lambda feed: list(session(feed).values()))
    speech, said = np.array([r[0].item() > 0.5 for r in ref]), np.array([g[0].item() > 0.5 for g in got])
    assert 0.2 < speech.mean() < 0.9  # the stream has speech and silence
    assert (speech == said).mean() >= 0.93


def test_a_streaming_model_is_sampled_with_the_state_its_runtime_carried():
    """Frames of one signal, each call's state output fed to the next call (a recurrent model seen
    only with a fresh stream's zero state is calibrated and measured on inputs it never meets)."""
    from types import SimpleNamespace

    from qcompile.frontends.common import TensorInfo

    imported = SimpleNamespace(inputs=[TensorInfo("input", (1, 576), "float32"), TensorInfo("state", (2, 1, 128), "float32")],
                               outputs=[TensorInfo("output", (1, 1), "float32"), TensorInfo("stateN", (2, 1, 128), "float32")])
    frames = zoo.stream_frames("silero-vad", imported, seed=0)
    assert all(f.shape == (1, 576) for f in frames) and len(frames) > 100
    # consecutive frames overlap by the context the model's wrapper repeats (576 - 512 samples)
    assert np.array_equal(frames[0][:, 512:], frames[1][:, :64])
    feeds, outs = zoo.run_stream("silero-vad", imported, frames[:5],
                                 lambda feed: [feed["input"][:, :1], feed["state"] + feed["input"][0, 0]])
    assert not feeds[0]["state"].any()
    for before, after, out in zip(feeds, feeds[1:], outs):
        assert np.array_equal(after["state"], out[1])
        assert np.array_equal(after["state"], before["state"] + before["input"][0, 0])
    # a batch of 3 is 3 streams, each starting as the batch of 1 of its own seed
    batched = SimpleNamespace(inputs=[TensorInfo("input", (3, 576), "float32"), TensorInfo("state", (2, 3, 128), "float32")],
                              outputs=imported.outputs)
    frames3 = zoo.stream_frames("silero-vad", batched, seed=0)
    assert frames3[0].shape == (3, 576) and np.array_equal(frames3[0][0], frames[0][0])
    assert not np.array_equal(frames3[5][1], frames3[5][0])


def test_zoo_speech_has_speech_and_silence():
    """The voice activity detector's signal: espeak-ng's sentences between stretches of low noise,
    the same for the same seed."""
    signal = zoo.speech(0)
    assert np.array_equal(signal, zoo.speech(0)) and not np.array_equal(signal[:16000], zoo.speech(1)[:16000])
    frames = signal[: len(signal) // 512 * 512].reshape(-1, 512)
    loud = np.abs(frames).max(1) > 0.1
    assert 0.3 < loud.mean() < 0.95
