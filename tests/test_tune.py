"""Autotuning: records that persist, resume after kill -9, apply to builds; tuning through an RPC
tracker on loopback, with a device dropping out mid-run. Tiny trial counts: speed is measured in
benchmarks/speed.py, not here."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from aarch64_guest import rpc_server_command
from conftest import requires
from test_cli import assert_one_line_error, qc

import qcompile
from qcompile.records import RECORDS, VERIFIED

SHAPE = ["--input-shape", "x:1,1,8,8"]


def _lines(records: Path) -> list[str]:
    path = records / RECORDS
    return path.read_text().splitlines() if path.is_file() else []


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.npz"
    np.savez(path, x=np.random.default_rng(1).random((1, 1, 8, 8), dtype=np.float32))
    return path


def test_tune_records_apply_to_an_int8_build_verified_and_unchanged(tmp_path, small_cnn_path, calib):
    records = tmp_path / "db"
    proc = qc("tune", small_cnn_path, "--trials", "2", "--records", records, *SHAPE, "--quantize", "int8", "--calib", calib)
    assert proc.returncode == 0, proc.stderr
    assert "trial/s" in proc.stderr and "best" in proc.stderr  # the progress bar
    verdicts = json.loads((records / VERIFIED).read_text())
    assert verdicts and all(v["ok"] for v in verdicts.values())
    assert any("int8" in v["task"] for v in verdicts.values())
    x = {"x": np.random.default_rng(2).random((1, 1, 8, 8), dtype=np.float32)}
    kw = {"input_shapes": {"x": [1, 1, 8, 8]}, "quantize": {"progress": False}, "calib": str(calib)}
    tuned = qcompile.build(small_cnn_path, "host", tmp_path / "t.so", records=records, **kw)
    plain = qcompile.build(small_cnn_path, "host", tmp_path / "u.so", **kw)
    assert tuned.metadata["tuning_records"] == str(records)
    np.testing.assert_array_equal(qcompile.run(tuned.artifact, x).outputs["logits"],
                                  qcompile.run(plain.artifact, x).outputs["logits"])
    # a second run has nothing left to measure for the kernels whose budget is spent
    again = qc("tune", small_cnn_path, "--trials", "2", "--records", records, *SHAPE, "--quantize", "int8", "--calib", calib)
    assert again.returncode == 0, again.stderr
    assert len(_lines(records)) - len(verdicts) * 2 <= len(verdicts) * 2  # nothing was measured twice over


@pytest.mark.slow  # 1 min; the default suite resumes a finished run; test_records.py repairs a torn record
def test_tuning_resumes_after_kill_9_with_nothing_lost(tmp_path, small_cnn_path):
    records = tmp_path / "db"
    cmd = [sys.executable, "-m", "qcompile.cli", "tune", str(small_cnn_path), "--trials", "6", "--records", str(records), *SHAPE]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while len(_lines(records)) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _lines(records)
    assert len(before) >= 3
    with open(records / RECORDS, "a") as f:  # what a kill in the middle of a write leaves
        f.write('[0, [[["torn')
    resumed = subprocess.run(cmd, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    after = _lines(records)
    assert after[:len(before)] == before  # every record of the killed run kept, the torn line dropped
    new = int(resumed.stdout.strip().splitlines()[-1].split()[0])
    assert new == len(after) - len(before)
    fresh = tmp_path / "fresh"
    full = qc("tune", small_cnn_path, "--trials", "6", "--records", fresh, *SHAPE)
    assert full.returncode == 0
    assert new < len(_lines(fresh))  # the resumed run measured only what was missing


def test_tuning_a_foreign_target_without_a_device_says_how(tmp_path, small_cnn_path):
    proc = qc("tune", small_cnn_path, "--target", "rpi5", "--records", tmp_path / "db", *SHAPE)
    assert_one_line_error(proc, "rpi5", "--rpc-tracker")


# --- RPC tracker on loopback -------------------------------------------------------------------

def _spawn(*args, command=None, env=None) -> subprocess.Popen:
    return subprocess.Popen(command or [sys.executable, "-m", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, **(env or {})})


def _free(port: int, key: str) -> int:
    from tvm import rpc

    try:
        return rpc.connect_tracker("127.0.0.1", port).summary()["queue_info"].get(key, {}).get("free", 0)
    except Exception:  # noqa: BLE001 - not up yet
        return 0


@pytest.fixture
def tracker():
    port = 9190 + os.getpid() % 500
    proc = _spawn("tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port), "--port-end", str(port + 1))
    servers = []

    def server(key, aarch64=False):
        if aarch64:
            command, env = rpc_server_command(port, key, port + 200 + 20 * len(servers))
            servers.append(_spawn(command=command, env=env))
            return servers[-1]
        servers.append(_spawn("tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port + 100 + 10 * len(servers)),
                              "--port-end", str(port + 109 + 10 * len(servers)), "--tracker", f"127.0.0.1:{port}",
                              "--key", key))
        return servers[-1]

    yield port, server
    for p in servers + [proc]:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _wait_free(port, key, n, seconds=60):
    deadline = time.time() + seconds
    while _free(port, key) < n and time.time() < deadline:
        time.sleep(0.3)
    assert _free(port, key) >= n


@pytest.mark.slow  # 1 min; the default suite tunes over RPC on one aarch64 device
def test_rpc_tuning_finishes_on_the_remaining_device_when_one_drops_out(tmp_path, small_cnn_path, tracker):
    port, server = tracker
    first = server("loopback")
    server("loopback")
    _wait_free(port, "loopback", 2)
    records = tmp_path / "db"
    cmd = [sys.executable, "-m", "qcompile.cli", "tune", str(small_cnn_path), "--trials", "3", "--records", str(records),
           *SHAPE, "--rpc-tracker", f"127.0.0.1:{port}", "--rpc-key", "loopback", "--rpc-timeout", "10"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while len(_lines(records)) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # one device drops out mid-run
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    verdicts = json.loads((records / VERIFIED).read_text())
    assert verdicts and all(v["ok"] for v in verdicts.values())


def test_rpc_tuning_without_a_device_is_one_clear_line(tmp_path, small_cnn_path, tracker):
    port, _ = tracker
    deadline = time.time() + 30
    from tvm import rpc

    while time.time() < deadline:
        try:
            rpc.connect_tracker("127.0.0.1", port).summary()
            break
        except Exception:  # noqa: BLE001
            time.sleep(0.3)
    proc = qc("tune", small_cnn_path, "--records", tmp_path / "db", *SHAPE,
              "--rpc-tracker", f"127.0.0.1:{port}", "--rpc-key", "nobody")
    assert_one_line_error(proc, "nobody", f"127.0.0.1:{port}")


@requires("qemu-aarch64")
def test_rpc_tuning_on_an_aarch64_device_under_qemu(tmp_path, small_cnn_path, tracker, calib):
    """The rpi5 target tuned on an aarch64 TVM RPC server (qemu-aarch64 on loopback): kernels are
    cross-compiled here, measured and verified there, and the records build the rpi5 artifact."""
    port, server = tracker
    server("rpi5", aarch64=True)
    _wait_free(port, "rpi5", 1, seconds=180)  # TVM imports in about 15 s under qemu
    records = tmp_path / "db"
    proc = qc("tune", small_cnn_path, "--target", "rpi5", "--trials", "2", "--records", records, *SHAPE,
              "--quantize", "int8", "--calib", calib, "--rpc-tracker", f"127.0.0.1:{port}", "--rpc-key", "rpi5",
              "--rpc-timeout", "60")
    assert proc.returncode == 0, proc.stderr
    verdicts = json.loads((records / VERIFIED).read_text())
    assert verdicts and all(v["ok"] for v in verdicts.values())
    assert any("int8" in v["task"] for v in verdicts.values())
    built = qc("build", small_cnn_path, "--target", "rpi5", "-o", tmp_path / "m.so", "--records", records, *SHAPE,
               "--quantize", "int8", "--calib", calib)
    assert built.returncode == 0, built.stderr


@pytest.mark.slow  # 1 min; the default suite times the latency search here and tunes over RPC
def test_mixed_latency_search_measures_on_an_aarch64_device_under_qemu(tmp_path, small_cnn_path, tracker, calib):
    """--quantize mixed --objective latency for rpi5, with the board at a tracker: every layer's
    kernels, the conversions and the whole candidates are cross-compiled here and timed there."""
    port, server = tracker
    server("rpi5", aarch64=True)
    _wait_free(port, "rpi5", 1, seconds=180)
    proc = qc("build", small_cnn_path, "--target", "rpi5", *SHAPE, "--quantize", "mixed", "--calib", calib,
              "--objective", "latency", "--max-accuracy-drop", "100", "--search-cache", tmp_path / "cache",
              "--rpc-tracker", f"127.0.0.1:{port}", "--rpc-key", "rpi5", "--rpc-timeout", "60", "-o", tmp_path / "m.so")
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / "m.precision.json").read_text())
    cache = json.loads(next((tmp_path / "cache").glob("*.json")).read_text())
    assert set(cache["latency_us"]) == set(config["precisions"])  # every layer timed on the board
    assert all(t > 0 for row in cache["latency_us"].values() for t in row.values())
    assert cache["conversion_us"]["quantize"][1] > 0
    timed = [c for c in config["checked"] if "latency_us" in c]
    chosen = next(c for c in config["checked"] if c["accepted"])
    assert chosen["latency_us"] == min(c["latency_us"] for c in timed)


def test_mixed_search_with_an_rpc_tracker_and_no_device_is_one_line(tmp_path, small_cnn_path, calib):
    proc = qc("build", small_cnn_path, "--target", "rpi5", *SHAPE, "--quantize", "mixed", "--calib", calib,
              "--rpc-tracker", "127.0.0.1:9", "--rpc-key", "rpi5", "-o", tmp_path / "m.so")
    assert_one_line_error(proc, "--rpc-tracker 127.0.0.1:9")
    assert not (tmp_path / "m.so").exists()
