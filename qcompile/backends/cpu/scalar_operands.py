"""Scalar constants of arithmetic and of (de)quantize as tensors of shape (1,), so that kernels
which differ only in a constant are one kernel. Legalization writes a 0-d constant into its kernel
as a literal: every int8 residual add's fixed-point rescale (multiplier, rounding term, shift) and
every fake-quantized layer's scale made a kernel of its own, each scheduled and compiled by LLVM
separately. As an operand of shape (1,) the value is a kernel argument read once per kernel, and
layers of one shape share one kernel (iris-landmark int8: 52 kernels -> 33, its simulation 90 ->
33; results bit-identical). Clamps (maximum, minimum) keep their literals: their bounds are a
dtype's range or an activation's limits, alike across layers, and a literal bound is an immediate
operand."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ...ir import emit_as_is, is_const, main_bindings, op_name, rewrite_main

ARITHMETIC = {"add", "subtract", "multiply", "divide", "floor_divide", "right_shift", "left_shift"}
# (de)quantize's scale and zero point: legalization reads a one-element tensor as the same scalar
QDQ = {"quantize", "dequantize"}


def _scalar(expr) -> bool:
    return is_const(expr) and expr.ty.ndim == 0


def _with_tensor_operands(value):
    """`value` with its 0-d constant operands as (1,) constants where the other operand has at least
    one dimension (so the result's shape is unchanged), or None if there is nothing to change."""
    if op_name(value) not in QDQ | ARITHMETIC:
        return None
    args = list(value.args)
    if op_name(value) in QDQ:
        operands = [1, 2] if args[0].ty.ndim >= 1 else []
    elif len(args) == 2:
        operands = [i for i in (0, 1) if isinstance(args[1 - i].ty, relax.TensorType) and args[1 - i].ty.ndim >= 1]
    else:
        return None
    for i in operands:
        if _scalar(args[i]):
            scalar = args[i].value.numpy()
            args[i] = relax.const(np.reshape(scalar, (1,)), str(scalar.dtype))
    if all(new.same_as(old) for new, old in zip(args, value.args)):
        return None
    return relax.Call(value.op, args, value.attrs, value.ty_args)


def _rule(bb, var, value):
    rewritten = _with_tensor_operands(value)
    return emit_as_is(bb, var, value) if rewritten is None else bb.emit(rewritten, var.name)


def scalar_operands(mod):
    if not any(_with_tensor_operands(value) is not None for _, value in main_bindings(mod)):
        return mod
    return rewrite_main(mod, _rule)


def scalar_operands_pass():
    @tvm.transform.module_pass(opt_level=0, name="qcompile.ScalarOperands")
    def _pass(mod, _ctx):
        return scalar_operands(mod)

    return _pass
