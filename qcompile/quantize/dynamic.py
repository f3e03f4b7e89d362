"""dynamic / weight-only: int8 weights for matmul-heavy models, no calibration.

dynamic      the activation's scale is computed at run time (max |x| / 127), x is quantized,
             the matmul runs int8 x int8 -> int32 and is scaled back to float.
weight-only  weights are stored as int8 and widened in the kernel; arithmetic stays float. With
             weight_bits 4: int4 block-wise (blockwise.py), a scale per `group_size` weights along K."""

from __future__ import annotations

import numpy as np
from tvm import relax, tirx
from tvm.relax import op as R

from ..ir import const, const_value, emit_as_is, is_const, is_var, op_name, rewrite_main, tensor_dtype
from ..layers import compute_layer_names
from ..ops import INT4_MATMUL_KERNEL
from .blockwise import int4_matmul_te, portable_operands, quantize_blockwise
from .params import weight_qparams

MODES = ("dynamic", "weight-only")


def _int8_weight(w: np.ndarray, per_channel: bool):
    """Weights of x @ W ([K, N]) quantized per output column."""
    qp = weight_qparams(w, w.ndim - 1 if per_channel else None)
    return qp.quantize(w), np.broadcast_to(qp.scale, (w.shape[-1],)).astype(np.float32)


def _emit_int4(bb, x, w: np.ndarray, group_size: int, name: str):
    """x[..., K] @ W[K, N] as the int4 block-wise kernel over x viewed as [M, K]."""
    *lead, k = (int(d) for d in x.ty.shape.values)
    codes, scales = quantize_blockwise(w, group_size)
    x2 = bb.emit(R.reshape(x, (int(np.prod(lead, dtype=np.int64)), k))) if len(lead) != 1 else x
    words, group_scales = portable_operands(codes, scales)
    args = (x2, relax.const(words, "int32"), relax.const(group_scales, "float32"))
    if len(lead) == 1:
        return bb.emit_te(int4_matmul_te, *args, primfunc_name_hint=INT4_MATMUL_KERNEL, name_hint=name)
    y = bb.emit_te(int4_matmul_te, *args, primfunc_name_hint=INT4_MATMUL_KERNEL)
    return bb.emit(R.reshape(y, (*lead, w.shape[1])), name)


def dynamic_quantize(mod, mode: str = "dynamic", per_channel: bool = True, skip_layers=frozenset(), names=None,
                     weight_bits: int = 8, group_size: int = 128, layers=None):
    """The DynamicQuantize pass over every float matmul with a constant weight (of `layers` only,
    where given: the mixed-precision layers chosen as int4w)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode '{mode}'; choose from {', '.join(MODES)}")
    layer_of = compute_layer_names(mod, names)

    def rule(bb, var, value):
        if (op_name(value) != "matmul" or not is_var(value.args[0]) or not is_const(value.args[1])
                or tensor_dtype(value.args[0]) != "float32" or layer_of.get(var) in skip_layers
                or (layers is not None and layer_of.get(var) not in layers)
                or const_value(value.args[1]).ndim < 2):  # x @ w[K] has no output channel to scale
            return emit_as_is(bb, var, value)
        x, w = value.args[0], const_value(value.args[1])
        if (mode == "weight-only" and weight_bits == 4 and w.ndim == 2 and len(x.ty.shape.values) >= 2
                and all(isinstance(d, tirx.IntImm) for d in x.ty.shape.values)):
            return _emit_int4(bb, x, w, group_size, str(var.name))
        wq, scale = _int8_weight(w, per_channel)
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
