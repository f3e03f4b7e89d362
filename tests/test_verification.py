"""Every build is run beside the model's own runtime before it is written: onnxruntime for ONNX, the
TFLite interpreter for TFLite, torch for .pt2. A float build that disagrees is refused."""

import json

import numpy as np
import pytest
import torch
from test_cli import qc
from tflite_models import dense_relu_model

import qcompile
from qcompile import QCompileError
from qcompile.frontends import load_model
from qcompile.verification import FLOAT_TOLERANCE, reference_outputs, sample_inputs

SHAPE = ["--input-shape", "x:1,1,8,8"]


def test_a_float_onnx_build_is_verified_against_onnxruntime_and_says_so(tmp_path, small_cnn_path):
    proc = qc("build", small_cnn_path, *SHAPE, "-o", tmp_path / "m.so", "--report", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    assert "verified against onnxruntime" in proc.stdout
    v = qcompile.inspect(tmp_path / "m.so")["verification"]
    assert v["verified"] and v["reference"] == "onnxruntime" and not v["quantized"]
    assert all(row["max_rel_error"] <= FLOAT_TOLERANCE for row in v["outputs"])
    assert json.loads((tmp_path / "r.json").read_text())["verification"] == v
    assert "verified against onnxruntime" in qc("inspect", tmp_path / "m.so").stdout


def test_an_int8_build_records_its_agreement_with_float(tmp_path, small_cnn_path):
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype(np.float32))
    proc = qc("build", small_cnn_path, "--input-shape", "x:8,1,8,8", "--quantize", "int8", "--calib",
              tmp_path / "calib.npz", "-o", tmp_path / "q.so")
    assert proc.returncode == 0, proc.stderr
    v = qcompile.inspect(tmp_path / "q.so")["verification"]
    assert v["verified"] and v["quantized"] and v["samples"] == 8
    assert all(row["sqnr_db"] > 15 for row in v["outputs"]), v  # int8 of a small CNN: tens of dB
    assert "quantized: SQNR" in proc.stdout
    # checked against its own float simulation: the integer kernels lose no more than quantization
    assert v["against_simulation"]
    assert all(row["sqnr_db"] >= row["simulation_sqnr_db"] - 6 and row["sqnr_vs_simulation_db"] > 20 for row in v["outputs"])


def test_an_int8_build_is_measured_over_several_samples_pooled(tmp_path, small_cnn_path):
    """On one sample a small output is a coin toss (a score near 0 that one rounding step moves by
    half its value refused a good face-landmark build); a quantized build is measured over
    QUANTIZED_SAMPLES samples of its calibration data, the SQNR pooled over them."""
    from qcompile.verification import QUANTIZED_SAMPLES

    x = np.random.default_rng(1).standard_normal((QUANTIZED_SAMPLES + 4, 1, 8, 8)).astype(np.float32)
    calib = [{"x": x[i:i + 1]} for i in range(len(x))]
    result = qcompile.build(small_cnn_path, "host", tmp_path / "q.so", input_shapes={"x": [1, 1, 8, 8]}, quantize={},
                            calib=calib)
    v = result.metadata["verification"]
    assert v["samples"] == QUANTIZED_SAMPLES
    imported = load_model(small_cnn_path, {"x": [1, 1, 8, 8]})
    model = qcompile.load(tmp_path / "q.so")
    got = np.stack([model({"x": b["x"]})[imported.outputs[0].name] for b in calib[:QUANTIZED_SAMPLES]])
    ref = np.stack([reference_outputs(imported, b)[1][0] for b in calib[:QUANTIZED_SAMPLES]]).astype(np.float64)
    pooled = 10 * np.log10(np.sum(ref ** 2) / np.sum((got - ref) ** 2))
    assert v["outputs"][0]["sqnr_db"] == pytest.approx(pooled, abs=1e-6)
    first = 10 * np.log10(np.sum(ref[0] ** 2) / np.sum((got[0] - ref[0]) ** 2))
    assert abs(first - pooled) > 1e-3  # one sample alone would have given another figure


def test_an_int8_build_far_from_its_simulation_is_refused(tmp_path, small_cnn_path, monkeypatch):
    """Were the simulation exact, the integer build (tens of dB from float) would lose far more than
    it: the check that catches a wrong integer kernel or scale refuses it in one line."""
    from qcompile import verification

    imported = load_model(small_cnn_path, {"x": [8, 1, 8, 8]})
    monkeypatch.setattr(verification, "simulation_outputs",
                        lambda simulation, batches: [verification.reference_outputs(imported, {"x": b[0]})[1]
                                                     for b in batches])
    calib = [{"x": np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype(np.float32)}]
    with pytest.raises(QCompileError, match=r"^verification: output '.*' of the integer build is .* dB from onnxruntime, "
                                            r"its float simulation inf dB: the integer kernels lose more"):
        qcompile.build(small_cnn_path, "host", tmp_path / "q.so", input_shapes={"x": [8, 1, 8, 8]}, quantize={},
                       calib=calib)
    assert not (tmp_path / "q.so").exists()


def test_a_build_that_disagrees_with_the_reference_is_refused_and_leaves_nothing(tmp_path, small_cnn_path,
                                                                                 monkeypatch):
    from qcompile import verification

    real = verification.reference_outputs

    def off_by_a_little(imported, inputs):
        runtime, outputs = real(imported, inputs)
        return runtime, [o + 0.01 * (np.abs(o).max() + 1) for o in outputs]

    monkeypatch.setattr(verification, "reference_outputs", off_by_a_little)
    with pytest.raises(QCompileError, match="output '.*' differs from onnxruntime by .* the build is refused"):
        qcompile.build(small_cnn_path, "host", tmp_path / "m.so", input_shapes={"x": [1, 1, 8, 8]})
    assert not list(tmp_path.iterdir())
    result = qcompile.build(small_cnn_path, "host", tmp_path / "m.so", input_shapes={"x": [1, 1, 8, 8]}, verify=False)
    assert result.metadata["verification"] == {"verified": False, "why": "--no-verify"}


def test_an_arm_build_is_verified_under_qemu(tmp_path, small_cnn_path):
    result = qcompile.build(small_cnn_path, "rpi5", tmp_path / "m.so", input_shapes={"x": [1, 1, 8, 8]})
    v = result.metadata["verification"]
    assert v["verified"] and v["outputs"][0]["max_rel_error"] <= FLOAT_TOLERANCE


def test_a_target_that_cannot_run_here_says_why(tmp_path, small_cnn_path):
    result = qcompile.build(small_cnn_path, "android-arm64", tmp_path / "m.so", input_shapes={"x": [1, 1, 8, 8]})
    assert result.metadata["verification"] == {
        "verified": False, "why": "'android-arm64' artifacts run on Android devices only (copy the bundle there)"}
    proc = qc("build", small_cnn_path, *SHAPE, "--target", "android-arm64", "-o", tmp_path / "a.so")
    assert "not verified: 'android-arm64' artifacts run on Android devices only" in proc.stdout


def test_tflite_is_verified_against_the_tflite_interpreter(tmp_path):
    pytest.importorskip("ai_edge_litert", reason="the tflite extra (bash .ci/setup installs it)")
    buf, w = dense_relu_model()
    path = tmp_path / "dense.tflite"
    path.write_bytes(buf)
    imported = load_model(path)
    inputs = sample_inputs(imported)
    runtime, ref = reference_outputs(imported, inputs)
    np.testing.assert_allclose(ref[0], np.maximum(inputs["x"] @ w["W"].T + w["b"], 0), atol=1e-5)
    v = qcompile.build(path, "host", tmp_path / "dense.so").metadata["verification"]
    assert v["verified"] and v["reference"] == "TFLite interpreter"


def test_torch_export_is_verified_against_torch(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 3))
    path = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(net.eval(), (torch.randn(1, 1, 8, 8),)), str(path))
    v = qcompile.build(path, "host", tmp_path / "net.so").metadata["verification"]
    assert v["verified"] and v["reference"] == "torch" and v["outputs"][0]["max_rel_error"] <= FLOAT_TOLERANCE


def test_a_wrong_shape_or_a_nan_is_named_by_output(small_cnn_path):
    from qcompile.verification import compare

    imported = load_model(small_cnn_path, {"x": [1, 1, 8, 8]})
    name = imported.outputs[0].name
    with pytest.raises(QCompileError, match=f"output '{name}' has shape \\[1, 3\\], onnxruntime gives \\[1, 4\\]"):
        compare(imported, [np.zeros((1, 3), np.float32)], [np.zeros((1, 4), np.float32)], True, "onnxruntime")
    with pytest.raises(QCompileError, match=f"output '{name}' holds NaN"):
        compare(imported, [np.full((1, 4), np.nan, np.float32)], [np.zeros((1, 4), np.float32)], True, "onnxruntime")
