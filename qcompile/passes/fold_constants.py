"""fold_constants: evaluate with numpy the calls whose tensor operands are all constants.

TVM's FoldConstant compiles each such call with LLVM, about 50 ms apiece: 11 s of every build of
a CNN whose batch norms decompose into some 200 constant ops. The table covers what the importers
and DecomposeOpsForInference leave; FoldConstant still runs afterwards for anything else.
Elementwise arithmetic is folded on float tensors only (IEEE float32 in numpy and in LLVM round
alike; integer division and overflow do not)."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ..ir import const_value, emit_as_is, is_const, op_name, rewrite_main, tensor_dtype, tensor_shape

FLOAT_ELEMENTWISE = {
    "add": np.add, "subtract": np.subtract, "multiply": np.multiply, "divide": np.divide,
    "power": np.power, "sqrt": np.sqrt, "rsqrt": lambda x: np.reciprocal(np.sqrt(x)), "negative": np.negative,
    "exp": np.exp,
}
LAYOUT = {
    "reshape": lambda value, x, shape: x.reshape(shape),
    "permute_dims": lambda value, x, shape: np.transpose(x, None if value.attrs.axes is None
                                                         else [int(a) for a in value.attrs.axes]),
    "expand_dims": lambda value, x, shape: x.reshape(shape),
    "squeeze": lambda value, x, shape: x.reshape(shape),
    "broadcast_to": lambda value, x, shape: np.broadcast_to(x, shape),
}


def _scalar(expr, dtype: str) -> np.ndarray | None:
    """A FloatImm/IntImm operand (`R.add(x, T.float32(1e-5))`) of the call's own dtype, as an array."""
    if isinstance(expr, tvm.ir.expr.Constant) and isinstance(expr.ty, tvm.ir.PrimType) and str(expr.ty) == dtype:
        return np.asarray(expr.value, dtype)
    return None


def _fold(var, value) -> np.ndarray | None:
    op = op_name(value)
    shape, dtype = tensor_shape(var), tensor_dtype(var)
    tensors = [a for a in value.args if isinstance(a.ty, relax.TensorType)]
    if shape is None or dtype is None or not tensors or not all(is_const(a) for a in tensors):
        return None
    if op in FLOAT_ELEMENTWISE:
        operands = [const_value(a) if is_const(a) else _scalar(a, dtype) for a in value.args]
        if not dtype.startswith("float") or any(o is None or o.dtype != dtype for o in operands):
            return None
        with np.errstate(all="ignore"):
            out = FLOAT_ELEMENTWISE[op](*operands)
    elif op in LAYOUT and len(tensors) == 1 and value.args[0].same_as(tensors[0]):
        out = LAYOUT[op](value, const_value(tensors[0]), shape)
    else:
        return None
    out = np.ascontiguousarray(np.asarray(out, dtype=dtype))
    return out if out.shape == tuple(shape) else None


def fold_constants(mod):
    def rule(bb, var, value):
        folded = _fold(var, value) if isinstance(value, relax.Call) else None
        return emit_as_is(bb, var, value) if folded is None else relax.const(folded, tensor_dtype(var))

    return rewrite_main(mod, rule)


FoldConstantsWithNumpy = tvm.transform.module_pass(lambda mod, _ctx: fold_constants(mod), opt_level=0,
                                                   name="FoldConstantsWithNumpy")
