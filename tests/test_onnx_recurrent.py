"""LSTM / GRU / RNN nodes unrolled into plain ONNX ops compute what onnxruntime computes for the originals."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompile.errors import QCompileError
from qcompile.frontends.onnx_recurrent import unroll_recurrent

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def recurrent_model(op, *, direction="forward", layout=0, seq=7, batch=3, inputs=5, hidden=6, bias=True,
                    h0=None, c0=None, peepholes=False, outputs=(0, 1, 2), node_outputs=None, opset=14,
                    batch_dim=None, seq_dim=None, w_input=False, seed=0, **attrs):
    """One recurrent node; h0 / c0: None, "init" (an initializer), "zeros" (one of zeros) or "input" (a graph input).
    outputs: which of Y, Y_h, Y_c are graph outputs; node_outputs: the node's output names (default: all)."""
    rng = np.random.default_rng(seed)
    ndir, g = (2 if direction == "bidirectional" else 1), GATES[op]
    rand = lambda *shape: (rng.uniform(-1, 1, shape) * 0.6).astype(np.float32)  # noqa: E731
    inits = [numpy_helper.from_array(rand(ndir, g * hidden, hidden), "R")]
    nb = batch_dim or batch
    state_shape = [ndir, nb, hidden] if layout == 0 else [nb, ndir, hidden]
    x_shape = [seq_dim or seq, nb, inputs]
    if layout:
        x_shape[:2] = x_shape[1::-1]
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)]
    if w_input:
        graph_inputs.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [ndir, g * hidden, inputs]))
    else:
        inits.append(numpy_helper.from_array(rand(ndir, g * hidden, inputs), "W"))
    names = ["X", "W", "R", "B" if bias else "", "", "", "", ""]
    if bias:
        inits.append(numpy_helper.from_array(rand(ndir, 2 * g * hidden), "B"))
    for k, (state, name) in enumerate([(h0, "h0"), (c0, "c0")]):
        names[5 + k] = name if state else ""
        if state in ("init", "zeros"):
            inits.append(numpy_helper.from_array(rand(*state_shape) * (state == "init"), name))
        elif state == "input":
            graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, state_shape))
    if peepholes:
        names[7] = "P"
        inits.append(numpy_helper.from_array(rand(ndir, 3 * hidden), "P"))
    if "sequence_lens" in attrs:
        names[4] = "lens"
        inits.append(numpy_helper.from_array(np.array(attrs.pop("sequence_lens"), np.int32), "lens"))
    while names and not names[-1]:
        names.pop()
    if layout:
        attrs["layout"] = layout
    node_outputs = node_outputs or ["Y", "Y_h", "Y_c"][:3 if op == "LSTM" else 2]
    node = helper.make_node(op, names, node_outputs, name=f"my_{op.lower()}", direction=direction,
                            hidden_size=hidden, **attrs)
    out_shapes = [[seq, ndir, nb, hidden] if layout == 0 else [nb, seq, ndir, hidden], state_shape, state_shape]
    graph_outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, out_shapes[i])
                     for i, n in enumerate(node_outputs) if n and i in outputs]
    # an Identity behind the node: the unrolled outputs must feed later nodes too
    graph = helper.make_graph([node, helper.make_node("Identity", [graph_outputs[0].name], ["copy"])],
                              "g", graph_inputs, graph_outputs + [graph_outputs[0]], inits)
    graph.output[-1].name = "copy"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def layout0(model):
    """The same model with its recurrent node at layout 0 between Transposes: onnxruntime runs only layout 0."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph, (node, *rest) = model.graph, model.graph.node
    node.attribute.remove(next(a for a in node.attribute if a.name == "layout"))
    before, after = [], []
    for i, name in enumerate(node.input):
        if name and i in (0, 5, 6):  # X, initial_h, initial_c
            before.append(helper.make_node("Transpose", [name], [f"{name}_t"], perm=[1, 0, 2]))
            node.input[i] = f"{name}_t"
    for i, name in enumerate(node.output):
        if name:
            perm = [2, 0, 1, 3] if i == 0 else [1, 0, 2]  # Y, else Y_h / Y_c
            after.append(helper.make_node("Transpose", [f"{name}_t"], [name], perm=perm))
            node.output[i] = f"{name}_t"
    nodes = [*before, node, *after, *rest]
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def feeds_for(model, seed=1):
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    shapes = {"N": 2}
    return {vi.name: rng.uniform(-1, 1, [d.dim_value or shapes[d.dim_param] for d in vi.type.tensor_type.shape.dim])
            .astype(np.float32) for vi in model.graph.input if vi.name not in inits}


def check(model):
    unrolled = unroll_recurrent(model, "m.onnx")
    onnx.checker.check_model(unrolled)
    ops = {n.op_type for n in unrolled.graph.node}
    assert not ops & set(GATES), ops
    read = {i for n in unrolled.graph.node for i in n.input} | {o.name for o in unrolled.graph.output}
    assert all(o in read for n in unrolled.graph.node for o in n.output), "computes something no one reads"
    feeds = feeds_for(model)
    layout = next((a.i for a in model.graph.node[0].attribute if a.name == "layout"), 0)
    want, got = run(layout0(model) if layout else model, feeds), run(unrolled, feeds)
    assert len(want) == len(got)
    for w, g in zip(want, got):
        assert w.shape == g.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    return unrolled


DIRECTIONS = ["forward", "reverse", "bidirectional"]
CASES = [
    *[dict(op=op, direction=d, layout=lay) for op in GATES for d in DIRECTIONS for lay in (0, 1)],
    *[dict(op=op, direction="bidirectional", layout=lay, h0=s, c0=s if op == "LSTM" else None, bias=bias)
      for op in GATES for lay in (0, 1) for s in ("init", "input") for bias in (True, False)],
    *[dict(op=op, seq=1, batch=1, hidden=5, direction=d) for op in GATES for d in ("reverse", "bidirectional")],
    dict(op="GRU", linear_before_reset=1, direction="bidirectional", h0="input"),
    dict(op="GRU", linear_before_reset=1, bias=False, direction="reverse", h0="init", layout=1),
    dict(op="GRU", linear_before_reset=1, seq=1, batch=1),
    dict(op="GRU", linear_before_reset=0, h0="init", clip=0.4),
    dict(op="GRU", linear_before_reset=1, h0="init", clip=0.4),
    dict(op="RNN", h0="input", clip=0.3, direction="bidirectional"),
    dict(op="LSTM", clip=0.3, h0="init", c0="input", direction="bidirectional"),
    dict(op="LSTM", peepholes=True, h0="init", c0="init", direction="bidirectional", layout=1),
    dict(op="LSTM", peepholes=True, clip=0.5, c0="input"),
    dict(op="LSTM", input_forget=1, h0="input", c0="input", direction="bidirectional"),
    dict(op="LSTM", input_forget=1, peepholes=True, clip=0.4),
    dict(op="LSTM", h0="input", outputs=(1,)),  # only Y_h used
    dict(op="LSTM", node_outputs=["", "Y_h"], direction="bidirectional", layout=1),
    dict(op="LSTM", node_outputs=["", "", "Y_c"], direction="reverse"),
    dict(op="GRU", node_outputs=["", "Y_h"], direction="bidirectional"),
    dict(op="RNN", activations=["Relu", "Tanh"], direction="bidirectional"),
    dict(op="LSTM", activations=["Sigmoid", "Tanh", "Relu"], h0="input"),
    dict(op="LSTM", sequence_lens=[7, 7, 7], direction="bidirectional"),
    dict(op="LSTM", batch_dim="N", h0="input", c0="input", direction="bidirectional"),  # symbolic batch
    dict(op="GRU", batch_dim="N", layout=1, direction="bidirectional"),
    dict(op="LSTM", h0="zeros", c0="zeros", direction="bidirectional", layout=1),
    *[dict(op=op, opset=opset, h0="init", clip=0.5, direction="bidirectional")
      for op in GATES for opset in (9, 11, 18)],
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_unrolled_matches_onnxruntime(case):
    case = dict(case)
    op = case.pop("op")
    check(recurrent_model(op, **case))


def test_unused_weights_removed_and_names_prefixed():
    model = recurrent_model("LSTM", h0="init", direction="bidirectional")
    unrolled = unroll_recurrent(model, "m.onnx")
    assert {i.name for i in unrolled.graph.initializer}.isdisjoint({"W", "R", "B"})  # h0 is read by a Gather
    new = [n for n in unrolled.graph.node if n.op_type != "Identity"]
    assert all(n.name.startswith("my_lstm/") for n in new)
    assert len({n.name for n in new}) == len(new)
    weights = {i.name for i in unrolled.graph.initializer}
    assert all(n.input[1] in weights for n in new if n.op_type == "MatMul")
    assert unroll_recurrent(unrolled, "m.onnx") is unrolled  # nothing left to unroll


def test_stacked_unnamed_with_constant_node_weights():
    """Two unnamed LSTMs, the first with its weights in Constant nodes, the second's sequence length known only
    through shape inference."""
    rng = np.random.default_rng(2)
    const = lambda name, *shape: helper.make_node(  # noqa: E731
        "Constant", [], [name], value=numpy_helper.from_array(rng.uniform(-0.6, 0.6, shape).astype(np.float32)))
    nodes = [const("W1", 1, 16, 3), const("R1", 1, 16, 4), const("B1", 1, 32),
             helper.make_node("LSTM", ["X", "W1", "R1", "B1"], ["Y1"], hidden_size=4),
             helper.make_node("Reshape", ["Y1", "shape"], ["X2"]),
             helper.make_node("LSTM", ["X2", "W2", "R2"], ["", "Y_h"], hidden_size=4, direction="reverse")]
    inits = [numpy_helper.from_array(np.array([0, -1, 4], np.int64), "shape"),
             numpy_helper.from_array(rng.uniform(-0.6, 0.6, (1, 16, 4)).astype(np.float32), "W2"),
             numpy_helper.from_array(rng.uniform(-0.6, 0.6, (1, 16, 4)).astype(np.float32), "R2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [5, 2, 3])],
                              [helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, 2, 4])], inits)
    unrolled = check(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert not {"Constant", "LSTM"} & {n.op_type for n in unrolled.graph.node}
    assert {n.name.split("/")[0] for n in unrolled.graph.node} == {"LSTM_3", "LSTM_5", ""}


@pytest.mark.parametrize("kwargs, why", [
    (dict(seq_dim="S"), "sequence length is not static"),
    (dict(w_input=True), "weight W 'W' is not a constant"),
    (dict(sequence_lens=[7, 5, 7]), "sequence_lens"),
    (dict(activations=["HardSigmoid", "Tanh", "Tanh"]), "activations"),
])
def test_unsupported_raises_one_line(kwargs, why):
    model = recurrent_model("LSTM", **kwargs)
    with pytest.raises(QCompileError) as err:
        unroll_recurrent(model, "m.onnx")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("m.onnx: node 'my_lstm' (LSTM): ") and why in msg, msg


def test_tvm_imports_unrolled_lstm():
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    model = recurrent_model("LSTM", direction="bidirectional", seq=3, batch=2, inputs=4, hidden=5, h0="input",
                            c0="init")
    unrolled = unroll_recurrent(model, "m.onnx")
    feeds = feeds_for(model)
    mod = from_onnx(unrolled, shape_dict={k: v.shape for k, v in feeds.items()}, keep_params_in_input=False)
    vm = tvm.relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    got = vm["main"](*[tvm.runtime.tensor(feeds[vi.name]) for vi in unrolled.graph.input])
    want = run(model, feeds)
    assert len(got) == len(want) == 4
    for w, g in zip(want, got):
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-4, atol=1e-4)
