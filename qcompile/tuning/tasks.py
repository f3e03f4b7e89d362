"""Tuning tasks: the fused kernels of the module a build compiles, extracted by the same passes,
so the records apply to it as they are."""

from __future__ import annotations

import contextlib
import sys
import types

from ..records import workload_key


@contextlib.contextmanager
def without_stock_intrinsics():
    """TuneContext imports tvm.s_tir.tensor_intrin (every stock intrinsic: about 70 s) to register
    them; qcompile's kernels use their own (backends/packed/intrinsics.py). A stand-in module serves
    while tuning and is taken away after, so a later build in the same process (CUDA's tensor cores)
    imports the real one."""
    name = "tvm.s_tir.tensor_intrin"
    stub = types.ModuleType(name) if name not in sys.modules else None
    if stub is not None:
        sys.modules[name] = stub
    try:
        yield
    finally:
        if stub is not None and sys.modules.get(name) is stub:
            del sys.modules[name]


def extract_tasks(mod, backend, target) -> list[tuple[str, object]]:
    """(name, IRModule) of each fused kernel not already scheduled, in program order, deduplicated."""
    tasks, seen = [], set()
    for name, task_mod in backend.fused_kernels(mod, target):
        key = workload_key(task_mod)
        if key not in seen:
            seen.add(key)
            tasks.append((name, task_mod))
    return tasks
