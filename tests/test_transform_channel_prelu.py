"""channel_prelu (passes/channel_prelu.py): TVM's TFLite importer's flat PReLU (x and a broadcast
alpha flattened to one axis, reshaped back) becomes one prelu over the channels, which fuses into
the convolution before it; an alpha that varies within a channel stays as it was."""

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R

from qcompile.passes.channel_prelu import channel_prelu

SHAPE = (1, 4, 4, 3)
ALPHA_C = np.array([0.1, 0.2, 0.3], np.float32)


def _flat_prelu_module(alpha_full: np.ndarray):
    """prelu as the importer writes it (its broadcast_to and reshape of alpha already folded)."""
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            flat = bb.emit(R.reshape(x, [-1]))
            p = bb.emit(R.nn.prelu(flat, relax.const(alpha_full.reshape(-1)), axis=0))
            out = bb.emit_output(R.reshape(p, SHAPE))
        bb.emit_func_output(out)
    return bb.get()


def _expected():
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(R.nn.prelu(x, relax.const(ALPHA_C), axis=3))
        bb.emit_func_output(out)
    return bb.get()


def _canonical(mod):
    return relax.transform.CanonicalizeBindings()(mod)


def _run(mod, x):
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def test_a_flat_prelu_with_one_alpha_per_channel_becomes_a_channel_prelu():
    before = _flat_prelu_module(np.broadcast_to(ALPHA_C, SHAPE))
    after = channel_prelu(before)
    tvm.ir.assert_structural_equal(after, _canonical(_expected()), map_free_vars=True)
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    np.testing.assert_array_equal(_run(after, x), _run(before, x))


def test_an_alpha_that_varies_within_a_channel_is_left_flat():
    alpha = np.random.default_rng(1).uniform(0.1, 0.3, SHAPE).astype(np.float32)
    before = _flat_prelu_module(alpha)
    tvm.ir.assert_structural_equal(channel_prelu(before), _canonical(before))
