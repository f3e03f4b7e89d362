"""pack_int8_pass (backends/packed/pack.py): Before modules against hand-built Expected modules, structurally."""

import functools

import numpy as np
import pytest
import tvm
from relax_builders import module, tensor_var
from tvm import relax
from tvm.relax import op as R

from qcompile.backends.families import FAMILIES
from qcompile.backends.packed.pack import (
    pack_depthwise_weight,
    pack_int4,
    pack_int8_pass,
    pack_weight,
    packed_conv_te,
    packed_depthwise_te,
)

RNG = np.random.default_rng(0)
W = RNG.integers(-127, 128, (6, 5, 3, 3)).astype("int8")  # channels that fill no whole tile; too wide for int4
W4 = RNG.integers(-8, 8, (6, 5, 3, 3)).astype("int8")  # 4-bit codes
WD = RNG.integers(-127, 128, (5, 1, 3, 3)).astype("int8")  # depthwise, one filter per channel
WM = RNG.integers(-127, 128, (12, 7)).astype("int8")  # matmul [K, N]
PAD1 = {"strides": [1, 1], "padding": [1, 1, 1, 1], "dilation": [1, 1]}


def _conv(x, w, **attrs):
    return R.nn.conv2d(x, w, padding=[1, 1, 1, 1], out_dtype="int32", **attrs)


def _packed_conv(bb, x, wp, corr, *, kernel, shift, int4=False, layout="NCHW", conv=PAD1, out_channels=6):
    """The packed kernel as the rule is documented to emit it: one call_tir of packed_conv_te."""
    te_func = functools.partial(packed_conv_te, out_channels=out_channels, kernel=kernel, shift=shift, int4=int4,
                                layout=layout, **conv)
    return bb.emit_te(te_func, x, relax.const(wp, "int8"), relax.const(corr, "int32"),
                      primfunc_name_hint="qcompile_int8_conv")


def _apply(family, mod):
    return pack_int8_pass(FAMILIES[family].int8)(mod)


# family -> the activation shift for int8 input (with 8-bit weights W)
SHIFTS = {
    "x86-vnni": 128,  # u8 x s8 instruction: int8 activations moved up by 128, corrected through corr
    "x86-avx2": 0,  # 8-bit weights could saturate vpmaddubsw: the exact int16 vpmaddwd kernel, no shift
    "arm-dotprod": 0,  # s8 x s8
    "cuda": 0,
}
AVX2_EXACT = FAMILIES["x86-avx2"].int8.fallback  # vpmaddwd on int16, the kernel of 8-bit weights


def _kernel_for_8bit_weights(family):
    return AVX2_EXACT if family == "x86-avx2" else FAMILIES[family].int8


@pytest.mark.parametrize("family", list(SHIFTS))
def test_int8_conv_becomes_one_packed_kernel(family):
    kernel = _kernel_for_8bit_weights(family)
    shift = SHIFTS[family]

    def before(bb, x):
        return bb.emit(_conv(x, relax.const(W)))

    def expected(bb, x):
        corr = (shift * W.astype(np.int64).sum(axis=(1, 2, 3))).astype(np.int32)
        return _packed_conv(bb, x, pack_weight(W, kernel), corr, kernel=kernel, shift=shift)

    x = tensor_var("x", (1, 5, 8, 8), "int8")
    got = _apply(family, module([x], before))
    tvm.ir.assert_structural_equal(got, module([x], expected))
    assert [gv.name_hint for gv in got.get_global_vars() if gv.name_hint != "main"] == ["qcompile_int8_conv"]


def test_uint8_input_is_shifted_down_for_a_signed_dot_product():
    kernel = FAMILIES["arm-dotprod"].int8  # s8 x s8: uint8 activations - 128, corrected by -128 * sum(W)

    def before(bb, x):
        return bb.emit(_conv(x, relax.const(W)))

    def expected(bb, x):
        corr = (-128 * W.astype(np.int64).sum(axis=(1, 2, 3))).astype(np.int32)
        return _packed_conv(bb, x, pack_weight(W, kernel), corr, kernel=kernel, shift=-128)

    x = tensor_var("x", (1, 5, 8, 8), "uint8")
    tvm.ir.assert_structural_equal(_apply("arm-dotprod", module([x], before)), module([x], expected))


def test_odd_width_layer_falls_back_from_smmla_to_sdot():
    fallback = FAMILIES["arm-dotprod"].int8  # smmla reads 2 adjacent pixels: a 7-wide output cannot

    def before(bb, x):
        return bb.emit(_conv(x, relax.const(W)))

    def expected(bb, x):
        return _packed_conv(bb, x, pack_weight(W, fallback), np.zeros(6, np.int32), kernel=fallback, shift=0)

    x = tensor_var("x", (1, 5, 7, 7), "int8")
    tvm.ir.assert_structural_equal(_apply("arm-i8mm", module([x], before)), module([x], expected))


def test_4bit_weights_are_stored_two_per_byte():
    kernel = FAMILIES["x86-avx2"].int8  # 4-bit weights cannot saturate vpmaddubsw: kpack 4, two bytes per group

    def before(bb, x):
        return bb.emit(_conv(x, relax.const(W4)))

    def expected(bb, x):
        corr = (128 * W4.astype(np.int64).sum(axis=(1, 2, 3))).astype(np.int32)
        return _packed_conv(bb, x, pack_int4(pack_weight(W4, kernel)), corr, kernel=kernel, shift=128, int4=True)

    x = tensor_var("x", (1, 5, 8, 8), "int8")
    tvm.ir.assert_structural_equal(_apply("x86-avx2", module([x], before)), module([x], expected))


@pytest.mark.parametrize("bits, fast", [(7, True), (8, False)])
def test_avx2_takes_vpmaddubsw_only_where_no_pair_of_weights_can_saturate_it(bits, fast):
    """7-bit weights ([-63, 63]): every u8 x s8 pair sum fits int16, so the vpmaddubsw kernel
    (int8 activations shifted to uint8, kpack 4). A single pair of 8-bit weights summing past 128
    could saturate it: the whole layer takes the exact vpmaddwd kernel instead."""
    w = np.clip(W, -63, 63)
    if bits == 8:
        w[0, 0, 0, 0], w[0, 1, 0, 0] = 127, 2  # input channels 0 and 1: one pair (kpack 4 packs them together)
    kernel = FAMILIES["x86-avx2"].int8 if fast else AVX2_EXACT
    shift = 128 if fast else 0

    def before(bb, x):
        return bb.emit(_conv(x, relax.const(w)))

    def expected(bb, x):
        corr = (shift * w.astype(np.int64).sum(axis=(1, 2, 3))).astype(np.int32)
        return _packed_conv(bb, x, pack_weight(w, kernel), corr, kernel=kernel, shift=shift)

    x = tensor_var("x", (1, 5, 8, 8), "int8")
    tvm.ir.assert_structural_equal(_apply("x86-avx2", module([x], before)), module([x], expected))


def test_channels_last_conv_is_packed_from_its_ohwi_weight():
    kernel = AVX2_EXACT
    w_ohwi = np.ascontiguousarray(W.transpose(0, 2, 3, 1))

    def before(bb, x):
        return bb.emit(_conv(x, relax.const(w_ohwi), data_layout="NHWC", kernel_layout="OHWI"))

    def expected(bb, x):
        return _packed_conv(bb, x, pack_weight(W, kernel), np.zeros(6, np.int32), kernel=kernel, shift=0, layout="NHWC")

    x = tensor_var("x", (1, 8, 8, 5), "int8")
    tvm.ir.assert_structural_equal(_apply("x86-avx2", module([x], before)), module([x], expected))


@pytest.mark.parametrize("family, weight_dtype", [("x86-avx2", "float32"), ("arm-neon", "int8")])
def test_depthwise_conv_becomes_the_depthwise_kernel(family, weight_dtype):
    """x86 sums a depthwise layer's codes in float32 FMAs (Int8Kernel.depthwise_float, exact), NEON
    in int16 x int16 -> int32."""
    kernel = FAMILIES[family].int8

    def before(bb, x):
        return bb.emit(_conv(x, relax.const(WD), groups=5))

    def expected(bb, x):
        return bb.emit_te(functools.partial(packed_depthwise_te, layout="NCHW", **PAD1), x,
                          relax.const(pack_depthwise_weight(WD.astype(weight_dtype), kernel.lanes), weight_dtype),
                          primfunc_name_hint="qcompile_int8_depthwise")

    x = tensor_var("x", (1, 5, 8, 8), "int8")
    tvm.ir.assert_structural_equal(_apply(family, module([x], before)), module([x], expected))


@pytest.mark.parametrize("lead", [(3,), (3, 1)], ids=["2d", "3d-time-major"])
def test_matmul_becomes_reshape_packed_1x1_conv_reshape(lead):
    """Leading dimensions are rows too: an LSTM's input projection over every step, [T, B, K]."""
    kernel = FAMILIES["x86-vnni"].int8

    def before(bb, x):
        return bb.emit(R.matmul(x, relax.const(WM), out_dtype="int32"))

    def expected(bb, x):
        w_oihw = np.ascontiguousarray(WM.T).reshape(7, 12, 1, 1)  # [N, K, 1, 1]
        corr = (128 * WM.astype(np.int64).sum(axis=0)).astype(np.int32)
        x4 = bb.emit(R.reshape(x, (1, 1, 3, 12)))  # one row of 3 pixels (NHWC), no copy
        y4 = _packed_conv(bb, x4, pack_weight(w_oihw, kernel), corr, kernel=kernel, shift=128, out_channels=7,
                          conv={"strides": [1, 1], "padding": [0, 0, 0, 0], "dilation": [1, 1]}, layout="NHWC")
        return bb.emit(R.reshape(y4, (*lead, 7)))

    x = tensor_var("x", (*lead, 12), "int8")
    after = _apply("x86-vnni", module([x], before))
    tvm.ir.assert_structural_equal(after, module([x], expected))
    if lead == (3, 1):  # and computes the matmul exactly (its compute, unscheduled: runs on any CPU)
        data = RNG.integers(-128, 128, (*lead, 12)).astype("int8")
        want = data.astype(np.int64) @ WM.astype(np.int64)
        packed = _apply("x86-avx2", module([x], before))
        got = relax.VirtualMachine(tvm.compile(packed, target="llvm"), tvm.cpu())["main"](
            tvm.runtime.tensor(data)).numpy()
        np.testing.assert_array_equal(got, want)


def test_only_the_int8_layer_of_a_mixed_module_is_rewritten():
    kernel = AVX2_EXACT
    wf = RNG.standard_normal((6, 6, 1, 1)).astype("float32")

    def before(bb, x):
        y = bb.emit(_conv(x, relax.const(W)))
        f = bb.emit(R.astype(y, "float32"))
        return bb.emit(R.nn.conv2d(f, relax.const(wf)))

    def expected(bb, x):
        y = _packed_conv(bb, x, pack_weight(W, kernel), np.zeros(6, np.int32), kernel=kernel, shift=0)
        f = bb.emit(R.astype(y, "float32"))
        return bb.emit(R.nn.conv2d(f, relax.const(wf)))

    x = tensor_var("x", (1, 5, 8, 8), "int8")
    tvm.ir.assert_structural_equal(_apply("x86-avx2", module([x], before)), module([x], expected))


def _float_conv(bb, x):
    return bb.emit(R.nn.conv2d(x, relax.const(W.astype("float32")), padding=[1, 1, 1, 1]))


def _weight_param_conv(bb, x, w):
    return bb.emit(_conv(x, w))


def _int8_conv_float_out(bb, x):  # eligible operands, but an out_dtype the kernel does not produce
    return bb.emit(R.nn.conv2d(x, relax.const(W), padding=[1, 1, 1, 1], out_dtype="float32"))


def _large_matmul(bb, x):  # cuda leaves matmuls over 64 in every dimension to its tensor-core schedule
    return bb.emit(R.matmul(x, relax.const(RNG.integers(-127, 128, (96, 80)).astype("int8")), out_dtype="int32"))


@pytest.mark.parametrize("family, params, body", [
    ("x86-avx2", [tensor_var("x", (1, 5, 8, 8), "float32")], _float_conv),
    ("x86-avx2", [tensor_var("x", (1, 5, 8, 8), "int8"), tensor_var("w", (6, 5, 3, 3), "int8")], _weight_param_conv),
    ("x86-vnni", [tensor_var("x", (1, 5, 8, 8), "int8")], _int8_conv_float_out),
    ("cuda", [tensor_var("x", (72, 96), "int8")], _large_matmul),
], ids=["float-conv", "weight-not-constant", "float-out-dtype", "tensor-core-matmul"])
def test_leaves_the_module_unchanged(family, params, body):
    before = module(params, body)
    tvm.ir.assert_structural_equal(_apply(family, before), before)
