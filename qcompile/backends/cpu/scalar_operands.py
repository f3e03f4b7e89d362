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

import tvm
from tvm import relax

from ...ir import emit_as_is, is_const, main_bindings, op_name, operand, rewrite_main

ARITHMETIC = {"add", "subtract", "multiply", "divide", "floor_divide", "right_shift", "left_shift"}
# (de)quantize's scale and zero point: legalization reads a one-element tensor as the same scalar
QDQ = {"quantize", "dequantize"}


def _scalar(expr) -> bool:
    return is_const(expr) and expr.ty.ndim == 0


def _scalar_operands(value) -> list[int]:
    """The positions of `value`'s 0-d constant operands that can be (1,) constants: where the other
    operand (the data, for (de)quantize) has at least one dimension, so the result's shape is unchanged."""
    name = op_name(value)
    if name in QDQ:
        candidates = [1, 2] if value.args[0].ty.ndim >= 1 else []
    elif name in ARITHMETIC and len(value.args) == 2:
        candidates = [i for i in (0, 1) if isinstance(value.args[1 - i].ty, relax.TensorType) and value.args[1 - i].ty.ndim >= 1]
    else:
        return []
    return [i for i in candidates if _scalar(value.args[i])]


def _rule(bb, var, value):
    positions = _scalar_operands(value)
    if not positions:
        return emit_as_is(bb, var, value)
    args = [operand(a.value.numpy(), str(a.ty.dtype)) if i in positions else a for i, a in enumerate(value.args)]
    return bb.emit(relax.Call(value.op, args, value.attrs, value.ty_args), var.name)


def scalar_operands(mod):
    if not any(_scalar_operands(value) for _, value in main_bindings(mod)):
        return mod
    return rewrite_main(mod, _rule)


def scalar_operands_pass():
    @tvm.transform.module_pass(opt_level=0, name="qcompile.ScalarOperands")
    def _pass(mod, _ctx):
        return scalar_operands(mod)

    return _pass
