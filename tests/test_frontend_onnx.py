import numpy as np
import onnx
import pytest
from onnx_models import reference, small_cnn, two_inputs, with_unsupported_ops
from tvm import relax

import qcompile
from qcompile import QCompileError
from qcompile.frontends import load_model


def test_imports_signature_and_layers(small_cnn_path):
    model = load_model(small_cnn_path)
    assert [(t.name, t.shape, t.dtype) for t in model.inputs] == [("x", (1, 1, 8, 8), "float32")]  # batch N -> 1
    assert [(t.name, t.shape) for t in model.outputs] == [("logits", (1, 10))]
    assert model.layer_names == ["conv1", "fc"]
    assert isinstance(model.mod["main"], relax.Function)


def test_input_shape_overrides_dynamic_batch(small_cnn_path):
    model = load_model(small_cnn_path, {"x": [4, 1, 8, 8]})
    assert model.inputs[0].shape == (4, 1, 8, 8) and model.outputs[0].shape == (4, 10)


def test_wrong_input_shape_name_is_named(small_cnn_path):
    with pytest.raises(QCompileError, match=r"unknown input\(s\) \['y'\]; the model's inputs are \['x'\]"):
        load_model(small_cnn_path, {"y": [1, 1, 8, 8]})


def test_weights_in_constant_nodes_build_and_match(tmp_path):
    path = tmp_path / "const.onnx"
    onnx.save(small_cnn(weights_as_constants=True), str(path))
    assert load_model(path).layer_names == ["conv1", "fc"]
    so = qcompile.build(path, "host", tmp_path / "const.so").artifact
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(qcompile.run(so, {"x": x}).outputs["logits"], reference(path, {"x": x})[0], atol=1e-5)


def test_external_data_files(tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save(small_cnn(), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.weights", size_threshold=0)
    assert (tmp_path / "ext.weights").stat().st_size > 1000
    load_model(path)
    (tmp_path / "ext.weights").unlink()
    with pytest.raises(QCompileError, match="cannot load its external weight data"):
        load_model(path)


def test_every_unsupported_op_is_listed_with_its_nodes(tmp_path):
    path = tmp_path / "bad_ops.onnx"
    onnx.save(with_unsupported_ops(), str(path))
    with pytest.raises(QCompileError) as err:
        load_model(path)
    msg = str(err.value)
    assert "\n" not in msg and "unsupported ops" in msg
    assert "com.example.MyCustomOp (nodes: custom_1, custom_2)" in msg
    assert "det_a" in msg


@pytest.mark.parametrize("content, expected", [
    (b"this is not a model at all\n" * 10, "not"),
    (None, "not a valid ONNX model"),  # truncated
])
def test_broken_files(tmp_path, small_cnn_path, content, expected):
    path = tmp_path / "broken.onnx"
    path.write_bytes(content if content is not None else small_cnn_path.read_bytes()[:300])
    with pytest.raises(QCompileError) as err:
        load_model(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(QCompileError, match="no such model file"):
        load_model(tmp_path / "nope.onnx")


def test_two_inputs_two_outputs(tmp_path):
    path = tmp_path / "two.onnx"
    onnx.save(two_inputs(), str(path))
    model = load_model(path)
    assert [t.name for t in model.inputs] == ["a", "b"]
    assert [t.name for t in model.outputs] == ["y", "r"]


def test_dynamic_non_batch_dim_needs_a_shape(tmp_path):
    model = small_cnn()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    path = tmp_path / "dyn.onnx"
    onnx.save(model, str(path))
    with pytest.raises(QCompileError, match=r"dynamic dimension at axis 2; give its shape with --input-shape x:N,1,N,8"):
        load_model(path)
    assert load_model(path, {"x": [1, 1, 8, 8]}).inputs[0].shape == (1, 1, 8, 8)


def _shape_arithmetic_model(declared_out) -> onnx.ModelProto:
    """x[N, 3, 4, 4] -> Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [-1])) * 2, as exporters
    write a flatten with a dynamic batch; the output's declared shape is `declared_out`."""
    h = onnx.helper
    nodes = [
        h.make_node("Shape", ["x"], ["shape"]),
        h.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        h.make_node("Unsqueeze", ["batch", "axes0"], ["batch1"]),
        h.make_node("Concat", ["batch1", "minus1"], ["new_shape"], axis=0),
        h.make_node("Reshape", ["x", "new_shape"], ["flat"]),
        h.make_node("Mul", ["flat", "two"], ["y"]),
    ]
    inits = [onnx.numpy_helper.from_array(np.array(0, np.int64), "zero"),
             onnx.numpy_helper.from_array(np.array([0], np.int64), "axes0"),
             onnx.numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
             onnx.numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 4, 4])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, declared_out)], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


@pytest.mark.parametrize("declared_out", [["N", 48], [1, "stale"]])
def test_shape_arithmetic_in_the_graph_is_folded_and_declared_shapes_are_not_trusted(tmp_path, declared_out):
    """TVM's importer needs a Reshape's shape as data; the graph computes it from Shape(x). A
    stale declared output shape ([1, 'stale'] for [2, 48]) must not be folded into the result."""
    path = tmp_path / "flatten.onnx"
    onnx.save(_shape_arithmetic_model(declared_out), path)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    result = qcompile.build(path, "host", tmp_path / "m.so", input_shapes={"x": [2, 3, 4, 4]})
    assert result.metadata["verification"]["verified"]
    got = qcompile.run(result.artifact, {"x": x}).outputs["y"]
    np.testing.assert_allclose(got, reference(path, {"x": x})[0], rtol=1e-6)


def test_a_recurrent_model_imports_builds_and_matches_onnxruntime(tmp_path):
    """LSTM (no TVM converter) is unrolled over its static sequence; its state is a graph input."""
    h = onnx.helper
    rng = np.random.default_rng(0)
    hidden, feat = 6, 5
    inits = [onnx.numpy_helper.from_array(rng.standard_normal((2, 4 * hidden, feat)).astype(np.float32), "W"),
             onnx.numpy_helper.from_array(rng.standard_normal((2, 4 * hidden, hidden)).astype(np.float32), "R"),
             onnx.numpy_helper.from_array(rng.standard_normal((2, 8 * hidden)).astype(np.float32), "B")]
    node = h.make_node("LSTM", ["x", "W", "R", "B", "", "h0"], ["y", "y_h"], hidden_size=hidden,
                       direction="bidirectional", name="lstm")
    graph = h.make_graph([node], "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["T", 1, feat]),
                                       h.make_tensor_value_info("h0", onnx.TensorProto.FLOAT, [2, 1, hidden])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None),
                          h.make_tensor_value_info("y_h", onnx.TensorProto.FLOAT, None)], inits)
    path = tmp_path / "lstm.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 14)]), path)
    feeds = {"x": rng.standard_normal((7, 1, feat)).astype(np.float32),
             "h0": rng.standard_normal((2, 1, hidden)).astype(np.float32)}
    result = qcompile.build(path, "host", tmp_path / "m.so", input_shapes={"x": [7, 1, feat]})
    assert result.metadata["verification"]["verified"]
    got = qcompile.run(result.artifact, feeds).outputs
    for name, ref in zip(("y", "y_h"), reference(path, feeds)):
        np.testing.assert_allclose(got[name], ref, rtol=1e-5, atol=1e-5)


def _branch_on_input_model() -> onnx.ModelProto:
    """y = If(mode == 1, x * 2, x + 100): a branch chosen by a scalar input, as silero-vad picks
    its 8/16 kHz network by the sample rate."""
    h = onnx.helper

    def branch(name, op, const):
        return h.make_graph([h.make_node(op, ["x", const], [f"{name}_y"])], name, [],
                            [h.make_tensor_value_info(f"{name}_y", onnx.TensorProto.FLOAT, [1, 4])])

    nodes = [h.make_node("Equal", ["mode", "one"], ["cond"]),
             h.make_node("If", ["cond"], ["y"], name="pick", then_branch=branch("then", "Mul", "two"),
                         else_branch=branch("else", "Add", "hundred"))]
    inits = [onnx.numpy_helper.from_array(np.array(1, np.int64), "one"),
             onnx.numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             onnx.numpy_helper.from_array(np.array(100.0, np.float32), "hundred")]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4]),
                                      h.make_tensor_value_info("mode", onnx.TensorProto.INT64, [])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def test_a_branch_on_an_input_is_one_line_naming_it_and_builds_once_the_input_is_frozen(tmp_path):
    path = tmp_path / "branch.onnx"
    onnx.save(_branch_on_input_model(), path)
    with pytest.raises(QCompileError, match=r"node 'pick' \(If\): its condition depends on input\(s\) \['mode'\].*"
                                            r"--input-value mode="):
        load_model(path)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    for mode, expected in ((1, x * 2), (0, x + 100)):
        result = qcompile.build(path, "host", tmp_path / f"m{mode}.so", input_values={"mode": [mode]})
        assert result.metadata["verification"]["verified"] and result.metadata["frozen_inputs"] == {"mode": mode}
        assert [t["name"] for t in result.metadata["inputs"]] == ["x"]
        np.testing.assert_allclose(qcompile.run(result.artifact, {"x": x}).outputs["y"], expected)
    with pytest.raises(QCompileError, match=r"--input-value names unknown input\(s\) \['nope'\]"):
        load_model(path, input_values={"nope": [1]})


def test_an_operator_form_quantized_model_is_one_line_saying_what_to_do(tmp_path, small_cnn_path):
    """onnxruntime's QOperator format (QLinearConv...): TVM has no converter; the user is told to
    give a QDQ model or the float one."""
    import onnxruntime.quantization as q

    calib = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"x": calib[i:i + 1]} for i in range(4)])

        def get_next(self):
            return next(self.items, None)

    fixed = onnx.load(small_cnn_path)
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(fixed, tmp_path / "fixed.onnx")
    q.quantize_static(str(tmp_path / "fixed.onnx"), str(tmp_path / "qop.onnx"), Reader(),
                      quant_format=q.QuantFormat.QOperator)
    with pytest.raises(QCompileError, match=r"unsupported ops: .*QLinearConv \(nodes: .*\) \(a model quantized in "
                                            r"operator form; qcompile takes QDQ models"):
        load_model(tmp_path / "qop.onnx")
