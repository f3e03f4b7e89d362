"""canonicalize_clip: the importer's call_tir TE maximum/minimum kernels become R.clip/maximum/minimum."""

import numpy as np
import onnx
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax, topi
from tvm.script import ir as I
from tvm.script import relax as R

from qcompile.frontends import load_model
from qcompile.passes import float_passes
from qcompile.passes.canonicalize_clip import canonicalize_clip

SHAPE = (1, 4)


def _te_module(body, params=(("x", SHAPE),), attrs=None):
    """main(params) built the way TVM's ONNX importer builds Clip: `bb.emit_te(topi.maximum, ...)`
    and `bb.emit_te(topi.minimum, ...)` (call_tir of private TE kernels named maximum / minimum).
    `body(bb, *params)` returns the result, which becomes the dataflow block's output: an
    expression not yet emitted is bound directly to the output var, as the importer leaves it."""
    bb = relax.BlockBuilder()
    args = [relax.Var(name, relax.TensorType(shape, "float32")) for name, shape in params]
    with bb.function("main", args, attrs=attrs):
        with bb.dataflow():
            out = bb.emit_output(body(bb, *args))
        bb.emit_func_output(out)
    return bb.get()


def _bound(value):
    return relax.const(np.float32(value))  # a scalar float32 constant, as FoldConstant leaves it


def te_clip(bb, x, lo=0.0, hi=6.0):
    """Clip as the importer emits it; the minimum is returned unemitted (see _te_module)."""
    return bb.call_te(topi.minimum, bb.emit_te(topi.maximum, x, _bound(lo)), _bound(hi))


def test_before_is_what_the_onnx_importer_produces(tmp_path):
    """Ties the hand-built Before to reality: an opset-13 Clip(x, 0, 6) imported through
    load_model and the float passes that run before canonicalize_clip."""
    graph = helper.make_graph(
        [helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], "clip",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(SHAPE))],
        initializer=[numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
                     numpy_helper.from_array(np.array(6.0, np.float32), "hi")])
    path = tmp_path / "clip.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    passes = float_passes()
    upto = [p.info.name for p in passes].index("CanonicalizeClip")
    before_clip = tvm.transform.Sequential(passes[:upto])(load_model(path).mod)
    tvm.ir.assert_structural_equal(before_clip, _te_module(te_clip, attrs={"num_input": 1}))


def test_maximum_then_minimum_becomes_one_clip():
    before = _te_module(lambda bb, x: R.nn.relu(bb.emit(te_clip(bb, x))))

    @I.ir_module
    class Expected:  # the TE kernels are dead afterwards and removed
        @R.function
        def main(x: R.Tensor((1, 4), "float32")) -> R.Tensor((1, 4), "float32"):
            with R.dataflow():
                y = R.clip(x, 0.0, 6.0)
                z = R.nn.relu(y)
                gv = z
                R.output(gv)
            return gv

    tvm.ir.assert_structural_equal(canonicalize_clip(before), Expected)


def test_chained_clips_and_the_output_clip():
    """Two clips in a row, the second one the function's result (bound directly to the output
    var, as the importer leaves it): rewrite_main re-emits it and aliases it as the output."""
    before = _te_module(lambda bb, x: te_clip(bb, bb.emit(te_clip(bb, x, 1.0, 6.0)), -0.5, 3.0))

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 4), "float32")) -> R.Tensor((1, 4), "float32"):
            with R.dataflow():
                a = R.clip(x, 1.0, 6.0)
                b = R.clip(a, -0.5, 3.0)
                gv = b
                R.output(gv)
            return gv

    tvm.ir.assert_structural_equal(canonicalize_clip(before), Expected)


def test_one_sided_bounds_become_maximum_and_minimum():
    def body(bb, x):
        relu = bb.emit(R.nn.relu(bb.emit_te(topi.minimum, x, _bound(6.0))))
        return bb.call_te(topi.maximum, relu, _bound(-1.0))

    before = _te_module(body)

    @I.ir_module
    class Expected:  # minimum first, maximum second: no clip (clip is maximum first)
        @R.function
        def main(x: R.Tensor((1, 4), "float32")) -> R.Tensor((1, 4), "float32"):
            with R.dataflow():
                a = R.minimum(x, R.const(6.0, "float32"))
                b = R.nn.relu(a)
                c = R.maximum(b, R.const(-1.0, "float32"))
                gv = c
                R.output(gv)
            return gv

    tvm.ir.assert_structural_equal(canonicalize_clip(before), Expected)


def test_lower_bound_used_elsewhere_stays_as_maximum():
    def body(bb, x):
        lower = bb.emit_te(topi.maximum, x, _bound(0.0))
        clipped = bb.emit_te(topi.minimum, lower, _bound(6.0))
        return R.add(lower, clipped)

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 4), "float32")) -> R.Tensor((1, 4), "float32"):
            with R.dataflow():
                lower = R.maximum(x, R.const(0.0, "float32"))
                clipped = R.clip(x, 0.0, 6.0)
                s = R.add(lower, clipped)
                gv = s
                R.output(gv)
            return gv

    tvm.ir.assert_structural_equal(canonicalize_clip(_te_module(body)), Expected)


def test_non_constant_bounds_are_left_alone():
    """Bounds that are tensors computed at run time (or not scalars) keep their TE kernels,
    which stay in the module because main still calls them."""

    def body(bb, x, lo):
        lower = bb.emit_te(topi.maximum, x, lo)  # run-time bound
        upper = bb.emit_te(topi.minimum, lower, relax.const(np.full(SHAPE, 6.0, np.float32)))  # not a scalar
        return bb.emit(R.nn.relu(upper))  # emitted: output aliased, rewrite_main's normal form

    before = _te_module(body, params=(("x", SHAPE), ("lo", ())))
    tvm.ir.assert_structural_equal(canonicalize_clip(before), before)


def test_module_without_te_kernels_in_rewrite_normal_form_is_unchanged():
    """A module whose result is already aliased as the dataflow output (the form rewrite_main
    emits) is a fixed point; so is the pass's own output (idempotence)."""

    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 4), "float32")) -> R.Tensor((1, 4), "float32"):
            with R.dataflow():
                y = R.clip(x, 0.0, 6.0)
                z = R.nn.relu(y)
                gv = z
                R.output(gv)
            return gv

    tvm.ir.assert_structural_equal(canonicalize_clip(Before), Before)
    once = canonicalize_clip(_te_module(te_clip))
    tvm.ir.assert_structural_equal(canonicalize_clip(once), once)


def test_a_lower_bound_above_the_upper_is_not_a_clip():
    """min(max(x, 6), 0) is 0 everywhere (ONNX's Clip); R.clip(x, 6, 0) would give 6: it stays two ops."""
    before = _te_module(lambda bb, x: te_clip(bb, x, lo=6.0, hi=0.0))
    got = canonicalize_clip(before)
    assert "clip" not in got.script()
    x = np.arange(-4, 12, 4, dtype=np.float32).reshape(SHAPE)
    vm = relax.VirtualMachine(tvm.compile(got, "llvm"), tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), np.zeros(SHAPE, np.float32))


def test_a_bound_of_higher_rank_than_x_is_left_to_the_kernel():
    """A (1, 1) bound broadcasts a (4,) input to (1, 4): the kernels keep that shape, so they stay."""
    bb_bound = relax.const(np.full((1, 1), 6.0, np.float32))
    before = _te_module(lambda bb, x: bb.call_te(topi.minimum, x, bb_bound), params=(("x", (4,)),))
    got = canonicalize_clip(before)
    assert got["main"].ret_ty.shape.values[0] == 1 and len(got["main"].ret_ty.shape.values) == 2
    assert "call_tir" in got.script()
