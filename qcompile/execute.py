"""Run an artifact: natively through TVM's Relax VM, or, for another architecture, through the
bundle's runner under the target's emulator (qemu-user). Inputs and outputs are keyed by name."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .artifact import read_metadata
from .atomic import atomic_file
from .errors import QCompileError
from .runtime import runtime_dir
from .targets import TargetSpec, detect_host
from .toolchain import emulator, fresh_dir


@dataclass
class RunResult:
    outputs: dict[str, np.ndarray]
    latency_ms: float | None
    how: str


def load_inputs(inputs, meta: dict, source: str = "inputs") -> list[np.ndarray]:
    """The model's inputs in parameter order, checked against the artifact's signature."""
    if isinstance(inputs, (str, Path)):
        source = str(inputs)
        try:
            with np.load(inputs, allow_pickle=False) as npz:
                inputs = {k: npz[k] for k in npz.files}
        except FileNotFoundError:
            raise QCompileError(f"{source}: no such input file") from None
        except (ValueError, OSError) as err:
            raise QCompileError(f"{source}: not a readable .npz file ({err})") from None
    expected = [t["name"] for t in meta["inputs"]]
    unknown = sorted(set(inputs) - set(expected))
    missing = [n for n in expected if n not in inputs]
    if unknown or missing:
        raise QCompileError(f"{source}: inputs {unknown or missing} do not match the model's inputs {expected}")
    arrays = []
    for t in meta["inputs"]:
        arr = np.asarray(inputs[t["name"]])
        if tuple(arr.shape) != tuple(t["shape"]):
            raise QCompileError(f"{source}: input '{t['name']}' has shape {list(arr.shape)}, the model expects {t['shape']}")
        if str(arr.dtype) != t["dtype"]:
            raise QCompileError(f"{source}: input '{t['name']}' has dtype {arr.dtype}, the model expects {t['dtype']}")
        arrays.append(np.ascontiguousarray(arr))
    return arrays


def _flatten(value) -> list[np.ndarray]:
    if hasattr(value, "numpy"):
        return [value.numpy()]
    return [arr for item in value for arr in _flatten(item)]


def _median_ms(call, repeat: int) -> float | None:
    """The median wall time of `repeat` calls, in ms (None for no repeats)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times) if times else None


_LOADED = None  # this process's folder of loaded libraries, by content


def load_library(path):
    """tvm.runtime.load_module for an artifact that may have been rebuilt at the same path since
    this process last loaded it: dlopen hands back the library already loaded under a name, so the
    file is loaded under the name of its content's hash (a private copy, removed at exit)."""
    import atexit
    import hashlib
    import os
    import tempfile

    import tvm

    global _LOADED
    if _LOADED is None:
        _LOADED = Path(tempfile.mkdtemp(prefix="qcompile-loaded-"))
        atexit.register(shutil.rmtree, _LOADED, True)
    data = Path(path).read_bytes()
    copy = _LOADED / f"{hashlib.sha256(data).hexdigest()[:32]}.so"
    if not copy.exists():
        tmp = copy.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, copy)
    return tvm.runtime.load_module(str(copy))


def _run_native(path: Path, arrays: list[np.ndarray], repeat: int) -> tuple[list[np.ndarray], float | None]:
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(load_library(path), tvm.cpu())
    args = [tvm.runtime.tensor(a) for a in arrays]
    outputs = _flatten(vm["main"](*args))
    return outputs, _median_ms(lambda: vm["main"](*args), repeat)


def _run_emulated(path: Path, arrays: list[np.ndarray], spec, repeat: int, bundle) -> tuple[list[np.ndarray], float | None]:
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


def _run_vulkan(path: Path, arrays: list[np.ndarray], meta: dict, repeat: int) -> tuple[list[np.ndarray], float | None]:
    from .vulkan_runtime import VulkanModel

    try:
        model = VulkanModel(path)
    except ImportError:
        raise QCompileError(f"{path}: running a Vulkan artifact needs wgpu (pip install 'qcompile[vulkan]')") from None
    except RuntimeError as err:  # no adapter: no Vulkan driver (apt install mesa-vulkan-drivers)
        raise QCompileError(f"{path}: no Vulkan device found ({err}); install a Vulkan driver (Debian: mesa-vulkan-drivers)") from None
    named = dict(zip([t["name"] for t in meta["inputs"]], arrays))
    outputs = list(model.run(named).values())
    return outputs, _median_ms(lambda: model.run(named), repeat)


def _missing_features(meta: dict, host: dict) -> list[str]:
    have = set(host["llvm"].get("mattr", []))
    return [f for f in meta["llvm"].get("mattr", []) if f.startswith("+") and f not in have]


def run(artifact, inputs, output=None, *, bundle=None, repeat: int = 0) -> RunResult:
    """Run `artifact` on `inputs` (.npz path or dict by input name); write `output` .npz if given."""
    path = Path(artifact)
    meta = read_metadata(path)
    arrays = load_inputs(inputs, meta)
    spec = TargetSpec.from_json(meta["target_spec"])
    if meta.get("kind") == "vulkan":
        values, latency = _run_vulkan(path, arrays, meta, repeat)
        how = "vulkan (wgpu)"
    elif meta.get("kind") == "cuda":
        raise QCompileError(f"{path}: a CUDA artifact runs only on a machine with an NVIDIA GPU and its driver")
    elif spec.toolchain.get("libc") == "bionic":
        raise QCompileError(f"{path}: '{meta['target']}' artifacts run on Android devices only (copy the bundle there)")
    elif meta["arch"] == (host := detect_host())["arch"]:
        lacking = _missing_features(meta, host)
        if lacking:
            raise QCompileError(f"{path}: built for '{meta['target']}', which needs CPU features this machine lacks: {', '.join(lacking)}")
        values, latency = _run_native(path, arrays, repeat)
        how = "native"
    elif spec.runtime.get("emulator"):
        values, latency = _run_emulated(path, arrays, spec, repeat, bundle)
        how = f"emulated ({spec.runtime['emulator'][0]})"
    else:
        raise QCompileError(f"{path}: a {meta['arch']} artifact cannot run on this {host['arch']} machine and its target has no emulator")
    names = [t["name"] for t in meta["outputs"]]
    if len(values) != len(names):
        names = [f"output_{i}" for i in range(len(values))]
    outputs = dict(zip(names, values))
    if output is not None:
        with atomic_file(output) as tmp, open(tmp, "wb") as f:
            np.savez(f, **outputs)
    return RunResult(outputs, latency, how)
