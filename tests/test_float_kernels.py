"""The packed float32 kernels (pack.float_kernel, scheduled by packed/schedule.py): within float
tolerance of a float64 convolution on odd shapes (channels that fill no whole vector, 1x1 images,
stride 2, batch 8, depthwise, a matmul's one row), built with fused multiply-adds of the family's
vector width; and a real CNN's float build runs on them."""

import numpy as np
import pytest
import torch
import tvm
from tvm import te

import qcompile
from qcompile.backends import backend_for
from qcompile.backends.families import FAMILIES
from qcompile.backends.packed.pack import (
    float_kernel,
    pack_depthwise_weight,
    pack_weight,
    packed_conv_te,
    packed_depthwise_te,
)
from qcompile.backends.packed.schedule import Int8Packed
from qcompile.examples import fashion_mnist_cnn_onnx
from qcompile.targets import get_target

FMA = {"x86": "vfmadd", "arm": "fmla"}  # the fused multiply-add in each ISA's assembly


def _i64(*dims):
    return tuple(tvm.tirx.IntImm("int64", d) for d in dims)


def _kernel(target_name, n, c, oc, hw, k, stride, depthwise=False, layout="NCHW"):
    """A packed float kernel compiled for `target_name`, its inputs and its float64 reference."""
    spec = get_target(target_name)
    kernel = float_kernel(FAMILIES[spec.schedule_family].float_lanes)
    rng = np.random.default_rng(0)
    xv = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
    wv = rng.standard_normal((c, 1, k, k) if depthwise else (oc, c, k, k)).astype(np.float32)
    to_layout = (lambda a: a) if layout == "NCHW" else (lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1)))
    pad = k // 2
    conv = {"strides": [stride, stride], "padding": [pad] * 4, "dilation": [1, 1], "layout": layout}
    x = te.placeholder(_i64(*to_layout(xv).shape), "float32", "x")
    if depthwise:
        wp = pack_depthwise_weight(wv, kernel.lanes)
        w = te.placeholder(_i64(*wp.shape), "float32", "w")
        out = packed_depthwise_te(x, w, **conv)
    else:
        wp = pack_weight(wv, kernel)
        w = te.placeholder(_i64(*wp.shape), "float32", "w")
        out = packed_conv_te(x, w, None, out_channels=oc, kernel=kernel, shift=0, **conv)
    ref = torch.nn.functional.conv2d(torch.tensor(xv, dtype=torch.float64), torch.tensor(wv, dtype=torch.float64),
                                     stride=stride, padding=pad, groups=c if depthwise else 1).numpy()
    target = backend_for(spec).tvm_target()
    sch = Int8Packed(FAMILIES[spec.schedule_family].int8, kernel).apply(te.create_prim_func([x, w, out]), target, False)
    assert sch is not None
    return tvm.compile(sch.mod, target=target), [to_layout(xv), wp], to_layout(ref)


SHAPES = {  # (batch, channels, output channels, image size, kernel size, stride)
    "channels not a multiple of the lanes": (1, 5, 13, 9, 3, 1),
    "stride 2": (1, 16, 24, 15, 3, 2),
    "1x1 image (a matmul's one row)": (1, 37, 19, 1, 1, 1),
    "batch 8": (8, 8, 16, 6, 3, 1),
    "prime width, 5x5 kernel": (1, 3, 8, 13, 5, 1),
}


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("case", list(SHAPES))
def test_packed_float_conv_matches_float64(case, layout):
    lib, tensors, ref = _kernel("host", *SHAPES[case], layout=layout)
    out = tvm.runtime.tensor(np.zeros(ref.shape, np.float32))
    lib(*[tvm.runtime.tensor(t) for t in tensors], out)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels", [5, 24])
def test_packed_float_depthwise_matches_float64(stride, channels):
    lib, tensors, ref = _kernel("host", 1, channels, channels, 11, 3, stride, depthwise=True, layout="NHWC")
    out = tvm.runtime.tensor(np.zeros(ref.shape, np.float32))
    lib(*[tvm.runtime.tensor(t) for t in tensors], out)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("target", ["x86-avx2", "x86-avx512-vnni", "rpi5"])
def test_packed_float_kernels_use_fused_multiply_add(target):
    lib, _, _ = _kernel(target, 1, 16, 32, 8, 3, 1, layout="NHWC")
    assert FMA["arm" if get_target(target).arch == "aarch64" else "x86"] in lib.mod.inspect_source("asm")


def test_a_float_build_runs_its_convolutions_on_packed_kernels():
    """The Fashion-MNIST CNN in float for this CPU: no convolution or matmul is left to TVM's
    kernels, activations stay channels-last between the packed ones."""
    from qcompile.builder import prepare
    from qcompile.ir import main_bindings, op_name

    p = prepare(fashion_mnist_cnn_onnx(), "host", {"image": [1, 1, 28, 28]})
    ops = [op_name(v) for _, v in main_bindings(tvm.transform.Sequential(backend_for(p.spec).relax_passes())(p.mod))]
    assert "nn.conv2d" not in ops and "matmul" not in ops and ops.count("call_tir") >= 3
    assert ops.count("permute_dims") <= 2  # the input into NHWC and the classifier's flatten back


def test_a_float_build_verifies_against_onnxruntime(tmp_path):
    result = qcompile.build(fashion_mnist_cnn_onnx(), "host", tmp_path / "m.so", input_shapes={"image": [3, 1, 28, 28]})
    assert result.metadata["verification"]["verified"]
    assert max(o["max_rel_error"] for o in result.metadata["verification"]["outputs"]) < 1e-5


def _matmul_onnx(path, lead, k, n):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((k, n)).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["t"]), helper.make_node("Add", ["t", "B"], ["y"])], "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [*lead, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*lead, n])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return w, b


@pytest.mark.parametrize("lead, k, n", [
    ((1,), 64, 37),  # one row, output columns that fill no whole vector
    ((32,), 96, 130),  # a recognizer's classes: no power-of-two factor of N beyond 2
    ((2, 5), 17, 16),  # leading dimensions (a sequence of rows), odd K
    ((8,), 33, 200),  # batch 8
])
def test_a_float_matmul_with_constant_weights_runs_packed_and_matches_float64(tmp_path, lead, k, n):
    w, b = _matmul_onnx(tmp_path / "mm.onnx", lead, k, n)
    result = qcompile.build(tmp_path / "mm.onnx", "host", tmp_path / "mm.so")
    x = np.random.default_rng(1).standard_normal((*lead, k)).astype(np.float32)
    ref = x.astype(np.float64) @ w.astype(np.float64) + b
    got = qcompile.load(result.artifact)({"x": x})["y"]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_a_packed_kernel_reads_a_channels_last_input_in_place_and_writes_whole_vectors():
    """A 1x1 channels-last convolution (a matmul's rows too) reads its input as it is, with no
    packing copy, and its epilogue stores whole vectors of the tile's output channels."""
    spec = get_target("host")
    kernel = float_kernel(FAMILIES[spec.schedule_family].float_lanes)
    x = te.placeholder(_i64(1, 6, 6, 32), "float32", "x")
    w = te.placeholder(_i64(*pack_weight(np.zeros((48, 32, 1, 1), np.float32), kernel).shape), "float32", "w")
    out = packed_conv_te(x, w, None, out_channels=48, kernel=kernel, shift=0, strides=[1, 1], padding=[0] * 4,
                         dilation=[1, 1], layout="NHWC")
    func = te.create_prim_func([x, w, out])
    sch = Int8Packed(FAMILIES[spec.schedule_family].int8, kernel).apply(func, backend_for(spec).tvm_target(), False)
    blocks = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    assert "pack_input" not in blocks
    last = sch.get_child_blocks(sch.get_sblock("root"))[-1]
    assert sch.get(sch.get_loops(last)[-1]).kind == tvm.tirx.ForKind.VECTORIZED


def _innermost_loop_kinds_of_writes(stmt, buffer: str, loop=None) -> list:
    """The kind of the loop right around each innermost block that writes `buffer`."""
    from tvm.s_tir import SBlockRealize

    if isinstance(stmt, tvm.tirx.For):
        return _innermost_loop_kinds_of_writes(stmt.body, buffer, stmt)
    if isinstance(stmt, tvm.tirx.SeqStmt):
        return [k for s in stmt.seq for k in _innermost_loop_kinds_of_writes(s, buffer, loop)]
    if isinstance(stmt, SBlockRealize):
        block = stmt.block
        inner = _innermost_loop_kinds_of_writes(block.body, buffer, loop)
        if inner or not any(r.source.name == buffer for r in block.writes):
            return inner
        return [loop.kind]
    body = getattr(stmt, "body", None)
    return _innermost_loop_kinds_of_writes(body, buffer, loop) if body is not None else []


def test_output_channels_that_fill_no_whole_vector_store_whole_vectors_then_one_short_one():
    """28 output channels in vectors of 8 (or 16): the epilogue runs per row tile in whole vectors
    and one short one. Per channel block, the last block's bound made TVM scalarize every block's
    epilogue (a BlazeFace 1x1 convolution's requantize cost several times its dot products)."""
    spec = get_target("host")
    kernel = float_kernel(FAMILIES[spec.schedule_family].float_lanes)
    oc = 3 * kernel.lanes + 4
    rng = np.random.default_rng(0)
    xv, wv = rng.standard_normal((1, 16, 16, 24)).astype(np.float32), rng.standard_normal((oc, 24, 1, 1))
    x = te.placeholder(_i64(*xv.shape), "float32", "x")
    wp = pack_weight(wv.astype(np.float32), kernel)
    w = te.placeholder(_i64(*wp.shape), "float32", "w")
    out = packed_conv_te(x, w, None, out_channels=oc, kernel=kernel, shift=0, strides=[1, 1], padding=[0] * 4,
                         dilation=[1, 1], layout="NHWC")
    target = backend_for(spec).tvm_target()
    sch = Int8Packed(FAMILIES[spec.schedule_family].int8, kernel).apply(te.create_prim_func([x, w, out]), target, False)
    kinds = _innermost_loop_kinds_of_writes(sch.mod["main"].body, out.op.name)
    assert kinds == [tvm.tirx.ForKind.VECTORIZED] * 2  # whole vectors, then the short one
    got = tvm.runtime.tensor(np.zeros((1, 16, 16, oc), np.float32))
    tvm.compile(sch.mod, target=target)(tvm.runtime.tensor(xv), tvm.runtime.tensor(wp), got)
    np.testing.assert_allclose(got.numpy(), np.einsum("nhwc,oc->nhwo", xv.astype(np.float64), wv[:, :, 0, 0]),
                               rtol=1e-4, atol=1e-4)
