"""TVM's CPU runtime runs on one thread per physical core under qcompile, in Python and in the
deploy runner (TVM's own default is half the logical CPUs on x86: one thread on a 2-core machine)."""

import os
import subprocess
import sys

import numpy as np

import qcompile

# A parallel kernel, then the thread count TVM's runtime reports.
PROBE = """
import qcompile, tvm
from tvm import te
a = te.placeholder((4096,), name="a")
f = tvm.compile(te.create_prim_func([a, te.compute((4096,), lambda i: a[i] * 2)]), target="llvm")
print(tvm.get_global_func("runtime.NumThreads")())
"""


def _lscpu_cores() -> int:
    """Physical cores in this process's affinity mask, as lscpu counts them."""
    allowed = os.sched_getaffinity(0)
    out = subprocess.run(["lscpu", "-p=CPU,CORE,SOCKET"], capture_output=True, text=True, check=True).stdout
    rows = [line.split(",") for line in out.splitlines() if not line.startswith("#")]
    return len({(socket, core) for cpu, core, socket in rows if int(cpu) in allowed})


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    return {**env, **extra}


def _probe(env) -> int:
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[-1])


def test_python_runs_tvm_kernels_on_every_physical_core():
    assert qcompile.threads.physical_cores() == _lscpu_cores()
    assert _probe(_env()) == _lscpu_cores()


def test_a_thread_count_the_user_set_is_kept():
    assert _probe(_env(TVM_NUM_THREADS="1")) == 1
    assert _probe(_env(OMP_NUM_THREADS="1")) == 1


def test_deploy_runner_uses_every_physical_core(small_cnn_path, tmp_path):
    built = qcompile.build(small_cnn_path, "host", tmp_path / "m.so", input_shapes={"x": [1, 1, 8, 8]},
                           bundle=tmp_path / "bundle")
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 8, 8), np.float32))
    runner = [str(built.bundle / "qcompile_run"), str(built.bundle / "model.so"), str(tmp_path / "out")]

    def threads(*flags, **env):
        proc = subprocess.run([*runner, *flags, str(tmp_path / "x.npy")], capture_output=True, text=True, env=_env(**env))
        assert proc.returncode == 0, proc.stderr
        assert any(line.startswith("thread_pool=") for line in proc.stdout.splitlines())
        return int(next(ln for ln in proc.stdout.splitlines() if ln.startswith("threads=")).split("=")[1])

    assert threads() == _lscpu_cores()
    assert threads(TVM_NUM_THREADS="1") == 1
    assert threads("--threads", "1") == 1
    bad = subprocess.run([*runner, "--threads", "many", str(tmp_path / "x.npy")], capture_output=True, text=True)
    assert bad.returncode != 0 and "--threads many" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
