"""PReLU back to one alpha per channel. TVM's TFLite importer writes every PRELU as a flat one:

    reshape(prelu(reshape(x, [-1]), reshape(broadcast_to(alpha, shape), [-1]), axis=0), shape)

an alpha per element (64k floats for a 32x32x64 layer, read on every call) between two reshapes,
which no kernel fuses across: an int8 convolution's epilogue stopped at its dequantize, and the
PReLU and the next quantize ran as a kernel of their own over float32 (mediapipe's iris and face
landmark models: one per PReLU layer). Where the folded alpha is the same at every position of a
channel (last axis), this becomes prelu(x, alpha_c, axis=-1), which fuses; otherwise it stays."""

from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.relax import op as R

from ..ir import const_value, emit_as_is, is_const, op_name, rewrite_main, tensor_shape


def _per_channel(alpha: np.ndarray, shape: tuple) -> np.ndarray | None:
    """alpha (one per element of `shape`) as one per channel of the last axis, if that is all it is."""
    if alpha.size != int(np.prod(shape)) or not shape:
        return None
    full = alpha.reshape(shape)
    channel = full.reshape(-1, shape[-1])[0]
    return channel if np.array_equal(full, np.broadcast_to(channel, shape)) else None


def channel_prelu(mod):
    defs: dict = {}  # emitted variable -> its value (the pattern is matched backwards from the last reshape)

    def rewrite(bb, var, value):
        flat_prelu = defs.get(value.args[0]) if op_name(value) == "reshape" else None
        if op_name(flat_prelu) != "nn.prelu" or not is_const(flat_prelu.args[1]):
            return None
        flatten = defs.get(flat_prelu.args[0])
        if op_name(flatten) != "reshape" or len(tensor_shape(flat_prelu.args[0]) or ()) != 1:
            return None
        x = flatten.args[0]
        shape = tensor_shape(x)
        if not shape or tensor_shape(var) != shape:
            return None
        alpha = _per_channel(const_value(flat_prelu.args[1]), shape)
        if alpha is None:
            return None
        return bb.emit(R.nn.prelu(x, relax.const(alpha), axis=len(shape) - 1), str(var.name))

    def rule(bb, var, value):
        out = rewrite(bb, var, value)
        if out is None:
            out = emit_as_is(bb, var, value)
        if isinstance(out, relax.Var):
            defs[out] = value
        return out

    out = relax.transform.CanonicalizeBindings()(rewrite_main(mod, rule))
    return relax.transform.DeadCodeElimination(["main"])(out)
