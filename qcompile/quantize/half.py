"""half: float-island convolutions and matmuls chosen for fp16 keep their weights in float16 and
read their input as float16; they accumulate in float32 (out_dtype), which CPUs without fp16
arithmetic compute exactly as widened float16 products. Half the weight bytes of fp32."""

from __future__ import annotations

import numpy as np
from tvm.relax import op as R

from ..ir import const, const_value, emit_as_is, is_const, op_name, rewrite_main, tensor_dtype

HALF_OPS = ("nn.conv2d", "matmul")


def _half_call(x16, w16, value):
    if op_name(value) == "matmul":
        return R.matmul(x16, w16, out_dtype="float32")
    a = value.attrs
    return R.nn.conv2d(x16, w16, strides=a.strides, padding=a.padding, dilation=a.dilation, groups=a.groups,
                       data_layout=a.data_layout, kernel_layout=a.kernel_layout, out_layout=a.out_layout,
                       out_dtype="float32")


def half_precision(mod, names: set[str]):
    """The HalfPrecision pass: the compute bindings named in `names` (variable names) with a
    float32 constant weight become float16 x float16 -> float32."""

    def rule(bb, var, value):
        if (str(var.name) in names and op_name(value) in HALF_OPS and is_const(value.args[1])
                and tensor_dtype(value.args[0]) == "float32" and const_value(value.args[1]).dtype == np.float32):
            x16 = bb.emit(R.astype(value.args[0], "float16"), f"{var.name}_fp16_in")
            return bb.emit(_half_call(x16, const(const_value(value.args[1]), "float16"), value), str(var.name))
        return emit_as_is(bb, var, value)

    if not names:
        return mod
    return rewrite_main(mod, rule)
