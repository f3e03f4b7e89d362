"""realize: rewrite a QDQ module (ours after calibration, or an imported QDQ model) into
integer arithmetic.

The pass walks `main` in order and keeps, for each float tensor that has an integer form, how
it is represented instead of emitting it:
  IntRep    an integer tensor and its scale (per tensor or per channel) and zero point:
            8-bit after a quantize, int32 after a conv2d/matmul (int8 x int8 -> int32) or a sum;
  TableRep  an elementwise function of one 8-bit tensor, kept as its 256 values.
Ops are rewritten by the rules below as long as their inputs have such forms; a quantize of an
int32 form is a requantize (integer multiplier and shift), of a table a lookup. Float values are
produced only where a float op reads them (a float island) or the model returns them.

A table whose function is plain arithmetic (hardswish, hardsigmoid, relu6...: ops.ARITHMETIC) is
emitted as that arithmetic in float32 on the dequantized codes instead of a lookup: elementwise ops
fuse into the producing convolution's epilogue and vectorize, where a 256-entry lookup is a
separate kernel of scalar loads (PicoDet int8: 96 lookups, a quarter of its time). Its values are
the float simulation's (the same float32 ops); the table's float64 can differ by one step at a tie."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import relax
from tvm.relax import op as R

from ..ir import (
    const,
    const_value,
    is_const,
    is_scalar_const,
    is_var,
    op_name,
    operand,
    rewrite_main,
    substitute,
    tensor_dtype,
    tensor_shape,
    vars_in,
)
from ..ops import ARITHMETIC, COMPUTE, ELEMENTWISE, PASSTHROUGH, channel_axes, moves_values
from .insert_qdq import weight_axis
from .params import weight_qparams

NARROW = ("int8", "uint8")
LAYOUT = PASSTHROUGH - {"nn.max_pool2d", "nn.max_pool1d", "nn.adaptive_max_pool2d"}
ACC_BITS = 24  # int32 headroom kept when two inputs are brought to a common scale
MAX_ARITHMETIC_OPS = 16  # longer elementwise chains are looked up: a table costs the same for any length
SOURCE = "source"  # a recipe's leaf: the table's source, dequantized


@dataclass(frozen=True)
class IntRep:
    var: relax.Expr
    scale: np.ndarray  # float64, () or (C,)
    zp: int
    axis: int | None
    dtype: str

    @property
    def narrow(self) -> bool:
        return self.dtype in NARROW

    @property
    def per_tensor(self) -> bool:
        return self.axis is None

    def scale_bcast(self, ndim: int) -> np.ndarray:
        if self.axis is None:
            return np.asarray(self.scale, np.float64)
        shape = [1] * ndim
        shape[self.axis] = -1
        return np.asarray(self.scale, np.float64).reshape(shape)

    def codes(self) -> np.ndarray:
        info = np.iinfo(self.dtype)
        return np.arange(info.min, info.max + 1)

    def table(self) -> "TableRep":
        return TableRep(self, (self.codes() - self.zp) * float(self.scale), SOURCE)

    def bound(self) -> float:
        """Largest magnitude this form can stand for."""
        return 256.0 * float(np.max(self.scale))


@dataclass(frozen=True)
class Recipe:
    """How a table's function is computed from its source in float32: `call` with its tensor
    arguments replaced by `args` (a Recipe, SOURCE, or None to keep the call's own constant)."""
    call: relax.Call
    args: tuple

    def size(self) -> int:
        return 1 + sum(a.size() for a in self.args if isinstance(a, Recipe))


@dataclass(frozen=True)
class TableRep:
    source: IntRep  # 8-bit, per tensor
    table: np.ndarray  # float64, one value per code of the source
    recipe: Recipe | str | None = None  # set when the function is ops.ARITHMETIC, evaluated in float32


def fixed_point(multiplier: np.ndarray, bits: int = 31) -> tuple[np.ndarray, np.ndarray]:
    """multiplier ~= M / 2**n with M in [2**(bits-1), 2**bits): integer M and shift n, elementwise."""
    m = np.maximum(np.asarray(multiplier, np.float64), 1e-30)
    n = np.clip(bits - 1 - np.floor(np.log2(m)), 1, 62).astype(np.int64)
    return np.round(m * np.exp2(n)).astype(np.int64), n


def int32_fixed_point(multiplier: np.ndarray, span: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(M, n) as fixed_point, with M short enough that x * M + 2**(n-1) stays in int32 for every
    |x| <= span; None where no such M keeps 16 bits of the multiplier. An 8-bit source (span <= 255)
    keeps 22 bits (M in [2**21, 2**22)): its rescale is exact to a few units in 2**22 of the result, far below the one
    step an 8-bit result can move, and needs no int64 arithmetic, which AVX2 and NEON do not
    vectorize (a BlazeFace residual add's int64 rescale cost more than its convolution on AVX2)."""
    bits = int(np.floor(np.log2((2**31 - 1) / max(span, 1)))) - 1
    if bits < 16:
        return None
    mult, shift = fixed_point(multiplier, bits)
    if int(shift.max()) > 30 or int(mult.max()) * span + (1 << (int(shift.max()) - 1)) >= 2**31:
        return None  # a multiplier too small for an int32 shift, or too large for its shift to stay >= 1
    return mult, shift


def match_mul_shift(value, defs: dict):
    """(x, M, s, zp) when `value` is the fixed-point multiply rescale emits,
    right_shift(add(multiply(a, M), 2^(s-1)), s) with a = astype(x, int64 or int32) or
    subtract(astype(x, ...), zp); None otherwise. `defs` maps each variable to its bound value."""
    if op_name(value) != "right_shift" or not is_const(value.args[1]):
        return None
    add = defs.get(value.args[0])
    mul = defs.get(add.args[0]) if op_name(add) == "add" else None
    a = defs.get(mul.args[0]) if op_name(mul) == "multiply" else None
    zp = 0
    if op_name(a) == "subtract" and is_scalar_const(a.args[1]):
        zp, a = int(const_value(a.args[1]).item()), defs.get(a.args[0])
    if op_name(a) != "astype" or not (is_const(add.args[1]) and is_const(mul.args[1])):
        return None
    m, r, s = (const_value(e).astype(np.int64) for e in (mul.args[1], add.args[1], value.args[1]))
    shape = np.broadcast_shapes(r.shape, s.shape)
    if not (np.all(m >= 0) and np.all(m < 2**31) and np.all(s >= 1) and np.all(s <= 62)
            and np.array_equal(np.broadcast_to(r, shape), np.broadcast_to(np.left_shift(np.int64(1), s - 1), shape))):
        return None
    return a.args[0], m, s, zp


class Realizer:
    def __init__(self, per_channel: bool = True):
        self.per_channel = per_channel
        self.reps: dict = {}
        self.floats: dict = {}
        self.concatenated: dict = {}  # int32 concat at a common scale -> (its inputs' forms, axis)

    # --- emitting integer arithmetic -------------------------------------------------------
    def rescale(self, bb, rep: IntRep, scale, zp: int, dtype: str) -> relax.Expr:
        """rep's values at a new scale and zero point: y = round(x * rep.scale / scale) + zp.
        `scale` is a scalar, or per channel along rep's channel axis."""
        ndim = len(tensor_shape(rep.var))
        target = np.asarray(scale, np.float64)
        if target.ndim == 1:
            target = IntRep(rep.var, target, 0, rep.axis, rep.dtype).scale_bcast(ndim)
        ratio = rep.scale_bcast(ndim) / target
        fixed = None
        if rep.narrow:
            info = np.iinfo(rep.dtype)
            fixed = int32_fixed_point(ratio, max(abs(int(info.min) - rep.zp), abs(int(info.max) - rep.zp)))
        wide = "int64" if fixed is None else "int32"
        mult, shift = fixed_point(ratio) if fixed is None else fixed
        x = R.astype(rep.var, wide)
        if rep.zp:
            x = R.subtract(x, const(rep.zp, wide))
        y = R.multiply(x, const(mult, wide))
        y = R.right_shift(R.add(y, const(np.left_shift(1, shift - 1), wide)), const(shift, wide))
        if zp:
            y = R.add(y, const(zp, wide))
        if dtype in NARROW:
            info = np.iinfo(dtype)
            y = R.clip(y, int(info.min), int(info.max))
        return bb.emit(R.astype(y, dtype))

    def widen(self, bb, rep) -> IntRep:
        """An int32 form with zero point 0 (tables become int32 at 16-bit resolution)."""
        if isinstance(rep, TableRep):
            amax = max(float(np.abs(rep.table).max()), 1e-30)
            scale = amax / 2**15
            if rep.recipe is not None:
                value = R.round(R.multiply(self.arithmetic(bb, rep), operand(1.0 / scale, "float32")))
                return IntRep(bb.emit(R.astype(value, "int32")), np.float64(scale), 0, None, "int32")
            values = np.round(rep.table / scale).astype("int32")
            return IntRep(self.lookup(bb, rep.source, values), np.float64(scale), 0, None, "int32")
        if not rep.narrow:
            return rep
        x = R.astype(rep.var, "int32")
        if rep.zp:
            x = R.subtract(x, const(rep.zp, "int32"))
        return IntRep(bb.emit(x), rep.scale, 0, rep.axis, "int32")

    def lookup(self, bb, source: IntRep, values: np.ndarray) -> relax.Expr:
        index = R.astype(source.var, "int32")
        qmin = int(np.iinfo(source.dtype).min)
        if qmin:
            index = R.subtract(index, const(qmin, "int32"))
        return bb.emit(R.take(relax.const(values), index, axis=0, mode="clip"))

    def arithmetic(self, bb, rep: TableRep) -> relax.Expr:
        """rep's function evaluated in float32 by its recipe, on its source's dequantized codes."""
        source = rep.source
        # not R.dequantize: its legalization writes the scale into the kernel (ir.operand)
        codes = R.astype(source.var, "float32")
        if source.zp:
            codes = R.subtract(codes, operand(source.zp, "float32"))
        codes = bb.emit(R.multiply(codes, operand(source.scale, "float32")))
        emitted: dict = {}  # id(recipe) -> its value: a subexpression used twice (x * relu6(x + 3)) is emitted once

        def emit(recipe):
            if isinstance(recipe, str):  # SOURCE
                return codes
            if id(recipe) not in emitted:
                args = [a if r is None else emit(r) for a, r in zip(recipe.call.args, recipe.args)]
                emitted[id(recipe)] = bb.emit(relax.Call(recipe.call.op, args, recipe.call.attrs, recipe.call.ty_args))
            return emitted[id(recipe)]

        return emit(rep.recipe)

    def float_of(self, bb, x) -> relax.Expr:
        """The float value of `x`, emitted once, where a float op needs it."""
        rep = self.reps.get(x)
        if rep is None:
            return x
        if x not in self.floats:
            if isinstance(rep, TableRep):
                out = self.arithmetic(bb, rep) if rep.recipe is not None else \
                    self.lookup(bb, rep.source, rep.table.astype("float32"))
            elif rep.narrow and rep.per_tensor:
                out = bb.emit(R.dequantize(rep.var, const(rep.scale, "float32"), const(rep.zp, "int32"),
                                           axis=-1, out_dtype="float32"))
            else:
                wide = self.widen(bb, rep)
                ndim = len(tensor_shape(wide.var))
                out = bb.emit(R.multiply(R.astype(wide.var, "float32"), const(wide.scale_bcast(ndim), "float32")))
            self.floats[x] = out
        return self.floats[x]

    def common_scale(self, bb, reps: list) -> list[IntRep] | None:
        """The inputs of an add or concat as int32 at one scale."""
        reps = [self.widen(bb, r) if isinstance(r, TableRep) else r for r in reps]
        if not all(r.per_tensor and (r.narrow or r.dtype == "int32") for r in reps):
            return None
        bounds = [r.bound() if r.narrow else 2.0**15 * float(r.scale) for r in reps]
        scale = max(bounds) / 2**ACC_BITS
        return [IntRep(self.rescale(bb, r, scale, 0, "int32"), np.float64(scale), 0, None, "int32") for r in reps]

    # --- rules: each returns the new form of the binding, or None to leave it float --------
    def quantize(self, bb, call):
        x, scale, zp = call.args[:3]
        rep = self.reps.get(x)
        if not (is_const(scale) and is_const(zp)) or const_value(scale).size != 1:
            return None
        s, z, dtype = float(const_value(scale).reshape(())), int(const_value(zp).reshape(())), str(call.attrs.out_dtype)
        if rep is None:
            return bb.emit(call)  # float boundary: a real quantize
        if isinstance(rep, IntRep) and rep.var in self.concatenated:
            # each input requantized to the output's codes once (the simulation rounds once), not
            # through the int32 common scale: 8-bit inputs, an 8-bit concat, no int64 arithmetic
            parts, axis = self.concatenated[rep.var]
            return bb.emit(R.concat([self.narrowed(bb, p, s, z, dtype) for p in parts], axis=axis))
        return self.narrowed(bb, rep, s, z, dtype)

    def narrowed(self, bb, rep, s: float, z: int, dtype: str) -> relax.Expr:
        """rep's values quantized with scale s and zero point z to the 8-bit dtype."""
        if isinstance(rep, TableRep):
            if rep.recipe is not None:
                return bb.emit(R.quantize(self.arithmetic(bb, rep), const(s, "float32"), const(z, "int32"),
                                          axis=-1, out_dtype=dtype))
            info = np.iinfo(dtype)
            return self.lookup(bb, rep.source, np.clip(np.round(rep.table / s) + z, info.min, info.max).astype(dtype))
        if rep.narrow and rep.per_tensor and rep.dtype == dtype and rep.zp == z and np.isclose(float(rep.scale), s, rtol=1e-6):
            return rep.var
        return self.rescale(bb, rep, s, z, dtype)

    def dequantize(self, bb, call):
        q, scale, zp = call.args[:3]
        if not (is_const(scale) and is_const(zp)):
            return None
        s, z = const_value(scale).astype(np.float64), const_value(zp)
        if z.size == 1:
            axis = None if s.size == 1 else int(call.attrs.axis) % len(tensor_shape(q))
            return IntRep(q, s.reshape(()) if s.size == 1 else s, int(z.reshape(())), axis, str(q.ty.dtype))
        return None

    def compute(self, bb, call):
        op = op_name(call)
        x, w = call.args[0], call.args[1]
        rx = self.reps.get(x)
        if not isinstance(rx, IntRep) or not rx.narrow or not rx.per_tensor:
            return None
        rw = self.reps.get(w)
        if is_const(w) and const_value(w).dtype.kind == "f":
            wf = const_value(w)
            qp = weight_qparams(wf, weight_axis(op, wf, self.per_channel, call.attrs))
            rw = IntRep(relax.const(qp.quantize(wf)), qp.scale.astype(np.float64), 0, qp.axis, "int8")
        if not isinstance(rw, IntRep) or not rw.narrow or (rw.zp and not is_const(rw.var)):
            return None
        if op not in COMPUTE:
            return None
        w_axis, out_axis = channel_axes(op, call.attrs)
        if not rw.per_tensor and rw.axis != w_axis % len(tensor_shape(w)):
            return None
        # 8-bit data with a zero point (u8 x s8, or s8 asymmetric) against a constant symmetric
        # int8 weight stays an 8-bit kernel: pad with the zero point, then subtract zp * sum(w).
        zp_folded = rx.zp and rw.dtype == "int8" and rw.zp == 0 and is_const(rw.var)
        if zp_folded or (rx.dtype == "int8" and rw.dtype == "int8" and not rx.zp):
            xin, win = rx.var, rw.var
        else:
            xin, win = self.widen_to(bb, rx, "int16"), self.widen_to(bb, rw, "int16")
        wq = const_value(rw.var).astype(np.int64) if zp_folded else None
        if op == "matmul":
            acc = bb.emit(R.matmul(xin, win, out_dtype="int32"))
            correction = wq.sum(axis=-2) if zp_folded else None
        else:
            a = call.attrs
            padding = [int(p) for p in a.padding]
            if zp_folded and any(padding):
                half = len(padding) // 2
                spatial = [c for c in str(a.data_layout) if c not in "NC"]  # padding's order: begins, then ends
                widths = [v for c in str(a.data_layout)
                          for v in ((padding[spatial.index(c)], padding[half + spatial.index(c)]) if c in spatial else (0, 0))]
                xin, padding = bb.emit(R.nn.pad(xin, widths, pad_value=float(rx.zp))), [0] * len(padding)
            fn = R.nn.conv2d if op == "nn.conv2d" else R.nn.conv1d
            acc = bb.emit(fn(xin, win, strides=a.strides, padding=padding, dilation=a.dilation, groups=a.groups,
                             data_layout=a.data_layout, kernel_layout=a.kernel_layout, out_dtype="int32"))
            if zp_folded:
                shape = [1] * wq.ndim
                shape[out_axis] = -1
                correction = np.moveaxis(wq, w_axis, 0).reshape(wq.shape[w_axis], -1).sum(axis=1).reshape(shape)
            else:
                correction = None
        if correction is not None:
            acc = bb.emit(R.subtract(acc, const(rx.zp * correction, "int32")))
        scale = np.float64(rx.scale) * rw.scale
        axis = None if rw.per_tensor else out_axis % len(tensor_shape(acc))
        return IntRep(acc, scale, 0, axis, "int32")

    def widen_to(self, bb, rep: IntRep, dtype: str) -> relax.Expr:
        if is_const(rep.var):
            return relax.const((const_value(rep.var).astype(np.int32) - rep.zp).astype(dtype))
        x = R.astype(rep.var, dtype)
        return bb.emit(R.subtract(x, const(rep.zp, dtype)) if rep.zp else x)

    def elementwise(self, bb, call):
        op = op_name(call)
        source, values, recipes = None, [], []
        for a in call.args:
            if is_var(a):
                rep = self.reps.get(a)
                if isinstance(rep, IntRep) and rep.narrow and rep.per_tensor:
                    rep = rep.table()
                if not isinstance(rep, TableRep) or (source is not None and not rep.source.var.same_as(source.var)):
                    return None
                source = rep.source
                values.append(rep.table)
                recipes.append(rep.recipe)
            elif is_const(a):
                if const_value(a).size != 1:
                    return None
                values.append(float(const_value(a).reshape(())))
                recipes.append(None)
            else:
                values.append(float(a.value))
                recipes.append(None)
        if source is None:
            return None
        with np.errstate(all="ignore"):
            table = np.asarray(ELEMENTWISE[op](*values), np.float64)
        return TableRep(source, np.nan_to_num(table), self.recipe(call, recipes, values))

    @staticmethod
    def recipe(call, args: list, values: list) -> Recipe | None:
        """The float32 recipe of `call` on tables with recipes (args), or None: a lookup."""
        tensors = [(r, a) for r, a, v in zip(args, call.args, values) if isinstance(v, np.ndarray)]
        if op_name(call) not in ARITHMETIC or any(r is None or tensor_dtype(a) != "float32" for r, a in tensors):
            return None
        recipe = Recipe(call, tuple(args))
        return recipe if recipe.size() <= MAX_ARITHMETIC_OPS else None

    def on_int32(self, bb, call):
        """Bias, ReLU, clip and positive scaling applied to an int32 accumulator, exactly."""
        op = op_name(call)
        rep = self.reps.get(call.args[0])
        if not isinstance(rep, IntRep) or rep.narrow:
            return None
        shape = tensor_shape(rep.var)
        sb = rep.scale_bcast(len(shape))
        if op == "nn.relu":
            return IntRep(bb.emit(R.maximum(rep.var, const(0, "int32"))), rep.scale, 0, rep.axis, "int32")
        if op == "clip":
            lo, hi = float(call.args[1].value), float(call.args[2].value)
            lo_q = np.clip(np.round(lo / sb), -2**31, 2**31 - 1)
            hi_q = np.clip(np.round(hi / sb), -2**31, 2**31 - 1)
            y = R.minimum(R.maximum(rep.var, const(lo_q, "int32")), const(hi_q, "int32"))
            return IntRep(bb.emit(y), rep.scale, 0, rep.axis, "int32")
        other = call.args[1]
        if not is_const(other):
            return None
        c = const_value(other).astype(np.float64)
        if op in ("add", "subtract"):
            if np.broadcast_shapes(c.shape, shape) != shape:
                return None
            if np.abs(c / sb).max() >= 2**30:  # a bias too large for the accumulator's scale
                rep = self.coarsen(bb, rep, np.broadcast_to(np.abs(c), shape) / 2**30)
                sb = rep.scale_bcast(len(shape))
            ci = const(np.round(c / sb), "int32")
            y = R.add(rep.var, ci) if op == "add" else R.subtract(rep.var, ci)
            return IntRep(bb.emit(y), rep.scale, 0, rep.axis, "int32")
        if op in ("multiply", "divide") and c.size == 1 and float(c.reshape(())) > 0:
            k = float(c.reshape(()))
            return IntRep(rep.var, rep.scale * k if op == "multiply" else rep.scale / k, 0, rep.axis, "int32")
        return None

    def coarsen(self, bb, rep: IntRep, needed: np.ndarray) -> IntRep:
        """rep at a scale at least `needed` (per element of rep's shape), per channel if rep is."""
        if rep.axis is None:
            scale = np.maximum(rep.scale, needed.max())
        else:
            axes = tuple(i for i in range(needed.ndim) if i != rep.axis)
            scale = np.maximum(rep.scale, needed.max(axis=axes))
        return IntRep(self.rescale(bb, rep, scale, 0, "int32"), scale, 0, rep.axis, "int32")

    def narrow_clamp(self, bb, call):
        """ReLU and clip on 8-bit values: a clamp of the codes, cheaper than a table."""
        op = op_name(call)
        rep = self.reps.get(call.args[0])
        if not isinstance(rep, IntRep) or not rep.narrow or not rep.per_tensor:
            return None
        info = np.iinfo(rep.dtype)
        s = float(rep.scale)
        lo = rep.zp if op == "nn.relu" else np.clip(np.round(float(call.args[1].value) / s) + rep.zp, info.min, info.max)
        hi = info.max if op == "nn.relu" else np.clip(np.round(float(call.args[2].value) / s) + rep.zp, info.min, info.max)
        return IntRep(bb.emit(R.clip(rep.var, int(lo), int(hi))), rep.scale, rep.zp, None, rep.dtype)

    def binary(self, bb, call):
        op = op_name(call)
        reps = [self.reps.get(a) for a in call.args[:2]]
        if any(r is None for r in reps):
            return None
        if op == "multiply":
            wide = [self.widen(bb, r) for r in reps]
            if not all(w.per_tensor for w in wide):
                return None
            return IntRep(bb.emit(R.multiply(wide[0].var, wide[1].var)), wide[0].scale * wide[1].scale, 0, None, "int32")
        common = self.common_scale(bb, reps)
        if common is None:
            return None
        fn = R.add if op == "add" else R.subtract
        return IntRep(bb.emit(fn(common[0].var, common[1].var)), common[0].scale, 0, None, "int32")

    def reduce(self, bb, call):
        rep = self.reps.get(call.args[0])
        if not isinstance(rep, IntRep) or not rep.per_tensor or rep.dtype not in (*NARROW, "int32"):
            return None
        wide = self.widen(bb, rep)
        shape = tensor_shape(rep.var)
        axes = [int(a) % len(shape) for a in call.attrs.axis] if call.attrs.axis is not None else list(range(len(shape)))
        count = int(np.prod([shape[a] for a in axes]))
        total = bb.emit(R.sum(wide.var, axis=axes, keepdims=bool(call.attrs.keepdims)))
        scale = wide.scale / count if op_name(call) == "mean" else wide.scale
        return IntRep(total, np.float64(scale), 0, None, "int32")

    def concat(self, bb, call):
        fields = call.args[0].fields if isinstance(call.args[0], relax.Tuple) else None
        if fields is None or not all(f in self.reps for f in fields):
            return None
        reps = [self.reps[f] for f in fields]
        first = reps[0]
        same = all(isinstance(r, IntRep) and r.narrow and r.per_tensor and r.dtype == first.dtype and r.zp == first.zp
                   and np.isclose(float(r.scale), float(first.scale), rtol=1e-6) for r in reps)
        axis = int(call.attrs.axis)
        if not same:
            common = self.common_scale(bb, reps)
            if common is None:
                return None
            out = bb.emit(R.concat([r.var for r in common], axis=axis))
            self.concatenated[out] = (reps, axis)  # for a quantize that follows (dead code otherwise)
            return IntRep(out, common[0].scale, 0, None, "int32")
        out = bb.emit(R.concat([r.var for r in reps], axis=axis))
        return IntRep(out, first.scale, first.zp, None, first.dtype)

    def passthrough(self, bb, call):
        op = op_name(call)
        rep = self.reps.get(call.args[0])
        if not moves_values(op, call.attrs):
            return None
        if isinstance(rep, TableRep) and (op in LAYOUT or op == "image.resize2d"):  # moves values, compares none
            moved = self.passthrough_int(bb, call, rep.source)
            return TableRep(moved, rep.table, rep.recipe) if moved is not None else None
        return self.passthrough_int(bb, call, rep) if isinstance(rep, IntRep) else None

    def passthrough_int(self, bb, call, rep: IntRep):
        if not rep.per_tensor:
            return None
        if op_name(call) == "nn.pad":  # with zeros (ops.moves_values): the zero point's code
            out = bb.emit(R.nn.pad(rep.var, [int(w) for w in call.attrs.pad_width], pad_value=float(rep.zp)))
            return IntRep(out, rep.scale, rep.zp, None, rep.dtype)
        out = bb.emit(relax.Call(call.op, [rep.var, *call.args[1:]], call.attrs, call.ty_args))
        return IntRep(out, rep.scale, rep.zp, None, rep.dtype)

    # --- the pass ------------------------------------------------------------------------------
    def rules_for(self, op: str | None) -> list:
        rules = []
        if op == "quantize":
            return [self.quantize]
        if op == "dequantize":
            return [self.dequantize]
        if op in COMPUTE:
            rules.append(self.compute)
        if op in ("nn.relu", "clip"):
            rules.append(self.narrow_clamp)
        if op in ("add", "subtract", "multiply", "divide", "nn.relu", "clip"):
            rules.append(self.on_int32)
        if op in ELEMENTWISE:
            rules.append(self.elementwise)
        if op in ("add", "subtract", "multiply"):
            rules.append(self.binary)
        if op in ("mean", "sum"):
            rules.append(self.reduce)
        if op == "concat":
            rules.append(self.concat)
        if op in PASSTHROUGH or op in ("nn.pad", "image.resize2d"):
            rules.append(self.passthrough)
        return rules

    def rule(self, bb, var, value):
        for rule in self.rules_for(op_name(value)):
            result = rule(bb, value)
            if isinstance(result, (IntRep, TableRep)):
                self.reps[var] = result
                return var  # a placeholder: consumers look its form up; float_of emits it if needed
            if result is not None:
                return result
        return self.emit_float(bb, var, value)

    def emit_float(self, bb, var, value):
        used = vars_in(value)
        value = substitute(value, {v: self.float_of(bb, v) for v in used if v in self.reps})
        if isinstance(value, relax.Var) or is_const(value):
            return value
        return bb.emit(value, str(var.name))

    def finish(self, bb, result):
        return substitute(result, {v: self.float_of(bb, v) for v in vars_in(result) if v in self.reps})


def realize(mod, per_channel: bool = True):
    """The Realize pass."""
    r = Realizer(per_channel)
    return relax.transform.DeadCodeElimination(["main"])(rewrite_main(mod, r.rule, r.finish))
