"""Run a CPU artifact: natively through TVM's Relax VM, or, for another architecture, through the
bundle's runner under the target's emulator (qemu-user)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ...atomic import fresh_dir
from ...errors import QCompileError
from ...toolchain import emulator
from ..base import median_ms
from .runtime import runtime_dir

_LOADED = None  # this process's folder of loaded libraries, by content


def load_library(path):
    """tvm.runtime.load_module for an artifact that may have been rebuilt at the same path since
    this process last loaded it: dlopen hands back the library already loaded under a name, so the
    file is loaded under the name of its content's hash (a private copy, removed at exit)."""
    import atexit
    import hashlib
    import os

    import tvm

    global _LOADED
    if _LOADED is None:
        _LOADED = fresh_dir("loaded")
        atexit.register(shutil.rmtree, _LOADED, True)
    data = Path(path).read_bytes()
    copy = _LOADED / f"{hashlib.sha256(data).hexdigest()[:32]}.so"
    if not copy.exists():
        tmp = copy.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, copy)
    with _native_stderr_silenced():
        module = tvm.runtime.load_module(str(copy))
    _use_artifact_thread_pool(Path(path), copy)
    return module


@contextmanager
def _native_stderr_silenced():
    """TVM's runtime writes a warning to stderr for each library after the first it loads into a
    process (each registers its packed imports under the same global name): noise, not the user's.
    A load's real failures are raised, not written."""
    import os

    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# artifact path -> ctypes handle of its loaded library, whose parallel-for pool runs its kernels;
# the handles are kept so the libraries (and their pools' threads) stay mapped
_POOLS: dict = {}


def _use_artifact_thread_pool(path: Path, loaded: Path) -> None:
    """Replace TVM's thread pool with the artifact's own (runner/qcompile_parallel.cc) for the
    library TVM has just loaded from `loaded`; an artifact built without one keeps TVM's."""
    import ctypes
    import os

    try:
        lib = ctypes.CDLL(str(loaded), mode=os.RTLD_NOW | os.RTLD_NOLOAD)
    except OSError:
        return
    if not hasattr(lib, "qcompile_use_parallel_pool") or hasattr(lib, "__TVMBackendParallelBarrier"):
        return  # no pool inside, or a kernel whose chunks must meet at a barrier
    if lib.qcompile_use_parallel_pool():
        _POOLS[str(path.resolve())] = lib


def thread_pool_stats(path) -> dict | None:
    """The loaded artifact's own thread pool: its threads, the parallel loops it ran and the chunks
    the calling thread and its workers ran, the loops cut finely after a stall; None when its kernels
    run on TVM's pool."""
    import ctypes

    lib = _POOLS.get(str(Path(path).resolve()))
    if lib is None:
        return None
    counts = (ctypes.c_int64 * 4)()
    threads = lib.qcompile_parallel_pool_stats(counts)
    return {"threads": threads, "launches": counts[0], "caller_chunks": counts[1], "worker_chunks": counts[2],
            "fine_launches": counts[3]}


def _tensors(value) -> list:
    if hasattr(value, "numpy"):
        return [value]
    return [t for item in value for t in _tensors(item)]


def _flatten(value) -> list[np.ndarray]:
    return [t.numpy() for t in _tensors(value)]


class NativeModel:
    """A native artifact loaded once: its library in this process, its Relax VM on this machine's
    CPU. `bind` puts inputs on the device and returns the call that runs `main` on them (what a
    latency measures); `outputs` turns that call's result into arrays; `run` is one whole call."""

    def __init__(self, path):
        import threading

        import tvm
        from tvm import relax

        self.device = tvm.cpu()
        self.vm = relax.VirtualMachine(load_library(path), self.device)
        self.main = self.vm["main"]
        self._inputs: list | None = None  # run's device tensors for the inputs, made at its first call
        self._spans: list[tuple[int, int]] = []  # their addresses
        self._lock = threading.Lock()  # one VM, one set of input tensors: calls from threads take turns

    def bind(self, arrays: list[np.ndarray]):
        import tvm

        args = [tvm.runtime.tensor(a, self.device) for a in arrays]
        return lambda: self.main(*args)

    @staticmethod
    def outputs(result) -> list[np.ndarray]:
        return _flatten(result)

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """`main` on `arrays` (contiguous, the model's shapes and dtypes), as a session call runs it.
        The inputs are copied into tensors made once, and the outputs are numpy views of the tensors
        the VM returned (they keep them alive; the VM allocates fresh ones each call), copied only
        where one is an input's own tensor. A small model's call spent more time making a tensor
        per input and copying each output out than computing (silero-vad: 45 of 175 us)."""
        import tvm

        with self._lock:
            if self._inputs is None:
                self._inputs = [tvm.runtime.empty(a.shape, str(a.dtype), self.device) for a in arrays]
                views = [np.from_dlpack(t) for t in self._inputs]
                self._spans = [(v.ctypes.data, v.ctypes.data + v.nbytes) for v in views]
            for tensor, a in zip(self._inputs, arrays):
                tensor.copyfrom(a)
            return [self._own(t) for t in _tensors(self.main(*self._inputs))]

    def _own(self, tensor) -> np.ndarray:
        out = np.from_dlpack(tensor)
        address = out.ctypes.data
        return out.copy() if any(lo <= address < hi for lo, hi in self._spans) else out


def run_native(path: Path, arrays: list[np.ndarray], repeat: int) -> tuple[list[np.ndarray], float | None]:
    model = NativeModel(path)
    call = model.bind(arrays)
    return model.outputs(call()), median_ms(call, repeat)


def run_emulated(path: Path, arrays: list[np.ndarray], spec, repeat: int, bundle) -> tuple[list[np.ndarray], float | None]:
    runner_dir = Path(bundle) if bundle else runtime_dir(spec)
    work = fresh_dir("run")
    try:
        files = []
        for i, arr in enumerate(arrays):
            files.append(str(work / f"input_{i}.npy"))
            np.save(files[-1], arr)
        cmd = [*emulator(spec), str(runner_dir / "qcompile_run"), str(path.resolve()), str(work)]
        cmd += (["--repeat", str(repeat)] if repeat else []) + files
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            raise QCompileError(f"{path}: running under {cmd[0]} failed: {lines[-1] if lines else proc.returncode}")
        count = int(next(ln for ln in proc.stdout.splitlines() if ln.startswith("outputs=")).split("=")[1])
        outputs = [np.load(work / f"output_{i}.npy") for i in range(count)]
        latency = next((float(ln.split("=")[1]) for ln in proc.stdout.splitlines() if ln.startswith("latency_ms_median=")), None)
        return outputs, latency
    finally:
        shutil.rmtree(work, ignore_errors=True)
