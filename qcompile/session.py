"""An artifact loaded once and run many times in this process, like onnxruntime's InferenceSession:

    model = qcompile.load("model.so")
    outputs = model({"x": x})                    # {output name: array}
    model.benchmark({"x": x}, repeat=50)         # {"median_ms": ..., "min_ms": ..., "mean_ms": ..., ...}

`qcompile.run` reads, verifies and loads the library on every call; a session does that once.
Only artifacts that run natively on this machine's CPU can be kept loaded: `load` refuses any other
(an aarch64 artifact runs here only under qemu, one process per run; a Vulkan or CUDA artifact) in
one QCompileError line that says why and what to use instead (qcompile.run, which runs it per call).
There is no silent per-call fallback, so a session's latency is always the loaded model's.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np

from .artifact import read_metadata
from .backends import backend_for
from .backends.base import latencies_ms
from .errors import QCompileError
from .execute import load_inputs, name_outputs
from .targets import TargetSpec


class Session:
    """A loaded artifact: call it with {input name: array} (or an .npz path) for {output name: array}."""

    def __init__(self, path: Path, metadata: dict, model):
        self.path = path
        self.metadata = metadata
        self._model = model  # the backend's loaded model (cpu/run.py's NativeModel): bind, outputs

    @property
    def inputs(self) -> list[dict]:
        """The model's inputs in parameter order: {"name", "shape", "dtype"} each."""
        return self.metadata["inputs"]

    @property
    def outputs(self) -> list[dict]:
        """The model's outputs in order: {"name", "shape", "dtype"} each."""
        return self.metadata["outputs"]

    def __call__(self, inputs) -> dict[str, np.ndarray]:
        """Run once on `inputs` (checked against the model's names, shapes and dtypes)."""
        return name_outputs(self._model.run(load_inputs(inputs, self.metadata)), self.metadata)

    def benchmark(self, inputs, repeat: int = 50, warmup: int = 5) -> dict:
        """Latency of the model on `inputs`, in ms: `warmup` untimed runs, then `repeat` timed ones
        (the model's call alone, inputs already on the device, as `qcompile run --repeat` times it)."""
        if repeat < 1 or warmup < 0:
            raise QCompileError(f"benchmark: repeat must be at least 1 and warmup at least 0 (got {repeat}, {warmup})")
        call = self._model.bind(load_inputs(inputs, self.metadata))
        latencies_ms(call, warmup)
        times = latencies_ms(call, repeat)
        return {"median_ms": statistics.median(times), "min_ms": min(times), "mean_ms": statistics.fmean(times),
                "repeat": repeat, "warmup": warmup}

    def __repr__(self) -> str:
        return f"qcompile.Session({str(self.path)!r}, target={self.metadata.get('target')!r})"


def load(artifact) -> Session:
    """Load `artifact` (a native CPU .so) once for repeated runs in this process. Its checksum is
    verified here, before any of its code is loaded. An artifact this process cannot keep loaded
    (another architecture, run under qemu; Vulkan; CUDA) is refused in one QCompileError line:
    run it with qcompile.run instead."""
    path = Path(artifact)
    meta = read_metadata(path, verify=True)
    model = backend_for(TargetSpec.from_json(meta["target_spec"])).load(path, meta)
    return Session(path, meta, model)
