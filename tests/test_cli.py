"""The CLI as a user meets it: one-line errors with exit code 2, no traceback, no artifact."""

import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import pytest
from conftest import requires
from onnx_models import with_unsupported_ops


def qc(*args, cwd=None):
    """`qcompile ARGS` as a user runs it, in this process (TVM is imported once for the suite, not
    once per call): stdout and stderr are captured at the file descriptors, so what TVM's C++ code
    prints counts too. Returns what subprocess.run would."""
    from qcompile.cli import main

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        saved, streams = (os.dup(1), os.dup(2)), (sys.stdout, sys.stderr)
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
        here = os.getcwd()
        try:
            os.chdir(cwd or here)
            try:
                code = main([str(a) for a in args])
            except SystemExit as exit_:  # argparse's usage errors
                code = exit_.code if isinstance(exit_.code, int) else 2
        finally:
            os.chdir(here)
            sys.stdout.flush()
            sys.stderr.flush()
            sys.stdout, sys.stderr = streams
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(["qcompile", *map(str, args)], code, out.read().decode(), err.read().decode())


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qcompile: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_targets_lists_every_target():
    proc = qc("targets")
    assert proc.returncode == 0
    assert {line.split()[0] for line in proc.stdout.splitlines()} >= {"host", "rpi4", "rpi5", "rpi3-armv7", "android-arm64"}


@pytest.mark.parametrize("make, fragments", [
    (lambda d: d / "missing.onnx", ["missing.onnx", "no such model file"]),
    (lambda d: (d / "text.onnx").write_text("hello\n" * 50) and d / "text.onnx", ["text.onnx", "not"]),
    (lambda d: onnx.save(with_unsupported_ops(), str(d / "ops.onnx")) or d / "ops.onnx",
     ["unsupported ops", "custom_1", "custom_2", "det_a"]),
])
def test_build_errors(tmp_path, make, fragments):
    model = make(tmp_path)
    proc = qc("build", model, "-o", tmp_path / "out.so")
    assert_one_line_error(proc, *fragments)
    assert not (tmp_path / "out.so").exists()


def test_truncated_model(tmp_path, small_cnn_path):
    path = tmp_path / "cut.onnx"
    path.write_bytes(small_cnn_path.read_bytes()[:200])
    assert_one_line_error(qc("build", path, "-o", tmp_path / "o.so"), "cut.onnx", "not a valid ONNX model")


def test_unknown_target(small_cnn_path, tmp_path):
    assert_one_line_error(qc("build", small_cnn_path, "-t", "pi", "-o", tmp_path / "o.so"), "unknown target 'pi'", "rpi5")


def test_bad_input_shape_flag(small_cnn_path, tmp_path):
    assert_one_line_error(qc("build", small_cnn_path, "--input-shape", "x=1,2", "-o", tmp_path / "o.so"), "--input-shape 'x=1,2'")


def test_build_run_inspect(small_cnn_path, tmp_path):
    so = tmp_path / "m.so"
    proc = qc("build", small_cnn_path, "-o", so)
    assert proc.returncode == 0, proc.stderr
    np.savez(tmp_path / "in.npz", x=np.ones((1, 1, 8, 8), np.float32))
    proc = qc("run", so, "-i", tmp_path / "in.npz", "-o", tmp_path / "out.npz", "--repeat", "3")
    assert proc.returncode == 0, proc.stderr
    assert "logits: shape [1, 10] float32" in proc.stdout and "median latency over 3 runs" in proc.stdout
    assert np.load(tmp_path / "out.npz")["logits"].shape == (1, 10)
    proc = qc("inspect", so)
    assert "input      x: [1, 1, 8, 8] float32" in proc.stdout
    assert "conv1" in proc.stdout and "fc" in proc.stdout
    np.savez(tmp_path / "bad.npz", image=np.ones((1, 1, 8, 8), np.float32))
    assert_one_line_error(qc("run", so, "-i", tmp_path / "bad.npz"), "bad.npz", "['image']", "['x']")
    assert_one_line_error(qc("run", so, "-i", tmp_path / "none.npz"), "none.npz", "no such input file")


@requires("qemu-aarch64")
def test_demo_builds_runs_and_compares(tmp_path):
    proc = qc("demo", "--workdir", tmp_path / "demo")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith(("host ", "rpi5 "))}
    assert set(rows) == {"host", "rpi5"}
    assert "emulated (qemu-aarch64)" in rows["rpi5"]
    for line in rows.values():
        assert line.split()[-1] == "True" and float(line.split()[-2]) < 1e-4
    acc = {line.split()[0]: float(line.split()[1].rstrip("%")) for line in proc.stdout.splitlines()
           if line.startswith(("float ", "int8 ")) and line.split()[1].endswith("%")}
    assert acc["float"] > 85 and abs(acc["float"] - acc["int8"]) <= 1.0, acc
    assert "int8 on rpi5 (qemu) vs host" in proc.stdout and "same classes: True" in proc.stdout


def test_output_piped_into_a_reader_that_leaves_early_is_not_a_traceback(tmp_path, small_cnn_path):
    """`qcompile inspect m.so | head -1`: the reader closes the pipe after one line."""
    assert qc("build", small_cnn_path, "--input-shape", "x:1,1,8,8", "-o", tmp_path / "m.so").returncode == 0
    inspect = subprocess.Popen([sys.executable, "-m", "qcompile.cli", "inspect", str(tmp_path / "m.so")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    inspect.stdout.close()  # the reader is gone before the first line is written (head after its lines)
    err = inspect.stderr.read().decode()
    assert inspect.wait(timeout=60) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err
