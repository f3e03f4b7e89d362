"""fold_constants: evaluate with numpy the calls whose tensor operands are all constants.

TVM's FoldConstant compiles each such call with LLVM, about 50 ms apiece: 11 s of every build of
a CNN whose batch norms decompose into some 200 constant ops. The table covers what the importers
and DecomposeOpsForInference leave; FoldConstant still runs afterwards for anything else.
Elementwise arithmetic is folded on float tensors (IEEE float32 in numpy and in LLVM round alike),
and on integers where the exact result fits the dtype (integer division and overflow differ).
The shape of a tensor whose shape is static is a constant too: TVM's ONNX importer writes every
Gather's index check as shape_of -> shape_to_tensor -> take -> less/add/where, and ddddocr's
unrolled LSTM has 64 of them (FoldConstant: 19 s of its build); layout-cdla has 188
where(isnan(c), ...) on constants (25 s); mediapipe's TFLite models store their weights in float16,
each widened by a cast (palm-detection: 113 of them, 17 s)."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ..ir import const_value, emit_as_is, is_const, op_name, rewrite_main, tensor_dtype, tensor_shape, vars_in

FLOAT_ELEMENTWISE = {
    "add": np.add, "subtract": np.subtract, "multiply": np.multiply, "divide": np.divide,
    "power": np.power, "sqrt": np.sqrt, "rsqrt": lambda x: np.reciprocal(np.sqrt(x)), "negative": np.negative,
    "exp": np.exp,
}
INTEGER_ELEMENTWISE = {"add": np.add, "subtract": np.subtract, "multiply": np.multiply}
PREDICATE = {"isnan": np.isnan, "isinf": np.isinf, "isfinite": np.isfinite}
COMPARE = {"less": np.less, "greater": np.greater, "less_equal": np.less_equal, "greater_equal": np.greater_equal,
           "equal": np.equal, "not_equal": np.not_equal}
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


def _take(value, x: np.ndarray, index: np.ndarray) -> np.ndarray | None:
    if value.attrs.axis is None or index.dtype.kind not in "iu":  # (no axis: the flattened tensor; left to TVM)
        return None
    axis, mode = int(value.attrs.axis), str(value.attrs.mode)
    if mode == "fast" and (index.min(initial=0) < 0 or index.max(initial=0) >= x.shape[axis]):
        return None  # out of bounds: undefined in the kernel, so left to it
    return np.take(x, index, axis=axis, mode="wrap" if mode == "wrap" else "clip")


def _exact_cast(x: np.ndarray, dtype: str) -> np.ndarray | None:
    """`x` as `dtype` where every value converts exactly and back (float16 weights widened to
    float32, as TFLite exports store them); a cast that rounds, wraps or saturates is left to TVM."""
    try:
        with np.errstate(all="ignore"):
            out = x.astype(dtype)
            back = out.astype(x.dtype)
    except TypeError:  # a dtype numpy lacks (bfloat16)
        return None
    return out if np.array_equal(back, x, equal_nan=x.dtype.kind == "f" and out.dtype.kind == "f") else None


def _integer(op: str, operands: list, dtype: str) -> np.ndarray | None:
    """`op` on integer operands, exactly (Python integers), if the result fits `dtype`."""
    if any(o is None or o.dtype != dtype or o.size > 4096 for o in operands):
        return None
    exact = INTEGER_ELEMENTWISE[op](*[o.astype(object) for o in operands])
    info = np.iinfo(dtype)
    flat = np.asarray(exact, dtype=object).reshape(-1)
    return None if any(v < info.min or v > info.max for v in flat) else np.asarray(exact).astype(dtype)


def _fold(var, value) -> np.ndarray | None:
    op = op_name(value)
    shape, dtype = tensor_shape(var), tensor_dtype(var)
    if op == "shape_to_tensor" and isinstance(value.args[0], relax.ShapeExpr) and shape is not None:
        dims = value.args[0].values
        return np.array([int(d) for d in dims], "int64") if all(isinstance(d, tvm.tirx.IntImm) for d in dims) else None
    tensors = [a for a in value.args if isinstance(a.ty, relax.TensorType)]
    if shape is None or dtype is None or not tensors or not all(is_const(a) for a in tensors):
        return None
    operands = [const_value(a) if is_const(a) else _scalar(a, dtype) for a in value.args]
    if op in FLOAT_ELEMENTWISE and dtype.startswith("float"):
        if any(o is None or o.dtype != dtype for o in operands):
            return None
        with np.errstate(all="ignore"):
            out = FLOAT_ELEMENTWISE[op](*operands)
    elif op in INTEGER_ELEMENTWISE and dtype[:3] in ("int", "uin"):
        out = _integer(op, operands, dtype)
    elif op in PREDICATE and len(tensors) == 1 and dtype == "bool":
        out = PREDICATE[op](const_value(tensors[0]))
    elif op in COMPARE and len(tensors) == 2 and dtype == "bool":
        out = COMPARE[op](*(const_value(a) for a in tensors))
    elif op == "where" and len(tensors) == 3:
        out = np.where(*(const_value(a) for a in tensors))
    elif op == "astype" and len(tensors) == 1:
        out = _exact_cast(const_value(tensors[0]), dtype)
    elif op == "take" and len(tensors) == 2:
        out = _take(value, *(const_value(a) for a in tensors))
    elif op in LAYOUT and len(tensors) == 1 and value.args[0].same_as(tensors[0]):
        out = LAYOUT[op](value, const_value(tensors[0]), shape)
    else:
        return None
    if out is None:
        return None
    out = np.array(out, dtype=dtype, order="C")  # (ascontiguousarray would make a 0-d result 1-d)
    return out if out.shape == tuple(shape) else None


def _static_shape(value) -> relax.ShapeExpr | None:
    """shape_of(x) for an x whose shape is known: the shape itself."""
    if op_name(value) != "shape_of":
        return None
    shape = tensor_shape(value.args[0])
    return relax.ShapeExpr([int(d) for d in shape]) if shape is not None else None


def fold_constants(mod):
    def rule(bb, var, value):
        if not isinstance(value, relax.Call):
            return emit_as_is(bb, var, value)
        if (shape := _static_shape(value)) is not None:
            return shape
        folded = _fold(var, value)
        return emit_as_is(bb, var, value) if folded is None else relax.const(folded, tensor_dtype(var))

    return rewrite_main(mod, rule)


FoldConstantsWithNumpy = tvm.transform.module_pass(lambda mod, _ctx: fold_constants(mod), opt_level=0,
                                                   name="FoldConstantsWithNumpy")


def _foldable_call_left(mod) -> bool:
    """Whether a Relax function of `mod` still has a call that reads no variable (what FoldConstant folds)."""
    for func in mod.functions.values():
        if not isinstance(func, relax.Function) or not isinstance(func.body, relax.SeqExpr):
            continue
        for block in func.body.blocks:
            if any(isinstance(b.value, relax.Call) and not vars_in(b.value) for b in block.bindings):
                return True
    return False


@tvm.transform.module_pass(opt_level=0, name="FoldRemainingConstants")
def FoldRemainingConstants(mod, _ctx):
    """TVM's FoldConstant where a call it could fold is left: it costs seconds on a large module even
    when it folds nothing (ddddocr int8: 5.6 s after conv1d-as-conv2d, 6.5 s after channels-last)."""
    return relax.transform.FoldConstant()(mod) if _foldable_call_left(mod) else mod
