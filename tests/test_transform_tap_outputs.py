"""tap_outputs (quantize/calibrate.py): observe markers removed, observed tensors returned as taps, sites in order."""

import numpy as np
import tvm
from relax_builders import function
from tvm import relax
from tvm.relax import op as O
from tvm.script import ir as I
from tvm.script import relax as R

from qcompile.ir import observe
from qcompile.quantize.calibrate import tap_outputs

W = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype("float32")


def two_markers(bb, x):
    """What annotate emits for conv -> relu -> softmax: the input and the conv's output observed."""
    xo = bb.emit(observe(x, "x"), "x_obs")
    y = bb.emit(O.nn.conv2d(xo, relax.const(W), padding=[1, 1, 1, 1]), "y")
    r = bb.emit(O.nn.relu(y), "r")
    ro = bb.emit(observe(r, "conv2d_0.out"), "r_obs")
    return bb.emit(O.nn.softmax(ro, axis=1), "z")


def test_markers_become_taps_in_program_order():
    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 3, 8, 8), "float32")):
            with R.dataflow():
                y = R.nn.conv2d(x, R.const(W), padding=[1, 1, 1, 1])
                r = R.nn.relu(y)
                z = R.nn.softmax(r, axis=1)
                gv = (z, (x, r))  # (original result, (observed tensors...))
                R.output(gv)
            return gv

    before = function(two_markers)
    got, sites = tap_outputs(before)
    tvm.ir.assert_structural_equal(got, Expected)
    assert sites == ["x", "conv2d_0.out"]  # program order, matching the taps (not sorted: "c" < "x")
    tvm.ir.assert_structural_equal(before, function(two_markers))  # the input module is left as it was


def test_observed_result_is_both_result_and_tap():
    def before(bb, x):
        y = bb.emit(O.nn.relu(x), "y")
        return bb.emit(observe(y, "relu_0.out"), "y_obs")

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 3, 8, 8), "float32")):
            with R.dataflow():
                y = R.nn.relu(x)
                gv = (y, (y,))
                R.output(gv)
            return gv

    got, sites = tap_outputs(function(before))
    tvm.ir.assert_structural_equal(got, Expected)
    assert sites == ["relu_0.out"]


def test_module_without_markers_keeps_its_bindings_and_taps_nothing():
    def before(bb, x):
        return bb.emit(O.nn.relu(x), "y")

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 3, 8, 8), "float32")):
            with R.dataflow():
                y = R.nn.relu(x)
                gv = (y, R.tuple())
                R.output(gv)
            return gv

    got, sites = tap_outputs(function(before))
    tvm.ir.assert_structural_equal(got, Expected)
    assert sites == []
