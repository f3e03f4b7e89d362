"""conv1d_as_conv2d_pass (backends/cpu/conv1d_as_conv2d.py): a 1-D convolution becomes a 2-D one of
height 1 between an expand_dims and a squeeze, which the packed kernels then take."""

import numpy as np
import pytest
import tvm
from relax_builders import module, tensor_var
from tvm import relax
from tvm.relax import op as R

from qcompile.backends import backend_for, host_engine
from qcompile.backends.cpu.conv1d_as_conv2d import conv1d_as_conv2d
from qcompile.targets import get_target

RNG = np.random.default_rng(0)
W = RNG.integers(-127, 128, (6, 5, 3)).astype("int8")  # OIW


def test_conv1d_becomes_conv2d_of_height_one():
    def before(bb, x):
        return bb.emit(R.nn.conv1d(x, relax.const(W), strides=2, padding=(1, 2), dilation=1, out_dtype="int32"))

    def expected(bb, x):
        x4 = bb.emit(R.expand_dims(x, 2))
        w4 = bb.emit(R.expand_dims(relax.const(W), 2))
        y = bb.emit(R.nn.conv2d(x4, w4, strides=(1, 2), padding=(0, 1, 0, 2), dilation=(1, 1), out_dtype="int32"))
        return bb.emit(R.squeeze(y, [2]))

    x = tensor_var("x", (1, 5, 11), "int8")
    tvm.ir.assert_structural_equal(conv1d_as_conv2d(module([x], before)), module([x], expected))


def test_a_channels_last_conv1d_is_kept():
    def before(bb, x):
        return bb.emit(R.nn.conv1d(x, relax.const(W), data_layout="NWC", kernel_layout="OIW", out_dtype="int32"))

    mod = module([tensor_var("x", (1, 11, 5), "int8")], before)
    tvm.ir.assert_structural_equal(conv1d_as_conv2d(mod), mod)


@pytest.mark.parametrize("dtype", ["int8", "float32"])
@pytest.mark.parametrize("strides, padding, dilation, groups, width", [(1, (1, 1), 1, 1, 7), (2, (0, 2), 2, 1, 9),
                                                                       (1, (1, 1), 1, 5, 3)])
def test_compiled_conv1d_keeps_its_values(dtype, strides, padding, dilation, groups, width):
    """Through the host backend (packed kernels, channels-last): the plain conv1d's values, exactly
    for int8; odd widths, a stride, a dilation, a depthwise one, a length of 3 (silero-vad's)."""
    w = RNG.integers(-127, 128, (5, 5 // groups, 3)).astype(dtype)

    def body(bb, x):
        out = "int32" if dtype == "int8" else "float32"
        return bb.emit(R.nn.conv1d(x, relax.const(w), strides=strides, padding=padding, dilation=dilation,
                                   groups=groups, out_dtype=out))

    mod = module([tensor_var("x", (1, 5, width), dtype)], body)
    backend = backend_for(get_target("host"))
    assert "qcompile.Conv1dAsConv2d" in [p.info.name for p in backend.relax_passes()] or \
        backend.family.int8 is None  # a family without packed kernels keeps TVM's conv1d
    x = RNG.integers(-128, 128, (1, 5, width)).astype(dtype)
    got = host_engine(mod)["main"](tvm.runtime.tensor(x)).numpy()
    want = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    if dtype == "int8":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)
