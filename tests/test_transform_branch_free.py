"""branch_free_prelu: PReLU in its where form, nn.prelu and nn.leakyrelu become
max(x, 0) + min(x, 0) * alpha on CPUs, computing the same floats without a select (which LLVM
turns into a branch on the activation's sign)."""

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.relax import op as R

from qcompile.backends.cpu.branch_free import branch_free_prelu
from qcompile.ir import main_bindings, op_name

SHAPE = (1, 3, 4, 5)
ALPHA = np.array([0.25, -0.5, 2.0], np.float32).reshape(1, 3, 1, 1)


def _module(body):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(body(bb, x))
        bb.emit_func_output(out)
    return bb.get()


def _zero():
    return relax.const(np.float32(0.0))


def where_prelu(bb, x, alpha_first=True, test="greater", threshold=0.0, alpha=ALPHA):
    alpha = relax.const(alpha) if isinstance(alpha, np.ndarray) else alpha
    positive = bb.emit(R.greater(x, relax.const(np.float32(threshold))) if test == "greater"
                       else R.less(relax.const(np.float32(threshold)), x))
    scaled = bb.emit(R.multiply(alpha, x) if alpha_first else R.multiply(x, alpha))
    return R.where(positive, x, scaled)


def branch_free(bb, x, alpha=ALPHA):
    positive = bb.emit(R.maximum(x, _zero()))
    scaled = bb.emit(R.multiply(bb.emit(R.minimum(x, _zero())), relax.const(alpha)))
    return bb.emit(R.add(positive, scaled))  # the rewrite binds it, then returns that binding


@pytest.mark.parametrize("alpha_first", [True, False])
@pytest.mark.parametrize("test", ["greater", "less"])
def test_where_form_becomes_max_plus_scaled_min(alpha_first, test):
    before = _module(lambda bb, x: where_prelu(bb, x, alpha_first, test))
    tvm.ir.assert_structural_equal(branch_free_prelu(before), _module(branch_free))


def test_nn_prelu_gets_its_slope_broadcast_along_its_axis():
    before = _module(lambda bb, x: R.nn.prelu(x, relax.const(ALPHA.reshape(3)), axis=1))
    tvm.ir.assert_structural_equal(branch_free_prelu(before), _module(branch_free))


def test_leaky_relu_gets_its_slope_as_a_scalar():
    before = _module(lambda bb, x: R.nn.leakyrelu(x, 0.1))
    tvm.ir.assert_structural_equal(branch_free_prelu(before),
                                   _module(lambda bb, x: branch_free(bb, x, np.array(0.1, np.float32))))


def test_other_selects_are_left_alone():
    """A threshold other than 0, or a slope that is not a constant, is not a PReLU."""
    for before in (_module(lambda bb, x: where_prelu(bb, x, threshold=0.5)),
                   _module(lambda bb, x: where_prelu(bb, x, alpha=x))):
        ops = [op_name(value) for _, value in main_bindings(branch_free_prelu(before))]
        assert "where" in ops and "maximum" not in ops, ops


def _run(mod, x):
    return relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


@pytest.mark.parametrize("form", ["where", "prelu", "leakyrelu"])
def test_the_same_floats_as_the_select(form):
    bodies = {"where": where_prelu, "prelu": lambda bb, x: R.nn.prelu(x, relax.const(ALPHA.reshape(3)), axis=1),
              "leakyrelu": lambda bb, x: R.nn.leakyrelu(x, 0.1)}
    before = _module(bodies[form])
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(SHAPE) * 10.0 ** rng.integers(-30, 30, SHAPE)).astype(np.float32)
    x.flat[::7] = 0.0
    assert np.array_equal(_run(branch_free_prelu(before), x), _run(before, x))
