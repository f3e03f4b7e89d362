"""int4 block-wise weight-only matmuls (quantize/blockwise.py): codes and group scales, the
DynamicQuantize rewrite (Before/Expected), the portable kernel and each CPU family's packed kernel
against a numpy reference on odd shapes, CUDA codegen, and the CLI's one-line errors."""

import subprocess
import sys

import numpy as np
import pytest
import tvm
from conftest import requires
from test_vulkan import needs_vulkan
from tvm import relax
from tvm.relax import op as R

from qcompile.backends import backend_for
from qcompile.backends.packed.pack import pack_int4, unpack_int4
from qcompile.ir import const_value, is_const
from qcompile.layers import layer_table
from qcompile.ops import INT4_MATMUL_KERNEL
from qcompile.quantize import QuantConfig
from qcompile.quantize.blockwise import (
    dequantize_blockwise,
    int4_matmul_te,
    pack_int4_words,
    portable_operands,
    quantize_blockwise,
    unpack_int4_words,
)
from qcompile.quantize.dynamic import dynamic_quantize
from qcompile.targets import detect_host, get_target

RNG = np.random.default_rng(0)


def _plain_rounding_error(w_kn, group_size):
    """max|w| / 7 per group, written out here: the rounding the clipping search must never lose to."""
    n_groups = -(-w_kn.shape[0] // group_size)
    err = 0.0
    for g in range(n_groups):
        block = w_kn[g * group_size:(g + 1) * group_size]
        scale = np.where(np.abs(block).max(0) > 0, np.abs(block).max(0) / 7, 1.0)
        err += np.square(np.clip(np.round(block / scale), -8, 7) * scale - block).sum()
    return err


@pytest.mark.parametrize("k, n, group_size", [(100, 37, 32), (64, 9, 64), (200, 130, 128), (40, 5, 0)])
def test_codes_scales_and_error(k, n, group_size):
    w = RNG.standard_normal((k, n)).astype(np.float32)
    w[3, 0] = 40.0  # an outlier: its group's scale must not ruin the others
    codes, scales = quantize_blockwise(w, group_size)
    gs = group_size or k
    groups = -(-k // gs)
    assert codes.dtype == np.int8 and codes.shape == (n, groups * gs)
    assert scales.shape == (n, groups) and codes.min() >= -8 and codes.max() <= 7
    assert not codes[:, k:].any()  # the padding
    err = np.square(dequantize_blockwise(codes, scales, k) - w).sum()
    assert err <= _plain_rounding_error(w, gs) * (1 + 1e-6)
    if group_size and groups > 1:  # the outlier's group alone pays for it
        other = np.abs(dequantize_blockwise(codes, scales, k)[gs:, 0] - w[gs:, 0]).max()
        assert other < 0.5


def test_pack_two_codes_per_byte():
    codes = RNG.integers(-8, 8, (5, 6)).astype(np.int8)
    packed = pack_int4(codes)
    assert packed.shape == (5, 3)
    assert ((packed.view(np.uint8) & 0xF) == (codes[:, 0::2].view(np.uint8) & 0xF)).all()  # low nibble first
    np.testing.assert_array_equal(unpack_int4(packed), codes)


def test_pack_eight_codes_per_word():
    codes = RNG.integers(-8, 8, (3, 16)).astype(np.int8)
    words = pack_int4_words(codes)
    assert words.dtype == np.int32 and words.shape == (3, 2)
    assert (words.view(np.uint32) & 0xF == codes[:, 0::8].view(np.uint8) & 0xF).all()  # code 8i in the low bits
    np.testing.assert_array_equal(unpack_int4_words(words), codes)


def _matmul_module(shape, w, relu=True):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = R.matmul(x, relax.const(w))
            y = bb.emit_output(R.nn.relu(y) if relu else y)
        bb.emit_func_output(y)
    return bb.get()


def test_rewrite_before_expected():
    w = RNG.standard_normal((64, 12)).astype(np.float32)
    after = dynamic_quantize(_matmul_module((2, 5, 64), w), "weight-only", weight_bits=4, group_size=32)
    codes, scales = quantize_blockwise(w, 32)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 5, 64), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            x2 = bb.emit(R.reshape(x, (10, 64)))
            words, group_scales = portable_operands(codes, scales)
            y = bb.emit_te(int4_matmul_te, x2, relax.const(words, "int32"), relax.const(group_scales, "float32"),
                           primfunc_name_hint=INT4_MATMUL_KERNEL)
            y = bb.emit(R.reshape(y, (2, 5, 12)))
            out = bb.emit_output(bb.emit(R.nn.relu(y)))  # rewrite_main re-emits the output binding
        bb.emit_func_output(out)
    tvm.ir.assert_structural_equal(after, bb.get(), map_free_vars=True)
    (row,) = layer_table(after)
    assert row["op"] == "matmul" and row["weight_dtype"] == "int4"


def test_matmul_of_two_activations_and_vectors_stay_float():
    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType((4, 8), "float32"))
    b = relax.Var("b", relax.TensorType((8, 3), "float32"))
    with bb.function("main", [a, b]):
        with bb.dataflow():
            y = bb.emit(R.matmul(a, b))
            out = bb.emit_output(R.matmul(y, relax.const(np.ones(3, np.float32))))
        bb.emit_func_output(out)
    after = dynamic_quantize(bb.get(), "weight-only", weight_bits=4)
    assert [str(gv.name_hint) for gv in after.get_global_vars()] == ["main"]
    assert [row["weight_dtype"] for row in layer_table(after)] == ["float32", "float32"]


SHAPES = [((1, 100), 37, 32), ((2, 7, 64), 9, 64), ((8, 200), 130, 128), ((3, 40), 5, 0), ((17, 64), 48, 32)]


def _reference(xv, w, group_size):
    codes, scales = quantize_blockwise(w, group_size)
    return xv.astype(np.float64) @ dequantize_blockwise(codes, scales, w.shape[0]).astype(np.float64)


def _run(mod, target_name, xv):
    ex = backend_for(get_target(target_name)).compile(mod)
    return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(xv)).numpy()


@pytest.mark.parametrize("shape, n, group_size", SHAPES)
def test_portable_kernel_matches_numpy(shape, n, group_size):
    w = RNG.standard_normal((shape[-1], n)).astype(np.float32)
    xv = RNG.standard_normal(shape).astype(np.float32)
    mod = dynamic_quantize(_matmul_module(shape, w, relu=False), "weight-only", weight_bits=4, group_size=group_size)
    ex = tvm.compile(mod, target="llvm")  # unscheduled: the kernel as written
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(xv)).numpy()
    np.testing.assert_allclose(out, _reference(xv, w, group_size), rtol=1e-5, atol=1e-4)


HOST_FAMILIES = ["host", "x86-avx2"] if detect_host()["arch"] == "x86_64" else ["host"]  # AVX2 runs on any x86 here


@pytest.mark.parametrize("target_name", HOST_FAMILIES)
@pytest.mark.parametrize("shape, n, group_size", SHAPES)
def test_packed_kernel_matches_numpy(target_name, shape, n, group_size):
    """Each CPU family repacks the kernel into its packed float kernel (weights decoded in the kernel)."""
    w = RNG.standard_normal((shape[-1], n)).astype(np.float32)
    xv = RNG.standard_normal(shape).astype(np.float32)
    mod = dynamic_quantize(_matmul_module(shape, w, relu=False), "weight-only", weight_bits=4, group_size=group_size)
    np.testing.assert_allclose(_run(mod, target_name, xv), _reference(xv, w, group_size), rtol=1e-5, atol=1e-4)


def test_cpu_keeps_half_a_byte_per_weight():
    """Through the CPU backend's Relax passes the kernel keeps its int4 operands: no float copy of
    the weights is made at build time (constant folding cannot see through the kernel)."""
    w = RNG.standard_normal((96, 20)).astype(np.float32)
    mod = dynamic_quantize(_matmul_module((3, 96), w), "weight-only", weight_bits=4, group_size=32)
    backend = backend_for(get_target("x86-avx2"))
    with backend.tvm_target():
        lowered = tvm.transform.Sequential(backend.fused_module_passes(backend.tvm_target()))(mod)
    consts = [const_value(c) for c in _constants(lowered["main"])]
    assert consts and sum(c.nbytes for c in consts) < w.nbytes / 4
    assert not any(c.dtype == np.float32 and c.size >= w.size for c in consts)


def _constants(func):
    found = []
    relax.analysis.post_order_visit(func, lambda e: found.append(e) if is_const(e) else None)
    return found


@requires("nvcc")
def test_cuda_codegen():
    w = RNG.standard_normal((128, 64)).astype(np.float32)
    mod = dynamic_quantize(_matmul_module((4, 128), w), "weight-only", weight_bits=4, group_size=64)
    ex = backend_for(get_target("cuda-sm80")).compile(mod)
    src = "".join(m.inspect_source() for m in ex.mod._collect_from_import_tree(lambda m: m.kind == "cuda"))
    # the kernel takes the codes as 32-bit words and decodes them on the GPU (shifts)
    assert INT4_MATMUL_KERNEL in src and "int* __restrict__" in src and "<<" in src and ">>" in src


@needs_vulkan
def test_vulkan_runs_the_portable_kernel(tmp_path):
    """WGSL has no 8-bit storage: the portable kernel reads its codes as 32-bit words."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import qcompile

    w = RNG.standard_normal((72, 20)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "m",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 72])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 20])],
                              [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "mm.onnx"))
    quantize = {"mode": "weight-only", "weight_bits": 4, "group_size": 64, "progress": False}
    built = qcompile.build(tmp_path / "mm.onnx", "vulkan", tmp_path / "m.vkz", quantize=quantize)
    xv = RNG.standard_normal((4, 72)).astype(np.float32)
    got = qcompile.run(built.artifact, {"x": xv}).outputs["y"]
    np.testing.assert_allclose(got, _reference(xv, w, 64), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("config, message", [
    ({"mode": "static", "weight_bits": 4}, "--weight-bits 4 is int4 block-wise weights, used with --mode weight-only"),
    ({"mode": "weight-only", "weight_bits": 4, "group_size": 48}, "--group-size 48: choose 32, 64, 128, or 0"),
])
def test_config_errors(config, message):
    from qcompile.errors import QCompileError

    with pytest.raises(QCompileError, match=message):
        QuantConfig(**config).check()


def test_cli_refuses_int4_without_weight_only(tmp_path):
    from qcompile.examples import fashion_mnist_cnn_onnx

    result = subprocess.run([sys.executable, "-m", "qcompile.cli", "build", str(fashion_mnist_cnn_onnx()), "-o",
                             str(tmp_path / "m.so"), "--quantize", "int8", "--weight-bits", "4"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [result.stderr.strip()] and "--mode weight-only" in result.stderr
    assert not (tmp_path / "m.so").exists()
