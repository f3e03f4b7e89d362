"""float_requantize_pass (backends/float_requantize.py): realize's int64 fixed-point requantize to
8 bits becomes one float32 multiply and a round; rescales to int32 keep the int64 form."""

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from qcompile.backends.float_requantize import float_requantize_pass
from qcompile.quantize.realize import fixed_point

RNG = np.random.default_rng(0)
RATIO = np.array([0.0123, 0.4, 1.7e-5, 0.031], np.float64).reshape(1, 4, 1, 1)  # per channel
M, S = fixed_point(RATIO)
HALF = np.left_shift(np.int64(1), S - 1)
FLOAT_RATIO = (M * np.exp2(-S.astype(np.float64))).astype(np.float32)


def _before(out_dtype="int8", lo=-128, hi=127, zp_in=0, zp=0, x_dtype="int32", shape=(1, 4, 3, 3)):
    """realize's requantize chain (rescale in quantize/realize.py), built as realize builds it."""
    from tvm.relax import op as ops

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(list(shape), x_dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(ops.subtract(bb.emit(ops.astype(x, "int64")), relax.const(zp_in, "int64")))
            e = bb.emit(ops.right_shift(bb.emit(ops.add(bb.emit(ops.multiply(a, relax.const(M, "int64"))),
                                                        relax.const(HALF, "int64"))), relax.const(S, "int64")))
            f = bb.emit(ops.add(e, relax.const(zp, "int64")))
            y = bb.emit_output(ops.astype(bb.emit(ops.clip(f, lo, hi)), out_dtype))
        bb.emit_func_output(y)
    return bb.get()


def test_requantize_to_int8_becomes_a_float_multiply_and_round():
    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 4, 3, 3), "uint8")) -> R.Tensor((1, 4, 3, 3), "uint8"):
            with R.dataflow():
                a = R.astype(x, "float32")
                b = R.subtract(a, R.const(np.array([128.0], "float32")))  # the input's zero point, exact in float32
                c = R.multiply(b, R.const(FLOAT_RATIO))
                d = R.round(c)
                e = R.add(d, R.const(np.array([3.0], "float32")))  # the output's zero point, after the round
                f = R.clip(e, 0, 255)
                y = R.astype(f, "uint8")
                R.output(y)
            return y

    after = float_requantize_pass()(_before("uint8", 0, 255, zp_in=128, zp=3, x_dtype="uint8"))
    tvm.ir.assert_structural_equal(after, Expected)


def test_rescale_to_int32_keeps_the_exact_int64_form():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 4, 3, 3), "int32")) -> R.Tensor((1, 4, 3, 3), "int32"):
            with R.dataflow():
                a = R.astype(x, "int64")
                c = R.multiply(a, R.const(M, "int64"))
                d = R.add(c, R.const(HALF, "int64"))
                e = R.right_shift(d, R.const(S, "int64"))
                y = R.astype(e, "int32")  # no clip to 8 bits: a residual add's common scale
                R.output(y)
            return y

    tvm.ir.assert_structural_equal(float_requantize_pass()(Before), Before)


def test_wrong_rounding_constant_is_not_matched():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 4, 3, 3), "int32")) -> R.Tensor((1, 4, 3, 3), "int8"):
            with R.dataflow():
                a = R.astype(x, "int64")
                c = R.multiply(a, R.const(M, "int64"))
                d = R.add(c, R.const(HALF + 1, "int64"))  # not 2^(s-1): some other arithmetic
                e = R.right_shift(d, R.const(S, "int64"))
                g = R.clip(e, -128, 127)
                y = R.astype(g, "int8")
                R.output(y)
            return y

    tvm.ir.assert_structural_equal(float_requantize_pass()(Before), Before)


def _run(mod, x):
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


@pytest.mark.parametrize("x_dtype, zp_in, zp, lo, hi, out", [("int32", 0, 0, -128, 127, "int8"),
                                                              ("uint8", 128, 5, 0, 255, "uint8")])
def test_float_form_gives_the_fixed_point_integers(x_dtype, zp_in, zp, lo, hi, out):
    """Against the int64 form on 4096 accumulators per channel, the ties and the extremes among
    them: equal except where x * M / 2^s is within float32's rounding of a half, and there by one."""
    info = np.iinfo(x_dtype)
    size = (1, 4, 64, 64)
    x = RNG.integers(max(info.min, -(1 << 20)), min(info.max, 1 << 20) + 1, size, dtype=np.int64).astype(x_dtype)
    x.flat[:4] = [info.min, info.max, 0, 1]
    mod = _before(out, lo, hi, zp_in, zp, x_dtype, size)
    want, got = _run(mod, x), _run(float_requantize_pass()(mod), x)
    diff = np.abs(want.astype(np.int64) - got.astype(np.int64))
    assert diff.max() <= 1
    assert (diff > 0).mean() < 1e-3
    exact = np.clip(np.floor((x.astype(np.float64) - zp_in) * RATIO + 0.5) + zp, lo, hi)
    assert np.abs(got - exact).max() <= 1  # and both are the rescale they stand for


def test_quantize_with_one_scale_multiplies_by_its_inverse():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 64, 64), "float32")) -> R.Tensor((2, 64, 64), "uint8"):
            with R.dataflow():
                y = R.quantize(x, R.const(0.037, "float32"), R.const(7, "int32"), out_dtype="uint8", axis=-1)
                R.output(y)
            return y

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((2, 64, 64), "float32")) -> R.Tensor((2, 64, 64), "uint8"):
            with R.dataflow():
                a = R.multiply(x, R.const(np.array([1.0 / np.float32(0.037)], "float32")))  # an operand (ir.operand)
                b = R.round(a)
                c = R.add(b, R.const(np.array([7.0], "float32")))
                d = R.clip(c, 0, 255)
                y = R.astype(d, "uint8")
                R.output(y)
            return y

    after = float_requantize_pass()(Before)
    tvm.ir.assert_structural_equal(after, Expected)
    x = RNG.normal(0, 3, (2, 64, 64)).astype("float32")
    x.flat[:3] = [1e6, -1e6, 0.037 * 3.5]  # clipped both ways, and a tie
    want, got = _run(Before, x), _run(after, x)
    assert np.abs(want.astype(int) - got.astype(int)).max() <= 1
    assert (want != got).mean() < 1e-3
