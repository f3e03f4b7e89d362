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
from qcompile.backends.cpu.runtime import PARALLEL_SOURCE
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


# Drives the pool alone, as TVM's generated code does (through __TVMBackendParallelLaunch), with
# chunks of uneven length (now and then one of 50 us), so the caller sleeps, loops switch between
# one chunk per thread and CHUNKS_PER_THREAD, and workers lag into the next launch. Each launch
# must run every chunk of its own count exactly once, each chunk must see that count, and no
# launch may hang (a worker that claimed a chunk of the next launch under the last one's
# generation left the caller waiting for ever).
STRESS = r"""
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
extern "C" {
typedef struct { void* sync_handle; int32_t num_task; } TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);
void* __TVMBackendParallelLaunch = nullptr;
int qcompile_use_parallel_pool();
int qcompile_parallel_pool_stats(int64_t* out);
}
constexpr int kMaxChunks = 1024;
struct Job { std::atomic<int> hits[kMaxChunks]; std::atomic<int> counts_seen[kMaxChunks]; unsigned seed; };
static Job job;
static void busy_ns(long ns) {
  timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  do clock_gettime(CLOCK_MONOTONIC, &b); while ((b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec) < ns);
}
static int chunk(int task, TVMParallelGroupEnv* env, void* data) {
  Job* j = static_cast<Job*>(data);
  if (task < 0 || task >= kMaxChunks) { printf("chunk index %d\n", task); exit(1); }
  j->hits[task].fetch_add(1);
  j->counts_seen[task].store(env->num_task);
  unsigned h = (j->seed * 2654435761u) ^ (static_cast<unsigned>(task) * 40503u);
  busy_ns((h >> 7) % 7 == 0 ? 50000 : h % 3000);
  return 0;
}
int main(int argc, char** argv) {
  if (!qcompile_use_parallel_pool()) { printf("pool not installed\n"); return 1; }
  auto launch = reinterpret_cast<int (*)(FTVMParallelLambda, void*, int)>(__TVMBackendParallelLaunch);
  for (int i = 0; i < atoi(argv[1]); ++i) {
    for (int t = 0; t < kMaxChunks; ++t) job.hits[t].store(0), job.counts_seen[t].store(0);
    job.seed = i;
    if (launch(chunk, &job, 0) != 0) { printf("launch %d failed\n", i); return 1; }
    int n = job.counts_seen[0].load();
    for (int t = 0; t < kMaxChunks; ++t) {
      if (job.hits[t].load() != (t < n ? 1 : 0) || (t < n && job.counts_seen[t].load() != n)) {
        printf("launch %d: chunk %d of %d ran %d times, saw count %d\n", i, t, n, job.hits[t].load(), job.counts_seen[t].load());
        return 1;
      }
    }
  }
  int64_t s[4];
  int threads = qcompile_parallel_pool_stats(s);
  printf("%d %lld %lld %lld %lld\n", threads, (long long)s[0], (long long)s[1], (long long)s[2], (long long)s[3]);
  return 0;
}
"""


@pytest.fixture(scope="module")
def stress_driver(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pool-stress")
    (folder / "stress.cc").write_text(STRESS)
    subprocess.run(["g++", "-std=c++17", "-O2", "-pthread", str(folder / "stress.cc"), str(PARALLEL_SOURCE),
                    "-o", str(folder / "stress")], check=True, capture_output=True)
    return folder / "stress"


# 2 threads: mostly one chunk per thread, switching to fine chunks after each stall; 5 threads on
# this machine's cores: oversubscribed, workers preempted mid-launch
@pytest.mark.parametrize("threads", [2, 5])
def test_launches_with_uneven_chunks_run_each_chunk_once_and_never_hang(stress_driver, threads):
    launches = 20000
    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "QCOMPILE_THREAD_POOL")}
    proc = subprocess.run([str(stress_driver), str(launches)], capture_output=True, text=True, timeout=120,
                          env={**environ, "TVM_NUM_THREADS": str(threads)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pool_threads, ran, caller, worker, fine = map(int, proc.stdout.split())
    assert pool_threads == threads and ran == launches
    assert _chunks_add_up({"launches": ran, "caller_chunks": caller, "worker_chunks": worker, "fine_launches": fine},
                          threads)
    assert worker > 0
