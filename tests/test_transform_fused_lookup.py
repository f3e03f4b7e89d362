"""fused_lookup_pass (backends/cpu/fused_lookup.py): a table lookup on 8-bit codes becomes a kernel
declared elementwise, which fuses into the epilogue of the convolution producing the codes."""

import numpy as np
import tvm
from relax_builders import module, tensor_var
from tvm import relax
from tvm.relax import op as R

from qcompile.backends import backend_for, host_engine
from qcompile.backends.base import DECLARED_PATTERN
from qcompile.backends.cpu.fused_lookup import LOOKUP_NAME, _lookup_te, fused_lookups
from qcompile.targets import get_target

RNG = np.random.default_rng(0)
TABLE = RNG.integers(-128, 128, 256).astype("int8")
W = RNG.integers(-127, 128, (32, 16, 1, 1)).astype("int8")


def _codes(bb, x):
    return bb.emit(R.subtract(bb.emit(R.astype(x, "int32")), relax.const(-128, "int32")))


def test_lookup_becomes_a_kernel_declared_elementwise():
    def before(bb, x):
        return bb.emit(R.take(relax.const(TABLE), _codes(bb, x), axis=0, mode="clip"))

    def expected(bb, x):
        return bb.emit_te(_lookup_te, relax.const(TABLE), _codes(bb, x), primfunc_name_hint=LOOKUP_NAME)

    x = tensor_var("x", (1, 8), "int8")
    want = module([x], expected)
    gv = want.get_global_var(LOOKUP_NAME)
    want[gv] = want[gv].with_attr(DECLARED_PATTERN, 0)
    tvm.ir.assert_structural_equal(fused_lookups(module([x], before)), want)


def test_a_gather_that_is_not_a_table_lookup_is_kept():
    def before(bb, x):  # indices into a tensor of the model, not a constant table
        return bb.emit(R.take(x, relax.const(np.array([2, 0], "int64")), axis=1))

    mod = module([tensor_var("x", (3, 4), "float32")], before)
    tvm.ir.assert_structural_equal(fused_lookups(mod), mod)


def _conv_then_lookup():
    def body(bb, x):
        y = bb.emit(R.nn.conv2d(x, relax.const(W), out_dtype="int32"))
        q = bb.emit(R.astype(bb.emit(R.clip(bb.emit(R.right_shift(y, relax.const(4, "int32"))), -128, 127)), "int8"))
        return bb.emit(R.take(relax.const(TABLE), _codes(bb, q), axis=0, mode="clip"))

    return module([tensor_var("x", (1, 16, 7, 9), "int8")], body)


def test_lookup_fuses_into_the_convolution_and_keeps_its_values():
    """One kernel computes the convolution, the requantize and the lookup (it was a kernel of its
    own), and the compiled module gives the unfused module's values."""
    mod = _conv_then_lookup()
    backend = backend_for(get_target("host"))
    target = backend.tvm_target()
    with target:
        fused = tvm.transform.Sequential(backend.fused_module_passes(target))(mod)
    kernels = [gv.name_hint for gv, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert any("conv" in k and LOOKUP_NAME in k for k in kernels), kernels
    x = RNG.integers(-128, 128, (1, 16, 7, 9)).astype("int8")
    got = host_engine(mod)["main"](tvm.runtime.tensor(x)).numpy()
    want = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(got, want)
