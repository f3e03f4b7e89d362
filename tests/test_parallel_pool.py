"""The artifact's own parallel-for pool (backends/cpu/runner/qcompile_parallel.cc): linked into every
CPU artifact and put in place of TVM's when the artifact is loaded. Its loops are cut into chunks
that the calling thread and the workers claim from one counter: one per thread on a quiet machine,
CHUNKS_PER_THREAD per thread for a while after a stall, so a core taken by another process costs a
chunk, not a scheduler time slice per loop. Every thread count gives TVM's pool's results."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import qcompile
from qcompile.examples import fashion_mnist_cnn_onnx

CHUNKS_PER_THREAD = 4  # kChunksPerThread in qcompile_parallel.cc

# Loads each artifact as qcompile.load does, runs it 50 times, saves its output, prints its pool's counts.
RUN = """
import json, sys
import numpy as np
from qcompile.backends.cpu.run import NativeModel, thread_pool_stats
folder = sys.argv[1]
stats = {}
for name in ("fp32", "int8"):
    model = NativeModel(f"{folder}/{name}.so")
    call = model.bind([np.load(f"{folder}/x.npy")])
    for _ in range(50):
        result = call()
    np.save(f"{folder}/out-{name}.npy", model.outputs(result)[0])
    stats[name] = thread_pool_stats(f"{folder}/{name}.so")
print(json.dumps(stats))
"""


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A float and an int8 build of the Fashion-MNIST CNN at batch 3 (odd loop extents), and an input."""
    folder = tmp_path_factory.mktemp("pool")
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    np.save(folder / "x.npy", x)
    shapes = {"image": [3, 1, 28, 28]}
    qcompile.build(fashion_mnist_cnn_onnx(), "host", folder / "fp32.so", input_shapes=shapes, bundle=folder / "bundle")
    qcompile.build(fashion_mnist_cnn_onnx(), "host", folder / "int8.so", input_shapes=shapes,
                   quantize={"progress": False}, calib=[{"image": x}])
    return folder


def _run(folder, **env) -> tuple[dict, dict]:
    """Both artifacts run in a fresh process under `env`: {name: output}, {name: pool counts}."""
    environ = {k: v for k, v in os.environ.items()
               if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS", "QCOMPILE_THREAD_POOL")}
    proc = subprocess.run([sys.executable, "-c", RUN, str(folder)], capture_output=True, text=True,
                          env={**environ, **env}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    return {name: np.load(folder / f"out-{name}.npy") for name in stats}, stats


@pytest.fixture(scope="module")
def tvm_pool_results(artifacts):
    outputs, stats = _run(artifacts, QCOMPILE_THREAD_POOL="tvm")
    assert stats == {"fp32": None, "int8": None}  # the opt-out keeps TVM's pool
    return outputs


def _chunks_add_up(stats: dict, threads: int) -> bool:
    """Every loop is cut into one chunk per thread, or CHUNKS_PER_THREAD per thread when it was
    counted as cut finely, and each chunk is run once by the caller or a worker."""
    fine = stats["fine_launches"]
    assert 0 <= fine <= stats["launches"]
    expected = (stats["launches"] - fine) * threads + fine * threads * CHUNKS_PER_THREAD
    return stats["caller_chunks"] + stats["worker_chunks"] == expected


def test_kernels_run_on_the_artifacts_pool_with_its_workers(artifacts, tvm_pool_results):
    outputs, stats = _run(artifacts, TVM_NUM_THREADS="2")
    for name in ("fp32", "int8"):
        assert stats[name]["threads"] == 2 and stats[name]["launches"] > 0
        assert _chunks_add_up(stats[name], 2)
        assert stats[name]["caller_chunks"] > 0 and stats[name]["worker_chunks"] > 0
        assert np.array_equal(outputs[name], tvm_pool_results[name])


@pytest.mark.parametrize("threads", [1, 3])
def test_every_thread_count_gives_the_results_of_tvms_pool(artifacts, tvm_pool_results, threads):
    outputs, stats = _run(artifacts, TVM_NUM_THREADS=str(threads))
    for name in ("fp32", "int8"):
        assert stats[name]["threads"] == threads
        assert threads == 1 or _chunks_add_up(stats[name], threads)
        assert np.array_equal(outputs[name], tvm_pool_results[name]), f"{name}, {threads} threads"


def test_a_core_taken_by_another_process_leaves_results_unchanged(artifacts, tvm_pool_results):
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        outputs, stats = _run(artifacts, TVM_NUM_THREADS="2")
    finally:
        spinner.kill()
    for name in ("fp32", "int8"):
        assert np.array_equal(outputs[name], tvm_pool_results[name])
        assert _chunks_add_up(stats[name], 2)


def test_the_deploy_runner_puts_the_artifacts_pool_in_place(artifacts, tvm_pool_results):
    bundle = artifacts / "bundle"
    proc = subprocess.run([str(bundle / "qcompile_run"), str(bundle / "model.so"), str(artifacts / "runner-out"),
                           "--threads", "2", str(artifacts / "x.npy")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "thread_pool=qcompile" in proc.stdout.splitlines() and "threads=2" in proc.stdout.splitlines()
    assert np.array_equal(np.load(artifacts / "runner-out" / "output_0.npy"), tvm_pool_results["fp32"])
