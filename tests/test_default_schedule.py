"""The default CPU schedule (backends/cpu/default_schedule.py) on an elementwise chain whose blocks
each read the one before several times: inlined all into the last block, the expression doubles at
every stage (an LSTM cell's gates through fake-quantize ops grew to 680 kB, which LLVM did not
compile in 20 minutes); the schedule keeps such blocks and the kernel still computes the chain."""

import numpy as np
import pytest
import tvm
from conftest import parallel_workspace_allocations
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


@pytest.mark.parametrize("channels", [16, 50])
def test_a_pooling_accumulates_in_registers_without_allocating_per_row(channels):
    """A 2x2 max pool and its epilogue: the row of channels TIR vectorizes accumulates in a stack
    buffer (a "local" one was a workspace allocation in every parallel iteration: 35 -> 10 us for
    48x48x16); a row of 50, left to LLVM's vectorizer, keeps its local buffer. Both compute the pool."""
    x = te.placeholder((1, 96, 96, channels), "int8", "x")
    rh, rw = te.reduce_axis((0, 2), "rh"), te.reduce_axis((0, 2), "rw")
    pool = te.compute((1, 48, 48, channels), lambda n, h, w, c: te.max(x[n, 2 * h + rh, 2 * w + rw, c], axis=[rh, rw]),
                      name="pool")
    out = te.compute(pool.shape, lambda *i: pool(*i).astype("int32") * 3 + 1, name="out")
    target = backend_for(get_target("host")).tvm_target()
    sch = CPUDefault().apply(te.create_prim_func([x, out]), target, False)
    lib = tvm.compile(sch.mod, target=target)
    ir = lib.mod.inspect_source("ll")
    assert "@__tvm_parallel_lambda" in ir
    assert (parallel_workspace_allocations(ir) == {}) == (channels == 16)
    xv = np.random.default_rng(0).integers(-128, 128, (1, 96, 96, channels)).astype(np.int8)
    result = tvm.runtime.tensor(np.zeros((1, 48, 48, channels), np.int32))
    lib(tvm.runtime.tensor(xv), result)
    expected = xv.reshape(1, 48, 2, 48, 2, channels).max(axis=(2, 4)).astype(np.int32) * 3 + 1
    np.testing.assert_array_equal(result.numpy(), expected)


def test_a_layer_norm_and_its_requantize_run_as_one_parallel_pass_per_row():
    """A layer norm (two row reductions) and the elementwise ops after it (scale, round, clamp): the
    elementwise blocks one block reads are inlined (each was a pass over a whole-tensor buffer), the
    rows run in parallel (the work of every pass counts, not the last one's alone), and the result is
    the layer norm's."""
    x = te.placeholder((8, 50, 64), "float32", "x")
    k = te.reduce_axis((0, 64), "k")
    mean = te.compute((8, 50), lambda a, b: te.sum(x[a, b, k] / 64, axis=k), name="mean")
    k2 = te.reduce_axis((0, 64), "k2")
    var = te.compute((8, 50), lambda a, b: te.sum((x[a, b, k2] - mean[a, b]) * (x[a, b, k2] - mean[a, b]) / 64, axis=k2),
                     name="var")
    norm = te.compute(x.shape, lambda a, b, c: (x[a, b, c] - mean[a, b]) * te.rsqrt(var[a, b] + 1e-5), name="norm")
    scaled = te.compute(x.shape, lambda *i: norm(*i) * 20.0, name="scaled")
    rounded = te.compute(x.shape, lambda *i: te.max(te.min(tvm.tirx.nearbyint(scaled(*i)), 127.0), -128.0),
                         name="rounded")
    target = backend_for(get_target("host")).tvm_target()
    sch = CPUDefault().apply(te.create_prim_func([x, rounded]), target, False)
    blocks = [b.name_hint for b in (sch.get(r) for r in sch.get_child_blocks(sch.get_sblock("root")))]
    assert "norm" not in blocks and "scaled" not in blocks
    assert "@__tvm_parallel_lambda" in tvm.compile(sch.mod, target=target).mod.inspect_source("ll")
    xv = np.random.default_rng(0).standard_normal((8, 50, 64)).astype(np.float32)
    out = tvm.runtime.tensor(np.zeros((8, 50, 64), np.float32))
    tvm.compile(sch.mod, target=target)(tvm.runtime.tensor(xv), out)
    norm_ref = (xv - xv.mean(-1, keepdims=True)) / np.sqrt(xv.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(out.numpy(), np.clip(np.rint(norm_ref * 20), -128, 127), atol=1)
