"""pack_float_pass (backends/packed/pack.py): float32 convolutions and matmuls with constant weights
become packed kernels. Before modules against hand-built Expected modules, structurally."""

import functools

import numpy as np
import pytest
import tvm
from relax_builders import module, tensor_var
from tvm import relax
from tvm.relax import op as R

from qcompile.backends.families import FAMILIES
from qcompile.backends.packed.pack import (
    ONE_BY_ONE,
    float_kernel,
    pack_depthwise_weight,
    pack_float_pass,
    pack_weight,
    packed_conv_te,
    packed_depthwise_te,
)

RNG = np.random.default_rng(0)
W = RNG.standard_normal((6, 5, 3, 3)).astype("float32")  # output channels that fill no whole vector
WD = RNG.standard_normal((5, 1, 3, 3)).astype("float32")
WM = RNG.standard_normal((12, 7)).astype("float32")
PAD1 = {"strides": [1, 1], "padding": [1, 1, 1, 1], "dilation": [1, 1]}


def _packed(bb, x, w_oihw, kernel, conv, layout="NCHW"):
    te_func = functools.partial(packed_conv_te, corr=None, out_channels=w_oihw.shape[0], kernel=kernel, shift=0,
                                layout=layout, **conv)
    return bb.emit_te(te_func, x, relax.const(pack_weight(w_oihw, kernel), "float32"),
                      primfunc_name_hint="qcompile_f32_conv")


@pytest.mark.parametrize("family", ["x86-vnni", "x86-avx2", "arm-dotprod"])
def test_float_conv_becomes_one_packed_kernel_with_the_familys_vector_width(family):
    kernel = float_kernel(FAMILIES[family].float_lanes)
    x = tensor_var("x", (1, 5, 8, 8), "float32")
    got = pack_float_pass(kernel)(module([x], lambda bb, x: bb.emit(R.nn.conv2d(x, relax.const(W), padding=[1, 1, 1, 1]))))
    tvm.ir.assert_structural_equal(got, module([x], lambda bb, x: _packed(bb, x, W, kernel, PAD1)))
    assert pack_weight(W, kernel).shape == (-(-6 // kernel.lanes), 3, 3, 5, kernel.lanes, 1)


def test_channels_last_float_conv_is_packed_from_its_ohwi_weight():
    kernel = float_kernel(8)
    w_ohwi = np.ascontiguousarray(W.transpose(0, 2, 3, 1))
    x = tensor_var("x", (1, 8, 8, 5), "float32")

    def before(bb, x):
        return bb.emit(R.nn.conv2d(x, relax.const(w_ohwi), padding=[1, 1, 1, 1], data_layout="NHWC",
                                   kernel_layout="OHWI"))

    got = pack_float_pass(kernel)(module([x], before))
    tvm.ir.assert_structural_equal(got, module([x], lambda bb, x: _packed(bb, x, W, kernel, PAD1, "NHWC")))


def test_float_depthwise_conv_becomes_the_depthwise_kernel():
    kernel = float_kernel(8)

    def expected(bb, x):
        return bb.emit_te(functools.partial(packed_depthwise_te, layout="NCHW", **PAD1), x,
                          relax.const(pack_depthwise_weight(WD, 8), "float32"), primfunc_name_hint="qcompile_f32_depthwise")

    x = tensor_var("x", (1, 5, 8, 8), "float32")
    before = module([x], lambda bb, x: bb.emit(R.nn.conv2d(x, relax.const(WD), padding=[1, 1, 1, 1], groups=5)))
    tvm.ir.assert_structural_equal(pack_float_pass(kernel)(before), module([x], expected))


@pytest.mark.parametrize("shape", [(3, 12), (2, 3, 12)])
def test_float_matmul_becomes_the_packed_one_by_one_conv_of_its_rows(shape):
    """x[..., K] @ W[K, N]: the rows of x (leading dimensions too) as one NHWC row of pixels."""
    kernel = float_kernel(16)
    x = tensor_var("x", shape, "float32")
    m = int(np.prod(shape[:-1]))

    def expected(bb, x):
        x4 = bb.emit(R.reshape(x, (1, 1, m, 12)))
        y = _packed(bb, x4, np.ascontiguousarray(WM.T.reshape(7, 12, 1, 1)), kernel, ONE_BY_ONE, "NHWC")
        return bb.emit(R.reshape(y, (*shape[:-1], 7)))

    before = module([x], lambda bb, x: bb.emit(R.matmul(x, relax.const(WM))))
    tvm.ir.assert_structural_equal(pack_float_pass(kernel)(before), module([x], expected))


W_INT8 = RNG.integers(-127, 128, (6, 5, 3, 3)).astype("int8")


@pytest.mark.parametrize("params, body", [
    # weights computed at run time (not constants): TVM's kernel
    ([tensor_var("x", (1, 5, 8, 8), "float32"), tensor_var("w", (6, 5, 3, 3), "float32")],
     lambda bb, x, w: bb.emit(R.nn.conv2d(x, w))),
    # an int8 convolution is pack_int8_pass's
    ([tensor_var("x", (1, 5, 8, 8), "int8")],
     lambda bb, x: bb.emit(R.nn.conv2d(x, relax.const(W_INT8), out_dtype="int32"))),
    # a dynamic batch
    ([tensor_var("x", (tvm.tirx.Var("n", "int64"), 5, 8, 8), "float32")],
     lambda bb, x: bb.emit(R.nn.conv2d(x, relax.const(W)))),
    # a grouped (not depthwise) convolution
    ([tensor_var("x", (1, 6, 8, 8), "float32")],
     lambda bb, x: bb.emit(R.nn.conv2d(x, relax.const(RNG.standard_normal((6, 3, 3, 3)).astype("float32")), groups=2))),
    # a matmul of two activations
    ([tensor_var("x", (3, 12), "float32"), tensor_var("w", (12, 7), "float32")], lambda bb, x, w: bb.emit(R.matmul(x, w))),
])
def test_leaves_the_module_unchanged(params, body):
    before = module(params, body)
    tvm.ir.assert_structural_equal(pack_float_pass(float_kernel(8))(before), before)
