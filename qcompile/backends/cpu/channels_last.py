"""Relax pass for the CPU families with packed int8 kernels: convolutions in NHWC (channels last),
the layout those kernels compute in, so activations stay channels-last from one packed kernel to
the next instead of being transposed into and out of every layer.

TVM's ConvertLayout moves the layout through the elementwise epilogues, residual adds and pooling,
and transposes only where it must change (the model's input, the classifier's reshape). It has no
layout rule for R.clip and would transpose back around every one, so clips become
maximum/minimum first (the same kernel once fused). Nor has it one for R.take, which realized int8
activations (hardswish, sigmoid, GELU... as 256-entry tables) look their values up with: a lookup
is elementwise on its indices, so the transposes ConvertLayout puts around it are moved past it
and cancel (PP-LCNet int8 had 30 lookups and 60 transposes, a sixth of its kernel time)."""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax import op as R

from ...ir import const_value, emit_as_is, is_const, main_bindings, op_name, rewrite_main, tensor_dtype
from ...passes.fold_constants import FoldConstantsWithNumpy

DESIRED = {"relax.nn.conv2d": ["NHWC", "OHWI"]}


def _clip_as_max_min(bb, var, value):
    if op_name(value) != "clip":
        return emit_as_is(bb, var, value)
    x, lo, hi = value.args
    dtype = tensor_dtype(x)
    low = bb.emit(R.maximum(x, relax.const(lo.value, dtype)))
    return bb.emit(R.minimum(low, relax.const(hi.value, dtype)), var.name)


def _axes(call) -> list[int] | None:
    axes = call.attrs.axes
    return None if axes is None else [int(a) for a in axes]


def _is_table_lookup(call) -> bool:
    """take(table, indices, axis=0) of a constant 1-D table: elementwise on `indices`."""
    table = call.args[0]
    return is_const(table) and const_value(table).ndim == 1 and int(call.attrs.axis) == 0


def sink_transposes_through_lookups(mod):
    """take(T, permute_dims(x, p)) -> permute_dims(take(T, x), p); two transposes in a row become
    one, or none where they cancel."""
    permuted: dict = {}  # var -> (x, axes) where var = permute_dims(x, axes)

    def rule(bb, var, value):
        name = op_name(value)
        if name == "permute_dims" and _axes(value) is not None:
            x, axes = value.args[0], _axes(value)
            if x in permuted:
                x, inner = permuted[x]
                axes = [inner[a] for a in axes]
                if axes == list(range(len(axes))):
                    return x
            out = bb.emit(R.permute_dims(x, axes), var.name)
            permuted[out] = (x, axes)
            return out
        if name == "take" and _is_table_lookup(value) and value.args[1] in permuted:
            x, axes = permuted[value.args[1]]
            looked = bb.emit(R.take(value.args[0], x, axis=0, mode=value.attrs.mode))
            out = bb.emit(R.permute_dims(looked, axes), var.name)
            permuted[out] = (looked, axes)
            return out
        return emit_as_is(bb, var, value)

    return rewrite_main(mod, rule)


def channels_last_pass(is_int8_conv):
    """The module pass; it leaves a module without an int8 convolution (`is_int8_conv(call)`) as it is."""

    @tvm.transform.module_pass(opt_level=0, name="qcompile.ChannelsLast")
    def _pass(mod, _ctx):
        if not any(op_name(v) == "nn.conv2d" and is_int8_conv(v) for _, v in main_bindings(mod)):
            return mod
        mod = rewrite_main(mod, _clip_as_max_min)
        mod = sink_transposes_through_lookups(relax.transform.ConvertLayout(DESIRED)(mod))
        # the weights' transposes in numpy first: FoldConstant compiles each with LLVM (1.6-3 s a small CNN)
        return tvm.transform.Sequential([FoldConstantsWithNumpy, relax.transform.FoldConstant(), relax.transform.CanonicalizeBindings(),
                                         relax.transform.DeadCodeElimination(["main"])])(mod)

    return _pass
