"""Relax pass: int8 convolutions and matmuls with constant weights become one packed kernel per
layer, in the layout the family's dot-product instruction reads.

    conv2d(x int8/uint8 NCHW, W int8 const OIHW, out int32)
      -> packed_conv(x, Wp, corr)   Wp[OC/lanes, KH, KW, C/kpack, lanes, kpack]  (packed at compile time)

Inside the kernel the input is padded, moved to channels-last and widened/shifted to the family's
activation type (one pass over the input); the dot product then reads `kpack` contiguous input
channels and one contiguous weight tile per instruction. A shifted activation (x + s, to feed a
u8 x s8 instruction with int8 data) is corrected exactly by `corr[oc] = s * sum(W[oc])`.
A matmul x[M, K] @ W[K, N] is the 1x1 convolution of x viewed as [M, K, 1, 1].

The kernel's dot-product block carries `schedule_rule = qcompile_int8_dot`: the default schedule
and MetaSchedule (through its custom-rule hook) both schedule it with `int8_schedule`."""

from __future__ import annotations

import functools

import numpy as np
import tvm
from tvm import relax, te, tirx

from qcompile.quantize.ir import const_value, emit_as_is, is_const, op_name, rewrite_main, tensor_dtype

from .intrinsics import Int8Kernel

RULE = "qcompile_int8_dot"
KERNEL_NAME = "qcompile_int8_conv"


def pack_weight(w: np.ndarray, kernel: Int8Kernel) -> np.ndarray:
    """OIHW int8 -> [OC/lanes, KH, KW, C/kpack, lanes, kpack], zero-padded to whole tiles."""
    oc, c, kh, kw = w.shape
    L, KP = kernel.lanes, kernel.kpack
    oco, co = -(-oc // L), -(-c // KP)
    padded = np.zeros((oco * L, co * KP, kh, kw), np.int8)
    padded[:oc, :c] = w
    return np.ascontiguousarray(padded.reshape(oco, L, co, KP, kh, kw).transpose(0, 4, 5, 2, 1, 3))


def packed_conv_te(x, wp, corr, *, strides, padding, dilation, out_channels: int, kernel: Int8Kernel, shift: int):
    n, c, h, w = (int(d) for d in x.shape)
    oco, kh, kw, co, L, KP = (int(d) for d in wp.shape)
    pt, pl, pb, pr = padding
    sh, sw = strides
    dh, dw = dilation
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    act = kernel.act_dtype
    fill = tirx.const(shift, act)

    def packed(i, y, z, ch):
        inside = tirx.all(y >= pt, y < h + pt, z >= pl, z < w + pl, ch < c)
        value = (x[i, tirx.min(ch, c - 1), y - pt, z - pl].astype("int32") + shift).astype(act)
        return tirx.if_then_else(inside, value, fill)

    i64 = lambda v: tirx.IntImm("int64", v)  # noqa: E731 - Relax kernels index in int64
    xp = te.compute(tuple(map(i64, (n, h + pt + pb, w + pl + pr, co * KP))), packed, name="pack_input")
    rkh, rkw = te.reduce_axis((i64(0), i64(kh)), "kh"), te.reduce_axis((i64(0), i64(kw)), "kw")
    rco, rki = te.reduce_axis((i64(0), i64(co)), "co"), te.reduce_axis((i64(0), i64(KP)), "ki")
    acc = te.compute(
        tuple(map(i64, (n, oh, ow, oco, L))),
        lambda i, y, z, o, l: te.sum(
            xp[i, y * sh + rkh * dh, z * sw + rkw * dw, rco * KP + rki].astype("int32")
            * wp[o, rkh, rkw, rco, l, rki].astype("int32"),
            axis=[rkh, rkw, rco, rki]),
        name="int8_dot", attrs={"schedule_rule": RULE})
    return te.compute(tuple(map(i64, (n, out_channels, oh, ow))),
                      lambda i, o, y, z: acc[i, y, z, o // L, o % L] - corr[o], name="unpack")


def _conv_args(call) -> dict | None:
    a = call.attrs
    if (int(a.groups) != 1 or a.data_layout != "NCHW" or a.kernel_layout != "OIHW"
            or a.out_layout != "NCHW" or str(a.out_dtype) != "int32"):
        return None
    return {"strides": [int(s) for s in a.strides], "padding": [int(p) for p in a.padding],
            "dilation": [int(d) for d in a.dilation]}


def _eligible(call) -> bool:
    x, w = call.args[0], call.args[1]
    return (tensor_dtype(x) in ("int8", "uint8") and is_const(w) and tensor_dtype(w) == "int8"
            and all(isinstance(d, tirx.IntImm) for d in x.ty.shape.values))


def _emit_packed(bb, x, weight_oihw: np.ndarray, conv: dict, kernel: Int8Kernel, name: str):
    shift = kernel.shift(tensor_dtype(x))
    wp = pack_weight(weight_oihw, kernel)
    corr = (shift * weight_oihw.astype(np.int64).reshape(weight_oihw.shape[0], -1).sum(1)).astype(np.int32)
    te_func = functools.partial(packed_conv_te, out_channels=weight_oihw.shape[0], kernel=kernel, shift=shift, **conv)
    return bb.emit_te(te_func, x, relax.const(wp, "int8"), relax.const(corr, "int32"),
                      primfunc_name_hint=KERNEL_NAME, name_hint=name)


def _rule(kernel: Int8Kernel):
    def rule(bb, var, value):
        name = op_name(value)
        if name == "nn.conv2d" and _eligible(value) and (conv := _conv_args(value)) is not None:
            return _emit_packed(bb, value.args[0], const_value(value.args[1]), conv, kernel, var.name)
        if name == "matmul" and _eligible(value) and str(value.attrs.out_dtype) == "int32":
            x, w = value.args[0], const_value(value.args[1])
            if len(x.ty.shape.values) == 2 and w.ndim == 2:
                m, k = (int(d) for d in x.ty.shape.values)
                x4 = bb.emit(relax.op.reshape(x, (m, k, 1, 1)))
                conv = {"strides": [1, 1], "padding": [0, 0, 0, 0], "dilation": [1, 1]}
                y = _emit_packed(bb, x4, w.T.reshape(w.shape[1], k, 1, 1), conv, kernel, var.name + "_packed")
                return bb.emit(relax.op.reshape(y, (m, w.shape[1])), var.name)
        return emit_as_is(bb, var, value)

    return rule


def pack_int8_pass(kernel: Int8Kernel):
    """The module pass for one family's kernel."""

    @tvm.transform.module_pass(opt_level=0, name="qcompile.PackInt8")
    def _pass(mod, _ctx):
        if not any(op_name(v) in ("nn.conv2d", "matmul") and _eligible(v)
                   for block in mod["main"].body.blocks for v in (b.value for b in block.bindings)):
            return mod
        return rewrite_main(mod, _rule(kernel))

    return _pass

