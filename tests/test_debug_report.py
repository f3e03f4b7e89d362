"""`qcompile debug`: a layer given a far too narrow range is found first, alone and in the full
model, with a suggestion that fits; the table, JSON and plot of the CLI; one-line errors."""

import json

import numpy as np
import pytest
from test_cli import assert_one_line_error, qc

import qcompile
from qcompile.debug import FINE_DB, suggestion
from qcompile.errors import QCompileError
from qcompile.examples import fashion_mnist, fashion_mnist_cnn_onnx
from qcompile.frontends import load_model
from qcompile.quantize import QuantConfig

FASHION = fashion_mnist_cnn_onnx()


@pytest.fixture(scope="module")
def calib():
    x, _ = fashion_mnist("train")
    return [{"image": x[i:i + 8]} for i in range(0, 16, 8)]


def test_a_layer_with_a_far_too_narrow_range_ranks_first_alone_and_in_the_full_model(calib):
    names = load_model(FASHION, {"image": [8, 1, 28, 28]}).layer_names  # compute layers in program order
    bad = names[len(names) // 2]  # a middle layer: everything after it inherits its error
    result = qcompile.debug(FASHION, calib, input_shapes={"image": [8, 1, 28, 28]}, progress=False,
                            quantize={"ranges": {bad: (0.0, 0.01)}})
    rows = {r["name"]: r for r in result.layers}
    assert result.layers[0]["name"] == bad and rows[bad]["rank_alone"] == 1
    assert rows[bad]["rank_in_full"] == 1
    others = [r for r in result.layers if r["name"] != bad]
    assert rows[bad]["sqnr_alone_db"] < min(r["sqnr_alone_db"] for r in others) - 10
    # against float, the layers after it are as bad as it is in the full model: why the full-model rank
    # uses what each layer adds there
    after = [r for r in others if r["order"] > rows[bad]["order"]]
    assert max(r["sqnr_full_db"] for r in after) < rows[bad]["sqnr_alone_db"] + 10
    # its weights are fine, its output range is not, and calibrating it would fix that
    assert rows[bad]["sqnr_weights_only_db"] > FINE_DB > rows[bad]["sqnr_activations_only_db"]
    assert rows[bad]["sqnr_by_calibration_method_db"]["percentile"] > FINE_DB
    assert "fixed output range is too narrow" in rows[bad]["suggestion"]
    assert result.output_sqnr_db < FINE_DB
    assert 0 < rows[bad]["cosine_alone"] < min(r["cosine_alone"] for r in others)


def test_suggestions_follow_what_loses_more():
    row = {"name": "conv", "sqnr_alone_db": 12.0, "sqnr_weights_only_db": 12.5, "sqnr_activations_only_db": 40.0,
           "sqnr_by_calibration_method_db": {}, "fixed_range": False}
    assert "--per-channel" in suggestion(row, QuantConfig(per_channel=False))
    assert "--skip conv" in suggestion(row, QuantConfig())
    row.update(sqnr_weights_only_db=40.0, sqnr_activations_only_db=12.5,
               sqnr_by_calibration_method_db={"percentile": 12.5, "mse": 20.0, "entropy": 14.0, "minmax": 9.0})
    assert suggestion(row, QuantConfig()).startswith("--calib-method mse")
    row["sqnr_by_calibration_method_db"]["mse"] = 13.0  # no method helps enough
    assert "--skip conv" in suggestion(row, QuantConfig())
    row["sqnr_alone_db"] = FINE_DB
    assert suggestion(row, QuantConfig()) == "fine as int8"


def test_cli_prints_the_table_and_writes_json_and_plot(tmp_path, small_cnn_path):
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32))
    out_json, png = tmp_path / "d.json", tmp_path / "d.png"
    proc = qc("debug", small_cnn_path, "--input-shape", "x:4,1,8,8", "--calib", tmp_path / "calib.npz",
              "--json", out_json, "--plot", png, "--top", "1")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out_json.read_text())
    layers = data["layers"]
    assert sorted(r["name"] for r in layers) == ["conv1", "fc"]
    assert [r["rank_alone"] for r in layers] == [1, 2]
    assert layers[0]["sqnr_alone_db"] <= layers[1]["sqnr_alone_db"]
    fc = next(r for r in layers if r["name"] == "fc")
    assert fc["sqnr_full_db"] == pytest.approx(data["output_sqnr_db"])  # its output is the model's
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:4] == ["rank", "layer", "op", "alone"]
    assert lines[1].split()[1] == layers[0]["name"] and layers[0]["suggestion"] in lines[1]
    assert lines[2] == data["summary"] and "2 quantized layers on 8 calibration samples" in lines[2]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bad_inputs_are_one_line(tmp_path, small_cnn_path):
    np.savez(tmp_path / "calib.npz", image=np.ones((4, 1, 8, 8), np.float32))
    assert_one_line_error(qc("debug", tmp_path / "missing.onnx", "--calib", tmp_path / "calib.npz"),
                          "missing.onnx", "no such model file")
    proc = qc("debug", small_cnn_path, "--input-shape", "x:4,1,8,8", "--calib", tmp_path / "calib.npz",
              "--json", tmp_path / "d.json")
    assert_one_line_error(proc, "calib.npz", "image")
    assert_one_line_error(qc("debug", small_cnn_path, "--mode", "dynamic", "--calib", tmp_path / "calib.npz"),
                          "--mode dynamic")
    assert not (tmp_path / "d.json").exists()


def test_a_fixed_range_must_name_a_quantized_tensor(small_cnn_path):
    x = np.ones((4, 1, 8, 8), np.float32)
    with pytest.raises(QCompileError, match="'nowhere'.*conv1.out"):
        qcompile.debug(small_cnn_path, [{"x": x}], input_shapes={"x": [4, 1, 8, 8]}, progress=False,
                       quantize={"ranges": {"nowhere": (0.0, 1.0)}})
