"""Small helpers over Relax IR that every quantization pass shares: reading bindings and
constants, the observe marker, and re-emitting `main` binding by binding."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tvm import ir, relax
from tvm.relax import op as R

OBSERVE = "qcompile.observe"


def op_name(expr) -> str | None:
    """'nn.conv2d' for a call of relax.nn.conv2d, the packed name for call_pure_packed, else None."""
    if not isinstance(expr, relax.Call):
        return None
    op = expr.op
    name = getattr(op, "name", None)
    if name == "relax.call_pure_packed":
        return getattr(expr.args[0], "global_symbol", None)
    return name[len("relax."):] if name and name.startswith("relax.") else name


def is_const(expr) -> bool:
    """A tensor constant (IntImm and FloatImm are constants too in 0.27's IR; they are not tensors)."""
    return isinstance(expr, ir.expr.Constant) and isinstance(expr.ty, relax.TensorType)


def const_value(expr) -> np.ndarray:
    return expr.value.numpy()


def is_scalar_const(expr) -> bool:
    return is_const(expr) and const_value(expr).size == 1


def is_var(expr) -> bool:
    return isinstance(expr, relax.Var)


def tensor_dtype(expr) -> str | None:
    return str(expr.ty.dtype) if isinstance(expr.ty, relax.TensorType) else None


def tensor_shape(expr) -> tuple[int, ...] | None:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    return tuple(int(d) for d in ty.shape.values)


def const(value, dtype: str) -> relax.Expr:
    return relax.const(np.asarray(value).astype(dtype), dtype)


def operand(value: float, dtype: str) -> relax.Expr:
    """A scalar as a constant of shape (1,): legalization writes a 0-d constant into the kernel as a
    literal, so layers differing only in a scale would each compile a kernel of their own; as an
    operand, layers of one shape share one (PicoDet int8: compile 24 -> 13 s)."""
    return relax.const(np.full((1,), value, dtype), dtype)


def observe(x: relax.Expr, site: str) -> relax.Expr:
    """An identity marker: calibration records the values of `x` under the name `site`."""
    return R.call_pure_packed(OBSERVE, x, ir.StringImm(site), ty_args=x.ty)


def observe_site(call) -> str | None:
    return str(call.args[2].value) if op_name(call) == OBSERVE else None


def constants_in(expr) -> list:
    """Tensor constants among a binding value's arguments (and inside its tuples)."""
    if is_const(expr):
        return [expr]
    if isinstance(expr, relax.Call):
        return [c for a in expr.args for c in constants_in(a)]
    if isinstance(expr, relax.Tuple):
        return [c for f in expr.fields for c in constants_in(f)]
    return []


def vars_in(expr) -> list:
    """The variables an expression reads, in argument order (through calls, tuples, projections)."""
    if isinstance(expr, relax.Var):
        return [expr]
    if isinstance(expr, relax.Call):
        return [v for a in expr.args for v in vars_in(a)]
    if isinstance(expr, relax.Tuple):
        return [v for f in expr.fields for v in vars_in(f)]
    if isinstance(expr, relax.TupleGetItem):
        return vars_in(expr.tuple_value)
    return []


def main_bindings(mod, func_name: str = "main"):
    """(var, value) of every binding of `func_name`, in program order."""
    for block in mod[func_name].body.blocks:
        for binding in block.bindings:
            yield binding.var, binding.value


def substitute(expr, remap: dict):
    """`expr` with its variables replaced through `remap` (calls, tuples and projections rebuilt)."""
    if isinstance(expr, relax.Var):
        return remap.get(expr, expr)
    if isinstance(expr, relax.Call):
        return relax.Call(expr.op, [substitute(a, remap) for a in expr.args], expr.attrs, expr.ty_args)
    if isinstance(expr, relax.Tuple):
        return relax.Tuple([substitute(f, remap) for f in expr.fields])
    if isinstance(expr, relax.TupleGetItem):
        return relax.TupleGetItem(substitute(expr.tuple_value, remap), expr.index)
    return expr


RewriteRule = Callable[[relax.BlockBuilder, relax.Var, relax.Expr], relax.Expr]


def rewrite_main(mod, rule: RewriteRule, finish: Callable | None = None, *,
                 start: Callable | None = None, func_name: str = "main", extra_params: list | None = None):
    """Re-emit `func_name` binding by binding. `rule(bb, var, value)` gets each binding's value
    with earlier variables already substituted and returns the expression that stands for `var`
    from then on (usually what it emitted). `start(bb, params)` may emit first and returns the
    initial substitutions; `finish(bb, result)` may rewrite the returned value. `extra_params`
    are appended to the function's parameters (new inputs the rule may read)."""
    func = mod[func_name]
    bb = relax.BlockBuilder()
    attrs = dict(func.attrs) if func.attrs is not None else None
    with bb.function(func_name, list(func.params) + list(extra_params or []), attrs=attrs):
        with bb.dataflow():
            remap: dict = dict(start(bb, list(func.params))) if start is not None else {}
            for var, value in main_bindings(mod, func_name):
                remap[var] = rule(bb, var, substitute(value, remap))
            result = substitute(func.body.body, remap)
            if finish is not None:
                result = finish(bb, result)
            out = bb.emit_output(result)
        bb.emit_func_output(out)
    new_mod = mod.clone()
    for gv, func in bb.get().functions_items():  # the rewritten function and any kernels it emitted
        new_mod[func_name if gv.name_hint == func_name else gv] = func
    return new_mod


def emit_as_is(bb: relax.BlockBuilder, var: relax.Var, value: relax.Expr) -> relax.Expr:
    """The default rule: keep the binding (under its old name)."""
    if isinstance(value, relax.Var) or is_const(value):
        return value
    return bb.emit(value, var.name)
