"""The int4w precision (int4 block-wise matmul weights, float activations) inside a static int8
model: a precision config realizes it as the block-wise kernel between int8 layers, and the
mixed-precision search chooses it where only it keeps the accuracy at that size."""

import dataclasses
import json

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from test_cli import qc

from qcompile.backends import host_engine
from qcompile.examples import fashion_mnist, fashion_mnist_cnn_onnx
from qcompile.frontends import load_model
from qcompile.layers import layer_table
from qcompile.passes import float_passes
from qcompile.quantize import QuantConfig, quantize_module


def test_int4w_layer_is_a_blockwise_kernel_between_int8_layers():
    imported = load_model(fashion_mnist_cnn_onnx(), {"image": [100, 1, 28, 28]})
    mod = tvm.transform.Sequential(float_passes())(imported.mod)
    names = imported.layer_names
    x, _ = fashion_mnist("t10k")
    rows = layer_table(mod, names)
    fc = [r["name"] for r in rows if r["op"] == "matmul"][0]
    config = QuantConfig(progress=False, precisions={fc: "int4w"}, group_size=32)
    for mode in ("simulate", "static"):
        q, report = quantize_module(mod, imported.inputs, [{"image": x[:100]}], dataclasses.replace(config, mode=mode),
                                    names, engine=host_engine)
        compiled = {r["name"]: r for r in layer_table(q, names)}
        assert compiled[fc]["weight_dtype"] == "int4" and compiled[fc]["input_dtype"] == "float32"
        if mode == "static":  # the rest is realized as int8 (simulate keeps fake-quantized float weights)
            assert all(r["weight_dtype"] == "int8" for n, r in compiled.items() if n != fc)
        row = next(r for r in report["layers"] if r["name"] == fc)
        assert row["precision"] == "int4w" and "block-wise" in row["why"]


K, HIDDEN, CLASSES = 64, 48, 10


def _split_scale_mlp(path):
    """x[N, 64] @ W1 -> relu -> @ W2. Input channels 32..63 carry values 100x larger than 0..31 and
    W1's rows for them are 100x smaller: per-tensor int8 activations lose channels 0..31, and one
    weight scale per output column (int8 or int4) loses rows 32..63; groups of 32 along K keep both."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((K, HIDDEN)).astype(np.float32)
    w1[32:] *= 0.01
    w2 = rng.standard_normal((HIDDEN, CLASSES)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", CLASSES])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = rng.standard_normal((400, K)).astype(np.float32)
    x[:, 32:] *= 100.0
    return x


@pytest.mark.parametrize("objective", ["size"])
def test_search_chooses_int4w_where_only_it_keeps_accuracy(tmp_path, objective):
    model = tmp_path / "mlp.onnx"
    x = _split_scale_mlp(model)
    np.savez(tmp_path / "data.npz", x=x)
    proc = qc("build", model, "--input-shape", "x:100,64", "--calib", tmp_path / "data.npz", "--quantize", "mixed",
              "--objective", objective, "--max-accuracy-drop", "10", "--group-size", "32",
              "--search-cache", tmp_path / "cache", "-o", tmp_path / "mixed.so")
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / "mixed.precision.json").read_text())
    table = {row["name"]: row for row in config["layers"]}
    first = next(n for n in table if n.startswith("fc1") or n == list(table)[0])
    sens = table[first]["sensitivity"]
    assert sens["int4w"]["drop"] < min(sens["int8"]["drop"], sens["int4"]["drop"])
    assert config["precisions"][first] == "int4w", config["precisions"]
