"""PReLU and leaky ReLU without a select on CPUs: max(x, 0) + min(x, 0) * alpha, the same floats as
where(x > 0, x, x * alpha) (one of the two terms is a zero; the sign of a zero result is all that
may differ). LLVM turns a scalar select whose one arm loads (alpha per channel) into a branch, and a
branch on an activation's sign is mispredicted about half the time: MTCNN PNet's first convolution
(10 channels, an epilogue too narrow to vectorize) took 250 us on signed activations against 158 us
on zeros (AVX-512 VNNI Xeon). The where form is what torch.export and the quantizer's float islands
emit; nn.prelu and nn.leakyrelu legalize to the same select."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R

from ...ir import const, const_value, emit_as_is, is_const, is_scalar_const, op_name, rewrite_main


def _is_zero(expr) -> bool:
    return is_scalar_const(expr) and float(const_value(expr).reshape(())) == 0.0


def _slope_of(x, scaled):
    """alpha where `scaled` is x * alpha or alpha * x with a constant alpha, else None."""
    if op_name(scaled) != "multiply":
        return None
    a, b = scaled.args
    if a.same_as(x) and is_const(b):
        return b
    if b.same_as(x) and is_const(a):
        return a
    return None


def _where_parts(value, defs: dict):
    """(x, alpha) of where(x > 0, x, x * alpha) (or 0 < x), else None."""
    cond, x, other = value.args
    test = defs.get(cond)
    if test is None or not isinstance(x, relax.Var):
        return None
    if op_name(test) == "greater":
        tested, zero = test.args
    elif op_name(test) == "less":
        zero, tested = test.args
    else:
        return None
    alpha = _slope_of(x, defs.get(other)) if tested.same_as(x) and _is_zero(zero) else None
    return None if alpha is None else (x, alpha)


def _prelu_parts(value):
    """(x, alpha broadcast along the channel axis) of nn.prelu with a constant alpha, else None."""
    x, alpha = value.args
    rank = len(x.ty.shape.values) if x.ty.shape is not None else None
    if not is_const(alpha) or rank is None:
        return None
    slope = const_value(alpha)
    shape = [1] * rank
    shape[int(value.attrs.axis) % rank] = slope.size
    return x, const(slope.reshape(shape), str(x.ty.dtype))


def branch_free_prelu(mod):
    defs: dict = {}

    def rule(bb, var, value):
        op = op_name(value)
        parts = None
        if op == "where":
            parts = _where_parts(value, defs)
        elif op == "nn.prelu":
            parts = _prelu_parts(value)
        elif op == "nn.leakyrelu":
            x = value.args[0]
            parts = (x, const(np.float64(value.attrs.alpha), str(x.ty.dtype)))
        if parts is None or not str(parts[0].ty.dtype).startswith("float"):
            out = emit_as_is(bb, var, value)
            if isinstance(out, relax.Var):
                defs[out] = value
            return out
        x, alpha = parts
        zero = const(0.0, str(x.ty.dtype))
        positive = bb.emit(R.maximum(x, zero))
        scaled = bb.emit(R.multiply(bb.emit(R.minimum(x, zero)), alpha))
        return bb.emit(R.add(positive, scaled), str(var.name))

    return relax.transform.DeadCodeElimination(["main"])(rewrite_main(mod, rule))


def branch_free_prelu_pass():
    @tvm.transform.module_pass(opt_level=0, name="qcompile.BranchFreePReLU")
    def _pass(mod, _ctx):
        return branch_free_prelu(mod)

    return _pass
