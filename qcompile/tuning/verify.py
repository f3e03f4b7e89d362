"""Kernel verification: a tuned kernel is used only where it computes what the reference computes
on random inputs and runs faster than the default schedule, both measured on the same device."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backends.base import param_types, random_arrays
from ..records import VERIFIED, best_records, read_json, record_counts, workload_key, write_json

TOLERANCE = 1e-3  # max |difference| relative to the reference's largest magnitude (at least 1)


@dataclass
class TaskResult:
    name: str
    trials: int
    best_ms: float | None
    verified: bool | None  # None: nothing to verify (no successful trial)
    max_diff: float | None = None
    default_ms: float | None = None  # the default schedule, timed beside the tuned one
    used: bool | None = None  # right and faster than the default: a build applies it


def verify_kernel(backend, device, task_mod, record, target) -> tuple[float, float, float]:
    """(max relative |difference| between the tuned kernel and the reference, tuned us, default us).
    The reference is the unscheduled kernel, or the default schedule where the backend cannot run
    an unscheduled one (a GPU kernel without threads)."""
    from tvm import s_tir

    sch = s_tir.Schedule(task_mod)
    record.trace.apply_to_schedule(sch, remove_postproc=False)
    default = backend.default_schedule(task_mod, target)
    arrays = random_arrays(param_types(task_mod["main"]))
    tuned, tuned_us = device.kernel(sch.mod, arrays, timed=True)
    default_out, default_us = device.kernel(default, arrays, timed=True)
    reference = device.kernel(task_mod, arrays)[0] if backend.verify_against_unscheduled else default_out
    diffs = [np.abs(a.astype(np.float64) - b.astype(np.float64)).max() / max(1.0, np.abs(b).max())
             for a, b in zip(tuned, reference) if a.size]
    return float(max(diffs, default=0.0)), tuned_us, default_us


def verify_all(tasks, database, records, backend, device, target) -> list[TaskResult]:
    """Each task's best record, verified once (verdicts are kept in the records folder)."""
    verdicts = read_json(records, VERIFIED)
    best = best_records(database)
    counts = record_counts(database)
    results = []
    for name, mod in tasks:
        key = workload_key(mod)
        record = best.get(key)
        if record is None:
            results.append(TaskResult(name, counts.get(key, 0), None, None))
            continue
        best_ms = 1e3 * float(np.mean([float(s) for s in record.run_secs]))
        trace_key = str(record.trace)
        verdict = verdicts.get(key)
        if verdict is None or verdict.get("trace") != trace_key or "default_us" not in verdict:
            diff, tuned_us, default_us = verify_kernel(backend, device, mod, record, target)
            verdict = {"task": name, "ok": diff <= TOLERANCE, "max_diff": diff, "trace": trace_key,
                       "tuned_us": tuned_us, "default_us": default_us, "faster": bool(tuned_us < default_us)}
            verdicts[key] = verdict
            write_json(records, VERIFIED, verdicts)
        results.append(TaskResult(name, counts.get(key, 0), best_ms, verdict["ok"], verdict["max_diff"],
                                  verdict["default_us"] / 1e3, verdict["faster"]))
    return results
