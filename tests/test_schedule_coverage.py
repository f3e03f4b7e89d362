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



def test_a_wrong_constant_in_the_compiled_model_fails_the_builds_verification_in_one_line(tmp_path, monkeypatch):
    """A bias constant changed on its way into the kernels (as a miscompiled kernel would compute):
    the build runs the result beside onnxruntime, refuses it naming the output, and writes nothing."""
    import onnx
    from tvm import relax

    import qcompile
    from qcompile import QCompileError
    from qcompile.backends.cpu import CPUBackend
    from qcompile.ir import const_value, emit_as_is, op_name, rewrite_main

    h = onnx.helper
    nodes = [h.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             h.make_node("Add", ["p", "b"], ["s"]), h.make_node("Relu", ["s"], ["y"])]
    inits = [onnx.numpy_helper.from_array(RNG.standard_normal((1, 8, 1, 1)).astype(np.float32), "b")]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8, 16, 16])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, 8, 8])], inits)
    path = tmp_path / "pool_add.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), path)
    assert qcompile.build(path, "host", tmp_path / "ok.so").metadata["verification"]["verified"]

    def corrupt(mod, _ctx):
        def rule(bb, var, value):
            if op_name(value) == "add":
                return bb.emit(R.add(value.args[0], relax.const(const_value(value.args[1]) + 0.5)), var.name)
            return emit_as_is(bb, var, value)
        return rewrite_main(mod, rule)

    stock = CPUBackend.relax_passes
    monkeypatch.setattr(CPUBackend, "relax_passes",
                        lambda self: [tvm.transform.module_pass(corrupt, opt_level=0, name="Corrupt"), *stock(self)])
    with pytest.raises(QCompileError) as err:
        qcompile.build(path, "host", tmp_path / "broken.so")
    assert str(err.value).startswith("verification: output 'y' differs from onnxruntime by ")
    assert "\n" not in str(err.value) and not (tmp_path / "broken.so").exists()
