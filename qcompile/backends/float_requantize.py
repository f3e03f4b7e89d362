"""Relax pass for backends whose vector units lack a cheap 64-bit multiply (x86 AVX2, ARM NEON,
WGSL): realize's requantize to 8 bits in float32 rather than in int64 fixed point.

    astype(clip(((astype(x, int64) [- zp_in]) * M + 2^(s-1)) >> s [+ zp], lo, hi), int8|uint8)
      -> astype(clip(round((astype(x, float32) [- zp_in]) * (M / 2^s)) [+ zp], lo, hi), int8|uint8)

AVX2 has no 64-bit vector multiply or arithmetic shift, so the int64 chain took more time than the
convolution it followed on layers with few input channels (PP-LCNet int8 on AVX2: kernel time
3.8 -> 2.7 ms); this is the requantization onnxruntime's and XNNPACK's x86 kernels use too.
One float multiply and one round to nearest even (IEEE, no fused multiply-add possible) give the
same integers on every CPU and on the GPU: an x86 build, its rpi5 build under qemu and its Vulkan
build still agree bit for bit. Against the fixed-point form a value can move by one step where
x * M / 2^s lies within float32's rounding of a half (under one value in a thousand in the tests), which
is within what verification allows (one step against the simulated model).

A quantize of float values with one scale (a float island's exit, the model's input) multiplies by
the scale's inverse rather than dividing by it (PReLU islands in MTCNN: a division per element).

Only rescales to 8 bits are rewritten: their results are clipped to 256 values, so float32's 24 bits
hold them exactly. Rescales to int32 (the common scale of a residual add) keep their integer form:
in float32 as well (clipped to the int32 range), BlazeFace's int8 kernels took 1.2-1.4x longer,
measured in alternating rounds on AVX2. Realize already gives an 8-bit input's rescale an int32
form (quantize/realize.py, int32_fixed_point); only int32 inputs still multiply in int64."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R

from ..ir import const_value, emit_as_is, is_scalar_const, op_name, operand, rewrite_main, tensor_dtype
from ..quantize.realize import NARROW, match_mul_shift


class _Rewrite:
    def __init__(self):
        self.defs: dict = {}  # emitted variable -> its value (the chain is matched backwards from the astype)

    def __call__(self, bb, var, value):
        out = self._rewrite(bb, var, value)
        if isinstance(out, relax.Var):
            self.defs[out] = value
        return out

    def _chain(self, value):
        """(x, M, s, zp_in, zp, lo, hi) when value is astype(clip(mul_shift [+ zp], lo, hi), narrow)."""
        if op_name(value) != "astype" or str(value.attrs.dtype) not in NARROW:
            return None
        clip = self.defs.get(value.args[0])
        if op_name(clip) != "clip":
            return None
        lo, hi = int(clip.args[1].value), int(clip.args[2].value)
        shifted, zp = self.defs.get(clip.args[0]), 0
        if op_name(shifted) == "add" and is_scalar_const(shifted.args[1]):
            zp, shifted = int(const_value(shifted.args[1]).item()), self.defs.get(shifted.args[0])
        matched = match_mul_shift(shifted, self.defs) if shifted is not None else None
        if matched is None:
            return None
        x, m, s, zp_in = matched
        if zp_in and tensor_dtype(x) not in NARROW:  # x - zp_in would not be exact in float32
            return None
        return x, m, s, zp_in, zp, lo, hi

    def _rewrite(self, bb, var, value):
        if op_name(value) == "quantize" and str(value.attrs.out_dtype) in NARROW and \
                all(is_scalar_const(a) for a in value.args[1:]):
            return self._quantize(bb, var, value)
        chain = self._chain(value)
        if chain is None:
            return emit_as_is(bb, var, value)
        x, m, s, zp_in, zp, lo, hi = chain
        ratio = (m.astype(np.float64) * np.exp2(-s.astype(np.float64))).astype(np.float32)
        y = R.astype(x, "float32")
        if zp_in:
            y = R.subtract(y, operand(zp_in, "float32"))
        y = R.round(R.multiply(y, relax.const(ratio) if ratio.ndim else operand(ratio, "float32")))
        if zp:
            y = R.add(y, operand(zp, "float32"))
        return bb.emit(R.astype(R.clip(y, lo, hi), str(value.attrs.dtype)), var.name)

    @staticmethod
    def _quantize(bb, var, value):
        """quantize(x, s, zp) with one scale: x * (1 / s) rather than TVM's x / s (a division per
        element, several times a multiply's cost; the two differ by at most one float32 rounding)."""
        x, scale, zp = value.args
        dtype = str(value.attrs.out_dtype)
        info, zero = np.iinfo(dtype), int(const_value(zp).item())
        y = R.round(R.multiply(x, operand(1.0 / const_value(scale).item(), tensor_dtype(x))))
        if zero:
            y = R.add(y, operand(zero, tensor_dtype(x)))
        return bb.emit(R.astype(R.clip(y, int(info.min), int(info.max)), dtype), var.name)


def float_requantize_pass():
    """The module pass (DeadCodeElimination drops the int64 chains the rewrite bypassed)."""

    @tvm.transform.module_pass(opt_level=0, name="qcompile.FloatRequantize")
    def _pass(mod, _ctx):
        mod = rewrite_main(mod, _Rewrite())
        return tvm.transform.Sequential([relax.transform.CanonicalizeBindings(),
                                         relax.transform.DeadCodeElimination()])(mod)

    return _pass
