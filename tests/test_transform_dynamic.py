"""dynamic_quantize: float matmuls with a constant weight become dynamic int8 or weight-only int8 matmuls."""

import numpy as np
import pytest
import tvm
from tvm.script import ir as I
from tvm.script import relax as R

from qcompile.quantize.dynamic import MODES, dynamic_quantize

RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((4, 3)).astype("float32")  # x @ W: [K, N]
W2 = RNG.standard_normal((3, 2)).astype("float32")


def _int8_by_hand(w, per_channel):
    """Symmetric int8 codes of w and one float32 scale per output column (written out here,
    independently of qcompile.quantize.params)."""
    amax = np.abs(w).max(axis=0) if per_channel else np.full(w.shape[1], np.abs(w).max(), "float32")
    scale = (amax / np.float32(127.0)).astype("float32")
    return np.clip(np.round(w / scale), -127, 127).astype("int8"), scale


def _before():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 4), "float32")) -> R.Tensor((2, 2), "float32"):
            with R.dataflow():
                h = R.matmul(x, R.const(W1))
                r = R.nn.relu(h)
                y = R.matmul(r, R.const(W2))
                R.output(y)
            return y

    return Before


def test_modes():
    assert MODES == ("dynamic", "weight-only")
    with pytest.raises(ValueError, match="unknown mode 'int4'"):
        dynamic_quantize(_before(), "int4")


def test_dynamic_per_channel():
    q1, s1 = _int8_by_hand(W1, per_channel=True)
    q2, s2 = _int8_by_hand(W2, per_channel=True)

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((2, 4), "float32")) -> R.Tensor((2, 2), "float32"):
            with R.dataflow():
                # activation scale at run time: max |x| / 127 (kept away from 0)
                ax = R.abs(x)
                amax = R.max(ax)
                amax_pos = R.maximum(amax, R.const(1e-8, "float32"))
                sx = R.divide(amax_pos, R.const(127.0, "float32"))
                xs = R.divide(x, sx)
                xr = R.round(xs)
                xc = R.clip(xr, -127, 127)
                xq = R.astype(xc, "int8")
                acc = R.matmul(xq, R.const(q1), out_dtype="int32")
                accf = R.astype(acc, "float32")
                rescale = R.multiply(sx, R.const(s1))
                h = R.multiply(accf, rescale)
                r = R.nn.relu(h)
                ar = R.abs(r)
                amax2 = R.max(ar)
                amax2_pos = R.maximum(amax2, R.const(1e-8, "float32"))
                sr = R.divide(amax2_pos, R.const(127.0, "float32"))
                rs = R.divide(r, sr)
                rr = R.round(rs)
                rc = R.clip(rr, -127, 127)
                rq = R.astype(rc, "int8")
                acc2 = R.matmul(rq, R.const(q2), out_dtype="int32")
                acc2f = R.astype(acc2, "float32")
                rescale2 = R.multiply(sr, R.const(s2))
                y = R.multiply(acc2f, rescale2)
                gv = y  # rewrite_main re-emits the result as the dataflow's output
                R.output(gv)
            return gv

    tvm.ir.assert_structural_equal(dynamic_quantize(_before(), "dynamic", per_channel=True), Expected)


def test_weight_only_per_tensor():
    q1, s1 = _int8_by_hand(W1, per_channel=False)
    q2, s2 = _int8_by_hand(W2, per_channel=False)
    assert len(set(s1.tolist())) == 1  # one scale, repeated per column

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((2, 4), "float32")) -> R.Tensor((2, 2), "float32"):
            with R.dataflow():
                acc = R.matmul(x, R.const(q1), out_dtype="float32")  # float x int8, widened in the kernel
                h = R.multiply(acc, R.const(s1))
                r = R.nn.relu(h)
                acc2 = R.matmul(r, R.const(q2), out_dtype="float32")
                y = R.multiply(acc2, R.const(s2))
                gv = y
                R.output(gv)
            return gv

    tvm.ir.assert_structural_equal(dynamic_quantize(_before(), "weight-only", per_channel=False), Expected)


@pytest.mark.parametrize("names, skipped", [(None, "matmul_1"), (["fc1", "fc2"], "fc2")])
def test_skipped_layer_stays_float(names, skipped):
    """Layer names come from the frontend's list when given, else op and index."""
    q1, s1 = _int8_by_hand(W1, per_channel=True)

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((2, 4), "float32")) -> R.Tensor((2, 2), "float32"):
            with R.dataflow():
                acc = R.matmul(x, R.const(q1), out_dtype="float32")
                h = R.multiply(acc, R.const(s1))
                r = R.nn.relu(h)
                y = R.matmul(r, R.const(W2))  # skipped: the float32 weight, untouched
                gv = y
                R.output(gv)
            return gv

    got = dynamic_quantize(_before(), "weight-only", per_channel=True, skip_layers={skipped}, names=names)
    tvm.ir.assert_structural_equal(got, Expected)


def _unquantizable():
    """Nothing to quantize: every layer skipped (matmul_0), a run-time weight, a float16
    activation; the result already aliased as the output (the form rewrite_main emits)."""

    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 4), "float32"), w: R.Tensor((3, 3), "float32"),
                 x16: R.Tensor((2, 4), "float16")) -> R.Tensor((2, 3), "float32"):
            with R.dataflow():
                h = R.matmul(x, R.const(W1))
                y = R.matmul(h, w)
                h16 = R.matmul(x16, R.const(W1.astype("float16")))
                y16 = R.astype(h16, "float32")
                s = R.add(y16, y)
                gv = s
                R.output(gv)
            return gv

    return Before


@pytest.mark.parametrize("mode", MODES)
def test_module_with_nothing_to_quantize_is_unchanged(mode):
    before = _unquantizable()
    got = dynamic_quantize(before, mode, skip_layers={"matmul_0"})
    tvm.ir.assert_structural_equal(got, before)
    with pytest.raises(ValueError, match="StructuralEqual"):  # not vacuous: without the skip, matmul_0 changes
        tvm.ir.assert_structural_equal(dynamic_quantize(before, mode), before)


@pytest.mark.parametrize("mode", MODES)
def test_a_matmul_with_a_vector_weight_stays_float(mode):
    """x[M, K] @ w[K] has no output channel to scale: it is left as it is (it failed type checking)."""
    w = RNG.standard_normal(4).astype("float32")

    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 4), "float32")) -> R.Tensor((2,), "float32"):
            with R.dataflow():
                y = R.matmul(x, R.const(w))
                R.output(y)
            return y

    got = dynamic_quantize(Before, mode)
    assert "int8" not in got.script()
    x = RNG.standard_normal((2, 4)).astype("float32")
    vm = tvm.relax.VirtualMachine(tvm.compile(got, "llvm"), tvm.cpu())
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x)).numpy(), x @ w, rtol=1e-5)
