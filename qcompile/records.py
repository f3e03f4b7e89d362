"""Tuning records: a folder holding MetaSchedule's JSON database (workloads.json, records.json: one
JSON value a line, appended as trials are measured), the target it was tuned for (target.json),
the models it was tuned for (model.json) and each kernel's verdict against its reference
(verified.json). A build applies a kernel's best record only where it computed the right result
and ran faster than the kernel's default schedule.

Damage. A build only reads the folder: the records.json lines that parse go into an in-memory
database, the others are skipped. `tune` repairs the folder before it appends: every line of
records.json that parses stays, in order; the others (most often a torn last line, from a run
killed while appending) move to records.json.rejected, each with its line number. A workloads.json
line that does not parse is an error, since records name their workload by its line and dropping
one would give later records the wrong kernel; only a torn last line is left out (no record can
name it yet). A target.json, verified.json or model.json that is not JSON is an error.

Model. A build whose kernels are none of the folder's workloads fails: the records were tuned for
another model (model.json names the models `tune` saw). Partial overlap is fine: the same model
quantized another way or with other input shapes shares some kernels, and the records apply to
those alone."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .atomic import atomic_file
from .errors import QCompileError, last_line

WORKLOADS, RECORDS, TARGET, VERIFIED = "workloads.json", "records.json", "target.json", "verified.json"
MODELS = "model.json"
REJECTED = ".rejected"  # appended to the name of the file whose lines were moved aside


def _lines(path: Path) -> tuple[list[bytes], bool]:
    """The lines of `path` (bytes, so a kept line is rewritten as it was), and whether the last one is whole."""
    lines = path.read_bytes().split(b"\n") if path.is_file() else [b""]
    last = lines.pop()  # b"" after a final newline
    if last:
        lines.append(last)
    return lines, not last


def _parse(lines: list[bytes], parse) -> tuple[list, list]:
    """([(line, parse(its JSON))] of the lines that parse, [(line number, line, error)] of the others)."""
    parsed, bad = [], []
    for number, line in enumerate(lines, 1):
        try:
            parsed.append((line, parse(json.loads(line))))
        except Exception as err:  # noqa: BLE001 - not JSON, or JSON that TVM rejects: unreadable either way
            bad.append((number, line, err))
    return parsed, bad


def _workloads(folder: Path) -> tuple[list, list]:
    """(parsed, torn) for workloads.json: a torn last line is left out; any other bad line is an error."""
    from tvm.s_tir.meta_schedule.database import Workload

    path = folder / WORKLOADS
    lines, whole = _lines(path)
    parsed, bad = _parse(lines, Workload.from_json)
    torn = bad[-1:] if bad and bad[-1][0] == len(lines) and not whole else []
    if len(bad) > len(torn):
        number, _, err = bad[0]
        raise QCompileError(f"{path}: line {number} is not a workload TVM can read ({last_line(err)})")
    return parsed, torn


def _records(folder: Path, workloads: list) -> tuple[list, list, bool]:
    """(parsed, bad, whether the last line is whole) for records.json."""
    from tvm.s_tir.meta_schedule.database import TuningRecord

    def parse(value):
        index, record = value
        if not isinstance(index, int) or not 0 <= index < len(workloads):
            raise ValueError(f"no workload {index}")
        return TuningRecord.from_json(record, workloads[index])

    lines, whole = _lines(folder / RECORDS)
    return (*_parse(lines, parse), whole)


def _set_aside(path: Path, kept: list[bytes], bad: list) -> str:
    """Append the `bad` lines, numbered, to path.rejected, then rewrite `path` with the `kept` ones."""
    rejected = path.with_name(path.name + REJECTED)
    if bad:  # before the rewrite: a run killed between the two leaves a line twice, never nowhere
        with open(rejected, "ab") as f:
            f.writelines(b"line %d: %s\n" % (number, line) for number, line, _ in bad)
    with atomic_file(path) as tmp:
        Path(tmp).write_bytes(b"".join(line + b"\n" for line in kept))
    numbers = ", ".join(str(number) for number, _, _ in bad)
    return f"{path} line{'s' if len(bad) > 1 else ''} {numbers} to {rejected.name}" if bad else ""


def _register_intrinsics() -> None:
    from .backends.packed.intrinsics import register_all

    register_all()  # loading replays the records' traces, which name qcompile's intrinsics


def open_database(folder):
    """(the folder's JSON database, for `tune` to append to; a one-line note of what was moved aside,
    or ""). The folder is created, or repaired as the module docstring says."""
    from tvm.s_tir import meta_schedule as ms

    _register_intrinsics()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    workloads, torn = _workloads(folder)
    moved = [_set_aside(folder / WORKLOADS, [line for line, _ in workloads], torn)] if torn else []
    records, bad, whole = _records(folder, [w for _, w in workloads])
    if bad or not whole:
        moved.append(_set_aside(folder / RECORDS, [line for line, _ in records], bad))
    note = "; ".join(m for m in moved if m)
    note = f"moved unreadable lines aside: {note}" if note else ""
    return ms.database.JSONDatabase(str(folder / WORKLOADS), str(folder / RECORDS), allow_missing=True), note


def workload_key(mod) -> str:
    import tvm_ffi

    return str(tvm_ffi.structural_hash(mod))


def read_json(folder, name: str) -> dict:
    path = Path(folder) / name
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError as err:
        raise QCompileError(f"{path}: not valid JSON (line {err.lineno}): {err.msg}") from None
    except ValueError as err:  # not UTF-8
        raise QCompileError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise QCompileError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def write_json(folder, name: str, data: dict) -> None:
    with atomic_file(Path(folder) / name) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2, sort_keys=True))


def check_target(folder, spec) -> None:
    tuned_for = read_json(folder, TARGET).get("name")
    if tuned_for is not None and tuned_for != spec.name:
        raise QCompileError(f"{folder}: these records were tuned for target '{tuned_for}', not '{spec.name}'")


def note_model(folder, source, keys) -> None:
    """Add to model.json that the model file `source` was tuned here, with its kernels' workload keys."""
    source = Path(source)
    ident = hashlib.sha256(source.read_bytes()).hexdigest() if source.is_file() else source.name
    models = read_json(folder, MODELS)
    before = models.get(ident, {}).get("workloads", []) if isinstance(models.get(ident), dict) else []
    models[ident] = {"model": source.name, "workloads": sorted(set(before) | set(keys))}
    write_json(folder, MODELS, models)


def _kernel_keys(mod, spec) -> set:
    """The workload keys of the fused kernels a build of `mod` compiles (the kernels tuning tunes)."""
    from .backends import backend_for

    backend = backend_for(spec)
    return {workload_key(kernel) for _, kernel in backend.fused_kernels(mod, backend.tvm_target())}


def check_model(folder, spec, mod, workloads) -> None:
    if not workloads:
        return
    kernels = _kernel_keys(mod, spec)
    if kernels.isdisjoint(workload_key(w.mod) for w in workloads):
        models = read_json(folder, MODELS)
        names = ", ".join(sorted(f"{m.get('model')} (sha256 {ident[:12]})" if isinstance(m, dict) else ident
                                 for ident, m in models.items())) or "not named: tuned before model.json"
        raise QCompileError(f"{folder}: these records were tuned for another model or quantization ({names}): none "
                            f"of this build's {len(kernels)} kernels is among the folder's {len(workloads)}; tune this "
                            "model, quantized as this build is, into its own folder")


def record_counts(database) -> dict:
    """workload key -> trials recorded for it."""
    counts: dict = {}
    for record in database.get_all_tuning_records():
        key = workload_key(record.workload.mod)
        counts[key] = counts.get(key, 0) + 1
    return counts


def _best(records) -> dict:
    best: dict = {}
    for record in records:
        if not record.run_secs:
            continue
        secs = sum(float(s) for s in record.run_secs) / len(record.run_secs)
        if secs >= 1e9:  # MetaSchedule's mark for a failed build or run
            continue
        key = workload_key(record.workload.mod)
        if key not in best or secs < best[key][0]:
            best[key] = (secs, record)
    return {key: record for key, (_, record) in best.items()}


def best_records(database) -> dict:
    """workload key -> the fastest successful record."""
    return _best(database.get_all_tuning_records())


def trusted_database(folder, spec, mod=None):
    """An in-memory database with the best verified record of each kernel, read from the folder
    (never written). With `mod` (the module built), the folder must hold some of its kernels."""
    from tvm.s_tir import meta_schedule as ms

    folder = Path(folder)
    if not (folder / RECORDS).is_file():
        raise QCompileError(f"{folder}: no tuning records here (expected {RECORDS}); run `qcompile tune` first")
    check_target(folder, spec)
    verdicts = read_json(folder, VERIFIED)
    _register_intrinsics()
    workloads = [w for _, w in _workloads(folder)[0]]
    if mod is not None:
        check_model(folder, spec, mod, workloads)
    trusted = ms.database.MemoryDatabase()
    for key, record in _best(record for _, record in _records(folder, workloads)[0]).items():
        verdict = verdicts.get(key)
        if not (isinstance(verdict, dict) and verdict.get("ok") and verdict.get("faster")):
            continue  # wrong, or no better than the default schedule
        workload = trusted.commit_workload(record.workload.mod)
        trusted.commit_tuning_record(ms.database.TuningRecord(
            record.trace, workload, record.run_secs, record.target, record.args_info))
    return trusted
