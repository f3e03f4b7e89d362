"""reciprocal_divisions (passes/reciprocal.py): a float division by a constant becomes a
multiplication by its reciprocal (vdivps costs ten multiplies); divisors whose reciprocal would be
subnormal or infinite, integer divisions and divisions by a tensor of the model stay."""

import numpy as np
import pytest
import tvm
from relax_builders import module, tensor_var
from tvm import relax
from tvm.relax import op as R

from qcompile.passes import float_passes
from qcompile.passes.reciprocal import reciprocal_divisions

RNG = np.random.default_rng(0)


def _hardswish(divide_or_multiply, c):
    """x * relu6(x + 3) op c, as PaddlePaddle and PyTorch exports write hardswish."""
    def body(bb, x):
        gate = bb.emit(R.clip(bb.emit(R.add(x, relax.const(3.0, "float32"))), 0.0, 6.0))
        return bb.emit(R.multiply(x, bb.emit(divide_or_multiply(gate, relax.const(c)))))
    return body


def test_division_by_a_scalar_constant_becomes_a_multiplication():
    x = tensor_var("x", (1, 8, 8, 16), "float32")
    before = module([x], _hardswish(R.divide, np.float32(6.0)))
    expected = module([x], _hardswish(R.multiply, np.float32(1 / 6)))
    tvm.ir.assert_structural_equal(reciprocal_divisions(before), expected)


def test_division_by_a_per_channel_constant_keeps_its_shape_and_dtype():
    c = RNG.uniform(0.5, 4.0, (1, 1, 1, 16)).astype("float16")
    x = tensor_var("x", (1, 8, 8, 16), "float16")
    got = reciprocal_divisions(module([x], lambda bb, x: bb.emit(R.divide(x, relax.const(c)))))
    want = module([x], lambda bb, x: bb.emit(R.multiply(x, relax.const((1 / c.astype("float64")).astype("float16")))))
    tvm.ir.assert_structural_equal(got, want)


@pytest.mark.parametrize("divisor", [np.float32(0.0), np.float32(1e-39), np.float32(1e39 / 1e1), np.float32(np.inf),
                                     np.array([2.0, 0.0], np.float32), np.int32(6)],
                         ids=["zero", "subnormal", "reciprocal-subnormal", "inf", "a-zero-inside", "integer"])
def test_divisions_a_reciprocal_cannot_stand_for_are_kept(divisor):
    shape = (3, 2)
    dtype = "int32" if divisor.dtype == np.int32 else "float32"
    x = tensor_var("x", shape, dtype)
    before = module([x], lambda bb, x: bb.emit(R.divide(x, relax.const(divisor))))
    tvm.ir.assert_structural_equal(reciprocal_divisions(before), before)


def test_division_by_a_tensor_of_the_model_is_kept():
    x, y = tensor_var("x", (4,), "float32"), tensor_var("y", (4,), "float32")
    before = module([x, y], lambda bb, x, y: bb.emit(R.divide(x, y)))
    tvm.ir.assert_structural_equal(reciprocal_divisions(before), before)


def test_the_float_passes_leave_results_within_one_unit_in_the_last_place():
    x = tensor_var("x", (1, 8, 8, 16), "float32")
    before = module([x], lambda bb, x: bb.emit(R.divide(x, relax.const(np.float32(6.0)))))
    after = tvm.transform.Sequential(float_passes())(before)
    ops = [b.value.op.name for b in after["main"].body.blocks[0].bindings if isinstance(b.value, relax.Call)]
    assert "relax.divide" not in ops and "relax.multiply" in ops
    data = RNG.uniform(-8, 8, (1, 8, 8, 16)).astype("float32")
    outs = []
    for mod in (before, after):
        vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
        outs.append(vm["main"](tvm.runtime.tensor(data)).numpy())
    assert np.all(np.abs(outs[1] - outs[0]) <= np.spacing(np.abs(outs[0])))
    assert not np.array_equal(outs[0], 0)
