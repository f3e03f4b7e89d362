"""The default schedules must compute every element of a fused kernel's output. An epilogue that
covers more than its producer writes (channel padding after a pooling, as BlazeFace-style models
grow their channels) was moved into the producer's loops by reverse_compute_at, which bounds it
by the producer's region: 6 of 48 channels were never written and mediapipe's face detector built
and ran with outputs wrong by 1e5."""

import numpy as np
import pytest
import tvm
from relax_builders import module, tensor_var
from tvm import relax
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


# family -> a target file of it (the families whose packed int8 kernels the CPU backend schedules)
INT8_TARGETS = {"x86-vnni": "x86-avx512-vnni", "x86-avx512": "x86-avx512", "x86-avx2": "x86-avx2",
                "arm-dotprod": "rpi5", "arm-i8mm": "graviton3", "arm-neon": "rpi4"}
INT8_RNG = np.random.default_rng(1)
W42 = INT8_RNG.integers(-127, 128, (42, 5, 1, 1)).astype("int8")  # 42 output channels fill no whole tile
BIAS42 = INT8_RNG.integers(-4000, 4000, (1, 42, 1, 1)).astype("int32")


def _int8_conv_requantize(bb, x):
    """An int8 1x1 convolution and its integer requantize, one fused kernel (a detector head's)."""
    acc = bb.emit(R.nn.conv2d(x, relax.const(W42), out_dtype="int32"))
    shifted = bb.emit(R.right_shift(bb.emit(R.add(acc, relax.const(BIAS42))), relax.const(np.int32(7))))
    return bb.emit(R.astype(bb.emit(R.clip(shifted, -128, 127)), "int8"))


def _int8_conv_requantize_reference(x):
    acc = np.einsum("nchw,oc->nohw", x.astype(np.int64), W42[:, :, 0, 0].astype(np.int64))
    return np.clip((acc + BIAS42) >> 7, -128, 127).astype(np.int8)


@pytest.mark.parametrize("family", list(INT8_TARGETS))
def test_the_epilogue_of_a_tensorized_int8_kernel_moves_into_its_tile(family):
    """The guarded move after the dot block is tensorized: TVM's tensorize leaves the scope's
    dependences naming the block it replaced, so a trial on sch.copy() raised 'unordered_map::at'
    and every int8 build with a dot-product instruction failed (a PicoDet layout detector: its
    29 convolutions). The epilogue is moved into the accumulators' tile, and the kernel is exact."""
    from qcompile.backends import backend_for
    from qcompile.backends.packed.schedule import Int8Packed
    from qcompile.targets import detect_host, get_target

    spec = get_target(INT8_TARGETS[family])
    assert spec.schedule_family == family
    backend = backend_for(spec)
    target = backend.tvm_target()
    mod = module([tensor_var("x", (1, 5, 6, 6), "int8")], _int8_conv_requantize)
    kernels = [(n, k) for n, k in backend.fused_kernels(mod, target) if "int8_conv" in n]
    assert len(kernels) == 1  # the convolution and its requantize fused into one packed kernel
    name, kernel = kernels[0]
    with target:
        sch = Int8Packed(backend.family.int8).apply(kernel["main"], target, False)
    assert sch is not None, name
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    dot = next(b for b in blocks if sch.get(b).name_hint.startswith("int8_dot"))
    assert sch.get(sch.get_loops(blocks[-1])[0]).same_as(sch.get(sch.get_loops(dot)[0]))  # in the tile

    executable = backend.compile(mod)  # the whole pipeline, as a build compiles it
    host = detect_host()
    if spec.arch != host["arch"] or not set(spec.features()) <= set(host["llvm"]["mattr"]):
        return  # compiled above; the aarch64 kernels run under qemu in test_quantize_models
    x = INT8_RNG.integers(-128, 128, (1, 5, 6, 6)).astype("int8")
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(got, _int8_conv_requantize_reference(x))


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
