"""qcompile.load: an artifact loaded once into this process and run many times, its outputs those of
qcompile.run, its inputs checked the same way, its checksum verified at load."""

import shutil

import numpy as np
import pytest
from conftest import requires

import qcompile
from qcompile import QCompileError
from qcompile.artifact import MARKER
from qcompile.backends.cpu import run as cpu_run


@pytest.fixture(scope="module")
def fp32_artifact(tmp_path_factory, small_cnn_path):
    return qcompile.build(small_cnn_path, "host", tmp_path_factory.mktemp("fp32") / "m.so").artifact


@pytest.fixture(scope="module")
def int8_artifact(tmp_path_factory, small_cnn_path):
    rng = np.random.default_rng(1)
    calib = [{"x": rng.standard_normal((1, 1, 8, 8)).astype(np.float32)} for _ in range(4)]
    built = qcompile.build(small_cnn_path, "host", tmp_path_factory.mktemp("int8") / "q.so",
                           quantize={"progress": False}, calib=calib)
    assert {row["input_dtype"] for row in built.metadata["layers"]} == {"int8"}
    return built.artifact


@pytest.fixture
def loads(monkeypatch):
    """Counts the libraries loaded into this process from here on."""
    count = []
    real = cpu_run.load_library
    monkeypatch.setattr(cpu_run, "load_library", lambda path: count.append(path) or real(path))
    return count


def _x(seed=0):
    return np.random.default_rng(seed).standard_normal((1, 1, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("which", ["fp32_artifact", "int8_artifact"])
def test_outputs_equal_run(request, which):
    artifact = request.getfixturevalue(which)
    model = qcompile.load(artifact)
    for seed in range(3):
        got, want = model({"x": _x(seed)}), qcompile.run(artifact, {"x": _x(seed)}).outputs
        assert list(got) == list(want) == ["logits"]
        np.testing.assert_array_equal(got["logits"], want["logits"])
        assert got["logits"].dtype == np.float32 and got["logits"].shape == (1, 10)


def test_signature_and_metadata(fp32_artifact):
    model = qcompile.load(fp32_artifact)
    assert model.metadata == qcompile.inspect(fp32_artifact)
    assert model.inputs == [{"name": "x", "shape": [1, 1, 8, 8], "dtype": "float32"}]
    assert model.outputs == [{"name": "logits", "shape": [1, 10], "dtype": "float32"}]
    assert "m.so" in repr(model)


def test_repeated_calls_reuse_the_loaded_library(fp32_artifact, loads, tmp_path):
    model = qcompile.load(fp32_artifact)
    assert len(loads) == 1
    vm = model._model.vm
    first = model({"x": _x()})["logits"]
    np.savez(tmp_path / "x.npz", x=_x())
    for inputs in ({"x": _x()}, {"x": _x()}, tmp_path / "x.npz"):  # an .npz path as qcompile.run takes
        np.testing.assert_array_equal(model(inputs)["logits"], first)
    assert len(loads) == 1 and model._model.vm is vm
    model.benchmark({"x": _x()}, repeat=3, warmup=1)
    assert len(loads) == 1


def test_outputs_are_the_callers_to_keep(int8_artifact):
    """A call's outputs are views of the tensors the VM returned (no copy): later calls, calls from
    other threads and writes into an earlier output change none of the others."""
    from concurrent.futures import ThreadPoolExecutor

    model = qcompile.load(int8_artifact)
    want = [qcompile.run(int8_artifact, {"x": _x(seed)}).outputs["logits"] for seed in range(4)]
    kept = [model({"x": _x(seed)})["logits"] for seed in range(4)]
    kept[0][:] = 1e9  # the caller's to write
    for seed in range(1, 4):
        np.testing.assert_array_equal(kept[seed], want[seed])
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda seed: model({"x": _x(seed % 4)})["logits"], range(32)))
    for seed, out in enumerate(got):
        np.testing.assert_array_equal(out, want[seed % 4])


@pytest.mark.parametrize("inputs", [
    {"y": _x()},                                     # wrong name
    {},                                              # missing
    {"x": _x(), "extra": _x()},                      # unknown extra
    {"x": np.zeros((1, 1, 8, 9), np.float32)},       # wrong shape
    {"x": _x().astype(np.float64)},                  # wrong dtype
], ids=["name", "missing", "extra", "shape", "dtype"])
def test_bad_inputs_are_one_line_like_run(fp32_artifact, inputs):
    model = qcompile.load(fp32_artifact)
    with pytest.raises(QCompileError) as got:
        model(inputs)
    with pytest.raises(QCompileError) as want:
        qcompile.run(fp32_artifact, inputs)
    assert str(got.value) == str(want.value)
    assert "\n" not in str(got.value) and str(got.value).startswith("inputs: ")
    with pytest.raises(QCompileError):
        model.benchmark(inputs, repeat=1)


def test_benchmark(int8_artifact):
    model = qcompile.load(int8_artifact)
    stats = model.benchmark({"x": _x()}, repeat=7, warmup=2)
    assert stats["repeat"] == 7 and stats["warmup"] == 2
    assert 0 < stats["min_ms"] <= stats["median_ms"] and stats["min_ms"] <= stats["mean_ms"]
    assert all(isinstance(stats[k], float) for k in ("median_ms", "min_ms", "mean_ms"))
    assert qcompile.run(int8_artifact, {"x": _x()}, repeat=3).latency_ms > 0  # the same timing, per call
    with pytest.raises(QCompileError, match="repeat must be at least 1"):
        model.benchmark({"x": _x()}, repeat=0)


def test_checksum_is_verified_before_loading(fp32_artifact, loads, tmp_path):
    bad = tmp_path / "bad.so"
    shutil.copy(fp32_artifact, bad)
    data = bytearray(bad.read_bytes())
    at = data.find(MARKER) - 1  # a byte outside the metadata record
    data[at] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(QCompileError, match="does not match its checksum"):
        qcompile.load(bad)
    assert loads == []


def test_a_vulkan_artifact_is_refused_in_one_line(small_cnn_path, tmp_path):
    vkz = qcompile.build(small_cnn_path, "vulkan", tmp_path / "m.vkz", verify=False).artifact
    with pytest.raises(QCompileError, match="qcompile.run") as err:
        qcompile.load(vkz)
    assert "\n" not in str(err.value) and str(err.value).startswith(str(vkz))


@requires("aarch64-linux-gnu-g++")
def test_an_emulated_artifact_is_refused_in_one_line(small_cnn_path, tmp_path, loads):
    so = qcompile.build(small_cnn_path, "rpi4", tmp_path / "m.so", verify=False).artifact
    with pytest.raises(QCompileError, match=r"'rpi4' \(aarch64\), which runs here only under qemu-aarch64.*qcompile.run"):
        qcompile.load(so)
    assert loads == []


def test_load_is_exported():
    assert "load" in qcompile.__all__ and qcompile.load.__module__ == "qcompile.session"
