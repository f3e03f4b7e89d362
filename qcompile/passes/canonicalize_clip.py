"""Canonicalize: turn what importers emit as opaque TE kernels back into Relax ops, so the
quantizer and the schedules see them. TVM's ONNX importer lowers Clip to call_tir of TE
`maximum` / `minimum` kernels (named after the TOPI function); with scalar constant bounds
they become R.maximum / R.minimum, and minimum(maximum(x, lo), hi) one R.clip."""

from __future__ import annotations

import re

from tvm import relax
from tvm.relax import op as R

from ..ir import const_value, emit_as_is, is_scalar_const, op_name, rewrite_main

_TE_BOUND = re.compile(r"^(maximum|minimum)\d*$")


def _te_bound(value):
    """('maximum' | 'minimum', x, bound) for a call_tir of a TE max/min with a scalar constant."""
    if op_name(value) != "call_tir":
        return None
    match = _TE_BOUND.match(str(value.args[0].name_hint))
    args = value.args[1]
    if match is None or not isinstance(args, relax.Tuple) or len(args.fields) != 2 or not is_scalar_const(args.fields[1]):
        return None
    x, bound = args.fields[0], const_value(args.fields[1])
    if bound.ndim > len(x.ty.shape.values):  # broadcasting would give the kernel's output more dimensions than x
        return None
    return match.group(1), x, float(bound.reshape(()))


def canonicalize_clip(mod):
    lower_bounded: dict = {}  # var of maximum(x, lo) -> (x, lo)

    def rule(bb, var, value):
        bound = _te_bound(value)
        if bound is None:
            return emit_as_is(bb, var, value)
        kind, x, c = bound
        if kind == "maximum":
            out = bb.emit(R.maximum(x, relax.const(c, x.ty.dtype)), str(var.name))
            lower_bounded[out] = (x, c)
            return out
        if x in lower_bounded and lower_bounded[x][1] <= c:  # lo > hi: min(max(x, lo), hi) is hi, clip's is lo
            src, lo = lower_bounded[x]
            return bb.emit(R.clip(src, lo, c), str(var.name))
        return bb.emit(R.minimum(x, relax.const(c, x.ty.dtype)), str(var.name))

    out = rewrite_main(mod, rule)
    return relax.transform.DeadCodeElimination(["main"])(out)
