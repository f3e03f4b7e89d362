"""Tuning records: a folder holding MetaSchedule's JSON database (workloads.json, records.json),
the target it was tuned for (target.json) and each kernel's verdict against its reference
(verified.json). A build applies a kernel's best record only where it computed the right result
and ran faster than the kernel's default schedule."""

from __future__ import annotations

import json
from pathlib import Path

from .atomic import atomic_file
from .errors import QCompileError

WORKLOADS, RECORDS, TARGET, VERIFIED = "workloads.json", "records.json", "target.json", "verified.json"


def _repair(path: Path) -> int:
    """Drop a torn last line (a run killed while appending). Returns the lines kept."""
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    good = []
    for line in lines:
        try:
            json.loads(line)
        except json.JSONDecodeError:
            break
        good.append(line)
    if len(good) != len(lines):
        with atomic_file(path) as tmp:
            Path(tmp).write_text("".join(line + "\n" for line in good))
    return len(good)


def open_database(folder, create: bool = False):
    from tvm.s_tir import meta_schedule as ms

    from .backends.packed.intrinsics import register_all

    register_all()  # loading replays the records' traces, which name qcompile's intrinsics
    folder = Path(folder)
    if not create and not (folder / RECORDS).is_file():
        raise QCompileError(f"{folder}: no tuning records here (expected {RECORDS}); run `qcompile tune` first")
    folder.mkdir(parents=True, exist_ok=True)
    for name in (WORKLOADS, RECORDS):
        _repair(folder / name)
    return ms.database.JSONDatabase(str(folder / WORKLOADS), str(folder / RECORDS), allow_missing=True)


def workload_key(mod) -> str:
    import tvm_ffi

    return str(tvm_ffi.structural_hash(mod))


def read_json(folder, name: str) -> dict:
    path = Path(folder) / name
    return json.loads(path.read_text()) if path.is_file() else {}


def write_json(folder, name: str, data: dict) -> None:
    with atomic_file(Path(folder) / name) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2, sort_keys=True))


def check_target(folder, spec) -> None:
    tuned_for = read_json(folder, TARGET).get("name")
    if tuned_for is not None and tuned_for != spec.name:
        raise QCompileError(f"{folder}: these records were tuned for target '{tuned_for}', not '{spec.name}'")


def record_counts(database) -> dict:
    """workload key -> trials recorded for it."""
    counts: dict = {}
    for record in database.get_all_tuning_records():
        key = workload_key(record.workload.mod)
        counts[key] = counts.get(key, 0) + 1
    return counts


def best_records(database) -> dict:
    """workload key -> the fastest successful record."""
    best: dict = {}
    for record in database.get_all_tuning_records():
        if not record.run_secs:
            continue
        secs = sum(float(s) for s in record.run_secs) / len(record.run_secs)
        if secs >= 1e9:  # MetaSchedule's mark for a failed build or run
            continue
        key = workload_key(record.workload.mod)
        if key not in best or secs < best[key][0]:
            best[key] = (secs, record)
    return {key: record for key, (_, record) in best.items()}


def trusted_database(folder, spec):
    """An in-memory database with the best verified record of each kernel."""
    from tvm.s_tir import meta_schedule as ms

    check_target(folder, spec)
    verdicts = read_json(folder, VERIFIED)
    trusted = ms.database.MemoryDatabase()
    for key, record in best_records(open_database(folder)).items():
        verdict = verdicts.get(key, {})
        if not (verdict.get("ok") and verdict.get("faster")):  # wrong, or no better than the default schedule
            continue
        workload = trusted.commit_workload(record.workload.mod)
        trusted.commit_tuning_record(ms.database.TuningRecord(
            record.trace, workload, record.run_secs, record.target, record.args_info))
    return trusted
