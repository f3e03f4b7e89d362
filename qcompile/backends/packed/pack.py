"""Relax pass: int8 convolutions and matmuls with constant weights become one packed kernel per
layer, in the layout the family's dot-product instruction reads.

    conv2d(x int8/uint8 NCHW, W int8 const OIHW, out int32)
      -> packed_conv(x, Wp, corr)   Wp[OC/lanes, KH, KW, C/kpack, lanes, kpack]  (packed at compile time)

Inside the kernel the input is padded, moved to channels-last and widened/shifted to the family's
activation type (one pass over the input); the dot product then reads `kpack` contiguous input
channels and one contiguous weight tile per instruction. A shifted activation (x + s, to feed a
u8 x s8 instruction with int8 data) is corrected exactly by `corr[oc] = s * sum(W[oc])`.
A matmul x[M, K] @ W[K, N] is the 1x1 convolution of x viewed as [M, K, 1, 1].

Weights whose codes all fit in 4 bits (int4 layers) are stored two per byte along `kpack` (low
nibble first) and unpacked inside the kernel, before the dot product reads them: half the bytes of
int8 in the artifact and in memory.

Depthwise convolutions (one filter per channel) become a packed kernel of their own: channels-last,
`lanes` channels per vector, int16 activations, no dot-product instruction (nothing to sum across
channels).

The kernel's dot-product block carries `schedule_rule = qcompile_int8_dot`: the default schedule
and MetaSchedule (through its custom-rule hook) both schedule it with packed/schedule.py."""

from __future__ import annotations

import functools

import numpy as np
import tvm
from tvm import relax, te, tirx

from ...ir import const_value, emit_as_is, is_const, op_name, rewrite_main, tensor_dtype
from ..families import Int8Kernel

RULE = "qcompile_int8_dot"
KERNEL_NAME = "qcompile_int8_conv"
DEPTHWISE_NAME = "qcompile_int8_depthwise"
FLOAT_KERNEL_NAME = "qcompile_f32_conv"
FLOAT_DEPTHWISE_NAME = "qcompile_f32_depthwise"


def float_kernel(lanes: int) -> Int8Kernel:
    """The packed kernel of float32 layers: `lanes` output channels per vector register (the ISA's
    float vector), one input channel per multiply-add (LLVM vectorizes the lane loop into FMAs)."""
    return Int8Kernel(lanes, 1, "float32", None, "fma")


def pack_weight(w: np.ndarray, kernel: Int8Kernel) -> np.ndarray:
    """OIHW (int8 or float32) -> [OC/lanes, KH, KW, C/kpack, lanes, kpack], zero-padded to whole tiles."""
    oc, c, kh, kw = w.shape
    L, KP = kernel.lanes, kernel.kpack
    oco, co = -(-oc // L), -(-c // KP)
    padded = np.zeros((oco * L, co * KP, kh, kw), w.dtype)
    padded[:oc, :c] = w
    return np.ascontiguousarray(padded.reshape(oco, L, co, KP, kh, kw).transpose(0, 4, 5, 2, 1, 3))


def pair_sums_fit(w: np.ndarray, kernel: Int8Kernel) -> bool:
    """Whether, packed for `kernel`, every adjacent pair of weights along kpack sums its positive
    and its negative parts within kernel.pair_limit: then u8 x s8 pair sums fit in int16."""
    pairs = pack_weight(w, kernel).astype(np.int32).reshape(-1, 2)
    limit = kernel.pair_limit
    return bool(np.clip(pairs, 0, None).sum(1).max() <= limit and np.clip(pairs, None, 0).sum(1).min() >= -limit)


def fits_int4(w: np.ndarray) -> bool:
    return w.size > 0 and int(w.min()) >= -8 and int(w.max()) <= 7


def pack_int4(wp: np.ndarray) -> np.ndarray:
    """Pairs along the last axis into one byte each: element 2i in the low nibble, 2i+1 in the high."""
    lo, hi = wp[..., 0::2].astype(np.int32), wp[..., 1::2].astype(np.int32)
    return ((lo & 0xF) | (hi << 4)).astype(np.uint8).view(np.int8)


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    """The inverse of pack_int4 (sign-extended nibbles)."""
    v = packed.astype(np.int32)
    lo, hi = (v << 28) >> 28, v >> 4
    return np.stack([lo, hi], axis=-1).reshape(*packed.shape[:-1], -1).astype(np.int8)


def _unpack_int4_te(wp4):
    """The kernel's first stage for an int4 layer: sign-extended nibbles back to int8."""
    shape = [*wp4.shape[:-1], wp4.shape[-1] * 2]

    def nibble(*idx):
        byte = wp4[(*idx[:-1], idx[-1] // 2)].astype("int32")
        low = (byte << 28) >> 28
        return tirx.if_then_else(idx[-1] % 2 == 0, low, byte >> 4).astype("int8")

    return te.compute(shape, nibble, name="unpack_int4")


MAX_TILE = 8  # output pixels per register block: 8 accumulators of one vector each
STACK_BYTES = 1024  # TVM keeps a buffer on the stack (in registers) only under this size (kMaxStackAlloca)


def max_tile(lanes: int, channel_blocks: int) -> int:
    """Output pixels per register tile of `channel_blocks` vectors of `lanes` int32 accumulators:
    MAX_TILE, or fewer where the accumulators would leave the stack."""
    return min(MAX_TILE, (STACK_BYTES - 1) // (4 * lanes * channel_blocks))


def default_tile(width: int, pixels: int = 1, most: int = MAX_TILE) -> int:
    """The register tile: the largest divisor of the row that is a multiple of `pixels`, up to `most`."""
    return max(t for t in range(pixels, most + 1, pixels) if width % t == 0)


def padded_width(width: int, pixels: int = 1) -> int:
    """The output row a kernel computes: `width`, or where no tile of at least 4 pixels divides it,
    the next multiple of MAX_TILE (the extra pixels read padding and are dropped). MTCNN's rows of
    43, 59 and 61 pixels otherwise ran one pixel per tile, each weight vector loaded once per pixel."""
    return width if default_tile(width, pixels) >= min(4, width) else -(-width // MAX_TILE) * MAX_TILE


def _i64(v):
    return tirx.IntImm("int64", v)  # Relax kernels index in int64


def _out_size(size: int, pad: int, k: int, stride: int, dilation: int) -> int:
    return (size + pad - dilation * (k - 1) - 1) // stride + 1


def _nchw(dims, layout: str) -> tuple[int, int, int, int]:
    """(n, c, h, w) of a 4-D shape in `layout`."""
    n, *rest = (int(d) for d in dims)
    return (n, *rest) if layout == "NCHW" else (n, rest[2], rest[0], rest[1])


def _at(x, layout: str, i, ch, y, z):
    return x[i, ch, y, z] if layout == "NCHW" else x[i, y, z, ch]


def _is_float(dtype: str) -> bool:
    return dtype.startswith("float")


def _pack_input(x, channels: int, padding, act: str, shift: int, layout: str = "NCHW"):
    """x (NCHW or NHWC) -> padded, channels-last, shifted/widened to `act`, channels zero-filled to
    `channels`: a transpose for NCHW, a contiguous copy for NHWC."""
    n, c, h, w = _nchw(x.shape, layout)
    pt, pl, pb, pr = padding
    if layout == "NHWC" and not any(padding) and channels == c and shift == 0 and str(x.dtype) == act:
        return x  # already what the dot reads (a 1x1 convolution, a matmul): no copy
    fill = tirx.const(shift, act)

    def packed(i, y, z, ch):
        inside = tirx.all(y >= pt, y < h + pt, z >= pl, z < w + pl, ch < c)
        value = _at(x, layout, i, tirx.min(ch, c - 1), y - pt, z - pl)
        value = value.astype(act) if _is_float(act) else (value.astype("int32") + shift).astype(act)
        return tirx.if_then_else(inside, value, fill)

    return te.compute(tuple(map(_i64, (n, h + pt + pb, w + pl + pr, channels))), packed, name="pack_input")


def _wider(padding, right: int):
    """The padding with `right` more columns on the right (a padded output row reads them)."""
    pt, pl, pb, pr = padding
    return pt, pl, pb, pr + right


def _unpack(acc, n, channels, oh, ow, lanes, layout, corr=None, dtype=None):
    """The accumulators [n, oh, oc/lanes, ow, lanes] -> the output in the layer's layout (as `dtype`)."""
    def value(i, o, y, z):
        v = acc[i, y, o // lanes, z, o % lanes]
        v = v if dtype is None or dtype == str(acc.dtype) else v.astype(dtype)
        return v if corr is None else v - corr[o]

    if layout == "NCHW":
        return te.compute(tuple(map(_i64, (n, channels, oh, ow))), value, name="unpack")
    return te.compute(tuple(map(_i64, (n, oh, ow, channels))), lambda i, y, z, o: value(i, o, y, z), name="unpack")


def packed_conv_te(x, wp, corr, *, strides, padding, dilation, out_channels: int, kernel: Int8Kernel, shift: int,
                   int4: bool = False, layout: str = "NCHW"):
    if int4:
        wp = _unpack_int4_te(wp)
    n, _, h, w = _nchw(x.shape, layout)
    oco, kh, kw, co, L, KP = (int(d) for d in wp.shape)
    (sh, sw), (dh, dw) = strides, dilation
    oh = _out_size(h, padding[0] + padding[2], kh, sh, dh)
    ow = _out_size(w, padding[1] + padding[3], kw, sw, dw)
    owp = padded_width(ow, kernel.pixels)
    xp = _pack_input(x, co * KP, _wider(padding, (owp - ow) * sw), kernel.act_dtype, shift, layout)
    acc_dtype = kernel.act_dtype if _is_float(kernel.act_dtype) else "int32"
    rkh, rkw = te.reduce_axis((_i64(0), _i64(kh)), "kh"), te.reduce_axis((_i64(0), _i64(kw)), "kw")
    rco, rki = te.reduce_axis((_i64(0), _i64(co)), "co"), te.reduce_axis((_i64(0), _i64(KP)), "ki")
    acc = te.compute(
        tuple(map(_i64, (n, oh, oco, owp, L))),
        lambda i, y, o, z, l: te.sum(
            xp[i, y * sh + rkh * dh, z * sw + rkw * dw, rco * KP + rki].astype(acc_dtype)
            * wp[o, rkh, rkw, rco, l, rki].astype(acc_dtype),
            axis=[rkh, rkw, rco, rki]),
        name="int8_dot", attrs={"schedule_rule": RULE})
    return _unpack(acc, n, out_channels, oh, ow, L, layout, corr)


def pack_depthwise_weight(w: np.ndarray, lanes: int) -> np.ndarray:
    """[C, 1, KH, KW] (int8 or float32) -> [C/lanes, KH, KW, lanes], zero-padded."""
    c, _, kh, kw = w.shape
    cb = -(-c // lanes)
    padded = np.zeros((cb * lanes, kh, kw), w.dtype)
    padded[:c] = w[:, 0]
    return np.ascontiguousarray(padded.reshape(cb, lanes, kh, kw).transpose(0, 2, 3, 1))


def depthwise_exact_in_float(w: np.ndarray) -> bool:
    """Whether a depthwise layer of 8-bit codes (any input, these weights) sums exactly in float32."""
    _, _, kh, kw = w.shape
    return kh * kw * 255 * int(np.abs(w.astype(np.int64)).max(initial=0)) < 2**24


def packed_depthwise_te(x, wp, *, strides, padding, dilation, layout: str = "NCHW"):
    """Depthwise: each channel its own 2-D filter, `lanes` channels per vector; int16 activations
    (exact for int8 and uint8 alike, no shift), or float32 throughout: float weights on 8-bit codes
    sum them in float32 (depthwise_exact_in_float) and give int32."""
    n, c, h, w = _nchw(x.shape, layout)
    cb, kh, kw, L = (int(d) for d in wp.shape)
    (sh, sw), (dh, dw) = strides, dilation
    oh = _out_size(h, padding[0] + padding[2], kh, sh, dh)
    ow = _out_size(w, padding[1] + padding[3], kw, sw, dw)
    floating = _is_float(str(wp.dtype))
    act, acc_dtype = (str(wp.dtype), str(wp.dtype)) if floating else ("int16", "int32")
    owp = padded_width(ow)
    xp = _pack_input(x, cb * L, _wider(padding, (owp - ow) * sw), act, 0, layout)
    rkh, rkw = te.reduce_axis((_i64(0), _i64(kh)), "kh"), te.reduce_axis((_i64(0), _i64(kw)), "kw")
    acc = te.compute(
        tuple(map(_i64, (n, oh, cb, owp, L))),
        lambda i, y, o, z, l: te.sum(
            xp[i, y * sh + rkh * dh, z * sw + rkw * dw, o * L + l].astype(acc_dtype)
            * wp[o, rkh, rkw, l].astype(acc_dtype),
            axis=[rkh, rkw]),
        name="int8_dot", attrs={"schedule_rule": RULE})
    return _unpack(acc, n, c, oh, ow, L, layout, dtype=str(x.dtype) if _is_float(str(x.dtype)) else "int32")


ONE_BY_ONE = {"strides": [1, 1], "padding": [0, 0, 0, 0], "dilation": [1, 1]}


def emit_matmul_as_conv(bb, x, w: np.ndarray, name: str, emit_conv, layout: str = "NCHW"):
    """x[M, K] @ W[K, N] as a 1x1 convolution, reshaped back; `emit_conv(bb, x4, weight_oihw, name)`
    emits the convolution. NCHW: x viewed as M images [M, K, 1, 1]; NHWC: as one row of M pixels
    [1, 1, M, K] (no copy), so the packed kernel's register tile spans rows of x and each weight
    vector it loads serves up to 8 of them (as M images, one: the 512x384 @ 384x96 matmul of a
    transformer's MLP ran at a third of a plain matmul's speed). Leading dimensions of x (a
    recurrent layer's input projection over every time step, [T, B, K]) are rows too."""
    *lead, k = (int(d) for d in x.ty.shape.values)
    m = int(np.prod(lead))
    x4 = bb.emit(relax.op.reshape(x, (m, k, 1, 1) if layout == "NCHW" else (1, 1, m, k)))
    y = emit_conv(bb, x4, np.ascontiguousarray(w.T.reshape(w.shape[1], k, 1, 1)), name + "_conv")
    return bb.emit(relax.op.reshape(y, (*lead, w.shape[1])), name)


LAYOUTS = {("NCHW", "OIHW", "NCHW"): "NCHW", ("NHWC", "OHWI", "NHWC"): "NHWC"}  # (data, kernel, out) -> ours


def _conv_args(call, out_dtypes=("int32",)) -> dict | None:
    a = call.attrs
    layout = LAYOUTS.get((a.data_layout, a.kernel_layout, a.out_layout))
    if layout is None or str(a.out_dtype) not in out_dtypes:
        return None
    return {"strides": [int(s) for s in a.strides], "padding": [int(p) for p in a.padding],
            "dilation": [int(d) for d in a.dilation], "layout": layout}


def _weight_oihw(call, conv: dict) -> np.ndarray:
    w = const_value(call.args[1])
    return w if conv["layout"] == "NCHW" else np.ascontiguousarray(w.transpose(0, 3, 1, 2))


def _is_depthwise(call, conv: dict) -> bool:
    channels = _nchw(call.args[0].ty.shape.values, conv["layout"])[1]
    w_shape = list(_weight_oihw(call, conv).shape)
    return int(call.attrs.groups) == channels and w_shape[:2] == [channels, 1]


def is_eligible(call) -> bool:
    x, w = call.args[0], call.args[1]
    return (tensor_dtype(x) in ("int8", "uint8") and is_const(w) and tensor_dtype(w) == "int8"
            and all(isinstance(d, tirx.IntImm) for d in x.ty.shape.values))


def is_float_eligible(call) -> bool:
    x, w = call.args[0], call.args[1]
    return (tensor_dtype(x) == "float32" and is_const(w) and tensor_dtype(w) == "float32"
            and all(isinstance(d, tirx.IntImm) for d in x.ty.shape.values))


FLOAT_OUT = ("float32", "None", "void", "")  # a float convolution's out_dtype: float32, or unset (its input's)


def _emit_packed(bb, x, weight_oihw: np.ndarray, conv: dict, kernel: Int8Kernel, name: str):
    width = _nchw(x.ty.shape.values, conv["layout"])[3]
    kernel = kernel.for_layer(_out_size(width, conv["padding"][1] + conv["padding"][3], weight_oihw.shape[3],
                                        conv["strides"][1], conv["dilation"][1]), conv["strides"][1])
    kernel = kernel.for_weights(lambda k: pair_sums_fit(weight_oihw, k))
    shift = kernel.shift(tensor_dtype(x))
    wp = pack_weight(weight_oihw, kernel)
    int4 = fits_int4(weight_oihw) and kernel.kpack % 2 == 0
    if int4:
        wp = pack_int4(wp)
    corr = (shift * weight_oihw.astype(np.int64).reshape(weight_oihw.shape[0], -1).sum(1)).astype(np.int32)
    te_func = functools.partial(packed_conv_te, out_channels=weight_oihw.shape[0], kernel=kernel, shift=shift,
                                int4=int4, **conv)
    return bb.emit_te(te_func, x, relax.const(wp, "int8"), relax.const(corr, "int32"),
                      primfunc_name_hint=KERNEL_NAME, name_hint=name)


def _rule(kernel: Int8Kernel):
    def rule(bb, var, value):
        name = op_name(value)
        if name == "nn.conv2d" and is_eligible(value) and (conv := _conv_args(value)) is not None:
            if int(value.attrs.groups) == 1:
                return _emit_packed(bb, value.args[0], _weight_oihw(value, conv), conv, kernel, var.name)
            if _is_depthwise(value, conv):
                w = _weight_oihw(value, conv)
                if kernel.depthwise_float and depthwise_exact_in_float(w):
                    w = w.astype("float32")
                wp = pack_depthwise_weight(w, kernel.lanes)
                return bb.emit_te(functools.partial(packed_depthwise_te, **conv), value.args[0],
                                  relax.const(wp, str(wp.dtype)), primfunc_name_hint=DEPTHWISE_NAME, name_hint=var.name)
        if name == "matmul" and is_eligible(value) and str(value.attrs.out_dtype) == "int32":
            x, w = value.args[0], const_value(value.args[1])
            if len(x.ty.shape.values) >= 2 and w.ndim == 2:
                *lead, k = (int(d) for d in x.ty.shape.values)
                m = int(np.prod(lead))
                if kernel.tensor_core_matmul_min is not None and min(m, k, w.shape[1]) > kernel.tensor_core_matmul_min:
                    return emit_as_is(bb, var, value)  # left to the tensor-core matmul schedule
                conv = {**ONE_BY_ONE, "layout": "NHWC"}
                return emit_matmul_as_conv(bb, x, w, var.name,
                                           lambda bb, x4, w4, name: _emit_packed(bb, x4, w4, conv, kernel, name), "NHWC")
        return emit_as_is(bb, var, value)

    return rule


def _float_rule(kernel: Int8Kernel):
    def emit_conv(bb, x, weight_oihw: np.ndarray, conv: dict, name: str):
        te_func = functools.partial(packed_conv_te, corr=None, out_channels=weight_oihw.shape[0], kernel=kernel,
                                    shift=0, **conv)
        return bb.emit_te(te_func, x, relax.const(pack_weight(weight_oihw, kernel), "float32"),
                          primfunc_name_hint=FLOAT_KERNEL_NAME, name_hint=name)

    def rule(bb, var, value):
        name = op_name(value)
        if name == "nn.conv2d" and is_float_eligible(value) and (conv := _conv_args(value, FLOAT_OUT)) is not None:
            if int(value.attrs.groups) == 1:
                return emit_conv(bb, value.args[0], _weight_oihw(value, conv), conv, var.name)
            if _is_depthwise(value, conv):
                wp = pack_depthwise_weight(_weight_oihw(value, conv), kernel.lanes)
                return bb.emit_te(functools.partial(packed_depthwise_te, **conv), value.args[0],
                                  relax.const(wp, "float32"), primfunc_name_hint=FLOAT_DEPTHWISE_NAME,
                                  name_hint=var.name)
        # A matmul with constant weights, as the 1x1 convolution of its rows: against the default
        # schedule, 0.24-1.13x its time on 13 shapes (AVX-512), and whole vectors where N has no
        # power-of-two factor (a recognizer's 8210 classes: 9.3 -> 2.2 ms at 32x1024)
        if name == "matmul" and is_float_eligible(value) and len(value.args[0].ty.shape.values) >= 2:
            w = const_value(value.args[1])
            if w.ndim == 2:
                conv = {**ONE_BY_ONE, "layout": "NHWC"}
                return emit_matmul_as_conv(bb, value.args[0], w, var.name,
                                           lambda bb, x4, w4, name: emit_conv(bb, x4, w4, conv, name), "NHWC")
        return emit_as_is(bb, var, value)

    return rule


def pack_float_pass(kernel: Int8Kernel):
    """float32 convolutions with constant weights into packed kernels (float_kernel):
    weights packed at compile time, `lanes` output channels per vector, a register tile of pixels."""

    @tvm.transform.module_pass(opt_level=0, name="qcompile.PackFloat")
    def _pass(mod, _ctx):
        if not any(op_name(v) in ("nn.conv2d", "matmul") and is_float_eligible(v)
                   for block in mod["main"].body.blocks for v in (b.value for b in block.bindings)):
            return mod
        return rewrite_main(mod, _float_rule(kernel))

    return _pass


def pack_int8_pass(kernel: Int8Kernel):
    """The module pass for one family's kernel."""

    @tvm.transform.module_pass(opt_level=0, name="qcompile.PackInt8")
    def _pass(mod, _ctx):
        if not any(op_name(v) in ("nn.conv2d", "matmul") and is_eligible(v)
                   for block in mod["main"].body.blocks for v in (b.value for b in block.bindings)):
            return mod
        return rewrite_main(mod, _rule(kernel))

    return _pass

