"""half_precision: layers chosen for fp16 keep float16 weights and input, float32 accumulation."""

import numpy as np
import tvm
from tvm.script import ir as I
from tvm.script import relax as R

from qcompile.quantize import half_precision

W = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype("float32")


def test_half_precision_pass():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 3, 8, 8), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
            with R.dataflow():
                y = R.nn.conv2d(x, R.const(W), padding=[1, 1, 1, 1])
                z = R.nn.relu(y)
                R.output(z)
            return z

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 3, 8, 8), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
            with R.dataflow():
                y_fp16_in = R.astype(x, "float16")
                y = R.nn.conv2d(y_fp16_in, R.const(W.astype("float16")), padding=[1, 1, 1, 1], out_dtype="float32")
                z = R.nn.relu(y)
                gv = z  # rewrite_main re-emits the result as the dataflow's output
                R.output(gv)
            return gv

    tvm.ir.assert_structural_equal(half_precision(Before, {"y"}), Expected)
    tvm.ir.assert_structural_equal(half_precision(Before, set()), Before)
