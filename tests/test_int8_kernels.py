"""The packed int8 kernels of every schedule family: the dot-product instruction is in the
generated code, and the kernel computes exactly what a convolution in int64 computes (run here
when this CPU has the instructions; the aarch64 kernels run under qemu in test_quantize_models)."""

import numpy as np
import pytest
import torch
import tvm
from conftest import parallel_workspace_allocations, requires
from tvm import te

from qcompile.backends import backend_for
from qcompile.backends.families import FAMILIES
from qcompile.backends.packed.pack import (
    depthwise_exact_in_float,
    fits_int4,
    float_kernel,
    pack_depthwise_weight,
    pack_int4,
    pack_weight,
    packed_conv_te,
    packed_depthwise_te,
    padded_width,
    pair_sums_fit,
    unpack_int4,
)
from qcompile.backends.packed.schedule import Int8Packed
from qcompile.backends.rules import tir_nodes
from qcompile.targets import detect_host, get_target

TARGETS = {"x86-vnni": "x86-avx512-vnni", "x86-avx512": "x86-avx512", "x86-avx2": "x86-avx2",  # family -> a target file
           "arm-dotprod": "rpi5", "arm-neon": "rpi4", "arm-i8mm": "graviton3"}


def _runs_here(family) -> bool:
    """The family's target runs natively on this CPU (aarch64 kernels run under qemu in test_quantize_models)."""
    spec, host = get_target(TARGETS[family]), detect_host()
    return spec.arch == host["arch"] and set(spec.features()) <= set(host["llvm"]["mattr"])


def test_each_family_is_tested_through_a_target_file_of_that_family():
    assert {family: get_target(name).schedule_family for family, name in TARGETS.items()} == {f: f for f in TARGETS}


def _i64(*dims):
    return tuple(tvm.tirx.IntImm("int64", d) for d in dims)


def _conv_schedule(family, input_dtype="int8", depthwise=False, stride=1, hw=None, int4=False, layout="NCHW",
                   bits=8, extreme=False, oc=None, depthwise_float=False, residual=None):
    """A packed kernel scheduled, its inputs, the float64 reference (in `layout`, NCHW or NHWC), the
    family's kernel and the target; weights of `bits` bits (4 with `int4`). `extreme`: every input
    and weight at the end of its range, the products' signs alike (the largest sums a kernel can
    meet). `residual` (NHWC): an int32 input of that many channels, zero-padded to the output's and
    added to it (BlazeFace's residual)."""
    c, oc, hw = (24, 24, hw or 14) if depthwise else (20, oc or 40, hw or 10)  # channels that fill no whole tile
    to_layout = (lambda a: a) if layout == "NCHW" else (lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1)))
    x = te.placeholder(_i64(*to_layout(np.zeros((1, c, hw, hw))).shape), input_dtype, "x")
    conv = {"strides": [stride, stride], "padding": [1, 1, 1, 1], "dilation": [1, 1], "layout": layout}
    rng = np.random.default_rng(0)
    lo, hi = (-128, 128) if input_dtype == "int8" else (0, 256)
    xv = rng.integers(lo, hi, (1, c, hw, hw)).astype(input_dtype)
    wmax = 2 ** ((4 if int4 else bits) - 1) - 1
    wv = rng.integers(-wmax, wmax + 1, (c, 1, 3, 3) if depthwise else (oc, c, 3, 3)).astype(np.int8)
    if extreme:
        xv[:] = hi - 1
        wv[:] = np.where(np.arange(len(wv))[:, None, None, None] % 2 == 0, wmax, -wmax)
    kernel = FAMILIES[family].int8.for_layer((hw - 1) // stride + 1, stride)
    if not depthwise:
        kernel = kernel.for_weights(lambda k: pair_sums_fit(wv, k))
    if depthwise:
        wp = pack_depthwise_weight(wv.astype(np.float32) if depthwise_float else wv, kernel.lanes)
        w = te.placeholder(_i64(*wp.shape), str(wp.dtype), "w")
        out = packed_depthwise_te(x, w, **conv)
        args, tensors = [x, w, out], [xv, wp]
    else:
        wp = pack_int4(pack_weight(wv, kernel)) if int4 else pack_weight(wv, kernel)
        shift = kernel.shift(input_dtype)
        corr = (shift * wv.astype(np.int64).reshape(oc, -1).sum(1)).astype(np.int32)
        w, cr = te.placeholder(_i64(*wp.shape), "int8", "w"), te.placeholder(_i64(oc), "int32", "corr")
        out = packed_conv_te(x, w, cr, out_channels=oc, kernel=kernel, shift=shift, int4=int4, **conv)
        args, tensors = [x, w, cr, out], [xv, wp, corr]
    ref = torch.nn.functional.conv2d(torch.tensor(xv.astype(np.float64)), torch.tensor(wv.astype(np.float64)),
                                     stride=stride, padding=1, groups=c if depthwise else 1).numpy()
    tensors[0], ref = to_layout(tensors[0]), to_layout(ref)
    if residual:
        r = te.placeholder(_i64(*ref.shape[:3], residual), "int32", "r")
        summed = te.compute(out.shape, lambda n, h, w, ch: out[n, h, w, ch] + tvm.tirx.if_then_else(
            ch < residual, r[n, h, w, ch], 0), name="residual")
        rv = rng.integers(-1000, 1000, (*ref.shape[:3], residual)).astype(np.int32)
        args, tensors = args[:-1] + [r, summed], tensors + [rv]
        ref = ref + np.pad(rv, [(0, 0)] * 3 + [(0, oc - residual)])
    target = backend_for(get_target(TARGETS[family])).tvm_target()
    float_kernel_ = float_kernel(FAMILIES[family].float_lanes) if FAMILIES[family].float_lanes else None
    sch = Int8Packed(kernel, float_kernel_).apply(te.create_prim_func(args), target, False)
    assert sch is not None
    return sch.mod, tensors, ref, kernel, target


def _conv_kernel(*args, **kwargs):
    """_conv_schedule's kernel compiled: the library, its inputs, the reference and the kernel."""
    mod, tensors, ref, kernel, target = _conv_schedule(*args, **kwargs)
    return tvm.compile(mod, target=target), tensors, ref, kernel


def _exact_where_it_runs(family, lib, tensors, ref) -> None:
    """The kernel computes the reference exactly, checked where the family runs on this CPU."""
    if not _runs_here(family):
        return
    out = tvm.runtime.tensor(np.zeros(ref.shape, np.int32))
    lib(*[tvm.runtime.tensor(t) for t in tensors], out)
    np.testing.assert_array_equal(out.numpy(), ref)


# (family, weight bits) -> the instruction where it is not the family's own: 8-bit weights could
# saturate AVX2's vpmaddubsw, so they take the exact vpmaddwd kernel
INSTRUCTION = {("x86-avx2", 8): "vpmaddwd"}


@pytest.mark.parametrize("family, bits", [(f, 8) for f in TARGETS] + [("x86-avx2", 7)])
@pytest.mark.parametrize("input_dtype", ["int8", "uint8"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_packed_conv_uses_the_dot_product_instruction_and_is_exact(family, bits, input_dtype, layout):
    lib, tensors, ref, kernel = _conv_kernel(family, input_dtype, layout=layout, bits=bits)
    asm = lib.mod.inspect_source("asm")
    # an even output width: the family's own instruction
    assert kernel.instruction == INSTRUCTION.get((family, bits), FAMILIES[family].int8.instruction)
    assert kernel.instruction in asm
    _exact_where_it_runs(family, lib, tensors, ref)


# NEON's convolution has no intrinsic: LLVM vectorizes its dot from a "local" accumulator (on the
# stack it was promoted to scalars), so it keeps a per-iteration buffer
@pytest.mark.parametrize("family, depthwise", [(f, False) for f in TARGETS if f != "arm-neon"] +
                         [(f, True) for f in TARGETS])
def test_a_packed_kernel_allocates_nothing_in_its_parallel_loop(family, depthwise):
    """The accumulators and an instruction's operands live on the stack (registers): a "local"
    buffer was a heap workspace call in every parallel iteration (TVM puts only global ones on the
    stack), two allocations and two frees per row tile of every int8 layer."""
    lib, *_ = _conv_kernel(family, hw=16, depthwise=depthwise)
    ir = lib.mod.inspect_source("ll")
    assert "@__tvm_parallel_lambda" in ir  # the kernel has a parallel loop
    assert parallel_workspace_allocations(ir) == {}


@pytest.mark.parametrize("family", [f for f in TARGETS if FAMILIES[f].int8.channel_blocks > 1])
@pytest.mark.parametrize("stride", [1, 2])
def test_a_register_tile_of_several_channel_vectors_is_exact(family, stride):
    """Where the family's tile holds several output-channel vectors (each broadcast activation feeds
    that many instructions), the unrolled loop over them is in the kernel and the result exact."""
    kernel = FAMILIES[family].int8
    mod, tensors, ref, _, target = _conv_schedule(family, layout="NHWC", hw=16,
                                                  oc=2 * kernel.channel_blocks * kernel.lanes, stride=stride)
    assert any(isinstance(n, tvm.tirx.For) and n.kind == tvm.tirx.ForKind.UNROLLED and
               int(n.extent) == kernel.channel_blocks for n in tir_nodes(mod["main"].body))
    lib = tvm.compile(mod, target=target)
    _exact_where_it_runs(family, lib, tensors, ref)


@pytest.mark.parametrize("family", list(TARGETS))
def test_output_channels_that_fill_no_whole_vector_are_exact(family):
    """Three whole vectors of output channels and four more, on an image with enough row tiles that
    the epilogue runs per row tile (packed/schedule.py's ragged epilogue)."""
    lanes = FAMILIES[family].int8.lanes
    lib, tensors, ref, _ = _conv_kernel(family, layout="NHWC", hw=16, oc=3 * lanes + 4)
    _exact_where_it_runs(family, lib, tensors, ref)


def _stores(func) -> list:
    """The stores of a scheduled function once TVM's lowering has vectorized its loops."""
    from tvm import s_tir, tirx

    # the default TIR pipeline (tvm/s_tir/pipeline.py) up to its loop vectorizer
    lower = tvm.ir.transform.Sequential([
        s_tir.transform.CanonicalizeLoop(), s_tir.transform.LowerInitBlock(),
        s_tir.transform.PlanAndUpdateBufferAllocationLocation(), s_tir.transform.ConvertBlocksToOpaque(),
        s_tir.transform.CompactBufferAllocation(), s_tir.transform.LowerMatchBuffer(), s_tir.transform.StmtSimplify(),
        s_tir.transform.LowerOpaqueBlock(), tirx.transform.FlattenBuffer(), tirx.transform.VectorizeLoop(True)])
    return [n for n in tir_nodes(lower(func)["main"].body) if isinstance(n, tirx.BufferStore)]


@pytest.mark.parametrize("family", [f for f in TARGETS if FAMILIES[f].int8.lanes > 4])
def test_a_channel_pad_inside_a_vector_keeps_the_epilogue_vectorized_and_exact(family):
    """A residual of fewer channels zero-padded to the output's inside the last, ragged vector
    (BlazeFace: 24 channels padded to 28): the epilogue is cut where the pad ends, and every store
    of it stays a vector store (TVM scalarized a conditional load whose condition varies across
    the lanes: a 1x1 convolution's epilogue then cost several times its dot products)."""
    lanes = FAMILIES[family].int8.lanes
    oc = 2 * lanes - lanes // 4  # 28 of 16 lanes
    mod, tensors, ref, _, target = _conv_schedule(family, layout="NHWC", hw=16, oc=oc, residual=oc - lanes // 4)
    epilogue = [s for s in _stores(mod) if s.buffer.name == "residual"]
    assert epilogue and not any(s.value.ty.is_scalar() for s in epilogue)
    lib = tvm.compile(mod, target=target)
    _exact_where_it_runs(family, lib, tensors, ref)


def test_requantize_rounding_is_vector_code_that_rounds_half_to_even():
    """Every requantize rounds half to even (tirx.nearbyint), which TVM 0.27's vectorizer does not
    count as vectorizable: the whole loop was scalarized and left to LLVM (a 1x1 convolution's
    epilogue of 24 channels: 67 -> 38 us vectorized). A backend lets it vectorize; ties still round
    to even, as numpy does."""
    from tvm import s_tir

    backend = backend_for(get_target("host"))  # any backend; the host's runs the kernel here
    x = te.placeholder((64,), "float32", "x")
    rounded = te.compute(x.shape, lambda i: tvm.tirx.nearbyint(x[i]), name="rounded")
    sch = s_tir.Schedule(te.create_prim_func([x, rounded]))
    sch.vectorize(sch.split(sch.get_loops(sch.get_sblock("rounded"))[0], [None, 16])[1])
    assert not any(s.value.ty.is_scalar() for s in _stores(sch.mod))
    xv = np.arange(-32, 32, dtype=np.float32) / 2  # every half-integer from -16 to 15.5
    out = tvm.runtime.tensor(np.zeros(64, np.float32))
    tvm.compile(sch.mod, target=backend.tvm_target())(tvm.runtime.tensor(xv), out)
    np.testing.assert_array_equal(out.numpy(), np.rint(xv))


@pytest.mark.parametrize("input_dtype", ["int8", "uint8"])
def test_avx2_vpmaddubsw_is_exact_at_its_int16_limit(input_dtype):
    """7-bit weights at +-63 against activations at their largest (255 once shifted to uint8):
    each vpmaddubsw pair sums to 255 * 126 = 32130, just inside int16, and nothing saturates."""
    lib, tensors, ref, kernel = _conv_kernel("x86-avx2", input_dtype, bits=7, extreme=True)
    assert kernel.instruction == "vpmaddubsw" and kernel.instruction in lib.mod.inspect_source("asm")
    out = tvm.runtime.tensor(np.zeros(ref.shape, np.int32))
    lib(*[tvm.runtime.tensor(t) for t in tensors], out)
    np.testing.assert_array_equal(out.numpy(), ref)


def test_int4_packing_round_trips():
    rng = np.random.default_rng(1)
    for shape in [(3, 5, 4), (1, 2), (7, 16)]:
        w = rng.integers(-8, 8, shape).astype(np.int8)
        packed = pack_int4(w)
        assert packed.shape == (*shape[:-1], shape[-1] // 2) and packed.dtype == np.int8
        np.testing.assert_array_equal(unpack_int4(packed), w)
    assert fits_int4(np.array([-8, 7], np.int8)) and not fits_int4(np.array([-9, 0], np.int8))
    assert not fits_int4(np.array([0, 8], np.int8))


@pytest.mark.parametrize("family", list(TARGETS))
def test_int4_weights_unpack_inside_the_packed_kernel_exactly(family):
    lib, tensors, ref, kernel = _conv_kernel(family, "int8", int4=True)
    assert tensors[1].size * 2 == pack_weight(np.zeros((40, 20, 3, 3), np.int8), kernel).size  # half the bytes
    assert kernel.instruction in lib.mod.inspect_source("asm")
    _exact_where_it_runs(family, lib, tensors, ref)


@pytest.mark.parametrize("depthwise_float", [False, True], ids=["int16", "float32"])
@pytest.mark.parametrize("input_dtype, extreme", [("int8", False), ("uint8", True)])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_packed_depthwise_is_exact(stride, layout, input_dtype, extreme, depthwise_float):
    """In int16 x int16 -> int32, and in float32 FMAs on the codes (x86's depthwise_float), where
    the largest sums (every code at the end of its range) stay below float32's 2**24."""
    lib, tensors, ref, _ = _conv_kernel("x86-avx2", input_dtype, depthwise=True, stride=stride, layout=layout,
                                        extreme=extreme, depthwise_float=depthwise_float)
    out = tvm.runtime.tensor(np.zeros(ref.shape, np.int32))
    lib(*[tvm.runtime.tensor(t) for t in tensors], out)
    np.testing.assert_array_equal(out.numpy(), ref)


def test_depthwise_sums_in_float32_only_below_its_exact_integers():
    assert depthwise_exact_in_float(np.full((8, 1, 3, 3), -127, np.int8))
    assert depthwise_exact_in_float(np.full((8, 1, 22, 22), 127, np.int8))  # 22 * 22 * 255 * 127 < 2**24
    assert not depthwise_exact_in_float(np.full((8, 1, 23, 23), 127, np.int8))


@pytest.mark.parametrize("depthwise", [False, True], ids=["conv", "depthwise"])
@pytest.mark.parametrize("stride", [1, 2])
def test_rows_no_register_tile_divides_are_computed_padded_and_exact(depthwise, stride):
    """13 output pixels a row (prime): the kernel computes 16 and drops 3, still exact."""
    assert padded_width(13) == 16 and padded_width(14) == 14 and padded_width(3) == 3
    lib, tensors, ref, _ = _conv_kernel("x86-avx2", depthwise=depthwise, stride=stride, hw=13 * stride, layout="NHWC")
    assert ref.shape[2] == 13
    out = tvm.runtime.tensor(np.zeros(ref.shape, np.int32))
    lib(*[tvm.runtime.tensor(t) for t in tensors], out)
    np.testing.assert_array_equal(out.numpy(), ref)


def test_int8_activations_stay_channels_last_between_packed_kernels():
    """The CPU families' Relax passes put int8 convolutions in NHWC and pack them: on the Fashion
    CNN the only transposes left are at the model's input (before the first convolution) and at
    the classifier (its flatten is NCHW), none between the packed kernels."""
    from qcompile.builder import prepare
    from qcompile.examples import fashion_mnist, fashion_mnist_cnn_onnx
    from qcompile.ir import main_bindings, op_name

    x, _ = fashion_mnist("t10k")
    p = prepare(fashion_mnist_cnn_onnx(), "x86-avx2", {"image": [1, 1, 28, 28]}, {"progress": False},
                [{"image": x[i:i + 1]} for i in range(4)])
    ops = [op_name(v) for _, v in main_bindings(tvm.transform.Sequential(backend_for(p.spec).relax_passes())(p.mod))]
    packed = [i for i, name in enumerate(ops) if name == "call_tir"]
    transposes = [i for i, name in enumerate(ops) if name == "permute_dims"]
    assert "nn.conv2d" not in ops and "clip" not in ops and len(packed) >= 5
    assert len(transposes) == 2 and transposes[0] < packed[0] and transposes[1] > packed[-2]


def test_i8mm_falls_back_to_sdot_on_odd_widths():
    lib, _, _, kernel = _conv_kernel("arm-i8mm", hw=9)
    assert kernel.instruction == "sdot" and "sdot" in lib.mod.inspect_source("asm")


@pytest.mark.parametrize("target, weight_bits, instruction, at_least", [
    ("x86-avx512-vnni", 8, "vpdpbusd", 5), ("x86-avx2", 8, "vpmaddwd", 5), ("x86-avx2", 7, "vpmaddubsw", 5),
    ("rpi5", 8, "sdot", 5), ("graviton3", 8, "smmla", 3)])
def test_a_real_cnn_built_for_the_target_holds_its_instruction(target, weight_bits, instruction, at_least):
    """The Fashion-MNIST CNN in int8 for each target: its code holds the family's instruction
    (graviton3: smmla where the row width is even, sdot on the 7-wide rows; x86-avx2: vpmaddubsw
    for 7-bit weights, the exact vpmaddwd for 8-bit ones, save a layer whose weights happen to fit,
    like the first one's single input channel paired with zero padding)."""
    from qcompile.builder import compile_module, prepare
    from qcompile.examples import fashion_mnist, fashion_mnist_cnn_onnx

    x, _ = fashion_mnist("t10k")
    p = prepare(fashion_mnist_cnn_onnx(), target, {"image": [1, 1, 28, 28]}, {"progress": False, "weight_bits": weight_bits},
                [{"image": x[i:i + 1]} for i in range(4)])
    ex = compile_module(p.mod, p.spec)
    asm = "".join(m.inspect_source("asm") for m in ex.mod._collect_from_import_tree(lambda m: m.kind == "llvm"))
    assert asm.count(instruction) >= at_least


@requires("nvcc")
def test_cuda_int8_kernels_use_dp4a():
    from tvm.support import nvcc

    from qcompile.builder import compile_module, prepare
    from qcompile.examples import fashion_mnist, fashion_mnist_cnn_onnx

    x, _ = fashion_mnist("t10k")
    p = prepare(fashion_mnist_cnn_onnx(), "cuda-sm80", {"image": [1, 1, 28, 28]}, {"progress": False},
                [{"image": x[i:i + 1]} for i in range(4)])
    ex = compile_module(p.mod, p.spec)
    src = "".join(m.inspect_source() for m in ex.mod._collect_from_import_tree(lambda m: m.kind == "cuda"))
    assert src.count("__dp4a") >= 5
    with backend_for(p.spec).tvm_target():
        ptx = nvcc.compile_cuda(src, target_format="ptx", arch="sm_80", compiler="nvcc").decode()
    assert "dp4a.s32.s32" in ptx
    assert get_target("cuda-sm80").schedule_family == "cuda"


@requires("nvcc")
@pytest.mark.slow  # 1 min (TVM's stock tensor intrinsics import); the default suite checks CUDA's dp4a kernels
def test_cuda_large_int8_matmuls_use_int8_tensor_cores(tmp_path):
    """A quantized MLP at batch 128: its int8 matmuls go to WMMA on s8 fragments (the dp4a kernels
    keep the convolutions and the small matmuls)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from tvm.support import nvcc

    from qcompile.builder import compile_module, prepare

    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((256, 256)) * 0.1).astype("float32")
    w2 = (rng.standard_normal((256, 128)) * 0.1).astype("float32")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [128, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [128, 128])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    path = tmp_path / "mlp.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    p = prepare(path, "cuda-sm80", None, {"progress": False}, [{"x": rng.standard_normal((128, 256)).astype("float32")}])
    ex = compile_module(p.mod, p.spec)
    src = "".join(m.inspect_source() for m in ex.mod._collect_from_import_tree(lambda m: m.kind == "cuda"))
    assert src.count("wmma::mma_sync") >= 2
    with backend_for(p.spec).tvm_target():
        ptx = nvcc.compile_cuda(src, target_format="ptx", arch="sm_80", compiler="nvcc").decode()
    assert "wmma.mma.sync" in ptx and ".s8" in ptx


def test_a_new_cpu_family_is_one_table_entry(tmp_path, monkeypatch):
    """README's "Adding a target" example: one FAMILIES entry and one target file, and the CPU
    backend packs, schedules and compiles the Fashion CNN for it with the family's instruction."""
    from qcompile.backends import families
    from qcompile.builder import compile_module, prepare
    from qcompile.examples import fashion_mnist, fashion_mnist_cnn_onnx

    sdot = families.Int8Kernel(4, 4, "int8", "qcompile_sdot_4x4", "sdot")
    entry = families.Family("arm-a720-i8mm", "cpu", families.Int8Kernel(
        2, 8, "int8", "qcompile_smmla_2x2x8", "smmla", pixels=2, fallback=sdot), channels_last=True)
    monkeypatch.setitem(families.FAMILIES, entry.name, entry)
    target = tmp_path / "rpi6.toml"
    target.write_text('''name = "rpi6"
description = "Cortex-A720 board: aarch64 with dotprod and i8mm"
arch = "aarch64"
schedule_family = "arm-a720-i8mm"

[llvm]
mtriple = "aarch64-linux-gnu"
mcpu = "cortex-a720"
mattr = ["+neon", "+dotprod", "+i8mm"]

[toolchain]
cc = "aarch64-linux-gnu-g++"
debian_package = "g++-aarch64-linux-gnu"
''')
    x, _ = fashion_mnist("t10k")
    p = prepare(fashion_mnist_cnn_onnx(), str(target), {"image": [1, 1, 28, 28]}, {"progress": False},
                [{"image": x[i:i + 1]} for i in range(4)])
    assert backend_for(p.spec).precisions[0] == "int4"  # an even kpack stores 4-bit weights as such
    ex = compile_module(p.mod, p.spec)
    asm = "".join(m.inspect_source("asm") for m in ex.mod._collect_from_import_tree(lambda m: m.kind == "llvm"))
    assert asm.count("smmla") >= 3 and "sdot" in asm
