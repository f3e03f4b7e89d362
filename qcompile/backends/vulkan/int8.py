"""Relax pass for the WGSL (Vulkan through WebGPU) family: the realized integer graph in the types
WGSL has. WGSL has no 8-, 16- or 64-bit integers (TVM's WebGPU codegen narrows every index and
constant to 32 bits); its integer dot product reads four int8 values packed in one 32-bit word.

    astype(x, int8|uint8|int16)        -> astype(x, int32)        (values already clipped by realize)
    quantize(x, s, zp, int8|uint8)     -> round(x / s) + zp clipped to the 8-bit range, held in int32
    (astype(x, int64) * M + 2^(s-1)) >> s
                                       -> the same 64-bit product, shift and rounding in 32-bit words
                                          (a WGSL function of ours, MUL_SHIFT_WGSL)
    conv2d / matmul (int8 x, int8 W)   -> pack4(x) then sum of dot4I8Packed(x word, W word)
                                          (W packed four input channels per word at compile time)

Narrow tensors between kernels are held in int32. The dot-product kernels read their input once
to pack it, four channels per word, and then only the packed words."""

from __future__ import annotations

import functools

import numpy as np
import tvm
from tvm import relax, te, tirx
from tvm.relax import op as R

from ...errors import QCompileError
from ...ir import const_value, is_const, main_bindings, op_name, rewrite_main, tensor_dtype
from ...quantize.realize import match_mul_shift
from ..packed.pack import ONE_BY_ONE, emit_matmul_as_conv

NARROW = ("int8", "uint8", "int16")
DOT_KERNEL = "qcompile_dot4_conv"
PACK_KERNEL = "qcompile_pack4"
# pack4 reads four elements of its input: fused with the producer, the producer's arithmetic (with
# its `let`s) would be inlined four times. An opaque pattern keeps it a kernel of its own.
OPAQUE = {"op_pattern": 8}
DOT_INTRINSIC = "dot4I8Packed"


def _u32(v: int):
    return tirx.const(v, "uint32")


def _bits_as_i32(word):
    """uint32 word -> int32 of the same bits. Not astype: TVM's arithmetic takes a cast to keep the
    value, so it would bound the result below by 0 and drop a later clip's lower bound."""
    return tirx.reinterpret("int32", word)


def pack_weight_words(w: np.ndarray) -> np.ndarray:
    """int8 [O, C, ...] -> int32 words [O, ceil(C/4), ...]: channel 4k+j in byte j (zero-padded)."""
    o, c = w.shape[:2]
    c4 = -(-c // 4)
    padded = np.zeros((o, c4 * 4, *w.shape[2:]), np.int8)
    padded[:, :c] = w
    moved = np.moveaxis(padded.reshape(o, c4, 4, *w.shape[2:]), 2, -1)
    return np.ascontiguousarray(moved).view(np.int32).reshape(o, c4, *w.shape[2:])


def pack4_te(x):
    """int32 [N, C, ...] holding int8 values -> int32 words [N, ceil(C/4), ...]."""
    n, c = x.shape[0], int(x.shape[1])
    rest = list(x.shape[2:])

    def word(i, k, *r):
        v = _u32(0)
        for j in range(4):
            ch = k * 4 + j
            byte = tirx.if_then_else(ch < c, x[(i, tirx.min(ch, c - 1), *r)], 0).astype("uint32") & _u32(0xFF)
            v = v | (byte << _u32(8 * j))
        return _bits_as_i32(v)

    return te.compute((n, (c + 3) // 4, *rest), word, name="pack4")


def dot4_conv_te(xp, wp, *, strides, padding, dilation):
    """NCHW conv of packed words: out[n, o, y, x] = sum over (c4, kh, kw) of dot4I8Packed."""
    n, c4, h, w = xp.shape
    o, _, kh, kw = wp.shape
    (sh, sw), (dh, dw) = strides, dilation
    pt, pl, pb, pr = padding
    oh = (int(h) + pt + pb - (int(kh) - 1) * dh - 1) // sh + 1
    ow = (int(w) + pl + pr - (int(kw) - 1) * dw - 1) // sw + 1
    rc, ry, rx = te.reduce_axis((0, c4), "rc"), te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")

    def acc(i, oc, y, z):
        iy, ix = y * sh + ry * dh - pt, z * sw + rx * dw - pl
        inside = tirx.all(iy >= 0, iy < h, ix >= 0, ix < w)
        xw = tirx.if_then_else(inside, xp[i, rc, tirx.max(tirx.min(iy, h - 1), 0), tirx.max(tirx.min(ix, w - 1), 0)], 0)
        dot = tirx.call_pure_extern("int32", DOT_INTRINSIC, xw.astype("uint32"), wp[oc, rc, ry, rx].astype("uint32"))
        return te.sum(dot, axis=[rc, ry, rx])

    return te.compute((n, o, oh, ow), acc, name="dot4_conv")


MUL_SHIFT = "qcompile_mul_shift"
# floor((x * m + 2^(s-1)) / 2^s) for i32 x, 0 <= m < 2^31, 1 <= s <= 62: realize's int64 requantize
# in 32-bit words (16-bit limbs for the 64-bit product). A WGSL function of its own, called by the
# kernels: x is computed once however large the producer fused into it, and TVM's arithmetic, which
# takes integer additions and casts never to wrap, never sees (and simplifies away) the wrapping words.
MUL_SHIFT_WGSL = """fn qcompile_mul_shift(x: i32, m: i32, s: i32) -> i32 {
  let ux = bitcast<u32>(x);
  let um = bitcast<u32>(m);
  let a0 = ux & 0xFFFFu;
  let a1 = ux >> 16u;
  let b0 = um & 0xFFFFu;
  let b1 = um >> 16u;
  let p00 = a0 * b0;
  let p01 = a0 * b1;
  let p10 = a1 * b0;
  let mid = (p00 >> 16u) + (p01 & 0xFFFFu) + (p10 & 0xFFFFu);
  let lo = (mid << 16u) | (p00 & 0xFFFFu);
  // bitcast<u32>(x) = x + 2^32 when x < 0: take m * 2^32 back off the high word
  let hi = a1 * b1 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u) - select(0u, um, x < 0i);
  let low_round = select(0u, 1u << u32(clamp(s - 1i, 0i, 31i)), s <= 32i);
  let high_round = select(0u, 1u << u32(clamp(s - 33i, 0i, 31i)), s > 32i);
  let lo2 = lo + low_round;
  let hi2 = hi + high_round + select(0u, 1u, lo2 < lo);
  if (s >= 32i) {
    return bitcast<i32>(hi2) >> u32(min(s - 32i, 31i));
  }
  let k = u32(clamp(s, 1i, 31i));
  return bitcast<i32>((lo2 >> k) | (hi2 << (32u - k)));
}
"""
WGSL_FUNCTIONS = {MUL_SHIFT: MUL_SHIFT_WGSL}  # helper name -> its WGSL, put before every kernel calling it


def mul_shift_te(x, mult, shift):
    """The fixed-point requantize of int32 x by per-channel (or scalar) mult and shift, as a call
    of MUL_SHIFT_WGSL."""

    def at(t, idx):
        return t[tuple(i if int(d) != 1 else 0 for i, d in zip(idx[len(idx) - len(t.shape):], t.shape))]

    return te.compute(x.shape, lambda *idx: tirx.call_pure_extern("int32", MUL_SHIFT, x[idx], at(mult, idx), at(shift, idx)),
                      name="mul_shift")


def quantize_te(x, scale, zp, *, axis: int, qmin: int, qmax: int):
    """R.quantize's arithmetic (legalize_ops/qdq.py) with the 8-bit result held in int32."""

    def value(t, idx):
        return t[(0,) * len(t.shape)] if all(int(d) == 1 for d in t.shape) else t[idx[axis]]

    def f(*idx):
        q = te.round(x[idx] / value(scale, idx)) + value(zp, idx).astype("float32")
        return te.max(te.min(q, tirx.const(qmax, "float32")), tirx.const(qmin, "float32")).astype("int32")

    return te.compute(x.shape, f, name="quantized")


def _emit_dot4(bb, x, weight_oihw: np.ndarray, conv: dict, name: str):
    """pack4(x) as a kernel of its own, then the dot4I8Packed convolution against the packed weight."""
    xp = bb.emit_te(pack4_te, x, primfunc_name_hint=PACK_KERNEL, primfunc_attrs=OPAQUE, name_hint=name + "_x4")
    return bb.emit_te(functools.partial(dot4_conv_te, **conv), xp, relax.const(pack_weight_words(weight_oihw)),
                      primfunc_name_hint=DOT_KERNEL, name_hint=name)


class _Rewrite:
    def __init__(self):
        self.defs: dict = {}    # emitted expression -> the value it was emitted for (to match the requantize chain)
        self.narrow: set = set()  # new expressions that hold 8-bit values in int32

    def _widened_consts(self, call):
        args = [relax.const(const_value(a).astype(np.int32)) if is_const(a) and tensor_dtype(a) in NARROW else a
                for a in call.args]
        return relax.Call(call.op, args, call.attrs, call.ty_args)

    def _requantize(self, value):
        """(x, M, s) when value is right_shift(add(multiply(astype(x, int64), M), R), s), R = 2^(s-1)."""
        if op_name(value) != "right_shift" or tensor_dtype(value.args[1]) != "int64":
            return None  # realize's int32 rescale of an 8-bit value: plain 32-bit arithmetic already
        matched = match_mul_shift(value, self.defs)
        if matched is None or matched[3]:  # a zero point inside the chain: refused by check_symmetric
            return None
        x, m, s, _ = matched
        return x, m.astype(np.int32), s.astype(np.int32)

    def _dot_operands(self, value, x):
        w = value.args[1]
        return (x in self.narrow and is_const(w) and tensor_dtype(w) == "int8"
                and str(value.attrs.out_dtype) == "int32")

    def __call__(self, bb, var, value):
        out = self._rewrite(bb, var, value)
        self.defs[out] = value
        return out

    def _rewrite(self, bb, var, value):
        name = op_name(value)
        out_dtype = tensor_dtype(var)
        if isinstance(value, relax.Var) or is_const(value):
            if is_const(value) and tensor_dtype(value) in NARROW:
                return relax.const(const_value(value).astype(np.int32))
            return value
        if name == "astype" and out_dtype in NARROW:
            out = bb.emit(R.astype(value.args[0], "int32"), var.name)
            self.narrow.add(out)
            return out
        if name == "quantize" and out_dtype in ("int8", "uint8"):
            info = np.iinfo(out_dtype)
            fn = functools.partial(quantize_te, axis=int(value.attrs.axis) % len(var.ty.shape.values),
                                   qmin=int(info.min), qmax=int(info.max))
            out = bb.emit_te(fn, *value.args, primfunc_name_hint="quantize", name_hint=var.name)
            self.narrow.add(out)
            return out
        if (matched := self._requantize(value)) is not None:
            x, m, s = matched
            if tensor_dtype(x) != "int32":
                x = bb.emit(R.astype(x, "int32"))
            return bb.emit_te(mul_shift_te, x, relax.const(m), relax.const(s), primfunc_name_hint="requantize",
                              name_hint=var.name)
        if name == "nn.conv2d" and int(value.attrs.groups) == 1 and value.attrs.data_layout == "NCHW" \
                and value.attrs.kernel_layout == "OIHW" and self._dot_operands(value, value.args[0]):
            a = value.attrs
            conv = {"strides": [int(v) for v in a.strides], "padding": [int(v) for v in a.padding],
                    "dilation": [int(v) for v in a.dilation]}
            return _emit_dot4(bb, value.args[0], const_value(value.args[1]), conv, var.name)
        if name == "matmul" and self._dot_operands(value, value.args[0]) and len(value.args[0].ty.shape.values) == 2 \
                and const_value(value.args[1]).ndim == 2:
            return emit_matmul_as_conv(bb, value.args[0], const_value(value.args[1]), var.name,
                                       lambda bb, x4, w4, name: _emit_dot4(bb, x4, w4, ONE_BY_ONE, name))
        call = self._widened_consts(value) if isinstance(value, relax.Call) else value
        out = bb.emit(call, var.name)
        if name in ("nn.max_pool2d", "reshape", "squeeze", "expand_dims", "permute_dims", "nn.pad", "clip") and \
                isinstance(value, relax.Call) and value.args[0] in self.narrow:
            self.narrow.add(out)
        return out


def check_symmetric(mod) -> None:
    """Refuse uint8 (asymmetric) activations in one line: dot4I8Packed reads every byte as signed,
    and the zero points realize adds around the requantize have no 32-bit form here yet, so such a
    module would compute wrong results rather than fail."""
    for var, value in main_bindings(mod):
        if op_name(value) in ("astype", "quantize") and tensor_dtype(var) == "uint8":
            raise QCompileError(f"vulkan: tensor '{var.name}' holds asymmetric (uint8) activations, which the WGSL "
                                "kernels do not support; quantize with symmetric activations (without --asymmetric)")


def wgsl_int_pass():
    """The module pass (then DeadCodeElimination drops the int64 chains the rewrite bypassed)."""

    @tvm.transform.module_pass(opt_level=0, name="qcompile.WGSLIntegers")
    def _pass(mod, _ctx):
        mod = rewrite_main(mod, _Rewrite())
        return relax.transform.DeadCodeElimination()(mod)

    return _pass
