"""The default CPU schedule (backends/cpu/default_schedule.py) on an elementwise chain whose blocks
each read the one before several times: inlined all into the last block, the expression doubles at
every stage (an LSTM cell's gates through fake-quantize ops grew to 680 kB, which LLVM did not
compile in 20 minutes); the schedule keeps such blocks and the kernel still computes the chain."""

import numpy as np
import tvm
from tvm import te

from qcompile.backends import backend_for
from qcompile.backends.cpu.default_schedule import MAX_INLINED_EXPRESSION, CPUDefault
from qcompile.targets import get_target

STAGES = 14


def _doubling_chain():
    x = te.placeholder((4, 64), "float32", "x")
    def stage(prev, i):
        return te.compute(prev.shape, lambda a, b: prev[a, b] * 0.5 + te.sigmoid(prev[a, b]), name=f"stage{i}")

    y = x
    for i in range(STAGES):
        y = stage(y, i)
    return te.create_prim_func([x, y])


def _reference(x):
    y = x.astype(np.float64)
    for _ in range(STAGES):
        y = y * 0.5 + 1 / (1 + np.exp(-y))
    return y


def test_a_chain_too_large_to_inline_keeps_its_shared_blocks_and_computes_the_chain():
    func = _doubling_chain()
    target = backend_for(get_target("host")).tvm_target()
    sch = CPUDefault().apply(func, target, False)
    assert sch is not None
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    assert 1 < len(blocks) and all(len(str(sch.get(b))) <= MAX_INLINED_EXPRESSION for b in blocks)
    lib = tvm.compile(sch.mod, target=target)
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    out = tvm.runtime.tensor(np.zeros((4, 64), np.float32))
    lib(tvm.runtime.tensor(x), out)
    np.testing.assert_allclose(out.numpy(), _reference(x), rtol=1e-5, atol=1e-5)


def test_a_small_chain_is_still_one_inlined_block():
    x = te.placeholder((4, 64), "float32", "x")
    y = te.compute(x.shape, lambda a, b: x[a, b] * 2.0, name="double")
    z = te.compute(x.shape, lambda a, b: y[a, b] + y[a, b] * y[a, b], name="poly")
    sch = CPUDefault().apply(te.create_prim_func([x, z]), backend_for(get_target("host")).tvm_target(), False)
    assert len(sch.get_child_blocks(sch.get_sblock("root"))) == 1
