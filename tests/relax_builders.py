"""Small Relax modules the quantization pass tests share: a main(x) built by a function, two
convolutions with fixed weights, and the QDQ pair of one tensor."""

import numpy as np
from tvm import relax
from tvm.relax import op as R

from qcompile.quantize.params import QParams

RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((4, 3, 3, 3)).astype("float32")
B1 = RNG.standard_normal((1, 4, 1, 1)).astype("float32")
W2 = RNG.standard_normal((4, 4, 1, 1)).astype("float32")
QX = QParams(np.float32(0.02), np.int32(0), "int8")
QY = QParams(np.float32(0.05), np.int32(0), "int8")


def x_var():
    return relax.Var("x", relax.TensorType((1, 3, 8, 8), "float32"))


def tensor_var(name, shape, dtype):
    return relax.Var(name, relax.TensorType(shape, dtype))


def module(params, body):
    """main(*params) whose dataflow block is `body(bb, *params)` (returning the output)."""
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(body(bb, *params))
        bb.emit_func_output(out)
    return bb.get()


def function(body):
    """A module whose main(x: [1, 3, 8, 8] float32) is built by `body(bb, x)` (which returns the output)."""
    return module([x_var()], body)


def conv(x, w):
    return R.nn.conv2d(x, relax.const(w), padding=[1, 1, 1, 1] if w.shape[-1] == 3 else [0, 0, 0, 0])


def two_convs(bb, x):
    y = bb.emit(R.nn.relu(bb.emit(R.add(bb.emit(conv(x, W1)), relax.const(B1)))))
    return bb.emit(R.nn.softmax(bb.emit(conv(y, W2)), axis=1))


def qdq(bb, x, qp):
    s, z = relax.const(np.float32(qp.scale)), relax.const(np.int32(qp.zero_point))
    return bb.emit(R.dequantize(bb.emit(R.quantize(x, s, z, axis=-1, out_dtype="int8")), s, z, axis=-1))


def fake_quant_per_channel(w):
    scale = (np.abs(w).reshape(w.shape[0], -1).max(1) / 127.0).astype("float32")[:, None, None, None]
    codes = np.round(w / scale).astype("int32")  # integer codes: -0.0 never appears
    return (codes * scale).astype("float32"), scale.ravel()
