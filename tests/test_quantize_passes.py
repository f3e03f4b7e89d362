"""The quantization passes, one at a time: a Before module and the Expected module after the
pass, compared structurally (TVM's own pass-test style), plus numeric checks of realize."""

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.relax import op as R

from qcompile.backends import host_engine
from qcompile.ir import observe
from qcompile.quantize import annotate, insert_qdq, realize
from qcompile.quantize.annotate import Policy, plan
from qcompile.quantize.params import QParams

RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((4, 3, 3, 3)).astype("float32")
B1 = RNG.standard_normal((1, 4, 1, 1)).astype("float32")
W2 = RNG.standard_normal((4, 4, 1, 1)).astype("float32")


def _x():
    return relax.Var("x", relax.TensorType((1, 3, 8, 8), "float32"))


def _function(body):
    """A module whose main(x) is built by `body(bb, x)` (which returns the output)."""
    bb = relax.BlockBuilder()
    x = _x()
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(body(bb, x))
        bb.emit_func_output(out)
    return bb.get()


def _conv(x, w):
    return R.nn.conv2d(x, relax.const(w), padding=[1, 1, 1, 1] if w.shape[-1] == 3 else [0, 0, 0, 0])


def two_convs(bb, x):
    y = bb.emit(R.nn.relu(bb.emit(R.add(bb.emit(_conv(x, W1)), relax.const(B1)))))
    return bb.emit(R.nn.softmax(bb.emit(_conv(y, W2)), axis=1))


def test_annotate_marks_the_inputs_of_quantized_ops():
    def expected(bb, x):
        xo = bb.emit(observe(x, "x"))
        y = bb.emit(R.nn.relu(bb.emit(R.add(bb.emit(_conv(xo, W1)), relax.const(B1)))))
        yo = bb.emit(observe(y, "conv2d_0.out"))
        return bb.emit(R.nn.softmax(bb.emit(_conv(yo, W2)), axis=1))

    tvm.ir.assert_structural_equal(annotate(_function(two_convs)), _function(expected))


def test_annotate_leaves_skipped_layers_in_float():
    def expected(bb, x):
        xo = bb.emit(observe(x, "x"))
        y = bb.emit(R.nn.relu(bb.emit(R.add(bb.emit(_conv(xo, W1)), relax.const(B1)))))
        return bb.emit(R.nn.softmax(bb.emit(_conv(y, W2)), axis=1))

    got = annotate(_function(two_convs), policy=Policy(skip_layers=frozenset({"conv2d_1"})))
    tvm.ir.assert_structural_equal(got, _function(expected))


def test_plan_groups_epilogues_and_elementwise_chains():
    def hardswish_block(bb, x):
        c = bb.emit(R.add(bb.emit(_conv(x, W1)), relax.const(B1)))
        gate = bb.emit(R.divide(bb.emit(R.clip(bb.emit(R.add(c, relax.const(3.0))), 0, 6)), relax.const(6.0)))
        h = bb.emit(R.multiply(c, gate))
        return bb.emit(_conv(h, W2))

    nodes = plan(_function(hardswish_block)).nodes
    assert [(n.kind, n.op, len(n.members)) for n in nodes] == [
        ("compute", "conv2d", 2), ("compute", "conv2d", 1), ("elementwise", "elementwise", 4)]
    assert all(n.quantized for n in nodes)


QX = QParams(np.float32(0.02), np.int32(0), "int8")
QY = QParams(np.float32(0.05), np.int32(0), "int8")


def _qdq(bb, x, qp):
    s, z = relax.const(np.float32(qp.scale)), relax.const(np.int32(qp.zero_point))
    return bb.emit(R.dequantize(bb.emit(R.quantize(x, s, z, axis=-1, out_dtype="int8")), s, z, axis=-1))


def _fake_quant_per_channel(w):
    scale = (np.abs(w).reshape(w.shape[0], -1).max(1) / 127.0).astype("float32")[:, None, None, None]
    codes = np.round(w / scale).astype("int32")  # integer codes: -0.0 never appears
    return (codes * scale).astype("float32"), scale.ravel()


def test_insert_qdq_quantizes_marked_tensors_and_weights():
    def expected(bb, x):
        xq = _qdq(bb, x, QX)
        w1, _ = _fake_quant_per_channel(W1)
        y = bb.emit(R.nn.relu(bb.emit(R.add(bb.emit(_conv(xq, w1)), relax.const(B1)))))
        yq = _qdq(bb, y, QY)
        w2, _ = _fake_quant_per_channel(W2)
        return bb.emit(R.nn.softmax(bb.emit(_conv(yq, w2)), axis=1))

    got = insert_qdq(annotate(_function(two_convs)), {"x": QX, "conv2d_0.out": QY})
    tvm.ir.assert_structural_equal(got, _function(expected), map_free_vars=True)


def test_realize_turns_qdq_conv_into_int8_kernel_with_fixed_point_requantize():
    w1, sw = _fake_quant_per_channel(W1)

    def before(bb, x):
        xq = _qdq(bb, x, QX)
        y = bb.emit(R.nn.relu(bb.emit(R.add(bb.emit(_conv(xq, w1)), relax.const(B1)))))
        return _qdq(bb, y, QY)

    def expected(bb, x):
        sx, zx = relax.const(np.float32(QX.scale)), relax.const(np.int32(0))
        q = bb.emit(R.quantize(x, sx, zx, axis=-1, out_dtype="int8"))
        wq = np.round(w1 / sw[:, None, None, None]).astype("int8")
        acc = bb.emit(R.nn.conv2d(q, relax.const(wq), padding=[1, 1, 1, 1], out_dtype="int32"))
        s_acc = np.float64(QX.scale) * sw.astype(np.float64)
        bias = bb.emit(R.add(acc, relax.const(np.round(B1 / s_acc.reshape(1, -1, 1, 1)).astype("int32"))))
        relu = bb.emit(R.maximum(bias, relax.const(np.int32(0))))
        m = (s_acc / np.float64(QY.scale)).reshape(1, -1, 1, 1)
        n = (30 - np.floor(np.log2(m))).astype("int64")
        mult = np.round(m * 2.0**n).astype("int64")
        y = R.multiply(R.astype(relu, "int64"), relax.const(mult, "int64"))  # int64 needs its dtype spelled out
        y = R.right_shift(R.add(y, relax.const(1 << (n - 1), "int64")), relax.const(n, "int64"))
        out_q = bb.emit(R.astype(R.clip(y, -128, 127), "int8"))
        sy, zy = relax.const(np.float32(QY.scale)), relax.const(np.int32(0))
        return bb.emit(R.dequantize(out_q, sy, zy, axis=-1, out_dtype="float32"))

    tvm.ir.assert_structural_equal(realize(_function(before)), _function(expected), map_free_vars=True)


def _run(mod, x):
    return host_engine(mod)["main"](tvm.runtime.tensor(x)).numpy()


@pytest.mark.parametrize("symmetric", [True, False])
def test_realized_layer_is_within_one_step_of_simulation(symmetric):
    """conv + bias + relu, a hardswish table, a residual add and global pooling: the integer
    module's 8-bit codes are at most one quantization step from the float simulation's."""
    from qcompile.quantize.calibrate import choose_qparams, collect

    def model(bb, x):
        c = bb.emit(R.add(bb.emit(_conv(x, W1)), relax.const(B1)))
        h = bb.emit(R.multiply(c, bb.emit(R.divide(bb.emit(R.clip(bb.emit(R.add(c, relax.const(3.0))), 0, 6)),
                                                   relax.const(6.0)))))
        r = bb.emit(R.add(bb.emit(_conv(h, W2)), h))
        return bb.emit(R.multiply(bb.emit(R.mean(r, axis=[2, 3], keepdims=True)), relax.const(1.0)))

    mod = _function(model)
    xs = [RNG.standard_normal((1, 3, 8, 8)).astype("float32") for _ in range(4)]
    annotated = annotate(mod)
    qparams = choose_qparams(collect(annotated, [{"x": x} for x in xs], ["x"], host_engine, progress=False), symmetric=symmetric)
    simulated = insert_qdq(annotated, qparams)
    realized = realize(simulated)
    out_step = float(qparams["mean_0.out"].scale) if "mean_0.out" in qparams else None
    for x in xs:
        sim, got = _run(simulated, x), _run(realized, x)
        step = out_step or float(max(q.scale for q in qparams.values()))
        assert np.abs(sim - got).max() <= step * 1.01, (np.abs(sim - got).max(), step)
