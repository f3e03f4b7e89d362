"""The quantizer's engine: a module compiled for this machine and run on calibration data, for
calibration, smoothing, the per-layer error report and the simulation a build is checked against.

Those modules run a few times each, so their code is first generated quickly: LLVM at -O0 (written
to a library and loaded: the in-memory JIT ignores the optimization level) takes a quarter of the
time of -O3 and its code runs about 5x slower (iris-landmark's simulation: 5.2 s against 19.9 s to
compile, 21.7 against 4.0 ms a run). Once the runs of the quick code have cost, beyond what the
optimized code would have, what compiling that would cost, the module is compiled optimized (ski
rental: never much more than twice the better of the two choices made in hindsight), so a large
calibration set still runs on -O3 code."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from ..timing import stage

QUICK_SLOWDOWN = 5.0  # run time of -O0 code against -O3 (measured 5.4x, 5.4x, 5.9x on three zoo models)
OPTIMIZED_COST = 4.0  # compile time of -O3 against -O0 (measured 3.8x, 4.1x, 5.0x)


def quick_library(quick, lowered) -> tuple[Path, float]:
    """The quick code's library, in a folder of its own, and the seconds it took to make."""
    start = time.perf_counter()
    path = Path(tempfile.mkdtemp(prefix="qcompile-engine-")) / "engine.so"
    quick.link(lowered).export_library(str(path))
    return path, time.perf_counter() - start


class Engine:
    """A lowered module running on quick code, until that has cost what the optimized code costs to make."""

    def __init__(self, library: Path, seconds: float, lowered, optimized):
        import tvm
        from tvm import relax

        from .cpu.run import load_library

        try:
            self._vm = relax.VirtualMachine(load_library(library), tvm.cpu())
        finally:
            shutil.rmtree(library.parent, ignore_errors=True)
        self._lowered, self._optimized = lowered, optimized
        self._budget = (OPTIMIZED_COST - 1) * seconds  # the -O3 compile's extra cost
        self._excess = 0.0  # what the quick code's runs cost beyond optimized code's

    def __getitem__(self, name: str):
        return lambda *args: self._call(name, args)

    def _call(self, name: str, args):
        start = time.perf_counter()
        result = self._vm[name](*args)
        if self._lowered is not None:
            self._excess += (time.perf_counter() - start) * (1 - 1 / QUICK_SLOWDOWN)
            if self._excess >= self._budget:
                import tvm
                from tvm import relax

                with stage("calibration/simulation compiles"):
                    self._vm = relax.VirtualMachine(self._optimized.link(self._lowered), tvm.cpu())
                self._lowered = None
        return result
