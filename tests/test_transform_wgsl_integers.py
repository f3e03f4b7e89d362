"""wgsl_int_pass (backends/vulkan/int8.py): Before modules against hand-built Expected modules, structurally."""

import functools

import numpy as np
import pytest
import tvm
from relax_builders import module, tensor_var
from tvm import relax
from tvm.relax import op as R

from qcompile.backends.vulkan.int8 import (
    dot4_conv_te,
    mul_shift_te,
    pack4_te,
    pack_weight_words,
    quantize_te,
    wgsl_int_pass,
)

RNG = np.random.default_rng(0)
W = RNG.integers(-127, 128, (6, 5, 3, 3)).astype("int8")  # 5 input channels: two words, the second zero-padded
WM = RNG.integers(-127, 128, (12, 7)).astype("int8")  # matmul [K, N]
# per-channel fixed-point multipliers M in [0, 2^31) and shifts s in [1, 62] (realize's requantize)
MULT = np.array([1 << 30, 1_500_000_000, 1_234_567_890, 2**31 - 1], np.int64).reshape(1, 4, 1, 1)
SHIFT = np.array([31, 33, 20, 40], np.int64).reshape(1, 4, 1, 1)
OPAQUE = {"op_pattern": 8}  # pack4 stays a kernel of its own


def _apply(mod):
    return wgsl_int_pass()(mod)


@pytest.mark.parametrize("narrow", ["int8", "int16"])
def test_narrow_astype_and_constants_are_held_in_int32(narrow):
    c = np.array([3], narrow)

    def before(bb, x):
        q = bb.emit(R.astype(x, narrow))
        s = bb.emit(R.add(q, relax.const(c)))
        return bb.emit(R.astype(s, "float32"))

    def expected(bb, x):
        q = bb.emit(R.astype(x, "int32"))
        s = bb.emit(R.add(q, relax.const(c.astype("int32"))))
        return bb.emit(R.astype(s, "float32"))

    x = tensor_var("x", (1, 4, 8, 8), "float32")
    tvm.ir.assert_structural_equal(_apply(module([x], before)), module([x], expected))


def _requantize(bb, x, mult, shift, rounding):
    """realize's requantize: (astype(x, int64) * M + rounding) >> s, in int64."""
    y = R.multiply(R.astype(x, "int64"), relax.const(mult, "int64"))
    return bb.emit(R.right_shift(R.add(y, relax.const(rounding, "int64")), relax.const(shift, "int64")))


@pytest.mark.parametrize("mult, shift", [(MULT, SHIFT), (np.int64(1_518_500_250), np.int64(37))],
                         ids=["per-channel", "per-tensor"])
def test_requantize_chain_becomes_one_mul_shift_kernel(mult, shift):
    def before(bb, x):
        y = _requantize(bb, x, mult, shift, np.left_shift(np.int64(1), shift - 1))
        return bb.emit(R.astype(bb.emit(R.clip(y, -128, 127)), "int8"))

    def expected(bb, x):  # the int64 chain is gone (dead code); the clip and the narrowing stay in int32
        y = bb.emit_te(mul_shift_te, x, relax.const(mult.astype("int32")), relax.const(shift.astype("int32")),
                       primfunc_name_hint="requantize")
        return bb.emit(R.astype(bb.emit(R.clip(y, -128, 127)), "int32"))

    x = tensor_var("x", (1, 4, 8, 8), "int32")
    got = _apply(module([x], before))
    tvm.ir.assert_structural_equal(got, module([x], expected))
    assert [gv.name_hint for gv in got.get_global_vars() if gv.name_hint != "main"] == ["requantize"]


def test_int8_conv_becomes_pack4_then_dot4_conv():
    def before(bb, x):
        q = bb.emit(R.astype(x, "int8"))
        return bb.emit(R.nn.conv2d(q, relax.const(W), strides=[2, 2], padding=[1, 1, 1, 1], out_dtype="int32"))

    def expected(bb, x):
        q = bb.emit(R.astype(x, "int32"))
        xp = bb.emit_te(pack4_te, q, primfunc_name_hint="qcompile_pack4", primfunc_attrs=OPAQUE)
        conv = functools.partial(dot4_conv_te, strides=[2, 2], padding=[1, 1, 1, 1], dilation=[1, 1])
        return bb.emit_te(conv, xp, relax.const(pack_weight_words(W)), primfunc_name_hint="qcompile_dot4_conv")

    x = tensor_var("x", (1, 5, 8, 8), "float32")
    got = _apply(module([x], before))
    tvm.ir.assert_structural_equal(got, module([x], expected))
    assert sorted(gv.name_hint for gv in got.get_global_vars()) == ["main", "qcompile_dot4_conv", "qcompile_pack4"]


def test_quantized_matmul_becomes_reshape_dot4_1x1_conv_reshape():
    scale, zp = relax.const(np.float32(0.05)), relax.const(np.int32(0))

    def before(bb, x):
        q = bb.emit(R.quantize(x, scale, zp, axis=-1, out_dtype="int8"))
        return bb.emit(R.matmul(q, relax.const(WM), out_dtype="int32"))

    def expected(bb, x):
        q = bb.emit_te(functools.partial(quantize_te, axis=1, qmin=-128, qmax=127), x, scale, zp,
                       primfunc_name_hint="quantize")
        x4 = bb.emit(R.reshape(q, (3, 12, 1, 1)))
        xp = bb.emit_te(pack4_te, x4, primfunc_name_hint="qcompile_pack4", primfunc_attrs=OPAQUE)
        conv = functools.partial(dot4_conv_te, strides=[1, 1], padding=[0, 0, 0, 0], dilation=[1, 1])
        w_oihw = np.ascontiguousarray(WM.T).reshape(7, 12, 1, 1)  # [N, K, 1, 1]
        y4 = bb.emit_te(conv, xp, relax.const(pack_weight_words(w_oihw)), primfunc_name_hint="qcompile_dot4_conv")
        return bb.emit(R.reshape(y4, (3, 7)))

    x = tensor_var("x", (3, 12), "float32")
    tvm.ir.assert_structural_equal(_apply(module([x], before)), module([x], expected))


def _float_block(bb, x):
    w = RNG.standard_normal((4, 4, 1, 1)).astype("float32")
    y = bb.emit(R.nn.conv2d(x, relax.const(w)))
    y = bb.emit(R.nn.relu(bb.emit(R.add(y, relax.const(np.ones((1, 4, 1, 1), "float32"))))))
    return bb.emit(R.nn.max_pool2d(y, pool_size=[2, 2], strides=[2, 2]))


def _rounding_not_half_step(bb, x):  # not realize's requantize: the 64-bit chain is left as it is
    return _requantize(bb, x, MULT, SHIFT, np.left_shift(np.int64(1), SHIFT - 2))


@pytest.mark.parametrize("x_dtype, body", [
    ("float32", _float_block),
    ("int32", _rounding_not_half_step),
], ids=["float", "not-a-requantize"])
def test_leaves_the_module_unchanged(x_dtype, body):
    before = module([tensor_var("x", (1, 4, 8, 8), x_dtype)], body)
    tvm.ir.assert_structural_equal(_apply(before), before)


def test_asymmetric_uint8_activations_are_refused_before_the_pass():
    """dot4I8Packed reads bytes as signed: uint8 codes of 128 and above would come out negative
    (a Vulkan build of an asymmetric model differed from the host build by 6.8 on outputs of 4)."""
    from qcompile.backends.vulkan.int8 import check_symmetric
    from qcompile.errors import QCompileError

    def before(bb, x):
        return bb.emit(R.astype(bb.emit(R.astype(x, "uint8")), "float32"))

    asymmetric = module([tensor_var("x", (1, 4, 8, 8), "float32")], before)
    with pytest.raises(QCompileError, match="asymmetric .uint8. activations"):
        check_symmetric(asymmetric)
    check_symmetric(module([tensor_var("x", (1, 4, 8, 8), "float32")], lambda bb, x: bb.emit(R.astype(x, "int8"))))
