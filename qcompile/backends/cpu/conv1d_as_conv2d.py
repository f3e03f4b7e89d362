"""1-D convolutions as 2-D ones of height 1 on the CPU families with packed kernels, so that they
run in the same packed kernels and go channels-last with the rest: audio and sequence models
(silero-vad's encoder, text CNNs, TCNs) were left to TVM's generic conv1d schedule, silero-vad's
first int8 layer at about 3 GMAC/s. The data gains a unit height (a view, no copy) and loses it
after."""

from __future__ import annotations

import tvm
from tvm.relax import op as R

from ...ir import emit_as_is, op_name, rewrite_main
from ...passes.fold_constants import FoldConstantsWithNumpy, FoldRemainingConstants


def _as_conv2d(bb, var, value):
    if op_name(value) != "nn.conv1d":
        return emit_as_is(bb, var, value)
    a = value.attrs
    if (str(a.data_layout), str(a.kernel_layout), str(a.out_layout)) != ("NCW", "OIW", "NCW"):
        return emit_as_is(bb, var, value)
    x, w = value.args
    left, right = (int(p) for p in a.padding)
    y = bb.emit(R.nn.conv2d(bb.emit(R.expand_dims(x, 2)), bb.emit(R.expand_dims(w, 2)), strides=(1, int(a.strides[0])),
                            padding=(0, left, 0, right), dilation=(1, int(a.dilation[0])), groups=int(a.groups),
                            out_dtype=a.out_dtype))
    return bb.emit(R.squeeze(y, [2]), str(var.name))


def conv1d_as_conv2d(mod):
    return rewrite_main(mod, _as_conv2d)


def conv1d_as_conv2d_pass():
    """The module pass (the weights' expand_dims fold to constants later, with the layout's)."""

    @tvm.transform.module_pass(opt_level=0, name="qcompile.Conv1dAsConv2d")
    def _pass(mod, _ctx):
        return FoldRemainingConstants(FoldConstantsWithNumpy(conv1d_as_conv2d(mod)))

    return _pass
