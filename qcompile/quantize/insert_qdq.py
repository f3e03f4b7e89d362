"""insert_qdq: turn observe markers into quantize/dequantize pairs with the calibrated
parameters, and fake-quantize the weights of the ops that read them.

The result is the QDQ form that ONNX QDQ models import as: it runs in float as the simulation of
the int8 model (the "simulate" mode), and realize turns it into integer kernels."""

from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.relax import op as R

from .ir import const, const_value, is_const, observe_site, op_name, rewrite_main
from .ops import COMPUTE
from .params import QParams, weight_qparams


def qdq(x, qp: QParams):
    """dequantize(quantize(x)) for per-tensor parameters."""
    scale, zp = const(qp.scale, "float32"), const(qp.zero_point, "int32")
    return R.dequantize(R.quantize(x, scale, zp, axis=-1, out_dtype=qp.dtype), scale, zp, axis=-1,
                        out_dtype="float32")


def weight_axis(op: str, weight: np.ndarray, per_channel: bool) -> int | None:
    if not per_channel:
        return None
    axis = COMPUTE[op]["weight_axis"]
    return axis % weight.ndim


def fake_quantize_weight(op: str, weight: np.ndarray, per_channel: bool) -> np.ndarray:
    qp = weight_qparams(weight, weight_axis(op, weight, per_channel))
    return qp.dequantize(qp.quantize(weight))


def insert_qdq(mod, qparams: dict[str, QParams], per_channel: bool = True):
    """The InsertQDQ pass."""
    dequantized: set = set()

    def rule(bb, var, value):
        site = observe_site(value)
        if site is not None:
            out = bb.emit(qdq(value.args[1], qparams[site]), f"{var.name}_qdq")
            dequantized.add(out)
            return out
        op = op_name(value)
        if op in COMPUTE and value.args[0] in dequantized and is_const(value.args[1]):
            w = const_value(value.args[1])
            if w.dtype.kind == "f":
                args = [value.args[0], relax.const(fake_quantize_weight(op, w, per_channel)), *value.args[2:]]
                value = relax.Call(value.op, args, value.attrs, value.ty_args)
        return bb.emit(value, str(var.name)) if isinstance(value, relax.Call) else value

    return rewrite_main(mod, rule)
