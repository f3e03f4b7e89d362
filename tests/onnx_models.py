"""Small ONNX models the tests build themselves."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _rng():
    return np.random.default_rng(42)


def small_cnn(weights_as_constants: bool = False, batch="N") -> onnx.ModelProto:
    """Conv -> Relu -> MaxPool -> Flatten -> Gemm: 1x8x8 image in, 10 logits out."""
    rng = _rng()
    weights = {
        "w1": rng.standard_normal((4, 1, 3, 3)).astype(np.float32) * 0.5,
        "b1": rng.standard_normal(4).astype(np.float32) * 0.1,
        "w2": rng.standard_normal((10, 64)).astype(np.float32) * 0.2,
        "b2": rng.standard_normal(10).astype(np.float32) * 0.1,
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p1"], ["f1"], name="flatten"),
        helper.make_node("Gemm", ["f1", "w2", "b2"], ["logits"], name="fc", transB=1),
    ]
    inits = []
    if weights_as_constants:
        consts = [helper.make_node("Constant", [], [k], name=f"const_{k}", value=numpy_helper.from_array(v, k))
                  for k, v in weights.items()]
        nodes = consts + nodes
    else:
        inits = [numpy_helper.from_array(v, k) for k, v in weights.items()]
    graph = helper.make_graph(
        nodes, "small_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def two_convs() -> onnx.ModelProto:
    """Conv -> Conv with no activation between them: the first one's int8 codes are negative too,
    and saturate at -128 on inputs larger than the calibration data. 4x8x8 in, 4x8x8 out."""
    rng = _rng()
    inits = [numpy_helper.from_array(v, k) for k, v in {
        "w1": rng.standard_normal((8, 4, 3, 3)).astype(np.float32) * 0.3,
        "b1": rng.standard_normal(8).astype(np.float32) * 0.1,
        "w2": rng.standard_normal((4, 8, 1, 1)).astype(np.float32) * 0.3,
        "b2": rng.standard_normal(4).astype(np.float32) * 0.1}.items()]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["c1", "w2", "b2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "two_convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 8, 8])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def with_unsupported_ops() -> onnx.ModelProto:
    """small_cnn plus ops TVM's ONNX frontend lacks, in two places each."""
    model = small_cnn()
    g = model.graph
    out = g.output[0].name
    g.node.extend([
        helper.make_node("Det", [out], ["d"], name="det_a", domain="ai.onnx.ml.fake"),
        helper.make_node("MyCustomOp", ["d"], ["e"], name="custom_1", domain="com.example"),
        helper.make_node("MyCustomOp", ["e"], ["f"], name="custom_2", domain="com.example"),
    ])
    return model


def two_inputs() -> onnx.ModelProto:
    """y = a @ b + 1 with inputs a[2,3] f32, b[3,4] f32 and two outputs (y, relu(y))."""
    nodes = [
        helper.make_node("MatMul", ["a", "b"], ["m"], name="mm"),
        helper.make_node("Add", ["m", "one"], ["y"], name="add"),
        helper.make_node("Relu", ["y"], ["r"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes, "two_inputs",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4]),
         helper.make_tensor_value_info("r", TensorProto.FLOAT, [2, 4])],
        initializer=[numpy_helper.from_array(np.ones((1,), np.float32), "one")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def reference(model_path, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)
