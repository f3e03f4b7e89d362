"""The tuning records folder under damage: a build only reads it and skips unreadable record lines,
`tune` moves them aside keeping every valid line; a damaged file of the folder, or records tuned
for another target or model, end in one line naming the culprit (exit 2)."""

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx_models import two_convs
from test_cli import assert_one_line_error, qc

from qcompile.records import MODELS, RECORDS, TARGET, VERIFIED, WORKLOADS, _lines, _parse, _set_aside

SHAPE = ["--input-shape", "x:1,1,8,8"]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, small_cnn_path):
    """small_cnn tuned in fp32, 2 trials a kernel (about 40 s). Tests copy it before they damage it."""
    records = tmp_path_factory.mktemp("tuned") / "db"
    proc = qc("tune", small_cnn_path, "--trials", "2", "--records", records, *SHAPE)
    assert proc.returncode == 0, proc.stderr
    return records


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.npz"
    np.savez(path, x=np.random.default_rng(1).random((1, 1, 8, 8), dtype=np.float32))
    return path


def _copy(tuned, tmp_path):
    return shutil.copytree(tuned, tmp_path / "db")


def _snapshot(folder):
    """Every entry of the folder, with each file's bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


def _trusted(folder) -> list[str]:
    """The traces a build of the folder applies."""
    from qcompile.records import trusted_database
    from qcompile.targets import get_target

    return sorted(str(r.trace) for r in trusted_database(folder, get_target("host")).get_all_tuning_records())


def test_bad_record_lines_are_skipped_by_a_build_and_set_aside_by_tune(tmp_path, tuned, small_cnn_path):
    records = _copy(tuned, tmp_path)
    verdicts = json.loads((records / VERIFIED).read_text())
    for verdict in verdicts.values():  # every kernel right and faster: a build applies each one's best record
        verdict.update(ok=True, faster=True)
    (records / VERIFIED).write_text(json.dumps(verdicts))
    expected = _trusted(records)
    valid = (records / RECORDS).read_bytes().splitlines()
    assert len(expected) == len(verdicts) >= 3 and len(valid) >= 5
    # garbage in the middle and a torn last line, in records.json; a torn workload too
    damaged = valid[:1] + [b"garbage {"] + valid[1:] + [b'[0, [[["torn']
    (records / RECORDS).write_bytes(b"\n".join(damaged))
    with open(records / WORKLOADS, "ab") as f:
        f.write(b'["123", "L/oA')
    workloads = (records / WORKLOADS).read_bytes().splitlines()
    before = _snapshot(records)

    built = qc("build", small_cnn_path, "-o", tmp_path / "m.so", "--records", records, *SHAPE)
    assert built.returncode == 0, built.stderr
    assert "Traceback" not in built.stdout + built.stderr
    assert _snapshot(records) == before  # not one byte, not one mtime, no new file
    assert _trusted(records) == expected  # every valid line read, not those before the garbage alone

    again = qc("tune", small_cnn_path, "--trials", "2", "--records", records, *SHAPE)
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stdout + again.stderr
    notes = [line for line in again.stderr.splitlines() if line.startswith("qcompile:")]
    assert notes == [f"qcompile: moved unreadable lines aside: {records / WORKLOADS} line {len(workloads)} to "
                     f"{WORKLOADS}.rejected; {records / RECORDS} lines 2, {len(damaged)} to {RECORDS}.rejected"]
    assert (records / RECORDS).read_bytes().splitlines()[:len(valid)] == valid  # new trials come after
    assert (records / f"{RECORDS}.rejected").read_bytes() == \
        b'line 2: garbage {\nline %d: [0, [[["torn\n' % len(damaged)
    assert (records / f"{WORKLOADS}.rejected").read_bytes() == b'line %d: ["123", "L/oA\n' % len(workloads)
    assert (records / WORKLOADS).read_bytes().splitlines()[:len(workloads) - 1] == workloads[:-1]


def test_set_aside_keeps_every_line_that_parses_in_order(tmp_path):
    path = tmp_path / "records.json"
    path.write_bytes(b'[1, 2]\n{oops\n[3, 4]\n\n[5, 6]\n[7, ')
    lines, whole = _lines(path)
    parsed, bad = _parse(lines, lambda value: value)
    assert not whole and [number for number, _, _ in bad] == [2, 4, 6]
    assert _set_aside(path, [line for line, _ in parsed], bad) == f"{path} lines 2, 4, 6 to records.json.rejected"
    assert path.read_bytes() == b"[1, 2]\n[3, 4]\n[5, 6]\n"
    assert (tmp_path / "records.json.rejected").read_bytes() == b"line 2: {oops\nline 4: \nline 6: [7, \n"


@pytest.mark.parametrize("name, damage, fragment", [
    (TARGET, lambda data: b'{"name": "host",', "not valid JSON (line 1)"),
    (VERIFIED, lambda data: b"{\n  garbage\n}", "not valid JSON (line 2)"),
    (VERIFIED, lambda data: b"[1, 2]", "expected a JSON object"),
    (WORKLOADS, lambda data: b"garbage\n" + data, "line 1 is not a workload TVM can read"),
    (WORKLOADS, lambda data: data.replace(b"\n", b'\n["1", "bm90IGEgbW9kdWxl"]\n', 1), "line 2 is not a workload"),
])
def test_a_damaged_file_in_the_folder_is_one_line_naming_it(tmp_path, tuned, small_cnn_path, name, damage, fragment):
    records = _copy(tuned, tmp_path)
    (records / name).write_bytes(damage((records / name).read_bytes()))
    before = _snapshot(records)
    built = qc("build", small_cnn_path, "-o", tmp_path / "m.so", "--records", records, *SHAPE)
    assert_one_line_error(built, f"{records / name}: ", fragment)
    assert not (tmp_path / "m.so").exists()
    if name == WORKLOADS:  # tune does not "repair" a workload in the middle: later records would name the wrong one
        again = qc("tune", small_cnn_path, "--trials", "2", "--records", records, *SHAPE)
        assert_one_line_error(again, f"{records / name}: ", fragment)
        assert _snapshot(records) == before


def test_records_of_another_model_are_refused_and_a_partial_overlap_is_used(tmp_path, tuned, small_cnn_path, calib):
    assert [m["model"] for m in json.loads((tuned / MODELS).read_text()).values()] == ["small_cnn.onnx"]
    other = tmp_path / "two_convs.onnx"
    onnx.save(two_convs(), str(other))
    proc = qc("build", other, "-o", tmp_path / "m.so", "--records", tuned)
    assert_one_line_error(proc, f"{tuned}: ", "tuned for another model or quantization", "small_cnn.onnx")
    assert not (tmp_path / "m.so").exists()
    # the same model in int8 but for its classifier: the float classifier's kernel is among the records
    proc = qc("build", small_cnn_path, "-o", tmp_path / "q.so", "--records", tuned, *SHAPE, "--quantize", "int8",
              "--calib", calib, "--skip", "fc")
    assert proc.returncode == 0, proc.stderr


def test_records_of_another_target_are_refused(tmp_path, small_cnn_path):
    records = tmp_path / "db"
    records.mkdir()
    (records / TARGET).write_text(json.dumps({"name": "rpi5"}))
    (records / RECORDS).write_text("")
    proc = qc("build", small_cnn_path, "-o", tmp_path / "m.so", "--records", records, *SHAPE)
    assert_one_line_error(proc, f"{records}: ", "tuned for target 'rpi5'")
    assert not (tmp_path / "m.so").exists()
