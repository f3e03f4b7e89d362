"""fold_constants: a batch norm decomposed for inference folds into one weight tensor with numpy,
exactly as TVM's FoldConstant (which compiles every op with LLVM) folds it; so does the ONNX
importer's Gather index check on a tensor of static shape. Non-constant calls, integer division,
integer sums that would overflow, out-of-bounds fast takes and ops outside the table are left alone."""

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


def _gather_check(index: int):
    """Gather(x, index, axis=0) as TVM's ONNX importer writes it: a negative index counts from the end."""
    @I.ir_module
    class Gather:
        @R.function
        def main(x: R.Tensor((5, 3), "float32")):
            with R.dataflow():
                y = R.add(x, x)
                shape = R.shape_of(y)
                dims = R.shape_to_tensor(shape)
                negative = R.less(R.const(index, "int64"), R.const(0, "int64"))
                dim = R.take(dims, R.const(0, "int64"), axis=0, mode="wrap")
                wrapped = R.add(R.const(index, "int64"), dim)
                i = R.where(negative, wrapped, R.const(index, "int64"))
                z = R.take(y, i, axis=0, mode="fast")
                R.output(z)
            return z

    return Gather


def _calls(mod):
    from qcompile.ir import main_bindings, op_name

    return [op_name(v) for _, v in main_bindings(mod) if isinstance(v, relax.Call)]


def test_the_importers_gather_index_check_folds_as_tvm_folds_it():
    for index in (2, -1):
        ours = _clean(fold_constants(_gather_check(index)))
        tvm.ir.assert_structural_equal(ours, _clean(relax.transform.FoldConstant()(_gather_check(index))))
        assert _calls(ours) == ["add", "take"]
        take = list(ours["main"].body.blocks[0].bindings)[-1].value
        assert int(take.args[1].value.numpy()) == index % 5


def test_integer_sums_that_would_overflow_and_fast_takes_out_of_bounds_are_left():
    @I.ir_module
    class Ints:
        @R.function
        def main(x: R.Tensor((4,), "int32")):
            with R.dataflow():
                big = R.add(R.const(np.array([2**31 - 1, 1], "int32")), R.const(np.array([1, 1], "int32")))
                small = R.add(R.const(np.array([7, -7], "int32")), R.const(np.array([1, 1], "int32")))
                out_of_bounds = R.take(R.const(np.arange(3, dtype="int32")), R.const(3, "int64"), axis=0, mode="fast")
                flat = R.take(R.const(np.arange(6, dtype="int32")), R.const(4, "int64"))  # no axis
                R.output(big, small, out_of_bounds, flat)
            return (big, small, out_of_bounds, flat)

    assert _calls(fold_constants(Ints)) == ["add", "take", "take"]


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


def test_tvms_fold_constant_runs_only_where_a_call_reads_no_variable(monkeypatch):
    from qcompile.passes.fold_constants import FoldRemainingConstants

    runs = []
    stock = relax.transform.FoldConstant

    def counted():
        runs.append(1)
        return stock()

    monkeypatch.setattr(relax.transform, "FoldConstant", counted)

    @I.ir_module
    class Folded:
        @R.function
        def main(x: R.Tensor((2,), "float32")):
            with R.dataflow():
                y = R.add(x, R.const(np.ones(2, "float32")))
                R.output(y)
            return y

    assert FoldRemainingConstants(Folded).same_as(Folded) and not runs

    @I.ir_module
    class Left:  # a constant op outside numpy's table
        @R.function
        def main(x: R.Tensor((2,), "float32")):
            with R.dataflow():
                c = R.nn.relu(R.const(np.array([-1.0, 2.0], "float32")))
                y = R.add(x, c)
                R.output(y)
            return y

    assert _calls(_clean(FoldRemainingConstants(Left))) == ["add"] and runs == [1]


def test_nan_checks_on_constants_fold_as_tvm_folds_them():
    values = np.array([1.0, np.nan, -np.inf, 2.0], "float32")

    @I.ir_module
    class NanCheck:
        @R.function
        def main(x: R.Tensor((4,), "float32")):
            with R.dataflow():
                nan = R.isnan(R.const(values))
                inf = R.isinf(R.const(values))
                clean = R.where(nan, R.const(np.zeros(4, "float32")), R.const(values))
                y = R.add(x, clean)
                R.output(y, inf)
            return (y, inf)

    ours = _clean(fold_constants(NanCheck))
    assert _calls(ours) == ["add"]
    add = list(ours["main"].body.blocks[0].bindings)[0].value
    assert np.array_equal(add.args[1].value.numpy(), np.array([1.0, 0.0, -np.inf, 2.0], "float32"))



def test_float16_weights_widened_by_a_cast_fold_as_tvm_folds_them():
    """mediapipe's TFLite models store weights in float16, each widened to float32 by a cast: folded,
    the value TVM's FoldConstant gives (NaN and infinities included)."""
    weights = np.array([[0.1, -2.5e-5, 65504.0], [np.nan, -np.inf, 6.1e-5]], "float16")

    @I.ir_module
    class Widen:
        @R.function
        def main(x: R.Tensor((2, 3), "float32")):
            with R.dataflow():
                w = R.astype(R.const(weights), "float32")
                y = R.multiply(x, w)
                R.output(y)
            return y

    ours = _clean(fold_constants(Widen))
    assert _calls(ours) == ["multiply"]
    tvm.ir.assert_structural_equal(ours, _clean(relax.transform.FoldConstant()(Widen)))


def test_casts_that_round_wrap_or_truncate_are_left_to_tvm():
    @I.ir_module
    class Narrow:
        @R.function
        def main(x: R.Tensor((2,), "float32")):
            with R.dataflow():
                rounds = R.astype(R.const(np.array([0.1, 1.0], "float32")), "float16")
                wraps = R.astype(R.const(np.array([300, 1], "int32")), "int8")
                truncates = R.astype(R.const(np.array([2.5, -1.0], "float32")), "int32")
                exact = R.astype(R.const(np.array([3, -1], "int8")), "float32")
                y = R.add(x, exact)
                R.output(y, rounds, wraps, truncates)
            return (y, rounds, wraps, truncates)

    assert _calls(fold_constants(Narrow)) == ["astype", "astype", "astype", "add"]
