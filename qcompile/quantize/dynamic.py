"""dynamic / weight-only: int8 weights for matmul-heavy models, no calibration.

dynamic      the activation's scale is computed at run time (max |x| / 127), x is quantized,
             the matmul runs int8 x int8 -> int32 and is scaled back to float.
weight-only  weights are stored as int8 and widened in the kernel; arithmetic stays float."""

from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.relax import op as R

from ..ir import const, const_value, emit_as_is, is_const, is_var, op_name, rewrite_main, tensor_dtype
from ..layers import compute_layer_names
from .params import weight_qparams

MODES = ("dynamic", "weight-only")


def _int8_weight(w: np.ndarray, per_channel: bool):
    """Weights of x @ W ([K, N]) quantized per output column."""
    qp = weight_qparams(w, w.ndim - 1 if per_channel else None)
    return qp.quantize(w), np.broadcast_to(qp.scale, (w.shape[-1],)).astype(np.float32)


def dynamic_quantize(mod, mode: str = "dynamic", per_channel: bool = True, skip_layers=frozenset(), names=None):
    """The DynamicQuantize pass over every float matmul with a constant weight."""
    if mode not in MODES:
        raise ValueError(f"unknown mode '{mode}'; choose from {', '.join(MODES)}")
    layer_of = compute_layer_names(mod, names)

    def rule(bb, var, value):
        if (op_name(value) != "matmul" or not is_var(value.args[0]) or not is_const(value.args[1])
                or tensor_dtype(value.args[0]) != "float32" or layer_of.get(var) in skip_layers
                or const_value(value.args[1]).ndim < 2):  # x @ w[K] has no output channel to scale
            return emit_as_is(bb, var, value)
        x = value.args[0]
        wq, scale = _int8_weight(const_value(value.args[1]), per_channel)
        if mode == "weight-only":
            # float x int8 in one matmul: the widening happens inside the kernel, so constant
            # folding cannot turn the stored weights back into float32.
            y = R.matmul(x, relax.const(wq), out_dtype="float32")
            return bb.emit(R.multiply(y, const(scale, "float32")), str(var.name))
        amax = R.max(R.abs(x))
        s = bb.emit(R.divide(R.maximum(amax, const(1e-8, "float32")), const(127.0, "float32")))
        xq = R.astype(R.clip(R.round(R.divide(x, s)), -127, 127), "int8")
        acc = bb.emit(R.matmul(xq, relax.const(wq), out_dtype="int32"))
        return bb.emit(R.multiply(R.astype(acc, "float32"), R.multiply(s, const(scale, "float32"))), str(var.name))

    return rewrite_main(mod, rule)
