"""fold_constants: a batch norm decomposed for inference folds into one weight tensor with numpy,
exactly as TVM's FoldConstant (which compiles every op with LLVM) folds it; non-constant calls,
integer arithmetic and ops outside the table are left alone."""

import numpy as np
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from qcompile.passes.fold_constants import fold_constants

RNG = np.random.default_rng(0)
W = RNG.standard_normal((4, 3, 3, 3)).astype("float32")
VAR = RNG.uniform(0.1, 2.0, 4).astype("float32")
GAMMA = RNG.standard_normal(4).astype("float32")


def _before():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 3, 8, 8), "float32")):
            with R.dataflow():
                eps = R.add(R.const(VAR), R.const(1e-5, "float32"))
                std = R.sqrt(eps)
                scale = R.divide(R.const(GAMMA), std)
                col = R.reshape(scale, R.shape([4, 1, 1, 1]))
                w = R.multiply(R.const(W), col)
                wt = R.permute_dims(w, [1, 0, 2, 3])
                back = R.permute_dims(wt, [1, 0, 2, 3])
                y = R.nn.conv2d(x, back)
                z = R.add(y, y)  # not constant: stays
                R.output(z)
            return z

    return Before


def _expected():
    folded = W * (GAMMA / np.sqrt(VAR + np.float32(1e-5))).reshape(4, 1, 1, 1)

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 3, 8, 8), "float32")):
            with R.dataflow():
                y = R.nn.conv2d(x, R.const(folded.astype("float32")))
                z = R.add(y, y)
                R.output(z)
            return z

    return Expected


def _clean(mod):
    return relax.transform.DeadCodeElimination()(relax.transform.CanonicalizeBindings()(mod))


def test_batch_norm_folds_to_the_expected_weight():
    tvm.ir.assert_structural_equal(_clean(fold_constants(_before())), _clean(_expected()))


def test_same_module_as_tvms_fold_constant():
    tvm.ir.assert_structural_equal(_clean(fold_constants(_before())), _clean(relax.transform.FoldConstant()(_before())))


def test_integer_division_and_unknown_ops_are_left_to_tvm():
    @I.ir_module
    class Ints:
        @R.function
        def main(x: R.Tensor((4,), "int32")):
            with R.dataflow():
                a = R.divide(R.const(np.array([7, -7, 5, 3], "int32")), R.const(np.array([2, 2, 2, 2], "int32")))
                b = R.nn.relu(R.const(np.array([-1.0, 2.0], "float32")))
                c = R.add(x, a)
                R.output(c, b)
            return (c, b)

    from qcompile.ir import main_bindings, op_name

    calls = [op_name(v) for _, v in main_bindings(fold_constants(Ints)) if isinstance(v, relax.Call)]
    assert calls == ["divide", "nn.relu", "add"]
