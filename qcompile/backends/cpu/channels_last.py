"""Relax pass for the CPU families with packed int8 kernels: convolutions in NHWC (channels last),
the layout those kernels compute in, so activations stay channels-last from one packed kernel to
the next instead of being transposed into and out of every layer.

TVM's ConvertLayout moves the layout through the elementwise epilogues, residual adds and pooling,
and transposes only where it must change (the model's input, the classifier's reshape). It has no
layout rule for R.clip and would transpose back around every one, so clips become
maximum/minimum first (the same kernel once fused)."""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax import op as R

from ...ir import emit_as_is, main_bindings, op_name, rewrite_main, tensor_dtype
from ...passes.fold_constants import FoldConstantsWithNumpy

DESIRED = {"relax.nn.conv2d": ["NHWC", "OHWI"]}


def _clip_as_max_min(bb, var, value):
    if op_name(value) != "clip":
        return emit_as_is(bb, var, value)
    x, lo, hi = value.args
    dtype = tensor_dtype(x)
    low = bb.emit(R.maximum(x, relax.const(lo.value, dtype)))
    return bb.emit(R.minimum(low, relax.const(hi.value, dtype)), var.name)


def channels_last_pass(is_int8_conv):
    """The module pass; it leaves a module without an int8 convolution (`is_int8_conv(call)`) as it is."""

    @tvm.transform.module_pass(opt_level=0, name="qcompile.ChannelsLast")
    def _pass(mod, _ctx):
        if not any(op_name(v) == "nn.conv2d" and is_int8_conv(v) for _, v in main_bindings(mod)):
            return mod
        mod = rewrite_main(mod, _clip_as_max_min)
        mod = relax.transform.ConvertLayout(DESIRED)(mod)
        # the weights' transposes in numpy first: FoldConstant compiles each with LLVM (1.6-3 s a small CNN)
        return tvm.transform.Sequential([FoldConstantsWithNumpy, relax.transform.FoldConstant(), relax.transform.CanonicalizeBindings(),
                                         relax.transform.DeadCodeElimination(["main"])])(mod)

    return _pass
