"""scalar_operands (backends/cpu/scalar_operands.py): 0-d constants of arithmetic become (1,)
constants, so kernels that differ only in such a constant (each residual add's fixed-point
rescale) are one kernel; clamps and scalar-only arithmetic keep their 0-d constants."""

import numpy as np
import tvm
from relax_builders import module, tensor_var
from tvm import relax
from tvm.relax import op as R

from qcompile.backends import backend_for
from qcompile.backends.cpu.scalar_operands import scalar_operands
from qcompile.targets import get_target

RNG = np.random.default_rng(0)


def _c(value, shape=()):
    return relax.const(np.full(shape, value, "int32"), "int32")


def _rescale(bb, x, multiplier, shift, shape=()):
    """round(x * multiplier / 2**shift) in int32 and clamped to int8, as realize writes a residual add's rescale."""
    y = bb.emit(R.multiply(x, _c(multiplier, shape)))
    y = bb.emit(R.right_shift(bb.emit(R.add(y, _c(1 << (shift - 1), shape))), _c(shift, shape)))
    return bb.emit(R.astype(bb.emit(R.clip(y, -128, 127)), "int8"))


def _two_rescales(shape):
    x, z = tensor_var("x", (1, 8, 8, 16), "int32"), tensor_var("z", (1, 8, 8, 16), "int32")
    return module([x, z], lambda bb, x, z: bb.emit(relax.Tuple([_rescale(bb, x, 1000, 10, shape),
                                                                _rescale(bb, z, 3000, 11, shape)])))


def test_scalar_constants_of_arithmetic_become_tensors_of_one_element():
    tvm.ir.assert_structural_equal(scalar_operands(_two_rescales(())), _two_rescales((1,)))


def test_a_scale_and_zero_point_of_dequantize_and_quantize_become_tensors_of_one_element():
    def fake_quantized(shape):
        def body(bb, x):
            scale, zero = relax.const(np.full(shape, 0.05, "float32")), relax.const(np.full(shape, 3, "int32"))
            y = bb.emit(R.dequantize(x, scale, zero, axis=1))
            return bb.emit(R.quantize(y, relax.const(np.full(shape, 0.1, "float32")), zero, axis=1, out_dtype="int8"))
        return module([tensor_var("x", (1, 4, 8, 8), "int8")], body)

    before = fake_quantized(())
    tvm.ir.assert_structural_equal(scalar_operands(before), fake_quantized((1,)))
    backend = backend_for(get_target("host"))
    x = tvm.runtime.tensor(RNG.integers(-128, 128, (1, 4, 8, 8), dtype="int8"))
    got, literal = (relax.VirtualMachine(ex, tvm.cpu())["main"](x).numpy()
                    for ex in (backend.compile(before), tvm.compile(before, target="llvm")))
    np.testing.assert_array_equal(got, literal)  # the same values as with the scale a literal
    assert len(np.unique(got)) > 10


def test_clamps_and_arithmetic_of_scalars_keep_their_constants():
    x, s = tensor_var("x", (4, 4), "float32"), tensor_var("s", (), "float32")

    def body(bb, x, s):
        low = bb.emit(R.maximum(x, relax.const(np.float32(0.0))))
        high = bb.emit(R.minimum(low, relax.const(np.float32(6.0))))
        return bb.emit(relax.Tuple([high, bb.emit(R.multiply(s, relax.const(np.float32(2.0))))]))

    before = module([x, s], body)
    assert scalar_operands(before).same_as(before)  # nothing to change: the module as it was


def test_kernels_differing_only_in_a_scalar_are_one_kernel_and_compute_the_same():
    backend = backend_for(get_target("host"))
    before = _two_rescales(())
    assert len(backend.fused_kernels(before, backend.tvm_target())) == 1  # two without the pass
    x, z = (RNG.integers(-2**20, 2**20, (1, 8, 8, 16), dtype="int32") for _ in range(2))
    vm = relax.VirtualMachine(backend.compile(before), tvm.cpu())
    got = [t.numpy() for t in vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(z))]
    for out, data, multiplier, shift in zip(got, (x, z), (1000, 3000), (10, 11)):
        wide = data.astype(np.int64) * multiplier
        want = np.clip(((wide.astype(np.int32) + (1 << (shift - 1))) >> shift), -128, 127).astype("int8")
        np.testing.assert_array_equal(out, want)
