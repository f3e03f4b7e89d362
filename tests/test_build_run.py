"""Whole-pipeline tests: real models built for the host and for a Raspberry Pi 5, run (the Pi's
under qemu-aarch64) and matched against onnxruntime; other targets checked by their ELF."""

import subprocess

import numpy as np
import onnx
import pytest
from conftest import requires
from onnx_models import reference, two_inputs, with_unsupported_ops

import qcompile
from qcompile import QCompileError
from qcompile.artifact import read_metadata


def _readelf(*args) -> str:
    return subprocess.run(["readelf", *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def host_artifact(tmp_path_factory, real_model):
    out = tmp_path_factory.mktemp("host") / "model.so"
    return qcompile.build(real_model, "host", out)


@pytest.fixture(scope="module")
def rpi5_artifact(tmp_path_factory, real_model):
    folder = tmp_path_factory.mktemp("rpi5")
    return qcompile.build(real_model, "rpi5", folder / "model.so", bundle=folder / "bundle")


def test_real_model_on_host_matches_onnxruntime(host_artifact, real_model, real_input, tmp_path):
    out = tmp_path / "out.npz"
    result = qcompile.run(host_artifact.artifact, real_input, out)
    expected = reference(real_model, {"x": np.load(real_input)["x"]})[0]
    np.testing.assert_allclose(np.load(out)["fetch_name_0"], expected, atol=1e-4, rtol=0)
    assert result.how == "native"


@requires("qemu-aarch64")
def test_real_model_on_rpi5_under_qemu_matches_onnxruntime(rpi5_artifact, real_model, real_input, tmp_path):
    result = qcompile.run(rpi5_artifact.artifact, real_input, tmp_path / "out.npz", bundle=rpi5_artifact.bundle)
    expected = reference(real_model, {"x": np.load(real_input)["x"]})[0]
    np.testing.assert_allclose(result.outputs["fetch_name_0"], expected, atol=1e-4, rtol=0)
    assert result.how.startswith("emulated (qemu-aarch64")


@requires("qemu-aarch64")
def test_rpi4_artifact_runs_under_qemu(small_cnn_path, tmp_path):
    so = qcompile.build(small_cnn_path, "rpi4", tmp_path / "m.so").artifact
    assert qcompile.inspect(so)["llvm"]["mcpu"] == "cortex-a72"
    x = np.random.default_rng(2).standard_normal((1, 1, 8, 8)).astype(np.float32)
    result = qcompile.run(so, {"x": x}, repeat=2)
    np.testing.assert_allclose(result.outputs["logits"], reference(small_cnn_path, {"x": x})[0], atol=1e-5)
    assert result.latency_ms is not None and result.latency_ms > 0


def test_rpi5_artifact_and_bundle(rpi5_artifact):
    so = str(rpi5_artifact.artifact)
    assert "AArch64" in _readelf("-h", so)
    needed = [ln.split("[")[1].rstrip("]") for ln in _readelf("-d", so).splitlines() if "NEEDED" in ln]
    assert set(needed) <= {"libc.so.6", "libm.so.6"}
    bundle = rpi5_artifact.bundle
    names = sorted(p.name for p in bundle.iterdir())
    assert names == ["README.md", "libtvm_ffi.so", "libtvm_runtime.so", "model.json", "model.so", "qcompile_run"]
    for lib in ("libtvm_runtime.so", "libtvm_ffi.so", "qcompile_run"):
        assert "AArch64" in _readelf("-h", str(bundle / lib))
    assert "$ORIGIN" in _readelf("-d", str(bundle / "qcompile_run"))
    assert "./qcompile_run ./model.so OUT_DIR x.npy" in (bundle / "README.md").read_text()


def test_inspect_reports_target_signature_and_layers(rpi5_artifact):
    meta = qcompile.inspect(rpi5_artifact.artifact)
    assert meta["target"] == "rpi5" and meta["arch"] == "aarch64"
    assert meta["inputs"] == [{"name": "x", "shape": [1, 3, 224, 224], "dtype": "float32"}]
    assert meta["outputs"] == [{"name": "fetch_name_0", "shape": [1, 4], "dtype": "float32"}]
    ops = [row["op"] for row in meta["layers"]]
    assert ops.count("conv2d") == 32 and ops.count("matmul") == 1
    assert all(row["weight_dtype"] == "float32" for row in meta["layers"])


@requires("arm-linux-gnueabihf-g++")
def test_armv7_artifact_is_hard_float_neon(small_cnn_path, tmp_path):
    so = qcompile.build(small_cnn_path, "rpi3-armv7", tmp_path / "m.so").artifact
    header, attrs = _readelf("-h", str(so)), _readelf("-A", str(so))
    assert "ELF32" in header and "ARM" in header and "hard-float ABI" in header
    assert "Tag_CPU_arch: v7" in attrs and "NEON" in attrs and "Tag_ABI_VFP_args: VFP registers" in attrs


@requires("aarch64-linux-gnu-g++")
def test_android_artifact_links_against_bionic(small_cnn_path, tmp_path):
    so = qcompile.build(small_cnn_path, "android-arm64", tmp_path / "m.so").artifact
    assert "AArch64" in _readelf("-h", str(so))
    needed = {ln.split("[")[1].rstrip("]") for ln in _readelf("-d", str(so)).splitlines() if "NEEDED" in ln}
    assert needed == {"libc.so", "libm.so"}
    with pytest.raises(QCompileError, match="run on Android devices only"):
        qcompile.run(so, {"x": np.zeros((1, 1, 8, 8), np.float32)})


def test_cuda_artifact_builds_with_gpu_kernels(small_cnn_path, tmp_path):
    so = qcompile.build(small_cnn_path, "cuda-sm80", tmp_path / "m.so").artifact
    assert read_metadata(so)["kind"] == "cuda"
    assert b"__global__" in so.read_bytes() or b"extern \"C\" __global__" in so.read_bytes()


def test_two_inputs_two_outputs_by_name(tmp_path):
    path = tmp_path / "two.onnx"
    onnx.save(two_inputs(), str(path))
    so = qcompile.build(path, "host", tmp_path / "two.so").artifact
    rng = np.random.default_rng(1)
    feeds = {"a": rng.standard_normal((2, 3)).astype(np.float32), "b": rng.standard_normal((3, 4)).astype(np.float32)}
    result = qcompile.run(so, feeds)
    y, r = reference(path, feeds)
    np.testing.assert_allclose(result.outputs["y"], y, atol=1e-5)
    np.testing.assert_allclose(result.outputs["r"], r, atol=1e-5)


@pytest.mark.parametrize("feeds, message", [
    ({"y": np.zeros((1, 1, 8, 8), np.float32)}, r"inputs \['y'\] do not match the model's inputs \['x'\]"),
    ({"x": np.zeros((1, 1, 8, 9), np.float32)}, r"input 'x' has shape \[1, 1, 8, 9\], the model expects \[1, 1, 8, 8\]"),
    ({"x": np.zeros((1, 1, 8, 8), np.float64)}, r"input 'x' has dtype float64, the model expects float32"),
])
def test_bad_inputs_are_named(small_cnn_path, tmp_path_factory, feeds, message):
    so = tmp_path_factory.getbasetemp() / "small_host.so"
    if not so.exists():
        qcompile.build(small_cnn_path, "host", so)
    npz = tmp_path_factory.mktemp("bad") / "in.npz"
    np.savez(npz, **feeds)
    with pytest.raises(QCompileError, match=message):
        qcompile.run(so, npz)


def test_failed_build_leaves_no_artifact(tmp_path):
    path = tmp_path / "bad.onnx"
    onnx.save(with_unsupported_ops(), str(path))
    out = tmp_path / "out" / "model.so"
    with pytest.raises(QCompileError, match="unsupported ops"):
        qcompile.build(path, "host", out, bundle=tmp_path / "bundle")
    assert not out.exists() and not (tmp_path / "bundle").exists()
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".") and "tmp" in p.name]


def test_missing_cross_compiler_names_the_debian_package(small_cnn_path, tmp_path):
    board = tmp_path / "board.toml"
    board.write_text('name = "board"\narch = "aarch64"\nschedule_family = "arm-neon"\n'
                     '[llvm]\nmtriple = "aarch64-linux-gnu"\n'
                     '[toolchain]\ncc = "aarch64-nonexistent-g++"\ndebian_package = "g++-aarch64-nonexistent"\n')
    with pytest.raises(QCompileError, match="needs the compiler 'aarch64-nonexistent-g\\+\\+'.*apt-get install g\\+\\+-aarch64-nonexistent"):
        qcompile.build(small_cnn_path, str(board), tmp_path / "m.so")
    assert not (tmp_path / "m.so").exists()


@requires("qemu-aarch64")
def test_artifact_of_a_custom_target_file_runs_without_that_file(small_cnn_path, tmp_path):
    from qcompile.targets import TARGETS_DIR

    board = tmp_path / "board.toml"
    board.write_text((TARGETS_DIR / "rpi4.toml").read_text().replace('name = "rpi4"', 'name = "board"'))
    so = qcompile.build(small_cnn_path, str(board), tmp_path / "m.so").artifact
    board.unlink()
    x = np.ones((1, 1, 8, 8), np.float32)
    np.testing.assert_allclose(qcompile.run(so, {"x": x}).outputs["logits"], reference(small_cnn_path, {"x": x})[0], atol=1e-5)


def test_not_an_artifact(tmp_path, small_cnn_path):
    with pytest.raises(QCompileError, match="no ELF header"):
        qcompile.inspect(small_cnn_path)
    with pytest.raises(QCompileError, match="no such artifact"):
        qcompile.run(tmp_path / "none.so", {})


def test_a_rebuild_at_the_same_path_runs_the_new_library(small_cnn_path, tmp_path):
    """dlopen returns the library already loaded under a path: without care, a script that builds,
    runs, rebuilds and runs again in one process would run the first build twice."""
    x = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    quantized = {"quantize": {"progress": False}, "calib": tmp_path / "calib.npz", "input_shapes": {"x": [2, 1, 8, 8]}}
    float_out = qcompile.run(qcompile.build(small_cnn_path, "host", tmp_path / "m.so").artifact, {"x": x[:1]}).outputs
    qcompile.build(small_cnn_path, "host", tmp_path / "m.so", **quantized)
    int8_out = qcompile.run(tmp_path / "m.so", {"x": x}).outputs
    elsewhere = qcompile.build(small_cnn_path, "host", tmp_path / "other.so", **quantized)
    assert read_metadata(tmp_path / "m.so")["quantization"] is not None
    np.testing.assert_array_equal(int8_out["logits"], qcompile.run(elsewhere.artifact, {"x": x}).outputs["logits"])
    assert not np.array_equal(int8_out["logits"][:1], float_out["logits"])
