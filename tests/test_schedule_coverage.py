"""The default schedules must compute every element of a fused kernel's output. An epilogue that
covers more than its producer writes (channel padding after a pooling, as BlazeFace-style models
grow their channels) was moved into the producer's loops by reverse_compute_at, which bounds it
by the producer's region: 6 of 48 channels were never written and mediapipe's face detector built
and ran with outputs wrong by 1e5."""

import numpy as np
import pytest
import tvm
from relax_builders import module, tensor_var
from tvm.relax import op as R

from qcompile.backends import host_engine

RNG = np.random.default_rng(0)


def _pool_pad_add(bb, x, y):
    pooled = bb.emit(R.nn.max_pool2d(x, (2, 2), (2, 2), layout="NHWC"))
    padded = bb.emit(R.nn.pad(pooled, [0, 0, 0, 0, 0, 0, 0, 6]))
    return bb.emit(R.nn.relu(R.add(padded, y)))


def _reference(x, y):
    n, h, w, c = x.shape
    pooled = x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
    padded = np.pad(pooled, [(0, 0), (0, 0), (0, 0), (0, 6)])
    return np.maximum(padded + y, 0)


@pytest.mark.parametrize("hw", [32, 4])  # parallel and single-threaded kernels
def test_an_epilogue_wider_than_its_producer_is_computed_whole(hw):
    x = RNG.standard_normal((1, hw, hw, 42)).astype("float32")
    y = RNG.standard_normal((1, hw // 2, hw // 2, 48)).astype("float32")
    mod = module([tensor_var("x", x.shape, "float32"), tensor_var("y", y.shape, "float32")], _pool_pad_add)
    got = host_engine(mod)["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(y)).numpy()
    np.testing.assert_allclose(got, _reference(x, y), rtol=1e-6, atol=1e-6)


def test_the_guarded_move_refuses_only_when_elements_would_be_lost():
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    from qcompile.backends.rules import loop_work, reverse_compute_at_covering

    def schedule(pad: int):
        bb_mod = module([tensor_var("x", (1, 8, 8, 4), "float32")],
                        lambda bb, x: bb.emit(R.nn.relu(R.nn.pad(bb.emit(R.nn.max_pool2d(x, (2, 2), (2, 2), layout="NHWC")),
                                                                 [0, 0, 0, 0, 0, 0, 0, pad]))))
        fused = tvm.transform.Sequential([tvm.relax.transform.LegalizeOps(), tvm.relax.transform.AnnotateTIROpPattern(),
                                          tvm.relax.transform.FuseOps(), tvm.relax.transform.FuseTIR()])(bb_mod)
        func = next(f for _, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc))
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        main, tail = infos[0].block_rv, infos[-1].block_rv
        for info in infos[1:-1]:
            sch.compute_inline(info.block_rv)
        before = loop_work(sch, tail)
        moved = reverse_compute_at_covering(sch, tail, sch.get_loops(main)[2])
        return moved, before, loop_work(sch, tail)

    moved, before, after = schedule(pad=2)
    assert not moved and after == before
    moved, before, after = schedule(pad=0)
    assert moved and after == before
