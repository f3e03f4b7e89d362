"""Bad input through the CLI: one line `qcompile: error: ...` naming the culprit, exit code 2, no
traceback, nothing printed after it, and nothing left behind (no file in the test's folder, no
entry in a fresh TMPDIR)."""

import contextlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx_models import small_cnn


def _in_process(args, tmpdir) -> tuple[int, str, str]:
    """`qcompile ARGS` run by the CLI's main in this process (TVM is imported once for the whole
    file, not once per case), with the temporary folder `tmpdir`."""
    from qcompile.cli import main

    out, err, previous = io.StringIO(), io.StringIO(), tempfile.tempdir
    tempfile.tempdir = str(tmpdir)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
    finally:
        tempfile.tempdir = previous
    return code, out.getvalue(), err.getvalue()


def refused(tmp_path, *args, fragments=(), wrap=()):
    """Run `qcompile ARGS` with a fresh temporary folder and check the one-line refusal naming
    `fragments` (`wrap`: a command to run it under, in a process of its own)."""
    before = set(tmp_path.rglob("*"))
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    if wrap:
        proc = subprocess.run([*wrap, sys.executable, "-m", "qcompile.cli", *map(str, args)], capture_output=True,
                              text=True, env={**os.environ, "TMPDIR": str(tmpdir)})
        code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    else:
        code, stdout, stderr = _in_process(args, tmpdir)
    everything = stdout + stderr
    assert code == 2, everything
    assert "Traceback" not in everything
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("qcompile: error: "), everything
    assert stderr.rstrip("\n").endswith(lines[-1]) and not stdout, everything  # nothing after it
    for fragment in fragments:
        assert str(fragment) in lines[-1], lines[-1]
    assert not list(tmpdir.iterdir())
    tmpdir.rmdir()
    assert set(tmp_path.rglob("*")) == before, "left behind"
    return lines[-1]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, small_cnn_path):
    folder = tmp_path_factory.mktemp("artifact")
    proc = subprocess.run([sys.executable, "-m", "qcompile.cli", "build", str(small_cnn_path), "-o", str(folder / "m.so")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    np.savez(folder / "in.npz", x=np.ones((1, 1, 8, 8), np.float32))
    return folder / "m.so"


def calib(tmp_path, x=None) -> Path:
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).random((4, 1, 8, 8), np.float32) if x is None else x)
    return tmp_path / "calib.npz"


@pytest.mark.parametrize("labels", ["missing", "pickled"])
def test_labels_missing_or_pickled(tmp_path, small_cnn_path, labels):
    path = tmp_path / f"{labels}.npy"
    if labels == "pickled":
        np.save(path, np.array([{"class": 1}, None, 3, 4], dtype=object), allow_pickle=True)
    refused(tmp_path, "build", small_cnn_path, "-o", tmp_path / "m.so", "--quantize", "mixed", "--calib",
            calib(tmp_path), "--labels", path, fragments=["--labels", path])


def test_calibration_array_of_strings(tmp_path, small_cnn_path):
    data = calib(tmp_path, np.full((4, 1, 8, 8), "a"))
    refused(tmp_path, "build", small_cnn_path, "-o", tmp_path / "m.so", "--quantize", "int8", "--calib", data,
            fragments=[data, "'x'", "not numbers"])


def _read_only(folder: Path):
    """A command prefix under which `folder` cannot be written: chmod for a user, a read-only bind
    mount in a private mount namespace for root (whom permissions do not stop)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return ()
    wrap = ("unshare", "-m", "sh", "-c", f"mount --bind '{folder}' '{folder}' && "
            f"mount -o remount,bind,ro '{folder}' '{folder}' && exec \"$@\"", "sh")
    if shutil.which("unshare") is None or subprocess.run([*wrap, "true"], capture_output=True).returncode != 0:
        pytest.skip("running as root, and a read-only bind mount is not permitted here")
    return wrap


def test_read_only_output_folder(tmp_path, small_cnn_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    wrap = _read_only(folder)
    try:
        refused(tmp_path, "build", small_cnn_path, "-o", folder / "m.so", fragments=[folder / "m.so", "not writable"],
                wrap=wrap)
    finally:
        folder.chmod(0o755)


def test_output_is_an_existing_folder(tmp_path, small_cnn_path):
    (tmp_path / "out").mkdir()
    refused(tmp_path, "build", small_cnn_path, "-o", tmp_path / "out", fragments=[tmp_path / "out", "is a folder"])


def test_report_under_a_file(tmp_path, small_cnn_path):
    (tmp_path / "notes").write_text("a file\n")
    refused(tmp_path, "build", small_cnn_path, "-o", tmp_path / "m.so", "--report", tmp_path / "notes" / "r.json",
            fragments=[tmp_path / "notes" / "r.json", "is a file, not a folder"])


def test_run_output_under_a_file(tmp_path, artifact):
    (tmp_path / "notes").write_text("a file\n")
    refused(tmp_path, "run", artifact, "-i", artifact.with_name("in.npz"), "--output", tmp_path / "notes" / "o.npz",
            fragments=[tmp_path / "notes" / "o.npz", "is a file, not a folder"])


def test_bundle_is_a_symlink(tmp_path, small_cnn_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "keep.txt").write_text("mine\n")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    refused(tmp_path, "build", small_cnn_path, "-o", tmp_path / "m.so", "--bundle", tmp_path / "link",
            fragments=[tmp_path / "link", "symbolic link"])
    assert (tmp_path / "real" / "keep.txt").read_text() == "mine\n"


def test_vulkan_artifact_without_plan(tmp_path):
    meta = {"target": "vulkan", "kind": "vulkan", "inputs": [{"name": "x", "shape": [1, 1, 8, 8], "dtype": "float32"}],
            "outputs": [{"name": "logits", "shape": [1, 10], "dtype": "float32"}]}
    with zipfile.ZipFile(tmp_path / "m.vkz", "w") as zf:
        zf.writestr("metadata.json", json.dumps(meta))
        zf.writestr("weights.npz", b"")
    np.savez(tmp_path / "in.npz", x=np.ones((1, 1, 8, 8), np.float32))
    refused(tmp_path, "run", tmp_path / "m.vkz", "-i", tmp_path / "in.npz", fragments=[tmp_path / "m.vkz", "plan.json"])


def _text_section(data: bytes) -> int:
    """File offset of an ELF64 library's .text."""
    shoff, = struct.unpack_from("<Q", data, 0x28)
    entsize, count, names_index = struct.unpack_from("<HHH", data, 0x3A)
    section = [struct.unpack_from("<IIQQQQ", data, shoff + i * entsize) for i in range(count)]
    names = section[names_index][4]
    return next(s[4] for s in section if data[names + s[0]:data.index(b"\0", names + s[0])] == b".text")


@pytest.mark.parametrize("where", ["elf-header", "code"])
def test_modified_library(tmp_path, artifact, where):
    data = bytearray(artifact.read_bytes())
    if where == "elf-header":
        data[0x12] ^= 0xFF  # e_machine
    else:
        at = _text_section(data)
        data[at:at + 64] = b"\x0f\x0b" * 32  # ud2: SIGILL, were it run
    (tmp_path / "model.so").write_bytes(bytes(data))
    refused(tmp_path, "run", tmp_path / "model.so", "-i", artifact.with_name("in.npz"),
            fragments=[f"{tmp_path / 'model.so'}: the library does not match its checksum (modified or corrupt); rebuild it"])


@pytest.mark.parametrize("shape, bad", [("1,0,8,8", "dimension 1 is 0"), ("-1,1,8,8", "dimension 0 is -1"),
                                        ("1,1,0,0", "dimension 2 is 0")])
def test_input_shape_not_positive(tmp_path, small_cnn_path, shape, bad):
    refused(tmp_path, "build", small_cnn_path, "-o", tmp_path / "m.so", "--input-shape", f"x:{shape}",
            fragments=[f"--input-shape x:{shape}: {bad}; every dimension must be >= 1"])


@pytest.mark.parametrize("value, fragment", [("x=abc", "--input-value 'x=abc': expected NAME=V or NAME=V0,V1,..."),
                                             ("x=1,2,3", "--input-value x: 3 values for an input of shape [1, 1, 8, 8]")])
def test_input_value_malformed(tmp_path, small_cnn_path, value, fragment):
    refused(tmp_path, "build", small_cnn_path, "-o", tmp_path / "m.so", "--input-shape", "x:1,1,8,8",
            "--input-value", value, fragments=[fragment])


def _broken(kind: str) -> onnx.ModelProto:
    model = small_cnn()
    if kind == "cycle":  # relu1 reads flatten's output, which depends on relu1
        model.graph.node[1].input[0] = "f1"
    elif kind == "dangling":
        model.graph.node[1].input[0] = "ghost"
    else:
        del model.graph.initializer[0]  # conv1's weight w1
    return model


@pytest.mark.parametrize("kind, fragments", [
    ("cycle", ["cycle", "'relu1' (Relu)", "'pool1' (MaxPool)", "'flatten' (Flatten)"]),
    ("dangling", ["'relu1' (Relu)", "'ghost'", "not a graph input, an initializer or any node's output"]),
    ("missing-initializer", ["'conv1' (Conv)", "'w1'", "initializer"]),
])
def test_broken_onnx_graph(tmp_path, kind, fragments):
    path = tmp_path / f"{kind}.onnx"
    onnx.save(_broken(kind), str(path))
    refused(tmp_path, "build", path, "-o", tmp_path / "m.so", fragments=[path, *fragments])


def test_onnx_opset_too_new(tmp_path):
    model = small_cnn()
    model.opset_import[0].version = 99
    onnx.save(model, str(tmp_path / "new.onnx"))
    line = refused(tmp_path, "build", tmp_path / "new.onnx", "-o", tmp_path / "m.so",
                   fragments=[tmp_path / "new.onnx", "opset 99", "up to opset"])
    assert int(line.split("up to opset ")[1].split(")")[0]) >= 17
